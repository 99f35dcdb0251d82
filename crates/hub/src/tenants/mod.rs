//! Tenants: `POST /api/v1/tenants` and `GET /api/v1/tenants` (platform admins),
//! `GET /api/v1/tenants/{id}` (one's own, or any for platform admins).

use crate::authz::Principal;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use crate::users::PageQuery;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::TenantId;
use coditect_store::Tenant;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, create))
        .route(routes!(get_one))
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantView {
    id: TenantId,
    name: String,
    created_at: DateTime<Utc>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "acme"}))]
struct CreateTenant {
    /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`, not starting or ending with a space.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
}

/// 1 to 64 letters, digits, `-`, `_`, `.` or spaces, not starting or ending with a space.
pub fn check_name(name: &str, what: &str) -> Result<String, ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ApiError::bad_request(format!(
            "{what} must be 1 to 64 letters, digits, spaces, '-', '_' or '.'"
        )))
    }
}

/// Creates a tenant (platform admins).
#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    tag = "tenants",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created", body = TenantView),
        (status = 403, description = "Not a platform admin"),
        (status = 409, description = "The name is taken"),
    )
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateTenant>,
) -> Result<(StatusCode, axum::Json<TenantView>), ApiError> {
    let name = check_name(&req.name, "name")?;
    let tenant = state.gate().scoped(&principal).create_tenant(name).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant.into())))
}

#[derive(Serialize, utoipa::ToSchema)]
struct TenantPage {
    items: Vec<TenantView>,
    next_cursor: Option<String>,
}

/// Every tenant (platform admins).
#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "tenants",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of tenants", body = TenantPage),
        (status = 403, description = "Not a platform admin"),
    )
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<TenantPage>, ApiError> {
    let page = state
        .gate()
        .scoped(&principal)
        .list_tenants(q.cursor.as_deref(), q.limit)
        .await?;
    Ok(axum::Json(TenantPage {
        items: page.items.into_iter().map(TenantView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// One tenant: the caller's own, or any for platform admins.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    params(("id" = TenantId, Path, description = "The tenant")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 404, description = "No such tenant (or not the caller's)"),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<TenantId>,
) -> Result<axum::Json<TenantView>, ApiError> {
    Ok(axum::Json(
        state.gate().scoped(&principal).get_tenant(id).await?.into(),
    ))
}
