//! `GET /api/v1/sessions/{id}` and `DELETE /api/v1/sessions/{id}` (owner or admin).

use crate::authz::Principal;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Path};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::{SessionId, SessionStatus, TenantId, UserId, WorkspaceId};
use coditect_store::Session;
use serde::Serialize;
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new().route(routes!(get_session, end_session))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionView {
    id: SessionId,
    tenant_id: TenantId,
    user_id: UserId,
    status: SessionStatus,
    created_at: DateTime<Utc>,
    last_access_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    workspace_id: Option<WorkspaceId>,
    /// How the user logged in: `password`, `oidc` or `github`.
    login_method: String,
    /// Its workspace, when it has one (`GET /api/v1/sessions/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace: Option<crate::workspaces::WorkspaceView>,
    /// ADR-020's `container_status`: `ready`, `starting`, `stopping`, `stopped`, `failed`
    /// or `deleted` (`GET /api/v1/sessions/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    container_status: Option<&'static str>,
    /// Where the browser reaches its workspace (`GET /api/v1/sessions/{id}` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    workspace_url: Option<String>,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        SessionView {
            id: s.id,
            tenant_id: s.tenant_id,
            user_id: s.user_id,
            status: s.status,
            created_at: s.created_at,
            last_access_at: s.last_access_at,
            expires_at: s.expires_at,
            ended_at: s.ended_at,
            end_reason: s.end_reason,
            ip: s.ip,
            user_agent: s.user_agent,
            workspace_id: s.workspace_id,
            login_method: s.login_method,
            workspace: None,
            container_status: None,
            workspace_url: None,
        }
    }
}

/// One session: the caller's own, or any of the tenant's for administrators.
#[utoipa::path(
    get,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = SessionId, Path, description = "The session")),
    responses(
        (status = 200, description = "The session", body = SessionView),
        (status = 403, description = "Another user's session, and the caller is no administrator"),
        (status = 404, description = "No such session in the caller's tenant"),
    )
)]
async fn get_session(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<SessionId>,
) -> Result<Json<SessionView>, ApiError> {
    let scoped = state.gate().scoped(&principal);
    let session = scoped.get_session(id).await?;
    let mut view = SessionView::from(session);
    if let Some(ws) = view.workspace_id {
        // Its workspace as the caller may see it (a key bound elsewhere sees none).
        let found = scoped.get_workspace(ws).await.ok();
        view.container_status = Some(crate::workspaces::sessions::container_status(
            found.as_ref(),
        ));
        view.workspace_url = Some(crate::workspaces::sessions::workspace_url(&state, ws));
        view.workspace = found.map(|w| crate::workspaces::WorkspaceView::of(&state, w));
    }
    Ok(Json(view))
}

/// Ends a session (the caller's own, or any of the tenant's for administrators): its
/// tokens stop working at once.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(("id" = SessionId, Path, description = "The session")),
    responses(
        (status = 204, description = "Ended (or already ended)"),
        (status = 403, description = "Another user's session, and the caller is no administrator"),
        (status = 404, description = "No such session in the caller's tenant"),
    )
)]
async fn end_session(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<SessionId>,
) -> Result<StatusCode, ApiError> {
    state
        .gate()
        .scoped(&principal)
        .end_session(id, "terminated_by_request")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
