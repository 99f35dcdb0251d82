//! What every handler can reach: configuration, the authorization gate (never the raw
//! store), authentication, metrics, lifecycle.

use crate::auth::Auth;
use crate::authz::Gate;
use crate::config::Config;
use crate::live::hub::TailHub;
use crate::logs::limit::LogsRuntime;
use crate::workspaces::orchestrator::Orchestrator;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    gate: Gate,
    auth: Auth,
    logs: LogsRuntime,
    tail: TailHub,
    orchestrator: Orchestrator,
    /// Turns true when shutdown begins (live-tail connections close with 1001).
    stopping: watch::Sender<bool>,
    metrics: PrometheusHandle,
    started: Instant,
    draining: AtomicBool,
    /// The first-start work (the bootstrap admin) is done.
    bootstrapped: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        gate: Gate,
        auth: Auth,
        metrics: PrometheusHandle,
        orchestrator: Orchestrator,
    ) -> AppState {
        let limits = crate::logs::entry::EntryLimits {
            max_past: config.logs.max_past,
            max_future: config.logs.max_future,
            ..Default::default()
        };
        let logs = LogsRuntime::new(
            limits,
            config.logs.rate_per_tenant,
            config.logs.max_inflight,
        );
        AppState {
            inner: Arc::new(Inner {
                logs,
                tail: TailHub::default(),
                orchestrator,
                stopping: watch::Sender::new(false),
                config,
                gate,
                auth,
                metrics,
                started: Instant::now(),
                draining: AtomicBool::new(false),
                bootstrapped: AtomicBool::new(false),
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

    pub fn logs(&self) -> &LogsRuntime {
        &self.inner.logs
    }

    /// Live-tail subscribers of this node.
    pub fn tail(&self) -> &TailHub {
        &self.inner.tail
    }

    /// The workspace orchestrator: runtimes and the reconciler's settings.
    pub fn orchestrator(&self) -> &Orchestrator {
        &self.inner.orchestrator
    }

    /// Watches for shutdown: long-lived connections (the live tail) end when it turns true.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.inner.stopping.subscribe()
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

    /// True once the first admin exists (or none was asked for): until then a client that
    /// waits for readiness and then logs in could be refused.
    pub fn is_bootstrapped(&self) -> bool {
        self.inner.bootstrapped.load(Ordering::Acquire)
    }

    pub fn set_bootstrapped(&self) {
        self.inner.bootstrapped.store(true, Ordering::Release);
    }

    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
        self.inner.stopping.send_replace(true);
    }
}
