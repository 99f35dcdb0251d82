//! The warm pool (ADR-020: pre-warm a share of peak; `pool_size` per template).
//!
//! A pool instance is an ordinary workspace of its template with `pooled` set, owned by
//! the tenant's pool account (a service user), launched by the reconciler like any other
//! and exempt from the idle stop. Creating a workspace from a template first *claims* a
//! ready instance: one statement moves it to its new owner and name (PostgreSQL `FOR
//! UPDATE SKIP LOCKED`; the SQLite writer), quota checked in the same transaction. The
//! agent is then handed its new owner's key by rotating its key file — no restart, the
//! agent reads the file before each request — and the pool account's key is revoked. The
//! refill (every health-check pass) launches what the pool lacks.

use crate::authz::{Principal, system_build};
use crate::state::AppState;
use coditect_proto::{Level, TemplateId, TenantId, WorkspaceId};
use coditect_store::{Quota, Template, Workspace};
use coditect_workspaces::InstanceRef;
use coditect_workspaces::template::TemplateSpec;
use serde_json::json;
use std::time::Instant;

/// Claims a ready pool instance of `template` for `principal`; `None` is a miss (the
/// caller starts one cold). Counted as `pool_claims_total{outcome}`.
pub async fn claim(
    state: &AppState,
    principal: &Principal,
    template: TemplateId,
    spec: &TemplateSpec,
    name: String,
    quota: Quota,
) -> Result<Option<Workspace>, crate::http::ApiError> {
    if spec.pool_size == 0 {
        return Ok(None);
    }
    let started = Instant::now();
    let claimed = state
        .gate()
        .scoped(principal)
        .claim_workspace(template, name, quota)
        .await?;
    let Some(ws) = claimed else {
        metrics::counter!("pool_claims_total", "outcome" => "miss").increment(1);
        return Ok(None);
    };
    metrics::counter!("pool_claims_total", "outcome" => "hit").increment(1);
    hand_over(state, &ws, spec).await;
    metrics::histogram!("container_launch_time", "runtime" => spec.runtime.as_str(), "source" => "pool")
        .record(started.elapsed().as_secs_f64());
    state.orchestrator().nudge();
    Ok(Some(ws))
}

/// Gives the claimed instance's agent a key of its new owner (the pool account's is
/// revoked). If the key file cannot be written the agent loses its key, goes silent and
/// is relaunched by the health checker with a fresh one: slower, never wrong.
pub(super) async fn hand_over(state: &AppState, ws: &Workspace, spec: &TemplateSpec) {
    let system = state.gate().system();
    let key = match system.mint_agent_key(ws, ws.lifecycle.generation).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(workspace = %ws.id, error = %e, "cannot mint the claimed workspace's key");
            return;
        }
    };
    let instance = InstanceRef {
        tenant: ws.tenant_id,
        workspace: ws.id,
    };
    if let Some(runtime) = state.orchestrator().runtime(spec.runtime)
        && let Err(e) = runtime.rekey(instance, &key).await
    {
        tracing::warn!(workspace = %ws.id, error = %e, "cannot hand the claimed workspace its key");
    }
    let _ = system
        .workspace_event(
            ws,
            Level::Info,
            format!("workspace claimed from the warm pool by {}", ws.owner_id),
            json!({"transition": "claim", "owner_id": ws.owner_id.to_string(),
                   "generation": ws.lifecycle.generation}),
        )
        .await;
}

/// Launches what each template's pool lacks and removes what it has beyond its size
/// (ready instances, one claim at a time); drains the pools of templates that are gone
/// (`pooled`: the (tenant, template) of the unclaimed instances the health checker saw
/// running); sets `pool_size` and `pool_utilization`.
pub async fn refill(state: &AppState, pooled: &[(TenantId, TemplateId)]) {
    let system = state.gate().system();
    let templates = match system.all_templates().await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "cannot list templates for the pool");
            return;
        }
    };
    let templates_seen: Vec<(TenantId, TemplateId)> =
        templates.iter().map(|t| (t.tenant_id, t.id)).collect();
    for t in templates {
        let Ok(spec) = serde_json::from_str::<TemplateSpec>(&t.spec) else {
            continue;
        };
        let (all, ready) = match system.pool_counts(&t).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(template = %t.id, error = %e, "cannot count a pool");
                continue;
            }
        };
        let labels = [("template", t.id.to_string())];
        metrics::gauge!("pool_size", &labels).set(all as f64);
        let size = u64::from(spec.pool_size);
        let utilization = match size {
            0 => 0.0,
            n => 1.0 - (ready.min(n) as f64 / n as f64),
        };
        metrics::gauge!("pool_utilization", &labels).set(utilization);
        for _ in all..size {
            if let Err(e) = add_instance(state, &t, &spec).await {
                tracing::warn!(template = %t.id, error = %e, "cannot add a pool instance");
                break;
            }
        }
        for _ in size..all {
            if !drain_one(
                state,
                t.tenant_id,
                t.id,
                "the pool is larger than its template asks",
            )
            .await
            {
                break;
            }
        }
    }
    let live: std::collections::HashSet<_> = templates_seen.into_iter().collect();
    let mut gone: Vec<_> = pooled.iter().filter(|k| !live.contains(*k)).collect();
    gone.sort();
    gone.dedup();
    for (tenant, template) in gone {
        while drain_one(state, *tenant, *template, "its template was deleted").await {}
    }
}

/// One instance out of a pool and deleted; false when none was ready (or on an error).
async fn drain_one(state: &AppState, tenant: TenantId, template: TemplateId, why: &str) -> bool {
    match state.gate().system().drain_one(tenant, template, why).await {
        Ok(Some(ws)) => {
            tracing::info!(workspace = %ws.id, template = %template, reason = why, "removing a pool instance");
            state.orchestrator().nudge();
            true
        }
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(template = %template, error = %e, "cannot remove a pool instance");
            false
        }
    }
}

async fn add_instance(
    state: &AppState,
    t: &Template,
    spec: &TemplateSpec,
) -> Result<(), coditect_store::StoreError> {
    let system = state.gate().system();
    let owner = system.pool_account(t.tenant_id).await?;
    let now = state.gate().clock().now();
    let id = WorkspaceId::new();
    let simple = id.as_uuid().simple().to_string();
    let mut ws = Workspace {
        id,
        template_id: Some(t.id),
        spec: t.spec.clone(),
        cpu_millis: spec.resources.cpu_millis.unwrap_or(0),
        memory_mb: spec.resources.memory_mb.unwrap_or(0),
        pooled: true,
        ..Workspace::new(
            t.tenant_id,
            format!("pool-{}", &simple[simple.len() - 12..]),
            owner,
            now,
        )
    };
    ws.lifecycle.desired = coditect_store::Desired::Running;
    let mut build = system_build(&ws, "start", Some("warm pool refill".into()), 0, now);
    build.initiator = "system:pool".into();
    system.create_pooled(&ws, &build).await?;
    tracing::info!(workspace = %ws.id, template = %t.id, "warm pool instance added");
    state.orchestrator().nudge();
    Ok(())
}
