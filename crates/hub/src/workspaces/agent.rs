//! The workspace agent's side of the hub: its report (`POST /api/v1/agent/report`) and the
//! Unix socket it reaches the hub through.
//!
//! The socket is `data_dir/agent/hub.sock`; its directory is mounted into every workspace
//! (read-only, as a directory, so a restarted hub's new socket is seen). It serves the same
//! router as the TCP listener, under the same authentication and authorization: a
//! workspace gets no door the network does not have, and one that has no network at all
//! still reaches the hub. The agent proves itself with its workspace-bound key.

use super::WorkspaceView;
use crate::authz::Principal;
use crate::http::{ApiError, Json};
use crate::state::AppState;
use chrono::{DateTime, Utc};
use coditect_proto::WorkspaceId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How often an agent should report (its answer says so; the agent timeout is larger).
pub const REPORT_EVERY_MS: u64 = 2000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "workspace_id": "0193a5e2-7c1f-7000-8000-000000000000",
    "instance": "5f0c2a9e4b7d4c1e9a3f6b8d2e1c0a97",
    "ready": true,
    "activity_at": "2026-12-01T10:00:00Z"
}))]
pub struct Report {
    pub workspace_id: WorkspaceId,
    /// `CODITECT_INSTANCE`: names the launch the agent belongs to.
    #[schema(min_length = 1, max_length = 64)]
    pub instance: String,
    /// The agent is up and the workspace usable.
    #[serde(default)]
    pub ready: bool,
    /// The last sign of use the agent saw (file events, IPC writes).
    pub activity_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReportAnswer {
    /// The workspace as the hub sees it (its owner, its status).
    workspace: WorkspaceView,
    /// Report again within this long.
    report_every_ms: u64,
}

/// The workspace agent reports readiness and activity (only the key minted for that
/// workspace may). 409 means this launch is over: the agent should exit.
#[utoipa::path(
    post,
    path = "/api/v1/agent/report",
    tag = "workspaces",
    request_body = Report,
    responses(
        (status = 200, description = "Recorded", body = ReportAnswer),
        (status = 403, description = "Not the workspace's own agent key"),
        (status = 404, description = "No such workspace in the key's tenant"),
        (status = 409, description = "Not the current launch: the agent should exit"),
    )
)]
pub async fn report(
    axum::extract::State(state): axum::extract::State<AppState>,
    principal: Principal,
    Json(r): Json<Report>,
) -> Result<axum::Json<ReportAnswer>, ApiError> {
    let valid = (1..=64).contains(&r.instance.len())
        && r.instance.bytes().all(|b| b.is_ascii_alphanumeric());
    if !valid {
        return Err(ApiError::bad_request(
            "instance: the value of CODITECT_INSTANCE (1 to 64 letters or digits)",
        ));
    }
    let now = state.gate().clock().now();
    // An agent's clock may be off: activity is never taken as later than now.
    let activity = r.activity_at.map(|a| a.min(now));
    let ws = state
        .gate()
        .scoped(&principal)
        .agent_report(r.workspace_id, &r.instance, r.ready, activity)
        .await?;
    if r.ready && ws.lifecycle.status == coditect_store::Status::Starting {
        state.orchestrator().nudge();
    }
    Ok(axum::Json(ReportAnswer {
        workspace: WorkspaceView::of(&state, ws),
        report_every_ms: REPORT_EVERY_MS,
    }))
}

/// Where the agent socket lives under a data directory.
pub fn socket_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("agent")
}

/// Binds the agent socket: the directory is made 0755 (containers' user 1000 must reach
/// the socket through the mount), a stale socket file is replaced, the socket is 0666
/// (whoever connects still needs a key).
pub fn bind(dir: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let path = dir.join(super::orchestrator::AGENT_SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}
