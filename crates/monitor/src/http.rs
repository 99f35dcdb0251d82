//! Health and metrics on a loopback HTTP port (`monitor.http_listen`):
//!
//! - `GET /health`: `{status, version, uptime_seconds, components:[{name,status,detail}]}`,
//!   200 while the store works (`healthy` or `degraded`), 503 when it does not;
//! - `GET /metrics`: Prometheus text (`codi_logs_total`, `codi_ipc_duration_seconds`,
//!   `codi_exports_processed_total`, `codi_sync_lag_seconds`, …).

use crate::ipc::Ipc;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// IPC latency buckets in seconds: 10 µs to 1 s.
const IPC_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder's handle, installing the recorder on first use.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("codi_ipc_duration_seconds".into()),
                    IPC_BUCKETS,
                )
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

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("codi_logs_total", "entries stored, by source (ipc, file)");
    describe_histogram!(
        "codi_ipc_duration_seconds",
        Unit::Seconds,
        "time to answer one IPC request (durable before the answer), by request type"
    );
    describe_counter!(
        "codi_exports_processed_total",
        "files archived by the exporter"
    );
    describe_counter!(
        "codi_exports_failed_total",
        "files the exporter could not archive"
    );
    describe_gauge!(
        "codi_sync_lag_seconds",
        Unit::Seconds,
        "age of the oldest entry not yet on the hub (0 when none)"
    );
    describe_gauge!("codi_sync_pending_entries", "entries not yet on the hub");
    describe_counter!(
        "codi_sync_entries_total",
        "entries settled with the hub, by outcome (synced, rejected)"
    );
    describe_counter!(
        "codi_sync_batches_total",
        "batch attempts, by outcome (accepted, retry, rejected)"
    );
    describe_counter!("codi_file_events_total", "file changes recorded");
    // Present from the start, so dashboards and alerts see zeros rather than nothing.
    metrics::counter!("codi_exports_processed_total").increment(0);
    metrics::counter!("codi_logs_total", "source" => "ipc").increment(0);
    metrics::counter!("codi_logs_total", "source" => "file").increment(0);
    metrics::gauge!("codi_sync_lag_seconds").set(0.0);
    describe_counter!(
        "codi_file_events_overflow_total",
        "times file events were lost and the watched trees rescanned"
    );
}

pub fn router(ipc: Arc<Ipc>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(ipc)
}

async fn health(State(ipc): State<Arc<Ipc>>) -> impl IntoResponse {
    let components = ipc.components().await;
    let store_ok = components
        .iter()
        .any(|c| c.name == "store" && c.status == "healthy");
    let degraded = components.iter().any(|c| c.status == "degraded");
    let status = match (store_ok, degraded) {
        (false, _) => "unhealthy",
        (true, true) => "degraded",
        (true, false) => "healthy",
    };
    let code = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": ipc.started.elapsed().as_secs(),
        "components": components,
    });
    (code, axum::Json(body))
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}

/// Drains the exporter's histogram buffers now and then.
pub async fn upkeep(handle: PrometheusHandle) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}
