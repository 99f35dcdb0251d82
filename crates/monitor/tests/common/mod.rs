//! The harness: a daemon on a fresh directory (socket, database), a raw-frame client.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a part; a panic fails a test

use coditect_monitor::config::Config;
use coditect_monitor::daemon::Daemon;
use coditect_proto::ipc::{
    AckStatus, Frame, LogEntry, LogFilter, Message, Payload, StoredLog, WatchMode, encode_frame,
    next_frame,
};
use coditect_proto::{ErrorCode, Level};
use std::path::Path;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub db: PathBuf,
    pub tcp: Option<std::net::SocketAddr>,
    pub http: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

pub const TOKEN: &str = "a-long-enough-test-token";

pub async fn spawn_daemon(tcp: bool) -> TestDaemon {
    let dir = tempfile::tempdir().unwrap();
    spawn_in(dir, tcp).await
}

pub async fn spawn_in(dir: tempfile::TempDir, tcp: bool) -> TestDaemon {
    spawn_with(dir, tcp, |_| {}).await
}

/// A daemon on `dir` (socket under `run/`, database under `data/`, exports under
/// `exports/`, no HTTP port) with `adjust` applied to its configuration.
pub async fn spawn_with(
    dir: tempfile::TempDir,
    tcp: bool,
    adjust: impl FnOnce(&mut Config),
) -> TestDaemon {
    try_spawn_with(dir, tcp, adjust).await.unwrap()
}

/// [`spawn_with`], or why the daemon refused to start.
pub async fn try_spawn_with(
    dir: tempfile::TempDir,
    tcp: bool,
    adjust: impl FnOnce(&mut Config),
) -> anyhow::Result<TestDaemon> {
    let mut config = Config::default();
    config.monitor.unix_socket_path = dir.path().join("run").join("m.sock");
    config.storage.sqlite_path = dir.path().join("data").join("m.db");
    config.storage.export_dir = dir.path().join("exports");
    config.monitor.http_listen = None;
    if tcp {
        config.monitor.tcp_enabled = true;
        config.monitor.tcp_listen = "127.0.0.1:0".parse().unwrap();
        config.monitor.tcp_token = Some(coditect_monitor::config::Secret::new(TOKEN));
    }
    adjust(&mut config);
    let (socket, db) = (
        config.monitor.unix_socket_path.clone(),
        config.storage.sqlite_path.clone(),
    );
    let daemon = Daemon::start(config).await?;
    let tcp = daemon.tcp_addr();
    let http = daemon.http_addr();
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(daemon.run(async {
        let _ = rx.await;
    }));
    Ok(TestDaemon {
        dir,
        socket,
        db,
        tcp,
        http,
        stop: Some(tx),
        done,
    })
}

impl TestDaemon {
    pub async fn client(&self) -> Client<UnixStream> {
        Client::new(UnixStream::connect(&self.socket).await.unwrap())
    }

    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.done).await.unwrap();
        self.dir
    }
}

pub struct Client<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, m: &Message) {
        let mut out = Vec::new();
        encode_frame(m, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next reply, or None when the daemon closed the connection.
    pub async fn reply(&mut self) -> Option<Message> {
        loop {
            if let Some((frame, used)) = next_frame(&self.buf).unwrap() {
                self.buf.drain(..used);
                match frame {
                    Frame::Message(m) => return Some(m),
                    other => panic!("undecodable reply {other:?}"),
                }
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn call(&mut self, payload: Payload) -> Payload {
        let m = Message::request(payload);
        self.send(&m).await;
        let r = self.reply().await.expect("a reply");
        assert_eq!(r.id, m.id, "the reply carries the request's id");
        r.payload
    }
}

pub fn entry(level: Level, message: &str) -> LogEntry {
    LogEntry {
        level,
        component: "cli".into(),
        message: message.into(),
        metadata: Some(serde_json::json!({"file": "main.rs"})),
        session_id: Some("s-1".into()),
        timestamp: None,
        id: None,
    }
}

pub fn accepted(p: &Payload) -> u32 {
    match p {
        Payload::Acknowledgment {
            status: AckStatus::Accepted,
            stored,
            ..
        } => *stored,
        other => panic!("not accepted: {other:?}"),
    }
}

pub fn error_code(p: &Payload) -> ErrorCode {
    match p {
        Payload::Error { code, .. } => *code,
        other => panic!("not an error: {other:?}"),
    }
}

/// How many stored entries match `filter`.
pub async fn stored_count<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
    filter: coditect_proto::ipc::LogFilter,
) -> u64 {
    match c.call(Payload::QueryLogs { filter, limit: 1 }).await {
        Payload::LogResults { total_count, .. } => total_count,
        other => panic!("{other:?}"),
    }
}

// What the watch and hardening tests share.

pub fn fast(c: &mut coditect_monitor::config::Config) {
    c.monitor.debounce = Duration::from_millis(50);
    c.monitor.scan_interval = Duration::from_millis(100);
}

pub async fn session(c: &mut Client<tokio::net::UnixStream>, id: &str, who: &str, agent: &str) {
    accepted(
        &c.call(Payload::SessionStart {
            session_id: id.into(),
            identity: who.into(),
            agent_type: Some(agent.into()),
        })
        .await,
    );
}

pub async fn watch(
    c: &mut Client<tokio::net::UnixStream>,
    path: &Path,
    patterns: &[&str],
    session_id: Option<&str>,
    mode: WatchMode,
) -> Payload {
    c.call(Payload::StartMonitoring {
        path: path.to_path_buf(),
        recursive: true,
        patterns: patterns.iter().map(|s| s.to_string()).collect(),
        session_id: session_id.map(str::to_string),
        mode,
    })
    .await
}

/// The file-monitor entries, oldest first.
pub async fn file_events(c: &mut Client<tokio::net::UnixStream>) -> Vec<StoredLog> {
    match c
        .call(Payload::QueryLogs {
            filter: LogFilter {
                component: Some("file-monitor".into()),
                ..LogFilter::default()
            },
            limit: 10_000,
        })
        .await
    {
        Payload::LogResults { mut entries, .. } => {
            entries.reverse();
            entries
        }
        other => panic!("{other:?}"),
    }
}

/// Waits until `n` file events are recorded (at most 20 s).
pub async fn wait_events(c: &mut Client<tokio::net::UnixStream>, n: usize) -> Vec<StoredLog> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = file_events(c).await;
        if e.len() >= n || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The exports recorded in the store at `db`, once `until` holds of them (at most 20 s).
pub async fn exports_until(
    db: &Path,
    until: impl Fn(&[coditect_monitor::store::ExportRecord]) -> bool,
) -> Vec<coditect_monitor::store::ExportRecord> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s =
            coditect_monitor::store::MonitorStore::open(db, coditect_store::Synchronous::Normal)
                .await
                .unwrap();
        let e = s.exports(100).await.unwrap();
        s.close().await;
        if until(&e) || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the daemon says it watches.
pub async fn watch_list<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut Client<S>,
) -> Vec<coditect_proto::ipc::WatchedPath> {
    match c.call(Payload::ListMonitoring).await {
        Payload::Monitoring { paths } => paths,
        other => panic!("{other:?}"),
    }
}
