//! Health and readiness.
//!
//! - `GET /health` (public, for probes) and `GET /api/admin/health` (platform admins):
//!   probe every component (stores) and report `healthy | degraded | unhealthy` with
//!   per-component latency; 503 when unhealthy.
//! - `GET /ready`: for load balancers and scripts; 200 once every store has been reached and
//!   migrated and the first admin (when configured) exists, until shutdown begins. Cheap: no probe, just state. A PostgreSQL outage after that shows
//!   in `/health` but not here: every replica shares the one PostgreSQL, so taking them all
//!   out of rotation would turn a degraded service into an outage.

use crate::http::openapi::Routes;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use coditect_proto::{HealthReport, HealthStatus};
use serde::Serialize;
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(health))
        .route(routes!(admin_health))
        .route(routes!(ready))
}

/// The answer of `/ready`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: &'static str,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

/// The health report, for platform admins (the admin namespace is authenticated).
#[utoipa::path(
    get,
    path = "/api/admin/health",
    tag = "operations",
    responses(
        (status = 200, description = "Healthy or degraded", body = HealthReport),
        (status = 403, description = "Not a platform admin"),
        (status = 503, description = "Unhealthy: a critical component is down", body = HealthReport),
    )
)]
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

/// Probes every component (the stores) and reports each with its latency. Public, for
/// probes; never carries internal details.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Healthy or degraded", body = HealthReport),
        (status = 503, description = "Unhealthy: a critical component is down", body = HealthReport),
    )
)]
async fn health(State(state): State<AppState>) -> Response {
    let mut components = state.gate().system().probe().await;
    components.extend(state.orchestrator().probe().await);
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

/// Whether this replica should get traffic: every store reached and migrated, the first
/// admin created, not shutting down. No probe, just state.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    security(()),
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready, and why", body = Readiness),
    )
)]
async fn ready(State(state): State<AppState>) -> Response {
    let not_ready = |reason: &'static str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness {
                status: "not_ready",
                reason: Some(reason),
            }),
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
    Json(Readiness {
        status: "ready",
        reason: None,
    })
    .into_response()
}
