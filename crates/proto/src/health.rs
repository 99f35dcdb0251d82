//! Health report returned by `/health` on every CODITECT server.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every component works.
    Healthy,
    /// The server answers and keeps data safe, but a non-critical component is down.
    Degraded,
    /// A critical component is down: the server cannot do its job.
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ComponentHealth {
    pub name: String,
    pub healthy: bool,
    /// How long the probe of this component took.
    pub latency_ms: f64,
    /// Whether the server can do its job without this component.
    pub critical: bool,
    /// Why the component is unhealthy; never carries secrets or internal details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthReport {
    pub status: HealthStatus,
    pub components: Vec<ComponentHealth>,
    pub version: String,
    pub uptime_seconds: u64,
    pub timestamp: DateTime<Utc>,
}

/// A duration in milliseconds, rounded to the microsecond (for reports and log fields).
pub fn duration_ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl HealthStatus {
    /// Overall status: unhealthy if a critical component is down, degraded if any other is.
    pub fn of(components: &[ComponentHealth]) -> HealthStatus {
        if components.iter().any(|c| !c.healthy && c.critical) {
            HealthStatus::Unhealthy
        } else if components.iter().any(|c| !c.healthy) {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn component(healthy: bool, critical: bool) -> ComponentHealth {
        ComponentHealth {
            name: "c".into(),
            healthy,
            latency_ms: 0.1,
            critical,
            message: None,
        }
    }

    #[test]
    fn status_is_the_worst_component() {
        assert_eq!(HealthStatus::of(&[]), HealthStatus::Healthy);
        assert_eq!(
            HealthStatus::of(&[component(true, true), component(true, false)]),
            HealthStatus::Healthy
        );
        assert_eq!(
            HealthStatus::of(&[component(true, true), component(false, false)]),
            HealthStatus::Degraded
        );
        assert_eq!(
            HealthStatus::of(&[component(false, true), component(false, false)]),
            HealthStatus::Unhealthy
        );
    }

    #[test]
    fn durations_round_to_the_microsecond() {
        assert_eq!(
            duration_ms(std::time::Duration::from_nanos(1_234_567)),
            1.235
        );
    }

    #[test]
    fn status_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&HealthStatus::Degraded).unwrap(),
            "\"degraded\""
        );
    }
}
