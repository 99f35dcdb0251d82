//! Start-up, accept loops and shutdown: SIGTERM/SIGINT (or the `stop` future) stops the
//! accept loops, lets every connection answer what it has read, closes the store (pending
//! writes commit) and removes the socket file.

use crate::config::Config;
use crate::export::{ExportConfig, Exporter};
use crate::http;
use crate::ipc::{self, Ipc};
use crate::salvage;
use crate::store::{MonitorStore, NewEntry};
use crate::sync::{SharedSyncState, SyncSettings, Syncer};
use crate::watch::{WatchConfig, Watcher};
use coditect_proto::ipc::WatchedPath;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A started daemon: its listeners are bound, its store open.
pub struct Daemon {
    config: Config,
    ipc: Arc<Ipc>,
    unix: UnixListener,
    tcp: Option<TcpListener>,
    http: Option<TcpListener>,
    syncer: Option<Syncer>,
    socket: PathBuf,
}

impl Daemon {
    /// Opens the store and binds the listeners; fails (and leaves nothing behind) when
    /// another daemon owns the socket.
    pub async fn start(mut config: Config) -> anyhow::Result<Daemon> {
        let (unix, socket) = ipc::bind_unix(&config.monitor.unix_socket_path).await?;
        config.monitor.unix_socket_path = socket.clone();
        // Everything the daemon writes is named by its canonical path from here on, in a
        // directory nobody else can change (and so never watched under another name).
        let secured = crate::store::secure_path(&config.storage.sqlite_path)
            .map_err(anyhow::Error::from)
            .and_then(|db| Ok((db, crate::export::secure_dir(&config.storage.export_dir)?)));
        match secured {
            Ok((db, exports)) => {
                config.storage.sqlite_path = db;
                config.storage.export_dir = exports;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        }
        let opened = async {
            let (store, salvaged) =
                salvage::open(&config.storage.sqlite_path, config.synchronous()?).await?;
            if let Some(r) = salvaged {
                report_salvage(&store, &r).await;
            }
            if let Some(mb) = config.storage.max_size_mb {
                store.set_max_size(mb.saturating_mul(1024 * 1024)).await?;
            }
            let tcp = match config.monitor.tcp_enabled {
                true => Some(TcpListener::bind(config.monitor.tcp_listen).await?),
                false => None,
            };
            anyhow::Ok((store, tcp))
        }
        .await;
        let (store, tcp) = match opened {
            Ok(v) => v,
            Err(e) => {
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        };
        let watcher = match start_watching(&config, &store).await {
            Ok(w) => w,
            Err(e) => {
                store.close().await;
                let _ = std::fs::remove_file(&socket);
                return Err(e);
            }
        };
        let (syncer, sync_state) = match SyncSettings::from_config(&config.server_hub) {
            None => (None, None),
            Some(settings) => {
                let state = SharedSyncState::default();
                match Syncer::new(settings, store.clone(), state.clone()) {
                    Ok(s) => (Some(s), Some(state)),
                    Err(e) => {
                        watcher.stop();
                        store.close().await;
                        let _ = std::fs::remove_file(&socket);
                        return Err(e);
                    }
                }
            }
        };
        // Health and metrics are an aid: a port already taken is reported, not fatal (two
        // users' daemons on one machine must not stop each other).
        let http = match config.monitor.http_listen {
            None => None,
            Some(addr) => match TcpListener::bind(addr).await {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot serve /health and /metrics");
                    None
                }
            },
        };
        tracing::info!(
            socket = %socket.display(),
            http = ?http.as_ref().and_then(|t| t.local_addr().ok()),
            hub = config.server_hub.url.as_deref().unwrap_or("none"),
            db = %config.storage.sqlite_path.display(),
            tcp = ?tcp.as_ref().and_then(|t| t.local_addr().ok()),
            "codi-monitor started"
        );
        Ok(Daemon {
            ipc: Arc::new(Ipc {
                store,
                watcher,
                sync: sync_state,
                started: Instant::now(),
                tcp_token: config
                    .monitor
                    .tcp_token
                    .as_ref()
                    .map(|t| t.expose().to_string()),
                tcp_auth_timeout: config.monitor.tcp_auth_timeout,
                idle_timeout: config.monitor.idle_timeout,
            }),
            config,
            unix,
            tcp,
            http,
            syncer,
            socket,
        })
    }

    /// The daemon's store (a handle; the daemon keeps its own).
    pub fn store(&self) -> MonitorStore {
        self.ipc.store.clone()
    }

    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp.as_ref().and_then(|t| t.local_addr().ok())
    }

    /// Where `/health` and `/metrics` are served, if anywhere.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(|t| t.local_addr().ok())
    }

    /// Serves until `stop` resolves, then shuts down cleanly.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = http::metrics_handle();
        let upkeep = tokio::spawn(http::upkeep(handle));
        let http_task = self.http.take().map(|listener| {
            let mut rx = stop_rx.clone();
            let app = http::router(self.ipc.clone());
            tokio::spawn(async move {
                let stopped = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
                {
                    tracing::warn!(error = %e, "the health endpoint stopped");
                }
            })
        });
        let retention_task = tokio::spawn(retention(
            self.ipc.store.clone(),
            self.config.storage.retention_days,
            self.ipc.sync.is_some(),
            stop_rx.clone(),
        ));
        let sync_task = self
            .syncer
            .take()
            .map(|s| tokio::spawn(s.run(stop_rx.clone())));
        let conns = crate::conns::Conns::new(
            self.config.monitor.max_connections,
            self.config.monitor.max_unauthenticated,
        );
        let mut tasks = JoinSet::new();
        tokio::pin!(stop);
        loop {
            // Never waiting for a slot: a new client takes an idle one's place (see
            // `conns`), so neither listener can starve the other.
            tokio::select! {
                accepted = self.unix.accept() => match accepted {
                    Ok((stream, _)) => admit(&mut tasks, &conns, &self.ipc, stream, false, &stop_rx),
                    Err(e) => accept_failed(e).await,
                },
                accepted = accept_tcp(&self.tcp) => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        admit(&mut tasks, &conns, &self.ipc, stream, true, &stop_rx);
                    }
                    Err(e) => accept_failed(e).await,
                },
                _ = &mut stop => break,
            }
            while tasks.try_join_next().is_some() {}
        }
        let mut conns = tasks;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(self.config.shutdown_timeout(), async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections still open at the shutdown timeout");
            conns.abort_all();
        }
        if let Some(t) = sync_task {
            // An attempt in flight finishes (its batch_id makes a repeat harmless anyway).
            let _ = tokio::time::timeout(self.config.shutdown_timeout(), t).await;
        }
        if let Some(t) = http_task {
            t.abort();
        }
        upkeep.abort();
        retention_task.abort();
        let watcher = self.ipc.watcher.clone();
        let _ = tokio::task::spawn_blocking(move || watcher.stop()).await;
        self.ipc.store.close().await;
        let _ = std::fs::remove_file(&self.socket);
        tracing::info!("stopped");
    }
}

/// Leaves a trace of a salvage in the store itself (and so on the hub).
async fn report_salvage(store: &MonitorStore, r: &salvage::SalvageReport) {
    let entry = NewEntry {
        id: uuid::Uuid::now_v7(),
        ts: chrono::Utc::now().timestamp_micros(),
        level: coditect_proto::Level::Error,
        component: "codi-monitor".into(),
        message: format!(
            "the store was corrupt and was moved aside; salvaged {} entries, {} sessions, {} watches",
            r.entries, r.sessions, r.watches
        ),
        metadata: Some(
            serde_json::json!({
                "kind": "salvage",
                "moved_to": r.moved_to.display().to_string(),
                "reason": r.reason,
                "entries": r.entries,
                "sessions": r.sessions,
                "watches": r.watches,
            })
            .to_string(),
        ),
        session_id: None,
    };
    if let Err(e) = store.append(vec![entry]).await {
        tracing::error!(error = %e, "cannot record the salvage");
    }
}

/// Deletes what is past `retention_days` now and every hour: only entries settled with
/// the hub when one is configured, else every old entry.
async fn retention(
    store: MonitorStore,
    days: u32,
    keep_unsynced: bool,
    mut stop: watch::Receiver<bool>,
) {
    if days == 0 {
        return;
    }
    loop {
        let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
        match store
            .apply_retention(cutoff.timestamp_micros(), keep_unsynced)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, days, "retention applied"),
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The exporter and the watcher, with every persisted watch resumed (a watch whose path is
/// gone is reported and kept: it resumes when the daemon next starts and the path exists).
async fn start_watching(config: &Config, store: &MonitorStore) -> anyhow::Result<Arc<Watcher>> {
    let rt = tokio::runtime::Handle::current();
    let exporter = Exporter::start(
        ExportConfig {
            patterns: config.monitor.export_patterns.clone(),
            dir: config.storage.export_dir.clone(),
            move_originals: config.monitor.export_move,
            max_bytes: config.monitor.export_max_mb.saturating_mul(1 << 20),
            min_free_bytes: config.monitor.export_min_free_mb.saturating_mul(1 << 20),
        },
        store.clone(),
        rt.clone(),
    )?;
    let db = &config.storage.sqlite_path;
    let mut ignore = vec![config.storage.export_dir.clone()];
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        ignore.push(PathBuf::from(p));
    }
    let watcher = Arc::new(Watcher::start(
        WatchConfig {
            debounce: config.monitor.debounce,
            scan_interval: config.monitor.scan_interval,
            event_queue: config.monitor.event_queue,
            ignore,
            max_watches: config.monitor.max_watches,
            max_patterns: config.monitor.max_patterns,
            max_files: config.monitor.max_watched_files,
        },
        store.clone(),
        exporter,
        rt,
    )?);
    for w in store.watches().await? {
        let path = w.path.clone();
        match watcher.add(w.clone(), true).await {
            // Kept under an older version's spelling of the path: from now on under its
            // canonical one.
            Ok(canonical) if canonical != path => {
                let renamed = WatchedPath {
                    path: canonical.clone(),
                    ..w
                };
                if let Err(e) = store.watch_add(renamed).await {
                    tracing::warn!(path = %canonical.display(), error = %e, "cannot record a watch's canonical path");
                } else {
                    let _ = store.watch_remove(path).await;
                }
            }
            Ok(_) => {}
            Err(reason) => {
                watcher.stats.failed_watches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), reason, "cannot resume a watch");
            }
        }
    }
    Ok(watcher)
}

/// Serves a new connection in its place, or, when every place is taken by a connection in
/// the middle of a request, tells it so and closes it.
fn admit<S>(
    tasks: &mut JoinSet<()>,
    conns: &Arc<crate::conns::Conns>,
    ipc: &Arc<Ipc>,
    mut stream: S,
    tcp: bool,
    stop: &watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match conns.admit(!tcp) {
        Some(slot) => {
            let (ipc, rx) = (ipc.clone(), stop.clone());
            tasks.spawn(async move { ipc::serve(ipc, stream, slot, tcp, rx).await });
        }
        None => {
            tasks.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
                    let _ = stream.write_all(&ipc::busy_frame()).await;
                    let _ = stream.shutdown().await;
                })
                .await;
            });
        }
    }
}

/// Out of file descriptors (or another passing failure): say so, and let a moment pass
/// rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

async fn accept_tcp(
    tcp: &Option<TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match tcp {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
