//! `GET /api/v1/sessions/{id}` and `DELETE /api/v1/sessions/{id}` (owner or admin).

use crate::authz::Principal;
use crate::http::{ApiError, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use coditect_proto::{SessionId, SessionStatus, TenantId, UserId, WorkspaceId};
use coditect_store::Session;
use serde::Serialize;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/sessions/{id}",
        get(get_session).delete(end_session),
    )
}

#[derive(Serialize)]
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
        }
    }
}

async fn get_session(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<SessionId>,
) -> Result<Json<SessionView>, ApiError> {
    let session = state.gate().scoped(&principal).get_session(id).await?;
    Ok(Json(session.into()))
}

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
