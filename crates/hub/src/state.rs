//! What every handler can reach: configuration, stores, metrics, lifecycle.

use crate::config::Config;
use coditect_store::Store;
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
    store: Store,
    metrics: PrometheusHandle,
    started: Instant,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(config: Config, store: Store, metrics: PrometheusHandle) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                config,
                store,
                metrics,
                started: Instant::now(),
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
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
