//! The IPC server: a Unix socket (mode 0600) and, when enabled, a TCP listener whose first
//! frame must be a `Hello` with the configured token. Frames are
//! [`coditect_proto::ipc`]'s; every request gets one reply carrying its id, in order, and
//! a client may pipeline. Nothing a client sends can stop the daemon: an undecodable frame
//! gets an `Error` and the connection goes on, an oversized one gets an `Error` and a
//! close, a client that vanishes mid-frame costs its buffer.

use crate::conns::Slot;
use crate::store::{MonitorStore, NewEntry};
use crate::sync::SharedSyncState;
use crate::watch::Watcher;
use coditect_proto::ErrorCode;
use coditect_proto::ipc::{
    AckStatus, ComponentStatus, EncodeError, Frame, Message, Payload, encode_frame, next_frame,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use uuid::Uuid;

/// Most entries a `QueryLogs` may ask for.
pub const MAX_QUERY: u32 = 10_000;

/// What every connection shares.
pub struct Ipc {
    pub store: MonitorStore,
    pub watcher: Arc<Watcher>,
    /// `None` when no hub is configured.
    pub sync: Option<SharedSyncState>,
    pub started: Instant,
    /// The TCP token; connections over TCP must present it first, within
    /// `tcp_auth_timeout`.
    pub tcp_token: Option<String>,
    pub tcp_auth_timeout: std::time::Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: std::time::Duration,
}

impl Ipc {
    /// The health of each part, for `GetStatus` and `/health`.
    pub async fn components(&self) -> Vec<ComponentStatus> {
        let store = self.store.probe().await;
        let mut out = vec![
            ComponentStatus {
                name: "store".into(),
                status: if store.healthy {
                    "healthy"
                } else {
                    "unhealthy"
                }
                .into(),
                detail: store.message,
            },
            ComponentStatus {
                name: "ipc".into(),
                status: "healthy".into(),
                detail: None,
            },
            self.watcher.status(),
        ];
        out.push(match &self.sync {
            None => ComponentStatus {
                name: "sync".into(),
                status: "disabled".into(),
                detail: Some("no hub configured".into()),
            },
            Some(state) => {
                let s = state.lock().map(|s| s.clone()).unwrap_or_default();
                let (pending, oldest) = self.store.sync_backlog().await.unwrap_or_default();
                let lag = oldest
                    .map(|t| (chrono::Utc::now().timestamp_micros() - t).max(0) as f64 / 1e6)
                    .unwrap_or(0.0);
                let mut detail = format!(
                    "{pending} entries pending, lag {lag:.1}s, {} rejected by the hub",
                    s.rejected
                );
                if let Some(e) = &s.last_error {
                    detail.push_str(&format!(", last error: {e}"));
                }
                ComponentStatus {
                    name: "sync".into(),
                    status: if s.last_error.is_some() {
                        "degraded"
                    } else {
                        "healthy"
                    }
                    .into(),
                    detail: Some(detail),
                }
            }
        });
        out
    }
}

/// Binds the Unix socket at `path`: refuses a directory others could swap the socket in
/// (see [`prepare_trusted_dir`](coditect_store::files::prepare_trusted_dir): ours or root's,
/// and shared only if sticky), refuses when a live daemon answers there, replaces a stale
/// socket file of ours, and never exposes the socket with wider permissions than 0600 (it
/// is bound under a temporary name, restricted, then renamed into place). Returns the
/// listener and the socket's canonical path.
pub async fn bind_unix(path: &Path) -> anyhow::Result<(UnixListener, PathBuf)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let name = path
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("{} names no socket", path.display()))?;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let dir = coditect_store::files::prepare_trusted_dir(&dir, true)
        .map_err(|e| anyhow::anyhow!("refusing to put the socket in {}: {e}", dir.display()))?;
    let path = dir.join(name);
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket: refusing to replace it",
                path.display()
            );
        }
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            anyhow::bail!(
                "{} belongs to another user (uid {}): refusing to use it",
                path.display(),
                meta.uid()
            );
        }
        match UnixStream::connect(&path).await {
            Ok(_) => anyhow::bail!(
                "another codi-monitor is already running on {} (stop it, or use --socket)",
                path.display()
            ),
            // Nobody listens: a daemon that died left it.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(e) => anyhow::bail!(
                "cannot tell whether a daemon owns {} ({e}): not replacing it",
                path.display()
            ),
        }
        std::fs::remove_file(&path)?;
        tracing::info!(path = %path.display(), "replaced a stale socket");
    }
    // Bound inside a directory of our own (0700) and only then moved into place: until it
    // is 0600 nobody else can reach it, whatever the umask.
    let staging = dir.join(format!(".codi-monitor-{}.bind", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    }
    let bound = (|| {
        let at = staging.join("s");
        let listener = UnixListener::bind(&at)?;
        std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&at, &path)?;
        anyhow::Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    Ok((bound?, path))
}

/// Serves one connection until the client leaves, it breaks the protocol beyond repair,
/// or `stop` turns true (then after the frames already read are answered).
pub async fn serve<S>(
    ipc: Arc<Ipc>,
    mut stream: S,
    slot: Slot,
    tcp: bool,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut authenticated = !tcp;
    let auth_deadline = tokio::time::Instant::now() + ipc.tcp_auth_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(8 * 1024);
    loop {
        let mut close = false;
        // Frames are taken from `start` on and the buffer is compacted once per read, so
        // many small frames cost linear time.
        let mut start = 0;
        let mut answered = 0u32;
        // Consecutive single entries already read are stored in one transaction and
        // acknowledged together, in order: a pipelining client gets batch throughput.
        let mut run: Vec<(Uuid, coditect_proto::ipc::LogEntry)> = Vec::new();
        loop {
            let rest = &buf[start..];
            if !authenticated && declared_len(rest).is_some_and(|n| n > MAX_HELLO) {
                push(
                    &mut out,
                    Message::reply(
                        Uuid::nil(),
                        error(
                            ErrorCode::AuthRequired,
                            "the first frame over TCP must be a small Hello with the token".into(),
                        ),
                    ),
                );
                close = true;
                break;
            }
            match next_frame(rest) {
                Ok(None) => break,
                Err(too_large) => {
                    // Earlier requests are answered first: replies stay in request order.
                    if !run.is_empty() {
                        store_run(&ipc, std::mem::take(&mut run), &mut out).await;
                    }
                    push(
                        &mut out,
                        Message::reply(
                            Uuid::nil(),
                            error(ErrorCode::PayloadTooLarge, too_large.to_string()),
                        ),
                    );
                    close = true;
                    break;
                }
                Ok(Some((frame, used))) => {
                    start += used;
                    let frame = match frame {
                        Frame::Message(Message {
                            id,
                            payload: Payload::LogEntry(e),
                            ..
                        }) if authenticated => {
                            run.push((id, e));
                            if run.len() >= MAX_RUN {
                                store_run(&ipc, std::mem::take(&mut run), &mut out).await;
                            }
                            continue;
                        }
                        other => other,
                    };
                    if !run.is_empty() {
                        store_run(&ipc, std::mem::take(&mut run), &mut out).await;
                    }
                    let kind = match &frame {
                        Frame::Message(m) => m.payload.kind(),
                        Frame::Undecodable { .. } => "undecodable",
                    };
                    let started = Instant::now();
                    let was = authenticated;
                    let (reply, fatal) = answer(&ipc, frame, &mut authenticated).await;
                    if authenticated && !was {
                        slot.authenticated();
                    }
                    metrics::histogram!("codi_ipc_duration_seconds", "type" => kind)
                        .record(started.elapsed().as_secs_f64());
                    push(&mut out, reply);
                    if fatal {
                        close = true;
                        break;
                    }
                    answered += 1;
                    if answered.is_multiple_of(64) {
                        // A client with a buffer full of tiny frames shares the runtime.
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
        if !run.is_empty() {
            store_run(&ipc, std::mem::take(&mut run), &mut out).await;
        }
        buf.drain(..start);
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close || *stop.borrow() {
            let _ = stream.shutdown().await;
            return;
        }
        slot.idle();
        buf.reserve(8 * 1024);
        let auth_wait = async {
            if authenticated {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep_until(auth_deadline).await
            }
        };
        tokio::select! {
            // A request already waiting is read before any reason to close is looked at.
            biased;
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => slot.busy(),
            },
            _ = stop.changed() => {}
            // Another client needed the place, or nothing came for too long: between
            // requests, so nothing is left half answered.
            _ = slot.evicted() => {
                let _ = stream.shutdown().await;
                return;
            }
            _ = tokio::time::sleep(ipc.idle_timeout) => {
                let _ = stream.shutdown().await;
                return;
            }
            _ = auth_wait => {
                // A TCP client that never authenticates holds no slot for long.
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// The answer to a client turned away because every connection is mid-request.
pub fn busy_frame() -> Vec<u8> {
    let mut out = Vec::new();
    push(
        &mut out,
        Message::reply(
            Uuid::nil(),
            error(
                ErrorCode::Unavailable,
                "every connection of the monitor is busy (monitor.max_connections): try again"
                    .into(),
            ),
        ),
    );
    out
}

/// Most single entries stored in one transaction for one connection.
const MAX_RUN: usize = 1024;

/// Stores a run of `LogEntry` requests in one transaction and answers each, in order:
/// `Accepted` once durable, `Rejected` for an invalid one (the others still go), or the
/// store's error for all when the write failed.
async fn store_run(ipc: &Ipc, run: Vec<(Uuid, coditect_proto::ipc::LogEntry)>, out: &mut Vec<u8>) {
    for (id, payload) in answer_run(ipc, run).await {
        push(out, Message::reply(id, payload));
    }
}

/// The answers to a run of `LogEntry` requests (see [`store_run`]), in order.
async fn answer_run(
    ipc: &Ipc,
    run: Vec<(Uuid, coditect_proto::ipc::LogEntry)>,
) -> Vec<(Uuid, Payload)> {
    let started = Instant::now();
    let mut verdicts: Vec<(Uuid, Result<(), String>)> = Vec::with_capacity(run.len());
    let mut entries = Vec::with_capacity(run.len());
    for (id, e) in run {
        match NewEntry::parse(e) {
            Ok(entry) => {
                entries.push(entry);
                verdicts.push((id, Ok(())));
            }
            Err(reason) => verdicts.push((id, Err(reason))),
        }
    }
    let stored = match entries.len() {
        0 => Ok(0),
        _ => ipc.store.append(entries).await,
    };
    if let Ok(n) = &stored {
        metrics::counter!("codi_logs_total", "source" => "ipc").increment(u64::from(*n));
    }
    // Each request of the run waited for the whole run.
    let waited = started.elapsed().as_secs_f64();
    let failure = stored.err().map(unavailable);
    verdicts
        .into_iter()
        .map(|(id, verdict)| {
            let payload = match (verdict, &failure) {
                (Err(reason), _) => ack(id, AckStatus::Rejected(reason), 0),
                (Ok(()), None) => ack(id, AckStatus::Accepted, 1),
                (Ok(()), Some(error)) => error.clone(),
            };
            metrics::histogram!("codi_ipc_duration_seconds", "type" => "log_entry").record(waited);
            (id, payload)
        })
        .collect()
}

/// The largest first frame an unauthenticated TCP client may send.
const MAX_HELLO: usize = 4096;

/// The length a frame's prefix announces, once the prefix is there.
fn declared_len(buf: &[u8]) -> Option<usize> {
    buf.first_chunk::<4>()
        .map(|p| u32::from_le_bytes(*p) as usize)
}

/// Frames `reply`; one too large for a frame (a big query) is cut down until it fits.
fn push(out: &mut Vec<u8>, mut reply: Message) {
    loop {
        match encode_frame(&reply, out) {
            Ok(()) => return,
            Err(EncodeError::TooLarge(_)) => {
                if let Payload::LogResults { entries, .. } = &mut reply.payload
                    && entries.len() > 1
                {
                    entries.truncate(entries.len() / 2);
                    continue;
                }
                reply.payload = error(
                    ErrorCode::PayloadTooLarge,
                    "the reply is over the frame limit".into(),
                );
            }
            Err(EncodeError::Serialize(e)) => {
                tracing::error!(error = %e, "cannot encode a reply");
                reply.payload = error(ErrorCode::InternalError, "cannot encode the reply".into());
            }
        }
    }
}

fn error(code: ErrorCode, message: String) -> Payload {
    Payload::Error {
        code,
        message,
        details: None,
    }
}

fn ack(request_id: Uuid, status: AckStatus, stored: u32) -> Payload {
    Payload::Acknowledgment {
        request_id,
        status,
        stored,
    }
}

fn unavailable(e: coditect_store::StoreError) -> Payload {
    tracing::error!(error = %e, "store operation failed");
    let message = match e {
        coditect_store::StoreError::Full(_) => {
            "the local store is full and holds no synced entries to make room; nothing was stored"
        }
        _ => "the local store cannot take writes right now; nothing was stored",
    };
    error(ErrorCode::Unavailable, message.into())
}

/// The reply to one frame, and whether the connection must close after it.
async fn answer(ipc: &Ipc, frame: Frame, authenticated: &mut bool) -> (Message, bool) {
    let m = match frame {
        Frame::Message(m) => m,
        Frame::Undecodable { id, reason } => {
            let reply = error(
                ErrorCode::BadRequest,
                format!("undecodable message: {reason}"),
            );
            return (Message::reply(id.unwrap_or_else(Uuid::nil), reply), false);
        }
    };
    let id = m.id;
    if !*authenticated {
        return match m.payload {
            Payload::Hello { token }
                if ipc
                    .tcp_token
                    .as_deref()
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) =>
            {
                *authenticated = true;
                (Message::reply(id, ack(id, AckStatus::Accepted, 0)), false)
            }
            _ => (
                Message::reply(
                    id,
                    error(
                        ErrorCode::AuthRequired,
                        "the first frame over TCP must be Hello with the monitor's token".into(),
                    ),
                ),
                true,
            ),
        };
    }
    let payload = match m.payload {
        Payload::Hello { .. } => ack(id, AckStatus::Accepted, 0),
        // `serve` stores single entries in runs; one reaching here is a run of one.
        Payload::LogEntry(e) => answer_run(ipc, vec![(id, e)]).await.pop().map_or_else(
            || error(ErrorCode::InternalError, "no answer for the entry".into()),
            |(_, payload)| payload,
        ),
        Payload::LogBatch { entries } => {
            let parsed: Result<Vec<NewEntry>, String> = entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| NewEntry::parse(e).map_err(|r| format!("entry {i}: {r}")))
                .collect();
            match parsed {
                Err(reason) => ack(id, AckStatus::Rejected(reason), 0),
                Ok(entries) if entries.is_empty() => ack(id, AckStatus::Accepted, 0),
                Ok(entries) => match ipc.store.append(entries).await {
                    Ok(n) => {
                        metrics::counter!("codi_logs_total", "source" => "ipc").increment(n.into());
                        ack(id, AckStatus::Accepted, n)
                    }
                    Err(e) => unavailable(e),
                },
            }
        }
        Payload::QueryLogs { filter, limit } => {
            if limit == 0 || limit > MAX_QUERY {
                error(
                    ErrorCode::BadRequest,
                    format!("limit must be between 1 and {MAX_QUERY}"),
                )
            } else {
                match ipc.store.query(filter, limit).await {
                    Ok((entries, total_count)) => Payload::LogResults {
                        entries,
                        total_count,
                    },
                    Err(e) => unavailable(e),
                }
            }
        }
        Payload::SessionStart {
            session_id,
            identity,
            agent_type,
        } => {
            if session_id.trim().is_empty() || identity.trim().is_empty() {
                error(
                    ErrorCode::BadRequest,
                    "session_id and identity must not be empty".into(),
                )
            } else {
                match ipc
                    .store
                    .session_start(session_id, identity, agent_type)
                    .await
                {
                    Ok(()) => ack(id, AckStatus::Accepted, 0),
                    Err(e) => unavailable(e),
                }
            }
        }
        Payload::SessionEnd { session_id } => match ipc.store.session_end(session_id).await {
            Ok(true) => ack(id, AckStatus::Accepted, 0),
            Ok(false) => error(ErrorCode::NotFound, "no such open session".into()),
            Err(e) => unavailable(e),
        },
        Payload::StartMonitoring {
            path,
            recursive,
            patterns,
            session_id,
            mode,
        } => {
            let w = coditect_proto::ipc::WatchedPath {
                path,
                recursive,
                patterns,
                mode,
                session_id,
            };
            start_monitoring(ipc, id, w).await
        }
        Payload::StopMonitoring { path } => {
            let path = Watcher::canonical(&path);
            match ipc.store.watch_remove(path.clone()).await {
                Ok(true) => {
                    ipc.watcher.remove(path);
                    ack(id, AckStatus::Accepted, 0)
                }
                Ok(false) => error(ErrorCode::NotFound, "that path is not watched".into()),
                Err(e) => unavailable(e),
            }
        }
        Payload::ListMonitoring => match ipc.store.watches().await {
            Ok(paths) => Payload::Monitoring { paths },
            Err(e) => unavailable(e),
        },
        Payload::GetStatus => Payload::Status {
            components: ipc.components().await,
            uptime_ms: ipc.started.elapsed().as_millis() as u64,
            version: env!("CARGO_PKG_VERSION").into(),
        },
        Payload::Acknowledgment { .. }
        | Payload::LogResults { .. }
        | Payload::Monitoring { .. }
        | Payload::Error { .. }
        | Payload::Status { .. } => error(
            ErrorCode::BadRequest,
            "that is a reply, not a request".into(),
        ),
    };
    (Message::reply(id, payload), false)
}

/// Watches first (so a path that cannot be watched is refused), then persists.
async fn start_monitoring(ipc: &Ipc, id: Uuid, w: coditect_proto::ipc::WatchedPath) -> Payload {
    if !w.path.is_absolute() {
        return error(ErrorCode::BadRequest, "the path must be absolute".into());
    }
    if let Some(s) = &w.session_id {
        match ipc.store.session(s.clone()).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return error(
                    ErrorCode::NotFound,
                    format!("no open session {s:?}: start it first"),
                );
            }
            Err(e) => return unavailable(e),
        }
    }
    let path = match ipc.watcher.add(w.clone(), false).await {
        Ok(canonical) => canonical,
        Err(reason) => return error(ErrorCode::BadRequest, reason),
    };
    let w = coditect_proto::ipc::WatchedPath {
        path: path.clone(),
        ..w
    };
    match ipc.store.watch_add(w).await {
        Ok(()) => ack(id, AckStatus::Accepted, 0),
        Err(e) => {
            ipc.watcher.remove(path);
            unavailable(e)
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
