//! The hub's lifecycle: prepare the data directory, open the stores, bind, serve, and on
//! shutdown drain in-flight requests, then close the stores.

use crate::auth::Auth;
use crate::auth::keys::{KeyConfig, KeyError, KeyRing};
use crate::authz::Gate;
use crate::clock::Clock;
use crate::config::{Config, ConfigError};
use crate::state::AppState;
use crate::telemetry;
use axum::Router;
use coditect_store::{Store, StoreError};
use std::fs::{File, TryLockError};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("signing keys: {0}")]
    Keys(#[from] KeyError),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

impl StartError {
    /// 2 for anything the operator must fix in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Keys(KeyError::File { .. }) => 2,
            StartError::Store(_) | StartError::Keys(_) | StartError::Serve(_) => 1,
        }
    }
}

/// A hub that is bound and has its stores open, ready to [`Hub::serve`].
pub struct Hub {
    state: AppState,
    listener: TcpListener,
    /// The Unix socket workspace agents reach the hub through.
    agent_listener: tokio::net::UnixListener,
    extra: Router<AppState>,
    data_dir_lock: File,
}

/// Where this node keeps its token-signing keys.
pub fn key_config(config: &Config) -> KeyConfig {
    KeyConfig {
        dir: config.data_dir.join("keys"),
        fixed_file: config.auth.signing_key_file.clone(),
        rotation: config.auth.key_rotation,
        access_ttl: config.auth.access_ttl,
    }
}

impl Hub {
    pub async fn start(config: Config) -> Result<Hub, StartError> {
        Hub::start_with_clock(config, Clock::system()).await
    }

    /// Like [`Hub::start`] with a given clock (tests move it to cross timeouts).
    pub async fn start_with_clock(config: Config, clock: Clock) -> Result<Hub, StartError> {
        let data_dir_lock = prepare_data_dir(&config)?;
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            config.invalid(
                "listen",
                config.listen.to_string(),
                format!("an address this host can listen on ({e})"),
            )
        })?;
        let store = Store::open(config.store_config()).await?;
        tracing::info!(
            mode = store.mode().as_str(),
            data_dir = %config.data_dir.display(),
            postgres = store.shared().map(|pg| pg.target()).unwrap_or("none"),
            version = env!("CARGO_PKG_VERSION"),
            "hub starting"
        );
        let keys = match KeyRing::open(key_config(&config), clock.clone()).await {
            Ok(keys) => keys,
            Err(e) => {
                store.close().await;
                return Err(e.into());
            }
        };
        let mut auth = Auth::new(&config.auth, keys);
        if let Some(sso) = config.sso.clone() {
            match crate::auth::sso::Sso::new(sso) {
                Ok(sso) => auth.sso = Some(sso),
                Err(e) => {
                    store.close().await;
                    return Err(StartError::Config(ConfigError::Usage(e)));
                }
            }
        }
        let orchestrator = match crate::workspaces::orchestrator::from_config(&config) {
            Ok(o) => o,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let agent_listener = match crate::workspaces::agent::bind(
            &crate::workspaces::agent::socket_dir(&config.data_dir),
        ) {
            Ok(l) => l,
            Err(e) => {
                store.close().await;
                return Err(config
                    .invalid(
                        "data_dir",
                        config.data_dir.display().to_string(),
                        format!("a directory where the workspace agents' socket can be made ({e})"),
                    )
                    .into());
            }
        };
        let gate = Gate::new(store, clock, config.auth.session_cache_ttl);
        let state = AppState::new(
            config,
            gate,
            auth,
            telemetry::metrics::handle(),
            orchestrator,
        );
        Ok(Hub {
            state,
            listener,
            agent_listener,
            extra: Router::new(),
            data_dir_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.state.config().listen)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Mounts extra routes under the standard middleware (tests use this).
    pub fn with_routes(mut self, routes: Router<AppState>) -> Hub {
        self.extra = self.extra.merge(routes);
        self
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
    /// finish (at most `shutdown_timeout`) and closes the stores. Past the deadline the
    /// stores close under any request still running: its further store calls fail with
    /// 503 (nothing half-acknowledged), and the process exit ends it.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let addr = self.local_addr();
        let Hub {
            state,
            listener,
            agent_listener,
            extra,
            data_dir_lock,
        } = self;
        // Publish this node's signing key before issuing a single token, so other replicas
        // can verify it from the first request (the background task retries if this fails).
        let store_keys = state.gate().system().signing_keys();
        match tokio::time::timeout(
            Duration::from_secs(5),
            state.auth().keys.refresh(store_keys),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot publish the signing key yet"),
            Err(_) => tracing::warn!("cannot publish the signing key yet: the store is slow"),
        }
        let app = crate::http::router(state.clone(), extra);
        let background: Vec<JoinHandle<()>> = vec![
            telemetry::metrics::spawn_upkeep(state.metrics().clone()),
            supervise("signing_keys", &state, keep_keys_fresh),
            supervise("session_sweeper", &state, sweep_sessions),
            supervise("bootstrap", &state, bootstrap_when_ready),
            supervise("outbox_replay", &state, replay_outbox),
            supervise("retention", &state, enforce_retention),
            supervise("live_tail", &state, crate::live::hub::run),
            supervise("reconciler", &state, crate::workspaces::orchestrator::run),
            supervise("workspace_watch", &state, crate::workspaces::watch::run),
        ];

        let (fired, on_fired) = tokio::sync::oneshot::channel::<()>();
        let draining = state.clone();
        let signal = async move {
            shutdown.await;
            draining.start_draining();
            tracing::info!("shutdown requested, draining in-flight requests");
            let _ = fired.send(());
        };
        let config = state.config();
        let limits = crate::http::conn::Limits {
            header_read_timeout: config.header_read_timeout,
            keep_alive_timeout: config.keep_alive_timeout,
            max_connections: config.max_connections,
            max_connections_per_ip: config.max_connections_per_ip,
        };
        // The agents' socket: the same router; no per-address cap (every peer is local).
        let (agent_stop, agent_stopped) = tokio::sync::watch::channel(false);
        let agent_server = tokio::spawn(crate::http::conn::serve(
            agent_listener,
            app.clone(),
            crate::http::conn::Limits {
                max_connections_per_ip: 0,
                ..limits
            },
            async move {
                let mut stopped = agent_stopped;
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        let server = crate::http::conn::serve(listener, app, limits, async move {
            signal.await;
            let _ = agent_stop.send(true);
        });
        tracing::info!(%addr, "hub listening");
        let mut server = tokio::spawn(server);

        let grace = state.config().shutdown_timeout;
        let deadline = async move {
            if on_fired.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        let outcome = tokio::select! {
            joined = &mut server => match joined {
                Ok(result) => result.map_err(StartError::Serve),
                Err(e) => Err(StartError::Serve(std::io::Error::other(e))),
            },
            () = deadline => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "drain deadline passed, closing with requests in flight");
                server.abort();
                Ok(())
            }
        };
        agent_server.abort();
        for task in background {
            task.abort();
        }
        state.gate().system().close().await;
        drop(data_dir_lock);
        tracing::info!("hub stopped");
        outcome
    }
}

/// Runs a background task and starts it again (after a pause that grows with repeated
/// failures, up to 30 s) if it panics, counting `hub_background_restarts_total{task}`.
/// A task that returns is done. Aborting the returned handle stops the task too.
pub fn supervise<F, Fut>(name: &'static str, state: &AppState, task: F) -> JoinHandle<()>
where
    F: Fn(AppState) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    /// A run this long counts as healthy: the next failure starts the pause afresh.
    const HEALTHY_RUN: Duration = Duration::from_secs(60);
    let state = state.clone();
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let run = AbortOnDrop(tokio::spawn(task(state.clone())));
            match run.join().await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    metrics::counter!("hub_background_restarts_total", "task" => name).increment(1);
                    if started.elapsed() > HEALTHY_RUN {
                        pause = Duration::from_millis(100);
                    }
                    tracing::error!(
                        task = name,
                        pause_ms = pause.as_millis() as u64,
                        "background task panicked; restarting it"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
                Err(_) => return, // cancelled: the hub is stopping
            }
        }
    })
}

/// A task handle that aborts its task when dropped (so aborting a supervisor stops what
/// it supervises).
struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    async fn join(mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Publishes this node's signing key and reloads everyone's, every 30 s (sooner while the
/// store is unreachable), rotating the key when it is due.
async fn keep_keys_fresh(state: AppState) {
    loop {
        let next = match state
            .auth()
            .keys
            .refresh(state.gate().system().signing_keys())
            .await
        {
            Ok(()) => Duration::from_secs(30),
            Err(e) => {
                tracing::warn!(error = %e, "cannot refresh signing keys");
                Duration::from_secs(2)
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// Deletes expired sessions and updates the active-sessions gauge, every minute.
async fn sweep_sessions(state: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if state.gate().system().is_ready() {
            sweep_sessions_once(&state).await;
        }
    }
}

/// One pass of the session sweeper (public so tests can run it without waiting).
pub async fn sweep_sessions_once(state: &AppState) {
    /// Ended sessions stay visible (GET /api/v1/sessions/{id}) this long.
    const KEEP_ENDED: chrono::Duration = chrono::Duration::days(1);
    let system = state.gate().system();
    let now = state.gate().clock().now();
    let idle_cutoff = state.auth().idle_cutoff(now);
    match system
        .purge_sessions(now, idle_cutoff, now - KEEP_ENDED)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "expired sessions deleted"),
        Err(e) => tracing::warn!(error = %e, "cannot delete expired sessions"),
    }
    match system.count_live_sessions(now, idle_cutoff).await {
        Ok(n) => metrics::gauge!("auth_active_sessions").set(n as f64),
        Err(e) => tracing::warn!(error = %e, "cannot count active sessions"),
    }
}

/// Shared mode: sends outbox chunks to PostgreSQL once it is reachable, and keeps the
/// outbox metrics current.
async fn replay_outbox(state: AppState) {
    let system = state.gate().system();
    if system.mode() != coditect_store::StorageMode::Shared {
        return;
    }
    loop {
        let pause = match system.replay_outbox(1000).await {
            Ok(0) => Duration::from_millis(500),
            Ok(n) => {
                tracing::info!(chunks = n, "outbox replayed to postgres");
                Duration::ZERO
            }
            Err(e) => {
                tracing::debug!(error = %e, "outbox replay waits for postgres");
                Duration::from_secs(1)
            }
        };
        if let Ok(status) = system.outbox_status().await {
            metrics::gauge!("log_outbox_depth").set(status.depth as f64);
            metrics::gauge!("log_outbox_set_aside").set(status.set_aside as f64);
            let lag = status.oldest.map_or(0.0, |o| {
                (chrono::Utc::now() - o).num_milliseconds().max(0) as f64 / 1e3
            });
            metrics::gauge!("log_replay_lag_seconds").set(lag);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Deletes log entries older than each tenant's retention, a few chunks per write so
/// ingestion never waits long behind it, and forgets batch receipts after 24 hours.
async fn enforce_retention(state: AppState) {
    const EVERY: Duration = Duration::from_secs(600);
    const CHUNKS_PER_STEP: u32 = 32;
    loop {
        tokio::time::sleep(EVERY.min(Duration::from_secs(30))).await;
        let system = state.gate().system();
        if !system.is_ready() {
            continue;
        }
        retention_pass(&state, CHUNKS_PER_STEP).await;
        tokio::time::sleep(EVERY).await;
    }
}

/// One pass of the retention job (public so tests can run it without waiting).
pub async fn retention_pass(state: &AppState, chunks_per_step: u32) {
    let system = state.gate().system();
    let now = state.gate().clock().now();
    let tenants = match system.logs().log_tenants().await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "retention cannot list tenants");
            return;
        }
    };
    for tenant in tenants {
        let keep = state.config().logs.retention_for(tenant);
        let cutoff = now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        let mut deleted = 0;
        loop {
            match system
                .logs()
                .delete_before(tenant, cutoff.timestamp_micros(), chunks_per_step)
                .await
            {
                Ok(0) => break,
                Ok(n) => {
                    deleted += n;
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(%tenant, error = %e, "retention step failed");
                    break;
                }
            }
        }
        if deleted > 0 {
            metrics::counter!("log_retention_deleted_chunks_total").increment(deleted);
            tracing::info!(%tenant, chunks = deleted, "expired log chunks deleted");
        }
    }
    if let Err(e) = system
        .logs()
        .forget_batches(now - chrono::Duration::hours(24))
        .await
    {
        tracing::warn!(error = %e, "cannot forget old batch receipts");
    }
}

/// Creates the first platform admin once the store is ready, if configured and needed.
/// Creates the first admin once the stores are ready (retrying while the store refuses),
/// then lets `/ready` answer 200.
async fn bootstrap_when_ready(state: AppState) {
    let mut wait = Duration::from_millis(100);
    loop {
        // Waiting for the stores is cheap and ends as soon as they are there.
        while !state.gate().system().is_ready() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let config = state.config();
        let result = crate::auth::bootstrap::run(
            &state.gate().system(),
            &state.auth().passwords,
            state.gate().clock(),
            config.bootstrap.as_ref(),
            &config.bootstrap_tenant,
        )
        .await;
        match result {
            Ok(()) => {
                state.set_bootstrapped();
                return;
            }
            Err(e) => tracing::error!(error = %e, "cannot create the first admin; will retry"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Creates the data directory, proves it writable and takes its lock, so two hubs never
/// share one embedded store.
fn prepare_data_dir(config: &Config) -> Result<File, ConfigError> {
    let dir = &config.data_dir;
    let shown = || format!("{:?}", dir.display().to_string());
    let invalid = |why: String| config.invalid("data_dir", shown(), why);
    coditect_store::files::create_private_dir(dir)
        .map_err(|e| invalid(format!("a directory that can be created ({e})")))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    coditect_store::files::create_private_file(&probe)
        .and_then(|mut f| f.write_all(b"ok").and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| invalid(format!("a writable directory ({e})")))?;
    let mut lock = coditect_store::files::open_private_file(&dir.join("hub.lock"))
        .map_err(|e| invalid(format!("a writable directory ({e})")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(invalid(
                "a directory no other running coditect-hub uses".into(),
            ));
        }
        Err(TryLockError::Error(e)) => return Err(invalid(format!("a lockable directory ({e})"))),
    }
    let _ = lock.set_len(0);
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(lock)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!(signal = "SIGINT", "signal received"),
        () = terminate => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}
