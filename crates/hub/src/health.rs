//! Health and readiness.
//!
//! - `GET /health` (public, for probes) and `GET /api/admin/health` (platform admins):
//!   probe every component (stores) and report `healthy | degraded | unhealthy` with
//!   per-component latency; 503 when unhealthy.
//! - `GET /ready`: for load balancers and scripts; 200 once every store has been reached and
//!   migrated and the first admin (when configured) exists, until shutdown begins. Cheap: no probe, just state. A PostgreSQL outage after that shows
//!   in `/health` but not here: every replica shares the one PostgreSQL, so taking them all
//!   out of rotation would turn a degraded service into an outage.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use coditect_proto::{HealthReport, HealthStatus};
use serde_json::json;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/api/admin/health", get(admin_health))
        .route("/ready", get(ready))
}

/// The same report, for platform admins (the admin namespace is authenticated).
async fn admin_health(
    State(state): State<AppState>,
    principal: crate::authz::Principal,
) -> Result<Response, crate::http::ApiError> {
    state
        .gate()
        .scoped(&principal)
        .require_platform_admin("admin.health")
        .await?;
    Ok(health(State(state)).await)
}

async fn health(State(state): State<AppState>) -> Response {
    let components = state.gate().system().probe().await;
    let status = HealthStatus::of(&components);
    let report = HealthReport {
        status,
        components,
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: state.uptime().as_secs(),
        timestamp: chrono::Utc::now(),
    };
    let code = match status {
        HealthStatus::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        HealthStatus::Healthy | HealthStatus::Degraded => StatusCode::OK,
    };
    (code, Json(report)).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    let not_ready = |reason: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    };
    if state.is_draining() {
        return not_ready("shutting down");
    }
    if !state.gate().system().is_ready() {
        return not_ready("shared store not reachable or not migrated");
    }
    if !state.is_bootstrapped() {
        return not_ready("creating the first admin");
    }
    Json(json!({"status": "ready"})).into_response()
}
