//! Workspace templates: `/api/v1/templates` (administrators write, the tenant reads). A
//! template is a [`TemplateSpec`], given as JSON or read from a repository's
//! `devcontainer.json` (its unsupported keys are answered back, never dropped silently).
//! Checked once, when written; a workspace keeps the spec it was made with.

use crate::authz::Principal;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path};
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use coditect_proto::{TemplateId, TenantId};
use coditect_store::Template;
use coditect_workspaces::template::TemplateSpec;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, create))
        .route(routes!(get_one, update, remove))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TemplateView {
    id: TemplateId,
    tenant_id: TenantId,
    name: String,
    /// The spec: runtime, image, command, post_create_command, post_start_command,
    /// resources {cpu_millis, memory_mb, pids}, env, apps [{name, port, protocol, command}],
    /// idle_timeout_secs, pool_size, start_on_login, network.
    #[schema(value_type = Object)]
    spec: serde_json::Value,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Keys of the devcontainer.json it came from that are not supported (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unsupported: Vec<String>,
}

impl TemplateView {
    fn of(t: Template, unsupported: Vec<String>) -> TemplateView {
        TemplateView {
            spec: serde_json::from_str(&t.spec).unwrap_or(serde_json::Value::Null),
            id: t.id,
            tenant_id: t.tenant_id,
            name: t.name,
            created_at: t.created_at,
            updated_at: t.updated_at,
            unsupported,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "rust",
    "spec": {"runtime": "process", "command": "cargo watch", "idle_timeout_secs": 1800,
             "resources": {"memory_mb": 4096}, "apps": [{"name": "web", "port": 8000}]}
}))]
struct TemplateIn {
    /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// The spec as JSON (see the template's fields); or give `devcontainer` instead.
    #[schema(value_type = Option<Object>)]
    spec: Option<serde_json::Value>,
    /// The text of a devcontainer.json (comments allowed), read into a spec.
    devcontainer: Option<String>,
}

/// A checked spec from either form, and what a devcontainer.json held that is not
/// supported.
pub(crate) fn resolve(
    spec: Option<serde_json::Value>,
    devcontainer: Option<&str>,
) -> Result<(TemplateSpec, Vec<String>), ApiError> {
    let (spec, unsupported) = match (spec, devcontainer) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give spec or devcontainer, not both"));
        }
        (None, None) => return Err(ApiError::bad_request("give spec or devcontainer")),
        (Some(v), None) => {
            let spec: TemplateSpec = serde_json::from_value(v)
                .map_err(|e| ApiError::bad_request(format!("spec: {e}")))?;
            (spec, Vec::new())
        }
        (None, Some(text)) => {
            let d =
                coditect_workspaces::devcontainer::parse(text).map_err(ApiError::bad_request)?;
            if d.dockerfile.is_some() && d.spec.image.is_none() {
                return Err(ApiError::bad_request(
                    "devcontainer.json builds its image (build.dockerfile): nothing is built or \
                     pulled here, so build it on the Docker host (docker build -t NAME …) and \
                     name it in \"image\"",
                ));
            }
            (d.spec, d.unsupported)
        }
    };
    spec.validate()
        .map_err(|e| ApiError::bad_request(format!("spec: {e}")))?;
    Ok((spec, unsupported))
}

fn to_json(spec: &TemplateSpec) -> Result<String, ApiError> {
    serde_json::to_string(spec)
        .map_err(|e| ApiError::internal(format!("cannot write a template spec: {e}")))
}

/// Creates a template (administrators).
#[utoipa::path(
    post,
    path = "/api/v1/templates",
    tag = "workspaces",
    request_body = TemplateIn,
    responses(
        (status = 201, description = "Created", body = TemplateView),
        (status = 403, description = "Not an administrator"),
        (status = 409, description = "The name is taken in this tenant"),
    )
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<TemplateIn>,
) -> Result<(StatusCode, axum::Json<TemplateView>), ApiError> {
    let name = crate::tenants::check_name(&req.name, "name")?;
    let (spec, unsupported) = resolve(req.spec, req.devcontainer.as_deref())?;
    let t = state
        .gate()
        .scoped(&principal)
        .create_template(name, to_json(&spec)?)
        .await?;
    state.orchestrator().nudge();
    Ok((
        StatusCode::CREATED,
        axum::Json(TemplateView::of(t, unsupported)),
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
struct TemplateList {
    items: Vec<TemplateView>,
}

/// The tenant's templates, by name.
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    tag = "workspaces",
    responses(
        (status = 200, description = "The templates", body = TemplateList),
        (status = 403, description = "The caller may not read templates"),
    )
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<axum::Json<TemplateList>, ApiError> {
    let items = state.gate().scoped(&principal).list_templates().await?;
    Ok(axum::Json(TemplateList {
        items: items
            .into_iter()
            .map(|t| TemplateView::of(t, Vec::new()))
            .collect(),
    }))
}

/// One template.
#[utoipa::path(
    get,
    path = "/api/v1/templates/{id}",
    tag = "workspaces",
    params(("id" = TemplateId, Path, description = "The template")),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 403, description = "The caller may not read templates"),
        (status = 404, description = "No such template in the caller's tenant"),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<TemplateId>,
) -> Result<axum::Json<TemplateView>, ApiError> {
    let t = state.gate().scoped(&principal).get_template(id).await?;
    Ok(axum::Json(TemplateView::of(t, Vec::new())))
}

/// Replaces a template's name and spec (workspaces made from it keep theirs).
#[utoipa::path(
    put,
    path = "/api/v1/templates/{id}",
    tag = "workspaces",
    params(("id" = TemplateId, Path, description = "The template")),
    request_body = TemplateIn,
    responses(
        (status = 200, description = "Replaced", body = TemplateView),
        (status = 403, description = "Not an administrator"),
        (status = 404, description = "No such template in the caller's tenant"),
        (status = 409, description = "The name is taken in this tenant"),
    )
)]
async fn update(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<TemplateId>,
    Json(req): Json<TemplateIn>,
) -> Result<axum::Json<TemplateView>, ApiError> {
    let name = crate::tenants::check_name(&req.name, "name")?;
    let (spec, unsupported) = resolve(req.spec, req.devcontainer.as_deref())?;
    let t = state
        .gate()
        .scoped(&principal)
        .update_template(id, name, to_json(&spec)?)
        .await?;
    state.orchestrator().nudge();
    Ok(axum::Json(TemplateView::of(t, unsupported)))
}

/// Deletes a template (workspaces made from it keep running as they were made).
#[utoipa::path(
    delete,
    path = "/api/v1/templates/{id}",
    tag = "workspaces",
    params(("id" = TemplateId, Path, description = "The template")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an administrator"),
        (status = 404, description = "No such template in the caller's tenant"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<TemplateId>,
) -> Result<StatusCode, ApiError> {
    state.gate().scoped(&principal).delete_template(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
