//! What every handler can reach: configuration, the authorization gate (never the raw
//! store), authentication, metrics, lifecycle.

use crate::auth::Auth;
use crate::authz::Gate;
use crate::config::Config;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    gate: Gate,
    auth: Auth,
    metrics: PrometheusHandle,
    started: Instant,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(config: Config, gate: Gate, auth: Auth, metrics: PrometheusHandle) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                config,
                gate,
                auth,
                metrics,
                started: Instant::now(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn gate(&self) -> &Gate {
        &self.inner.gate
    }

    pub fn auth(&self) -> &Auth {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// True once shutdown began: readiness turns false so load balancers stop sending.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }
}
