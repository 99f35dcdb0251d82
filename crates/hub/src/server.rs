//! The hub's lifecycle: prepare the data directory, open the stores, bind, serve, and on
//! shutdown drain in-flight requests, then close the stores.

use crate::config::{Config, ConfigError};
use crate::state::AppState;
use crate::telemetry;
use axum::Router;
use coditect_store::{Store, StoreError};
use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

impl StartError {
    /// 2 for anything the operator must fix in the configuration, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Store(_) | StartError::Serve(_) => 1,
        }
    }
}

/// A hub that is bound and has its stores open, ready to [`Hub::serve`].
pub struct Hub {
    state: AppState,
    listener: TcpListener,
    extra: Router<AppState>,
    data_dir_lock: File,
}

impl Hub {
    pub async fn start(config: Config) -> Result<Hub, StartError> {
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
        let state = AppState::new(config, store, telemetry::metrics::handle());
        Ok(Hub {
            state,
            listener,
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
            extra,
            data_dir_lock,
        } = self;
        let app = crate::http::router(state.clone(), extra);
        let upkeep: JoinHandle<()> = telemetry::metrics::spawn_upkeep(state.metrics().clone());

        let (fired, on_fired) = tokio::sync::oneshot::channel::<()>();
        let draining = state.clone();
        let signal = async move {
            shutdown.await;
            draining.start_draining();
            tracing::info!("shutdown requested, draining in-flight requests");
            let _ = fired.send(());
        };
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(signal);
        tracing::info!(%addr, "hub listening");
        let mut server = tokio::spawn(async move { server.await });

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
        upkeep.abort();
        state.store().close().await;
        drop(data_dir_lock);
        tracing::info!("hub stopped");
        outcome
    }
}

/// Creates the data directory, proves it writable and takes its lock, so two hubs never
/// share one embedded store.
fn prepare_data_dir(config: &Config) -> Result<File, ConfigError> {
    let dir = &config.data_dir;
    let shown = || format!("{:?}", dir.display().to_string());
    let invalid = |why: String| config.invalid("data_dir", shown(), why);
    std::fs::create_dir_all(dir)
        .map_err(|e| invalid(format!("a directory that can be created ({e})")))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    File::create(&probe)
        .and_then(|mut f| f.write_all(b"ok").and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| invalid(format!("a writable directory ({e})")))?;
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("hub.lock"))
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
