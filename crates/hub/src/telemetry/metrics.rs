//! Prometheus metrics through the `metrics` facade. The recorder is process-global and
//! installed once; every hub in the process renders from the same registry.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installing the recorder on first use.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            describe();
            handle
        })
        .clone()
}

/// Periodic housekeeping the exporter needs (draining histogram buffers).
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, matched route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency, by method, matched route template and status"
    );
    describe_gauge!("http_requests_in_flight", "HTTP requests being handled now");
    describe_histogram!(
        "container_launch_time",
        Unit::Seconds,
        "From a workspace's launch to its agent saying ready, by runtime and source (cold or pool)"
    );
    describe_histogram!(
        "session_recovery_time",
        Unit::Seconds,
        "From a running workspace found failed to it running again, by runtime"
    );
    describe_gauge!(
        "active_containers",
        "Workspaces running (their agent ready), on every runtime"
    );
    describe_gauge!(
        "pool_size",
        "Warm-pool instances per template (claimable or on their way)"
    );
    describe_gauge!(
        "pool_utilization",
        "Share of a template's warm pool not ready to be claimed (0 to 1; high: the pool runs dry)"
    );
    describe_counter!(
        "pool_claims_total",
        "Workspaces created from a template, by outcome: hit (claimed from the warm pool) or miss (started cold)"
    );
    describe_counter!(
        "workspace_reconcile_total",
        "Reconciler steps taken (one workspace acted on once)"
    );
    describe_counter!(
        "workspace_reconcile_errors_total",
        "Reconciler steps that failed, by kind (store, lease_lost)"
    );
    describe_counter!(
        "workspace_orphans_removed_total",
        "Runtime objects labelled as this hub's that the store did not know, removed"
    );
    describe_gauge!(
        "hub_uptime_seconds",
        Unit::Seconds,
        "seconds since this hub started"
    );
    describe_histogram!(
        "store_sqlite_group_jobs",
        "write jobs committed together in one SQLite transaction"
    );
    describe_histogram!(
        "store_sqlite_group_commit_seconds",
        Unit::Seconds,
        "time to run and commit one SQLite write group"
    );
    describe_gauge!(
        "store_sqlite_write_queue_depth",
        "write jobs waiting for the SQLite writer"
    );
    describe_gauge!(
        "store_pg_pool_connections",
        "open PostgreSQL connections in the pool"
    );
    // The log pipeline (ADR-029 names first).
    describe_counter!(
        "log_ingestion_total",
        "log entries stored (durably acknowledged), by protocol"
    );
    describe_histogram!(
        "log_ingestion_duration_seconds",
        Unit::Seconds,
        "time to validate and durably store one ingestion request, by protocol"
    );
    describe_gauge!(
        "websocket_connections_active",
        "open live-tail WebSocket connections on this hub"
    );
    describe_counter!(
        "storage_write_errors_total",
        "failed log writes, by store (sqlite, postgres)"
    );
    describe_counter!(
        "log_entries_rejected_total",
        "log entries refused one by one (bad level, timestamp, size…), by protocol"
    );
    describe_counter!(
        "log_ingestion_failed_total",
        "ingestion requests that stored nothing because the stores failed, by protocol"
    );
    describe_counter!(
        "log_ingestion_throttled_total",
        "ingestion requests refused by the per-tenant rate limit, by protocol"
    );
    describe_counter!(
        "log_ingestion_busy_total",
        "ingestion requests refused because the hub was at its in-flight bound"
    );
    describe_gauge!(
        "log_outbox_depth",
        "chunks in the local outbox waiting to reach PostgreSQL"
    );
    describe_gauge!(
        "log_replay_lag_seconds",
        Unit::Seconds,
        "age of the oldest chunk still in the outbox"
    );
    describe_counter!(
        "log_outbox_replayed_total",
        "outbox chunks replayed into PostgreSQL"
    );
    describe_counter!(
        "log_tail_dropped_total",
        "live-tail entries dropped for slow clients (each client is told how many)"
    );
    describe_histogram!(
        "log_tail_delivery_seconds",
        Unit::Seconds,
        "time from the hub learning of a stored chunk to an entry being written to a tail socket"
    );
    describe_counter!(
        "log_retention_deleted_chunks_total",
        "chunks deleted by retention"
    );
    // One bad record never stops a reader or a background task: it is counted here.
    describe_gauge!(
        "log_outbox_set_aside",
        "outbox chunks PostgreSQL refused for good, kept in log_outbox_set_aside"
    );
    describe_counter!(
        "log_outbox_set_aside_total",
        "outbox chunks set aside (undecodable, or refused by PostgreSQL 5 times)"
    );
    describe_counter!(
        "log_chunks_undecodable_total",
        "stored chunks a search could not decode (skipped, logged)"
    );
    describe_counter!(
        "log_tail_skipped_total",
        "entries the live tail skipped, by reason (undecodable chunk, unserializable entry)"
    );
    describe_counter!(
        "hub_background_restarts_total",
        "background tasks restarted after a panic, by task"
    );
    // Identity and authorization.
    describe_gauge!(
        "auth_active_sessions",
        "sessions that are neither expired nor revoked, across replicas"
    );
    describe_counter!(
        "auth_logins_total",
        "password logins, by result (success, failure, slowed, throttled)"
    );
    describe_counter!(
        "auth_refreshes_total",
        "refresh-token exchanges, by result (success, invalid, reused, rejected)"
    );
    describe_counter!(
        "auth_token_validations_total",
        "bearer credentials checked, by result"
    );
    describe_counter!(
        "auth_stale_credentials_total",
        "credentials refused because what they named changed (role, tenant, key revoked)"
    );
    describe_counter!(
        "authz_denied_total",
        "requests refused by authorization, by resource and action"
    );
    describe_counter!(
        "audit_write_failures_total",
        "audit events that could not be stored"
    );
    // Connections (the hub's own accept loop).
    describe_gauge!("http_connections_open", "client connections open now");
    describe_counter!(
        "http_connections_refused_total",
        "connections refused at accept, by reason (total cap, per-address cap)"
    );
    describe_counter!(
        "http_connections_timed_out_total",
        "connections closed for a slow header or an idle keep-alive, by reason"
    );
    // Present from the start (at zero), so dashboards and alerts see them before any event.
    for protocol in ["native", "otlp", "loki"] {
        metrics::counter!("log_ingestion_total", "protocol" => protocol).increment(0);
    }
    for store in ["sqlite", "postgres"] {
        metrics::counter!("storage_write_errors_total", "store" => store).increment(0);
    }
    metrics::gauge!("websocket_connections_active").increment(0.0);
    metrics::gauge!("log_outbox_depth").increment(0.0);
    metrics::gauge!("log_outbox_set_aside").increment(0.0);
    metrics::counter!("log_chunks_undecodable_total").increment(0);
    metrics::gauge!("log_replay_lag_seconds").increment(0.0);
    metrics::counter!("log_tail_dropped_total").increment(0);
}

/// `GET /metrics` (for scrapers) and `GET /api/admin/metrics` (platform admins):
/// Prometheus text exposition.
pub fn routes() -> crate::http::openapi::Routes {
    use utoipa_axum::routes;
    crate::http::openapi::Routes::new()
        .route(routes!(render))
        .route(routes!(admin_render))
}

/// The metrics, for platform admins.
#[utoipa::path(
    get,
    path = "/api/admin/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain; version=0.0.4"),
        (status = 403, description = "Not a platform admin"),
    )
)]
async fn admin_render(
    state: axum::extract::State<crate::state::AppState>,
    principal: crate::authz::Principal,
) -> Result<axum::response::Response, crate::http::ApiError> {
    use axum::response::IntoResponse;
    state
        .gate()
        .scoped(&principal)
        .require_platform_admin("admin.metrics")
        .await?;
    Ok(render(state).await.into_response())
}

/// The metrics, for scrapers (Prometheus text exposition; public like `/health`: put it
/// behind your network's boundary, or scrape `/api/admin/metrics`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain; version=0.0.4"),
    )
)]
async fn render(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
) -> impl axum::response::IntoResponse {
    metrics::gauge!("hub_uptime_seconds").set(state.uptime().as_secs_f64());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics().render(),
    )
}
