//! The workspace registry: `POST/GET /api/v1/workspaces`, `GET/DELETE
//! /api/v1/workspaces/{id}`. Logs and sessions refer to these ids; the orchestrator
//! attaches running environments to them later.

use crate::authz::Principal;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use crate::users::PageQuery;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, UserId, WorkspaceId};
use coditect_store::Workspace;
use serde::{Deserialize, Serialize};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/workspaces", get(list).post(create))
        .route("/api/v1/workspaces/{id}", get(get_one).delete(remove))
}

#[derive(Serialize)]
struct WorkspaceView {
    id: WorkspaceId,
    tenant_id: TenantId,
    name: String,
    owner_id: UserId,
    created_at: DateTime<Utc>,
}

impl From<Workspace> for WorkspaceView {
    fn from(w: Workspace) -> Self {
        WorkspaceView {
            id: w.id,
            tenant_id: w.tenant_id,
            name: w.name,
            owner_id: w.owner_id,
            created_at: w.created_at,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateWorkspace {
    name: String,
}

async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateWorkspace>,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    let name = crate::tenants::check_name(&req.name, "name")?;
    let ws = state
        .gate()
        .scoped(&principal)
        .create_workspace(name)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(ws.into())))
}

#[derive(Serialize)]
struct WorkspacePage {
    items: Vec<WorkspaceView>,
    next_cursor: Option<String>,
}

async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<WorkspacePage>, ApiError> {
    let page = state
        .gate()
        .scoped(&principal)
        .list_workspaces(q.cursor.as_deref(), q.limit)
        .await?;
    Ok(axum::Json(WorkspacePage {
        items: page.items.into_iter().map(WorkspaceView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<axum::Json<WorkspaceView>, ApiError> {
    Ok(axum::Json(
        state
            .gate()
            .scoped(&principal)
            .get_workspace(id)
            .await?
            .into(),
    ))
}

async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<StatusCode, ApiError> {
    state.gate().scoped(&principal).delete_workspace(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
