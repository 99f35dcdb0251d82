//! The health checker and the orphan sweep, one periodic pass over every runtime:
//!
//! - a workspace the store holds as `running` whose instance is gone, exited (OOM
//!   included) or belongs to another launch, or whose agent has not reported within
//!   `workspace_agent_timeout`, is marked `failed` with the reason and a `recover` build:
//!   the reconciler relaunches it on the same home, with the same id, URL and state;
//! - a runtime object labelled with this hub's scope that the store does not know (or
//!   knows as deleted) is destroyed.
//!
//! A runtime that does not answer is skipped for the pass: nothing is judged from the
//! silence of an engine (its outage shows in `/health` instead).

use super::orchestrator::exit_reason;
use crate::authz::system_build;
use crate::state::AppState;
use coditect_proto::Level;
use coditect_store::{Observation, Status, Workspace};
use coditect_workspaces::{InstanceRef, Observed, Phase};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// How often the pass runs.
pub const INTERVAL: Duration = Duration::from_secs(2);
const PAGE: u32 = 500;

pub async fn run(state: AppState) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Runtimes that say when an instance exits: a death is seen at once, not at the next
    // pass (the pass still runs on its period for what they cannot tell).
    let exits: Vec<_> = state
        .orchestrator()
        .runtimes()
        .filter_map(|r| r.exits())
        .collect();
    loop {
        let exited = async {
            if exits.is_empty() {
                std::future::pending::<()>().await;
            } else {
                futures_util::future::select_all(exits.iter().map(|n| Box::pin(n.notified())))
                    .await;
            }
        };
        let woken = tokio::select! {
            _ = tick.tick() => false,
            _ = exited => true,
        };
        if state.gate().system().is_ready() {
            check(&state).await;
            if woken {
                // An engine may tell of a death a moment before its inspect shows it
                // (Docker's `die` event): one more look shortly after.
                tokio::time::sleep(Duration::from_millis(200)).await;
                check(&state).await;
            }
        }
    }
}

/// One pass (public so tests can run it without waiting).
pub async fn check(state: &AppState) {
    let orch = state.orchestrator();
    // What each answering runtime holds, by workspace.
    let mut seen: HashMap<&'static str, HashMap<InstanceRef, Observed>> = HashMap::new();
    for runtime in orch.runtimes() {
        match tokio::time::timeout(orch.settings().runtime_timeout, runtime.list()).await {
            Ok(Ok(list)) => {
                let by_ref = list.into_iter().map(|o| (o.instance, o)).collect();
                seen.insert(runtime.kind().as_str(), by_ref);
            }
            Ok(Err(e)) => {
                tracing::debug!(runtime = runtime.kind().as_str(), error = %e, "runtime not answering; skipped");
            }
            Err(_) => {
                tracing::debug!(
                    runtime = runtime.kind().as_str(),
                    "runtime list timed out; skipped"
                );
            }
        }
    }
    let mut active = 0u64;
    let mut pooled = Vec::new();
    let mut after = None;
    loop {
        let page = match state
            .gate()
            .system()
            .list_in_status(Status::Running, after, PAGE)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list running workspaces");
                return;
            }
        };
        after = page.last().map(|w| (w.tenant_id, w.id));
        for ws in &page {
            active += 1;
            if let (true, Some(t)) = (ws.pooled, ws.template_id) {
                pooled.push((ws.tenant_id, t));
            }
            let Ok(template) = orch.template_of(ws) else {
                continue;
            };
            let Some(held) = seen.get(template.runtime.as_str()) else {
                continue;
            };
            let instance = InstanceRef {
                tenant: ws.tenant_id,
                workspace: ws.id,
            };
            if let Some(why) = judge(state, ws, held.get(&instance)) {
                mark_failed(state, ws, why).await;
            } else if let (Some(idle), false) = (template.idle_timeout_secs, ws.pooled) {
                stop_if_idle(state, ws, Duration::from_secs(idle)).await;
            }
        }
        if (page.len() as u32) < PAGE {
            break;
        }
    }
    metrics::gauge!("active_containers").set(active as f64);
    if let Ok(starting) = state
        .gate()
        .system()
        .list_in_status(Status::Starting, None, PAGE)
        .await
    {
        for ws in &starting {
            let held = orch
                .template_of(ws)
                .ok()
                .and_then(|t| seen.get(t.runtime.as_str()));
            let instance = InstanceRef {
                tenant: ws.tenant_id,
                workspace: ws.id,
            };
            if held.is_some_and(|h| !h.contains_key(&instance)) {
                nudge_if_missing(state, ws).await;
            }
        }
    }
    sweep(state, &seen).await;
    super::pool::refill(state, &pooled).await;
}

/// Why a running workspace is not, if it is not.
fn judge(state: &AppState, ws: &Workspace, observed: Option<&Observed>) -> Option<String> {
    let l = &ws.lifecycle;
    match observed {
        None => return Some("its instance is gone".into()),
        Some(o) if o.generation != l.generation => {
            return Some("its instance is gone (another launch is in its place)".into());
        }
        Some(Observed {
            phase: Phase::Exited { code, oom },
            ..
        }) => return Some(exit_reason(*code, *oom)),
        Some(_) => {}
    }
    let timeout = state.orchestrator().settings().agent_timeout;
    let now = state.gate().clock().now();
    let last = l.seen_at.or(l.ready_at).or(l.status_at)?;
    let silent = (now - last).to_std().unwrap_or_default();
    (silent > timeout).then(|| {
        format!(
            "its agent stopped answering ({} without a report)",
            humantime::format_duration(Duration::from_secs(silent.as_secs()))
        )
    })
}

/// Asks to stop a workspace unused for `idle` (its last activity, else when it became
/// ready): a build `idle-stop` by the orchestrator. Its home stays.
async fn stop_if_idle(state: &AppState, ws: &Workspace, idle: Duration) {
    let l = &ws.lifecycle;
    let now = state.gate().clock().now();
    let Some(last) = l.activity_at.max(l.ready_at).or(l.status_at) else {
        return;
    };
    let unused = (now - last).to_std().unwrap_or_default();
    if unused < idle {
        return;
    }
    let why = format!(
        "idle for {} (the template stops it after {})",
        humantime::format_duration(Duration::from_secs(unused.as_secs())),
        humantime::format_duration(idle)
    );
    let build = system_build(ws, "idle-stop", Some(why.clone()), l.generation, now);
    let system = state.gate().system();
    match system
        .request(ws, coditect_store::Desired::Stopped, &build)
        .await
    {
        Ok(true) => {
            tracing::info!(workspace = %ws.id, reason = %why, "stopping an idle workspace");
            let _ = system
                .workspace_event(
                    ws,
                    Level::Info,
                    format!("workspace {why}: stopping"),
                    json!({"transition": "idle-stop", "generation": l.generation}),
                )
                .await;
            state.orchestrator().nudge();
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(workspace = %ws.id, error = %e, "cannot stop an idle workspace"),
    }
}

/// The health checker's name on leases: not the reconciler's, so the two never both
/// think they hold one workspace.
fn watch_holder(orch: &super::orchestrator::Orchestrator) -> String {
    format!("{}-watch", orch.holder())
}

/// A `starting` workspace whose instance the runtime does not hold (its hub died before
/// launching it, or the launch died at once) is made due now rather than at its ready
/// deadline: the reconciler launches it again.
async fn nudge_if_missing(state: &AppState, ws: &Workspace) {
    let orch = state.orchestrator();
    let system = state.gate().system();
    let now = state.gate().clock().now();
    let young = ws
        .lifecycle
        .status_at
        .is_some_and(|at| now - at < chrono::Duration::seconds(3));
    let due = ws.lifecycle.next_attempt_at.is_none_or(|n| n <= now);
    if young || due {
        return;
    }
    let holder = watch_holder(orch);
    let Ok(Some(leased)) = system
        .lease(
            ws.tenant_id,
            ws.id,
            &holder,
            now,
            now + chrono::Duration::seconds(30),
        )
        .await
    else {
        return;
    };
    let l = &leased.lifecycle;
    if l.status == Status::Starting && l.generation == ws.lifecycle.generation {
        let o = Observation {
            status: Status::Starting,
            reason: l.status_reason.clone(),
            generation: l.generation,
            instance_token: l.instance_token.clone(),
            attempts: l.attempts,
            next_attempt_at: None,
            reset_ready: false,
            at: l.status_at.unwrap_or(now),
        };
        let _ = system.observe(&leased, &holder, &o).await;
    }
    let _ = system.release(&leased, &holder).await;
    orch.nudge();
}

/// Marks `ws` failed under a lease (skipped if someone else holds it: they are acting
/// on it already), with a `recover` build for the reconciler's relaunch.
async fn mark_failed(state: &AppState, ws: &Workspace, why: String) {
    let orch = state.orchestrator();
    let system = state.gate().system();
    let now = state.gate().clock().now();
    let lease = chrono::Duration::seconds(30);
    let leased = match system
        .lease(ws.tenant_id, ws.id, &watch_holder(orch), now, now + lease)
        .await
    {
        Ok(Some(w)) => w,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(workspace = %ws.id, error = %e, "cannot lease a workspace to mark it failed");
            return;
        }
    };
    // Judged on what the lease returned: the same launch, still running.
    if leased.lifecycle.status != Status::Running
        || leased.lifecycle.generation != ws.lifecycle.generation
    {
        let _ = system.release(&leased, &watch_holder(orch)).await;
        return;
    }
    let l = &leased.lifecycle;
    let o = Observation {
        status: Status::Failed,
        reason: Some(why.clone()),
        generation: l.generation,
        instance_token: l.instance_token.clone(),
        attempts: l.attempts,
        next_attempt_at: None,
        reset_ready: false,
        at: now,
    };
    let done = async {
        if !system.observe(&leased, &watch_holder(orch), &o).await? {
            return Ok(());
        }
        let build = system_build(&leased, "recover", Some(why.clone()), l.generation + 1, now);
        system.add_build(&build).await?;
        tracing::warn!(workspace = %ws.id, tenant = %ws.tenant_id, reason = %why, "workspace failed; relaunching");
        let _ = system
            .workspace_event(
                &leased,
                Level::Error,
                format!("workspace failed: {why}; relaunching"),
                json!({"status": "failed", "generation": l.generation, "transition": "recover"}),
            )
            .await;
        Ok::<(), coditect_store::StoreError>(())
    }
    .await;
    if let Err(e) = done {
        tracing::warn!(workspace = %ws.id, error = %e, "cannot mark a workspace failed");
    }
    let _ = system.release(&leased, &watch_holder(orch)).await;
    orch.nudge();
}

/// Destroys what runtimes hold under this hub's scope for workspaces the store does not
/// know (or knows as deleted).
async fn sweep(state: &AppState, seen: &HashMap<&'static str, HashMap<InstanceRef, Observed>>) {
    let orch = state.orchestrator();
    let system = state.gate().system();
    for runtime in orch.runtimes() {
        let Some(held) = seen.get(runtime.kind().as_str()) else {
            continue;
        };
        for instance in held.keys() {
            match system
                .get_workspace(instance.tenant, instance.workspace)
                .await
            {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return, // the store is not answering: judge nothing
            }
            tracing::warn!(workspace = %instance.workspace, tenant = %instance.tenant,
                runtime = runtime.kind().as_str(), "removing a runtime object the store does not know");
            let destroyed =
                tokio::time::timeout(orch.settings().runtime_timeout, runtime.destroy(*instance))
                    .await;
            match destroyed {
                Ok(Ok(())) => {
                    metrics::counter!("workspace_orphans_removed_total", "runtime" => runtime.kind().as_str())
                        .increment(1);
                }
                Ok(Err(e)) => {
                    tracing::warn!(workspace = %instance.workspace, error = %e, "cannot remove an orphan")
                }
                Err(_) => {
                    tracing::warn!(workspace = %instance.workspace, "removing an orphan timed out")
                }
            }
        }
    }
}
