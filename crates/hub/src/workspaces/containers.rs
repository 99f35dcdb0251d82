//! ADR-020's `/api/v1/containers`: the runtime view of the caller's workspaces (what runs
//! where, its status and health), and a launch. The same objects as `/api/v1/workspaces`,
//! under the same authorization; a container is one launch (generation) of a workspace.

use super::WorkspaceView;
use crate::authz::Principal;
use crate::authz::Transition;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::{UserId, WorkspaceId};
use coditect_store::{Status, Workspace};
use coditect_workspaces::InstanceRef;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new().route(routes!(list, launch))
}

#[derive(Serialize, utoipa::ToSchema)]
struct ContainerView {
    /// The runtime's own name for it (a container id, a process id); absent when nothing
    /// runs.
    container_id: Option<String>,
    workspace_id: WorkspaceId,
    user_id: UserId,
    /// `process`, `docker` or `kubernetes`.
    runtime: String,
    /// Which launch of the workspace it is.
    generation: u64,
    /// `ready`, `starting`, `stopping`, `stopped`, `failed` or `deleted`.
    status: &'static str,
    /// `healthy` (its agent reports), `unhealthy` (failed, or silent) or `unknown`.
    health: &'static str,
    /// When it entered its current status.
    created_at: Option<DateTime<Utc>>,
    workspace_url: String,
    workspace: WorkspaceView,
}

async fn view(state: &AppState, ws: Workspace) -> ContainerView {
    let orch = state.orchestrator();
    let runtime = orch.template_of(&ws).ok().map(|t| t.runtime);
    let instance = InstanceRef {
        tenant: ws.tenant_id,
        workspace: ws.id,
    };
    let container_id = match runtime.and_then(|k| orch.runtime(k)) {
        Some(r) if ws.lifecycle.status != Status::Stopped => {
            tokio::time::timeout(Duration::from_secs(2), r.inspect(instance))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .filter(|o| o.generation == ws.lifecycle.generation)
                .map(|o| o.runtime_id)
        }
        _ => None,
    };
    let l = &ws.lifecycle;
    let health = match l.status {
        Status::Failed => "unhealthy",
        Status::Running => {
            let silent = l.seen_at.is_none_or(|s| {
                (state.gate().clock().now() - s)
                    .to_std()
                    .unwrap_or_default()
                    > orch.settings().agent_timeout
            });
            if silent { "unhealthy" } else { "healthy" }
        }
        _ => "unknown",
    };
    ContainerView {
        container_id,
        workspace_id: ws.id,
        user_id: ws.owner_id,
        runtime: runtime.map_or("unknown", |k| k.as_str()).into(),
        generation: l.generation,
        status: super::sessions::container_status(Some(&ws)),
        health,
        created_at: l.status_at,
        workspace_url: super::sessions::workspace_url(state, ws.id),
        workspace: WorkspaceView::of(state, ws),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct ContainerList {
    items: Vec<ContainerView>,
}

/// The caller's containers: their workspaces that are running or on their way.
#[utoipa::path(
    get,
    path = "/api/v1/containers",
    tag = "workspaces",
    responses(
        (status = 200, description = "The caller's containers", body = ContainerList),
        (status = 403, description = "The caller may not list workspaces"),
    )
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<ContainerList>, ApiError> {
    let scoped = state.gate().scoped(&principal);
    let mut items = Vec::new();
    let mut cursor = None;
    loop {
        let page = scoped
            .list_workspaces(cursor.as_deref(), Some(crate::authz::MAX_PAGE))
            .await?;
        for ws in page.items {
            let launched = !matches!(ws.lifecycle.status, Status::Stopped | Status::Deleted);
            if ws.owner_id == principal.user_id && launched {
                items.push(view(&state, ws).await);
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(axum::Json(ContainerList { items }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"workspace_id": "0193a5e2-7c1f-7000-8000-000000000000"}))]
struct Launch {
    /// The workspace to launch; absent: the caller's login workspace (of a template that
    /// starts on login: claimed from its pool, or made).
    workspace_id: Option<WorkspaceId>,
}

/// Launches a container: starts the named workspace, or the caller's login workspace.
#[utoipa::path(
    post,
    path = "/api/v1/containers",
    tag = "workspaces",
    request_body = Launch,
    responses(
        (status = 202, description = "Launch asked for", body = ContainerView),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace, or none to launch (no template starts on login)"),
        (status = 409, description = "Being deleted (`CONFLICT`), or over the tenant's quota (`QUOTA_EXCEEDED`)"),
    )
)]
async fn launch(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<Launch>,
) -> Result<(StatusCode, axum::Json<ContainerView>), ApiError> {
    let id = match req.workspace_id {
        Some(id) => id,
        None => {
            let user = state
                .gate()
                .scoped(&principal)
                .get_user(principal.user_id)
                .await?;
            super::sessions::on_login(&state, &user)
                .await
                .ok_or_else(|| {
                    ApiError::not_found(
                        "no workspace to launch: name one, or have a template start on login",
                    )
                })?
        }
    };
    let ws = state
        .gate()
        .scoped(&principal)
        .request_workspace(id, Transition::Start, super::quota(&state))
        .await?;
    state.orchestrator().nudge();
    Ok((StatusCode::ACCEPTED, axum::Json(view(&state, ws).await)))
}
