//! Workspaces: the API (`/api/v1/workspaces…`, the agent's `/api/v1/agent/report`), the
//! reconciler ([`orchestrator`]), the health checker and orphan sweep ([`watch`]), and
//! the agent socket ([`agent`]). The runtimes themselves live in `coditect-workspaces`.
//!
//! Every request only records what is desired, with a build; answers are `202 Accepted`
//! with the workspace as it is, and the reconciler acts (watch `GET …/{id}` or the
//! workspace's logs, component `orchestrator`).

pub mod agent;
pub mod containers;
pub mod orchestrator;
pub mod pool;
pub mod sessions;
pub mod templates;
pub mod watch;

use crate::authz::{NewWorkspace, Principal, Transition};
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use crate::users::PageQuery;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use coditect_proto::{BuildId, ErrorCode, TemplateId, TenantId, UserId, WorkspaceId};
use coditect_store::{Build, Quota, Workspace};
use coditect_workspaces::template::TemplateSpec;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

/// Largest `workspace_state` document.
pub const MAX_STATE_BYTES: usize = 64 * 1024;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(list, create))
        .route(routes!(get_one, remove))
        .route(routes!(start))
        .route(routes!(stop))
        .route(routes!(restart))
        .route(routes!(builds))
        .route(routes!(get_state, put_state))
        .route(routes!(agent::report))
        .merge(templates::routes())
        .merge(containers::routes())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WorkspaceView {
    id: WorkspaceId,
    tenant_id: TenantId,
    name: String,
    owner_id: UserId,
    created_at: DateTime<Utc>,
    /// The template it was made from; absent: the built-in one.
    template_id: Option<TemplateId>,
    /// `process`, `docker` or `kubernetes`.
    runtime: String,
    /// What was asked for: `running`, `stopped` or `deleted`.
    desired: String,
    /// What the orchestrator last saw: `pending`, `starting`, `running`, `stopping`,
    /// `stopped`, `failed`, `deleting` or `deleted`.
    status: String,
    /// Why it is in this status (a failure's error, ...).
    status_reason: Option<String>,
    status_at: Option<DateTime<Utc>>,
    /// Which launch it is on (each start, and each relaunch after a crash, is a new one).
    generation: u64,
    /// When the agent of this launch said it was ready.
    ready_at: Option<DateTime<Utc>>,
    /// The agent's last report.
    last_seen_at: Option<DateTime<Utc>>,
    /// The last sign of use.
    last_activity_at: Option<DateTime<Utc>>,
    /// Version of the persisted browser state (0: none yet).
    state_version: u64,
    /// Its CPU (thousandths) and memory (MiB), as counted against quotas (0: unlimited).
    cpu_millis: u32,
    memory_mb: u64,
    /// A warm-pool instance waiting to be claimed.
    pooled: bool,
}

impl WorkspaceView {
    pub(crate) fn of(state: &AppState, w: Workspace) -> WorkspaceView {
        let runtime = state
            .orchestrator()
            .template_of(&w)
            .map(|t| t.runtime.as_str().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let l = w.lifecycle;
        WorkspaceView {
            id: w.id,
            tenant_id: w.tenant_id,
            name: w.name,
            owner_id: w.owner_id,
            created_at: w.created_at,
            template_id: w.template_id,
            runtime,
            desired: l.desired.as_str().into(),
            status: l.status.as_str().into(),
            status_reason: l.status_reason,
            status_at: l.status_at,
            generation: l.generation,
            ready_at: l.ready_at,
            last_seen_at: l.seen_at,
            last_activity_at: l.activity_at,
            state_version: l.state_version,
            cpu_millis: w.cpu_millis,
            memory_mb: w.memory_mb,
            pooled: w.pooled,
        }
    }
}

pub(crate) fn quota(state: &AppState) -> Quota {
    let q = state.config().workspaces.quota;
    Quota {
        workspaces: q.workspaces,
        cpu_millis: q.cpu_millis,
        memory_mb: q.memory_mb,
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "api-server", "start": true}))]
struct CreateWorkspace {
    /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`, not starting or ending with a space.
    #[schema(min_length = 1, max_length = 64)]
    name: String,
    /// The template; absent: the built-in one (the hub's default runtime, no limits).
    template_id: Option<TemplateId>,
    /// Instead of a template: the text of a devcontainer.json (comments allowed).
    devcontainer: Option<String>,
    /// Start it at once (default true).
    start: Option<bool>,
    /// Fill its home from a Git repository, cloned by the hub on the first start.
    repository: Option<RepositoryRequest>,
}

/// A Git repository to clone into a new workspace's home.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"url": "https://git.example.com/team/app.git", "ref": "main"}))]
struct RepositoryRequest {
    /// `http://` or `https://` only. A credential in it (`https://user:token@host/...`) is
    /// used for the first clone only, never stored in the clone, never shown, and erased
    /// once the clone succeeded.
    #[schema(max_length = 2048)]
    url: String,
    /// A branch or tag; absent: the repository's default branch.
    #[serde(rename = "ref")]
    reference: Option<String>,
}

/// Creates a workspace in the caller's tenant, owned by the caller, and starts it unless
/// `"start": false`.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces",
    tag = "workspaces",
    request_body = CreateWorkspace,
    responses(
        (status = 201, description = "Created (and asked to start)", body = WorkspaceView),
        (status = 403, description = "The caller may not create workspaces"),
        (status = 404, description = "No such template in the caller's tenant"),
        (status = 409, description = "The name is taken in this tenant (`CONFLICT`), or the tenant is at its quota (`QUOTA_EXCEEDED`)"),
    )
)]
async fn create(
    State(state): State<AppState>,
    principal: Principal,
    Json(req): Json<CreateWorkspace>,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    let name = crate::tenants::check_name(&req.name, "name")?;
    let scoped = state.gate().scoped(&principal);
    let mut template = match (req.template_id, req.devcontainer.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give template_id or devcontainer, not both",
            ));
        }
        (Some(id), None) => {
            let t = scoped.get_template(id).await?;
            serde_json::from_str::<TemplateSpec>(&t.spec)
                .map_err(|e| ApiError::internal(format!("stored template {id}: {e}")))?
        }
        (None, Some(text)) => templates::resolve(None, Some(text))?.0,
        (None, None) => TemplateSpec {
            runtime: state.config().workspaces.runtime,
            ..Default::default()
        },
    };
    if state.orchestrator().runtime(template.runtime).is_none() {
        return Err(ApiError::bad_request(format!(
            "the {} runtime is not enabled on this hub",
            template.runtime.as_str()
        )));
    }
    if let Some(r) = &req.repository {
        if template.runtime == coditect_workspaces::RuntimeKind::Kubernetes {
            return Err(ApiError::bad_request(
                "workspaces from a repository are not supported on the kubernetes runtime yet",
            ));
        }
        template.repository = Some(
            coditect_workspaces::git::Repository::parse(&r.url, r.reference.as_deref())
                .map_err(ApiError::bad_request)?,
        );
    }
    let start = req.start.unwrap_or(true);
    // A pool instance's home is the template's: a workspace of its own repository is made.
    if let (Some(id), true, None) = (req.template_id, start, &req.repository)
        && let Some(ws) = pool::claim(
            &state,
            &principal,
            id,
            &template,
            name.clone(),
            quota(&state),
        )
        .await?
    {
        return Ok((
            StatusCode::CREATED,
            axum::Json(WorkspaceView::of(&state, ws)),
        ));
    }
    let spec = serde_json::to_string(&template)
        .map_err(|e| ApiError::internal(format!("cannot write a template spec: {e}")))?;
    let ws = scoped
        .create_workspace(NewWorkspace {
            name,
            template_id: req.template_id,
            spec,
            cpu_millis: template.resources.cpu_millis.unwrap_or(0),
            memory_mb: template.resources.memory_mb.unwrap_or(0),
            start,
            quota: quota(&state),
        })
        .await?;
    state.orchestrator().nudge();
    Ok((
        StatusCode::CREATED,
        axum::Json(WorkspaceView::of(&state, ws)),
    ))
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
        items: page
            .items
            .into_iter()
            .map(|w| WorkspaceView::of(&state, w))
            .collect(),
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
    let scoped = state.gate().scoped(&principal);
    let ws = scoped.get_workspace(id).await?;
    scoped.used_workspace(&ws).await;
    Ok(axum::Json(WorkspaceView::of(&state, ws)))
}

async fn transition(
    state: &AppState,
    principal: &Principal,
    id: WorkspaceId,
    t: Transition,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    let ws = state
        .gate()
        .scoped(principal)
        .request_workspace(id, t, quota(state))
        .await?;
    state.orchestrator().nudge();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(WorkspaceView::of(state, ws)),
    ))
}

/// Deletes a workspace and everything it owned (its home, its runtime objects, its
/// agent's key): asked now, done by the orchestrator; it is gone (404) once done.
#[utoipa::path(
    delete,
    path = "/api/v1/workspaces/{id}",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 202, description = "Deletion asked for", body = WorkspaceView),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace in the caller's tenant"),
    )
)]
async fn remove(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    transition(&state, &principal, id, Transition::Delete).await
}

/// Starts a workspace (its home is as it was left).
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/start",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 202, description = "Start asked for", body = WorkspaceView),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 409, description = "Being deleted (`CONFLICT`), or the tenant's CPU or memory quota is reached (`QUOTA_EXCEEDED`)"),
    )
)]
async fn start(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    transition(&state, &principal, id, Transition::Start).await
}

/// Stops a workspace; its home stays.
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/stop",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 202, description = "Stop asked for", body = WorkspaceView),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 409, description = "Being deleted"),
    )
)]
async fn stop(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    transition(&state, &principal, id, Transition::Stop).await
}

/// Stops a workspace and starts it again (a new launch on the same home).
#[utoipa::path(
    post,
    path = "/api/v1/workspaces/{id}/restart",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 202, description = "Restart asked for", body = WorkspaceView),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 409, description = "Being deleted"),
    )
)]
async fn restart(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<(StatusCode, axum::Json<WorkspaceView>), ApiError> {
    transition(&state, &principal, id, Transition::Restart).await
}

#[derive(Serialize, utoipa::ToSchema)]
struct BuildView {
    id: BuildId,
    workspace_id: WorkspaceId,
    /// `start`, `stop`, `restart`, `delete`, `recover`...
    transition: String,
    /// Who or what asked: `user:<id>`, `api_key:<id>`, `system:orchestrator`.
    initiator: String,
    reason: Option<String>,
    /// `pending`, `succeeded`, `failed` or `superseded` (overtaken by a later request).
    status: String,
    error: Option<String>,
    generation: u64,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// From asked to done.
    duration_ms: Option<i64>,
}

impl From<Build> for BuildView {
    fn from(b: Build) -> BuildView {
        BuildView {
            duration_ms: b.finished_at.map(|f| (f - b.created_at).num_milliseconds()),
            id: b.id,
            workspace_id: b.workspace_id,
            transition: b.transition,
            initiator: b.initiator,
            reason: b.reason,
            status: b.status.as_str().into(),
            error: b.error,
            generation: b.generation,
            created_at: b.created_at,
            finished_at: b.finished_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct BuildPage {
    items: Vec<BuildView>,
    next_cursor: Option<String>,
}

/// Every transition of a workspace, newest first: who asked, when, how long, the outcome.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/builds",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace"), PageQuery),
    responses(
        (status = 200, description = "A page of builds", body = BuildPage),
        (status = 403, description = "The caller may not see this workspace"),
        (status = 404, description = "No such workspace in the caller's tenant"),
    )
)]
async fn builds(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
    Query(q): Query<PageQuery>,
) -> Result<axum::Json<BuildPage>, ApiError> {
    let page = state
        .gate()
        .scoped(&principal)
        .list_builds(id, q.cursor.as_deref(), q.limit)
        .await?;
    Ok(axum::Json(BuildPage {
        items: page.items.into_iter().map(BuildView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The persisted `workspace_state` (ADR-020 §8.2: what the browser needs to resume), with
/// its version as the `ETag`. `{}` with ETag `"0"` before the first write.
#[utoipa::path(
    get,
    path = "/api/v1/workspaces/{id}/state",
    tag = "workspaces",
    params(("id" = WorkspaceId, Path, description = "The workspace")),
    responses(
        (status = 200, description = "The state (any JSON object)", body = Object,
         headers(("ETag" = String, description = "The state's version, for If-Match"))),
        (status = 403, description = "The caller may not see this workspace"),
        (status = 404, description = "No such workspace in the caller's tenant"),
    )
)]
async fn get_state(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
) -> Result<Response, ApiError> {
    let (version, json) = state.gate().scoped(&principal).workspace_state(id).await?;
    Ok((
        [
            (header::ETAG, etag(version)),
            (header::CONTENT_TYPE, "application/json".into()),
        ],
        json.unwrap_or_else(|| "{}".into()),
    )
        .into_response())
}

/// Replaces `workspace_state` (a JSON object, at most 64 KiB). `If-Match` with the ETag
/// that was read is required, so two browsers cannot silently overwrite each other: a
/// stale one gets 412 and reads again. `If-Match: *` overwrites whatever is there.
#[utoipa::path(
    put,
    path = "/api/v1/workspaces/{id}/state",
    tag = "workspaces",
    params(
        ("id" = WorkspaceId, Path, description = "The workspace"),
        ("If-Match" = String, Header, description = "The ETag read (e.g. \"3\"), or * to overwrite"),
    ),
    request_body(content = Object, description = "The state: any JSON object", example = json!({"open_files": ["src/main.rs"], "layout": "split"})),
    responses(
        (status = 200, description = "Stored; the new ETag", body = StateWritten,
         headers(("ETag" = String, description = "The new version"))),
        (status = 403, description = "Neither its owner nor an administrator"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 412, description = "The state changed since that ETag (`PRECONDITION_FAILED`)"),
    )
)]
async fn put_state(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<WorkspaceId>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let scoped = state.gate().scoped(&principal);
    // Found (in this tenant) first: another tenant's id is a 404 whatever was sent.
    scoped.get_workspace(id).await?;
    let expected = match headers.get(header::IF_MATCH).map(|v| v.to_str()) {
        None => {
            return Err(ApiError::bad_request(
                "send If-Match with the ETag you read (or * to overwrite whatever is there)",
            ));
        }
        Some(Ok("*")) => None,
        Some(Ok(v)) => Some(
            v.trim()
                .trim_start_matches("W/")
                .trim_matches('"')
                .parse::<u64>()
                .map_err(|_| {
                    ApiError::bad_request("If-Match: an ETag of this state, e.g. \"3\"")
                })?,
        ),
        Some(Err(_)) => return Err(ApiError::bad_request("If-Match: an ETag of this state")),
    };
    if body.len() > MAX_STATE_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("workspace_state: at most {MAX_STATE_BYTES} bytes"),
        ));
    }
    let value: serde_json::Map<String, serde_json::Value> =
        crate::http::from_object("workspace_state", &body)?;
    let text = serde_json::Value::Object(value).to_string();
    let version = scoped.put_workspace_state(id, expected, &text).await?;
    Ok((
        [(header::ETAG, etag(version))],
        axum::Json(StateWritten { version }),
    )
        .into_response())
}

#[derive(Serialize, utoipa::ToSchema)]
struct StateWritten {
    version: u64,
}
