//! Sessions and workspaces (ADR-020 §8.1.3, §8.2): a login lands in the user's workspace
//! of a template that says `start_on_login` (claimed from its pool, or started), and
//! answers its `workspace_url`; a session shows its workspace and `container_status`.
//! The URL names the workspace, never a launch, so it survives relaunches.

use crate::state::AppState;
use coditect_proto::WorkspaceId;
use coditect_store::{Status, User, Workspace};
use coditect_workspaces::template::TemplateSpec;

/// The workspace a login of `user` is for, if a template says so.
pub async fn on_login(state: &AppState, user: &User) -> Option<WorkspaceId> {
    let quota = super::quota(state);
    let (ws, claimed) = state
        .gate()
        .system()
        .home_workspace(user, &quota, |t| {
            serde_json::from_str::<TemplateSpec>(&t.spec).is_ok_and(|s| s.start_on_login)
        })
        .await?;
    // Claimed from the pool: handed over as an API claim is (its owner's key).
    if claimed && let Ok(spec) = state.orchestrator().template_of(&ws) {
        metrics::counter!("pool_claims_total", "outcome" => "hit").increment(1);
        super::pool::hand_over(state, &ws, &spec).await;
    }
    state.orchestrator().nudge();
    Some(ws.id)
}

/// Where a browser reaches a workspace (through the hub's proxy).
pub fn workspace_url(state: &AppState, id: WorkspaceId) -> String {
    let base = state
        .config()
        .public_url
        .as_deref()
        .unwrap_or("")
        .trim_end_matches('/');
    format!("{base}/w/{id}/")
}

/// ADR-020's `container_status` of a workspace: `ready` once its agent said so,
/// `starting`, `stopping`, `stopped`, `failed` or `deleted`.
pub fn container_status(ws: Option<&Workspace>) -> &'static str {
    match ws.map(|w| w.lifecycle.status) {
        Some(Status::Running) => "ready",
        Some(Status::Pending | Status::Starting) => "starting",
        Some(Status::Stopping) => "stopping",
        Some(Status::Stopped) => "stopped",
        Some(Status::Failed) => "failed",
        Some(Status::Deleting | Status::Deleted) | None => "deleted",
    }
}
