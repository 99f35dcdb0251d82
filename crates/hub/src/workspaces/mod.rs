//! The workspace registry: `POST/GET /api/v1/workspaces`, `GET/DELETE
//! /api/v1/workspaces/{id}`. Logs and sessions refer to these ids; the orchestrator
//! attaches running environments to them later.

use crate::authz::Principal;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use crate::users::PageQuery;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, UserId, WorkspaceId};
use coditect_store::Workspace;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, create))
        .route(routes!(get_one, remove))
}

#[derive(Serialize, utoipa::ToSchema)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "api-server"}))]
struct CreateWorkspace {
    /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`, not starting or ending with a space.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

/// Creates a workspace in the caller's tenant, owned by the caller.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces",
    tag = "workspaces",
    request_body = CreateWorkspace,
    responses(
        (status = 201, description = "Created", body = WorkspaceView),
        (status = 403, description = "The caller may not create workspaces"),
        (status = 409, description = "The name is taken in this tenant"),
    )
)]
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

#[derive(Serialize, utoipa::ToSchema)]
struct WorkspacePage {
    items: Vec<WorkspaceView>,
    next_cursor: Option<String>,
}

/// The workspaces of the caller's tenant.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces",
    tag = "workspaces",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of workspaces", body = WorkspacePage),
        (status = 403, description = "The caller may not list workspaces"),
    )
)]
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

/// One workspace of the caller's tenant.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 200, description = "The workspace", body = WorkspaceView),
        (status = 403, description = "The caller may not see this workspace"),
        (status = 404, description = "No such workspace in the caller's tenant"),
    )
)]
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

/// Deletes a workspace (its owner or an administrator).
#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{id}",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace in the caller's tenant"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<StatusCode, ApiError> {
    state.gate().scoped(&principal).delete_workspace(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
