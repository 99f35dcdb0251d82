//! API keys: `POST /api/v1/api-keys` (the key is in the answer, once), `GET
//! /api/v1/api-keys` (never the key), `DELETE /api/v1/api-keys/{id}` (revoke).
//!
//! Keys start with `cdk_`; send them as `Authorization: Bearer cdk_…` or `X-API-Key: cdk_…`.
//! A key acts with the intersection of its role and its owner's current role, and, when
//! given a `workspace_id`, only on that workspace.

use crate::auth::secrets;
use crate::authz::{NewApiKey, Principal};
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path, check_instant};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::{ApiKeyId, Role, TenantId, UserId, WorkspaceId};
use coditect_store::ApiKey;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, create))
        .route(routes!(revoke))
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiKeyView {
    id: ApiKeyId,
    tenant_id: TenantId,
    owner_id: UserId,
    name: String,
    prefix: String,
    role: Role,
    workspace_id: Option<WorkspaceId>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        ApiKeyView {
            id: k.id,
            tenant_id: k.tenant_id,
            owner_id: k.owner_id,
            name: k.name,
            prefix: k.prefix,
            role: k.role,
            workspace_id: k.workspace_id,
            created_at: k.created_at,
            expires_at: k.expires_at,
            last_used_at: k.last_used_at,
            revoked_at: k.revoked_at,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ci shipper", "role": "service"}))]
struct CreateKey {
    /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`, not starting or ending with a space.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// Default `service`: enough to ship logs.
    role: Option<Role>,
    /// Default: the caller.
    owner_id: Option<UserId>,
    workspace_id: Option<WorkspaceId>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedKey {
    /// The key itself: shown here once, never again.
    key: String,
    #[serde(flatten)]
    view: ApiKeyView,
}

/// Mints an API key; the key is in this answer only. Its role must be covered by both the
/// caller's and its owner's.
#[utoipa::path(
    post,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    request_body = CreateKey,
    responses(
        (status = 201, description = "Created; `key` is shown this once", body = CreatedKey),
        (status = 403, description = "Not allowed to mint this key"),
        (status = 404, description = "No such owner or workspace in the caller's tenant"),
    )
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateKey>,
) -> Result<(StatusCode, axum::Json<CreatedKey>), ApiError> {
    let name = crate::tenants::check_name(&req.name, "name")?;
    let id = ApiKeyId::new();
    let minted = secrets::mint(secrets::Kind::ApiKey, principal.tenant_id, id.as_uuid());
    let key = state
        .gate()
        .scoped(&principal)
        .create_api_key(NewApiKey {
            owner: req.owner_id,
            name,
            role: req.role.unwrap_or(Role::Service),
            workspace: req.workspace_id,
            expires_at: check_instant("expires_at", req.expires_at)?,
            prefix: secrets::display_prefix(&minted.token),
            secret_hash: minted.hash,
            id,
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedKey {
            key: minted.token,
            view: key.into(),
        }),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
struct ApiKeyList {
    items: Vec<ApiKeyView>,
}

/// The caller's API keys (every key of the tenant for administrators); never the keys
/// themselves.
#[utoipa::path(
    get,
    path = "/api/v1/api-keys",
    tag = "api-keys",
    responses(
        (status = 200, description = "The keys", body = ApiKeyList),
        (status = 403, description = "The caller may not list keys"),
    )
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<ApiKeyList>, ApiError> {
    let keys = state.gate().scoped(&principal).list_api_keys().await?;
    Ok(axum::Json(ApiKeyList {
        items: keys.into_iter().map(ApiKeyView::from).collect(),
    }))
}

/// Revokes an API key (its owner or an administrator); it stops working at once.
#[utoipa::path(
    delete,
    path = "/api/v1/api-keys/{id}",
    tag = "api-keys",
    params(("id" = ApiKeyId, Path, description = "The key")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such key in the caller's tenant"),
    )
)]
async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    state.gate().scoped(&principal).revoke_api_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
