//! Accepting connections, in front of the router: caps on open connections (in total and
//! per client address), a header-read timeout and a keep-alive idle timeout, graceful
//! shutdown. Nothing here knows what a route does.
//!
//! - Over `max_connections` a new connection is answered `503 UNAVAILABLE` (over
//!   `max_connections_per_ip`: `429 RATE_LIMITED`) with the error envelope and closed. A
//!   connection's slot is held until its socket closes, WebSocket tails included.
//! - `header_read_timeout`: a connection that has not sent a complete request head within
//!   this time of its first byte (or of its accept, if it sends nothing) is closed;
//!   `keep_alive_timeout`: an idle connection between requests is closed after this long
//!   without a byte either way. Handlers are bounded by `request_timeout` (the router's
//!   guard), so a slow body is cut off too.
//! - Hyper answers a few malformed requests itself, before any code of ours runs (README,
//!   "Errors hyper answers"): it parses up to [`HYPER_MAX_HEADERS`] headers, so that the
//!   router's own limit ([`MAX_HEADERS`]) answers with the envelope.

use axum::Router;
use axum::extract::ConnectInfo;
use coditect_proto::{ErrorCode, ErrorEnvelope};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, UnixListener};

/// Most headers a request may carry; more are answered 431 with the envelope.
pub const MAX_HEADERS: usize = 100;
/// Most header bytes (names and values) a request may carry; more: 431.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// What hyper parses before it refuses a request itself (with an empty 431).
pub const HYPER_MAX_HEADERS: usize = 1000;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_ip: usize,
}

/// Where connections come from: TCP, or the Unix socket workspaces reach the hub by.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_one(&self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;

    async fn accept_one(&self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, peer) = self.accept().await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

/// The address a Unix-socket peer is known by (it has none): the unspecified address.
pub const UNIX_PEER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;

    async fn accept_one(&self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, UNIX_PEER))
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, asks every
/// connection to finish its request in progress and close, and waits for them.
pub async fn serve<L: Listener>(
    listener: L,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let caps = Arc::new(Caps::new(limits));
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    // Each connection task holds a clone; when all are gone, draining is over.
    let (alive, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept_one() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: never fatal; pause so a full table can drain.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match caps.take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics::counter!("http_connections_refused_total", "reason" => refusal.reason())
                    .increment(1);
                tokio::spawn(refuse(stream, refusal));
                continue;
            }
        };
        let app = app.clone();
        let (stopping, alive) = (stopping.clone(), alive.clone());
        tokio::spawn(async move {
            connection(stream, peer, slot, app, limits, stopping).await;
            drop(alive);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(alive);
    let _ = drained.recv().await;
    Ok(())
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    slot: Slot,
    app: Router,
    limits: Limits,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        _slot: slot,
    });
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let request = Request::begin(tracked.clone());
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = tower::ServiceExt::oneshot(app.clone(), req);
        async move {
            let response = response.await;
            drop(request);
            response
        }
    });
    // No hyper timer: its own header-read timeout (30 s whenever a timer is set) would arm
    // a timer per request; the watch below does that job for the whole connection.
    let conn = hyper::server::conn::http1::Builder::new()
        .max_headers(HYPER_MAX_HEADERS)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut watch = tokio::time::interval(
        (limits.header_read_timeout.min(limits.keep_alive_timeout) / 4)
            .clamp(Duration::from_millis(25), Duration::from_secs(1)),
    );
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut asked_to_stop = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = watch.tick() => {
                if let Some(reason) = activity.expired(&limits) {
                    metrics::counter!("http_connections_timed_out_total", "reason" => reason).increment(1);
                    tracing::debug!(%peer, reason, "closing a connection");
                    return;
                }
            }
            changed = stopping.changed(), if !asked_to_stop => {
                asked_to_stop = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Milliseconds since the process's first use of this clock (0 = never).
fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    base.elapsed().as_millis() as u64 + 1
}

/// What a connection did, for its timeouts.
struct Activity {
    accepted: u64,
    /// Last byte read or written.
    last_io: AtomicU64,
    /// First byte read since the last request started (0: none): a request head on its
    /// way, or garbage.
    unclaimed_read: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        let now = now_ms();
        Activity {
            accepted: now,
            last_io: AtomicU64::new(now),
            unclaimed_read: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        }
    }

    fn read(&self, now: u64) {
        self.last_io.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.unclaimed_read
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Why this connection should be closed now, if it should.
    fn expired(&self, limits: &Limits) -> Option<&'static str> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = now_ms();
        let ms = |d: Duration| d.as_millis() as u64;
        let unclaimed = self.unclaimed_read.load(Ordering::Relaxed);
        let head_started = match unclaimed {
            0 if self.requests.load(Ordering::Relaxed) == 0 => Some(self.accepted),
            0 => None,
            t => Some(t),
        };
        match head_started {
            Some(t) if now.saturating_sub(t) > ms(limits.header_read_timeout) => {
                Some("header_read_timeout")
            }
            Some(_) => None,
            None => (now.saturating_sub(self.last_io.load(Ordering::Relaxed))
                > ms(limits.keep_alive_timeout))
            .then_some("keep_alive_timeout"),
        }
    }
}

/// A request being handled (its head fully read).
struct Request(Arc<Activity>);

impl Request {
    fn begin(activity: Arc<Activity>) -> Request {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.unclaimed_read.store(0, Ordering::Relaxed);
        Request(activity)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.0.last_io.store(now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket, noting when bytes move, holding the connection's slot until it closes.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read(now_ms());
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_io.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.last_io.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Open connections, in total and per client address.
struct Caps {
    limits: Limits,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

impl Caps {
    fn new(limits: Limits) -> Caps {
        Caps {
            limits,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err(Refusal::Total);
        }
        let n = per_ip.entry(ip).or_default();
        if self.limits.max_connections_per_ip > 0 && *n >= self.limits.max_connections_per_ip {
            return Err(Refusal::PerIp);
        }
        *n += 1;
        let open = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("http_connections_open").set(open as f64);
        Ok(Slot {
            caps: self.clone(),
            ip,
        })
    }
}

/// A connection's place under the caps, given back when dropped.
struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut per_ip = self.caps.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        let open = self
            .caps
            .total
            .fetch_sub(1, Ordering::Relaxed)
            .saturating_sub(1);
        metrics::gauge!("http_connections_open").set(open as f64);
    }
}

/// Answers a connection over a cap with the envelope, then closes it. Bounded in time:
/// a client that reads nothing cannot hold the task.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, refusal: Refusal) {
    let (status, code, message) = match refusal {
        Refusal::Total => (
            "503 Service Unavailable",
            ErrorCode::Unavailable,
            "the hub has as many connections open as it takes; retry shortly",
        ),
        Refusal::PerIp => (
            "429 Too Many Requests",
            ErrorCode::RateLimited,
            "too many connections from this address; close some and retry",
        ),
    };
    let body =
        serde_json::to_string(&ErrorEnvelope::new(code, message.to_string())).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        // Read what the client sent first (a little), so that closing does not reset the
        // connection under our answer.
        let mut scratch = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut scratch)).await;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut scratch).await? > 0 {}
        Ok::<(), io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(1),
            keep_alive_timeout: Duration::from_secs(2),
            max_connections: total,
            max_connections_per_ip: per_ip,
        }
    }

    #[test]
    fn caps_count_in_total_and_per_address() {
        let caps = Arc::new(Caps::new(limits(3, 2)));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = caps.take(a).unwrap();
        let _a2 = caps.take(a).unwrap();
        assert!(matches!(caps.take(a), Err(Refusal::PerIp)));
        let _b1 = caps.take(b).unwrap();
        assert!(matches!(caps.take(b), Err(Refusal::Total)));
        drop(a1);
        assert!(
            caps.take(b).is_ok(),
            "a closed connection gives its slot back"
        );
        let unlimited = Arc::new(Caps::new(limits(100, 0)));
        let held: Vec<_> = (0..50).map(|_| unlimited.take(a).unwrap()).collect();
        assert_eq!(held.len(), 50);
    }

    #[test]
    fn idle_and_half_sent_connections_expire_busy_ones_do_not() {
        let l = Limits {
            header_read_timeout: Duration::ZERO,
            keep_alive_timeout: Duration::ZERO,
            ..limits(1, 1)
        };
        let fresh = Activity::new();
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            fresh.expired(&l),
            Some("header_read_timeout"),
            "sent nothing"
        );
        let busy = Request::begin(Arc::new(Activity::new()));
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(busy.0.expired(&l), None, "a request in progress");
        let activity = busy.0.clone();
        drop(busy);
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            activity.expired(&l),
            Some("keep_alive_timeout"),
            "idle after one"
        );
        activity.read(now_ms());
        std::thread::sleep(Duration::from_millis(3));
        assert_eq!(
            activity.expired(&l),
            Some("header_read_timeout"),
            "half a head"
        );
    }
}
