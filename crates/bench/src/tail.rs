//! `coditect-bench tail`: the live tail of a real hub process.
//!
//! - Delivery latency: `subscribers` WebSocket clients tail one tenant while one-entry
//!   batches are posted every `interval_ms`; for each entry and each subscriber, the time
//!   from just before the POST to the frame arriving (the entry is durable before it is
//!   fanned out, so this includes the commit). Beside it, the raw engine underneath: a bare
//!   axum WebSocket server broadcasting the same frames to as many clients, no store.
//! - Idle memory: the hub's RSS growth per open, idle tail connection, for `idle` of them.

use crate::hubproc::{HubProc, rss_kib};
use crate::report::{Table, machine, millis, stats, thousands};
use axum::extract::ws::{Message as AxumMessage, WebSocketUpgrade};
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(clap::Args)]
pub struct Args {
    /// Tail clients for the latency measurement.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Entries posted (one per request) during the latency measurement.
    #[arg(long, default_value_t = 300)]
    entries: usize,
    /// Pause between posts, in milliseconds.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Idle tail connections for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle: usize,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// When each probe was sent, by number.
type Sent = Arc<Vec<Mutex<Option<Instant>>>>;

async fn connect(url: &str, key: Option<&str>) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    if let Some(key) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

/// The probe number in a frame's message (`probe <n>`), if it is one: found without
/// parsing the JSON, so the load generator's 1000 clients stay cheap.
fn probe(frame: &str) -> Option<usize> {
    let at = frame.find("probe ")? + "probe ".len();
    let digits: &str = &frame[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Reads frames until `expected` probes arrived or `deadline`; returns the latencies and
/// the dropped count reported.
fn subscriber(
    mut ws: Ws,
    sent: Sent,
    expected: usize,
) -> tokio::task::JoinHandle<(Vec<Duration>, u64)> {
    tokio::spawn(async move {
        let mut seen = Vec::with_capacity(expected);
        let mut dropped = 0;
        while seen.len() < expected {
            let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
            let Ok(Some(Ok(msg))) = next else { break };
            let Message::Text(text) = msg else { continue };
            if let Some(n) = probe(&text) {
                let at = sent
                    .get(n)
                    .and_then(|m| *m.lock().unwrap_or_else(|p| p.into_inner()));
                if let Some(at) = at {
                    seen.push(at.elapsed());
                }
            } else if text.contains("\"dropped\"") {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                dropped += v["count"].as_u64().unwrap_or(0);
            }
        }
        let _ = ws.close(None).await;
        (seen, dropped)
    })
}

struct Outcome {
    latencies: Vec<Duration>,
    deliveries: usize,
    dropped: u64,
    acks: Vec<Duration>,
}

async fn hub_latency(hub: &HubProc, args: &Args) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::new();
    let setup = hub.setup(&client).await?;
    let url = format!("ws://{}/ws/logs", hub.addr);
    let sent: Sent = Arc::new((0..args.entries).map(|_| Mutex::new(None)).collect());
    let mut subs = Vec::new();
    for _ in 0..args.subscribers {
        let mut ws = connect(&url, Some(&setup.key)).await?;
        // The `connected` frame: the subscription is live.
        let _ = ws.next().await;
        subs.push(subscriber(ws, sent.clone(), args.entries));
    }
    let mut acks = Vec::new();
    let post = format!("{}/api/logs/batch", hub.base);
    for n in 0..args.entries {
        let body = serde_json::json!({
            "entries": [{"level": "info", "component": "bench", "message": format!("probe {n}")}],
            "workspace_id": setup.workspace,
        });
        let started = Instant::now();
        if let Some(slot) = sent.get(n) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        }
        let res = client
            .post(&post)
            .bearer_auth(&setup.key)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(res.status() == 202, "post: {}", res.status());
        acks.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    collect(subs, acks).await
}

async fn collect(
    subs: Vec<tokio::task::JoinHandle<(Vec<Duration>, u64)>>,
    acks: Vec<Duration>,
) -> anyhow::Result<Outcome> {
    let mut latencies = Vec::new();
    let mut dropped = 0;
    for s in subs {
        let (l, d) = s.await?;
        latencies.extend(l);
        dropped += d;
    }
    Ok(Outcome {
        deliveries: latencies.len(),
        latencies,
        dropped,
        acks,
    })
}

/// The floor, run as its own process (`coditect-bench bare-broadcast`) like the hub: a bare
/// axum server whose `POST /send/{n}` broadcasts a probe frame to every WebSocket client.
pub async fn bare_server() -> anyhow::Result<()> {
    let (tx, _) = broadcast::channel::<Arc<str>>(1024);
    let fanout = tx.clone();
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::get(move |upgrade: WebSocketUpgrade| {
                let mut rx = fanout.subscribe();
                async move {
                    upgrade.on_upgrade(move |mut socket| async move {
                        let _ = socket
                            .send(AxumMessage::Text("{\"type\":\"connected\"}".into()))
                            .await;
                        while let Ok(frame) = rx.recv().await {
                            if socket
                                .send(AxumMessage::Text((&*frame).into()))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    })
                }
            }),
        )
        .route(
            "/send/{n}",
            axum::routing::post(move |axum::extract::Path(n): axum::extract::Path<usize>| {
                let frame = serde_json::json!({"type": "log", "data": {"level": "info",
                    "component": "bench", "message": format!("probe {n}")}});
                let _ = tx.send(Arc::from(frame.to_string()));
                async { axum::http::StatusCode::ACCEPTED }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

async fn bare_latency(args: &Args) -> anyhow::Result<Outcome> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("bare-broadcast")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let addr = line.trim().to_string();
    let outcome = async {
        let url = format!("ws://{addr}/ws");
        let sent: Sent = Arc::new((0..args.entries).map(|_| Mutex::new(None)).collect());
        let mut subs = Vec::new();
        for _ in 0..args.subscribers {
            let mut ws = connect(&url, None).await?;
            let _ = ws.next().await;
            subs.push(subscriber(ws, sent.clone(), args.entries));
        }
        let client = reqwest::Client::new();
        let mut acks = Vec::new();
        for n in 0..args.entries {
            let started = Instant::now();
            if let Some(slot) = sent.get(n) {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
            }
            client
                .post(format!("http://{addr}/send/{n}"))
                .send()
                .await?;
            acks.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
        collect(subs, acks).await
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

async fn idle_memory(args: &Args) -> anyhow::Result<(f64, f64, usize)> {
    let limit = (args.idle * 2).to_string();
    // Every subscriber connects from 127.0.0.1: no per-address cap here.
    let hub = HubProc::spawn(&[
        "--tail-max-per-tenant",
        &limit,
        "--max-connections-per-ip",
        "0",
    ])?;
    let client = reqwest::Client::new();
    let setup = hub.setup(&client).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(hub.pid());
    let url = format!("ws://{}/ws/logs", hub.addr);
    let mut sockets = Vec::with_capacity(args.idle);
    for _ in 0..args.idle {
        let mut ws = connect(&url, Some(&setup.key)).await?;
        let _ = ws.next().await;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(hub.pid());
    let open = sockets.len();
    drop(sockets);
    Ok((before as f64 / 1024.0, after as f64 / 1024.0, open))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("## tail: {}\n", machine());
    let mut table = Table::new(&[
        "path",
        "subscribers",
        "entries",
        "deliveries",
        "dropped",
        "p50 ms",
        "p99 ms",
        "max ms",
    ]);
    let bare = bare_latency(&args).await?;
    let hub = HubProc::spawn(&[
        "--tail-max-per-tenant",
        "20000",
        "--max-connections-per-ip",
        "0",
        "--max-connections",
        "30000",
    ])?;
    let served = hub_latency(&hub, &args).await?;
    drop(hub);
    let mut hub_acks = Vec::new();
    for (name, o) in [
        ("bare axum WebSocket broadcast process (no store)", bare),
        ("hub: POST → durable → tail frame", served),
    ] {
        if name.starts_with("hub") {
            hub_acks.extend(o.acks.iter().copied());
        }
        let max = o.latencies.iter().max().copied().unwrap_or_default();
        let (p50, p99, _) = stats(o.latencies);
        table.row(vec![
            name.into(),
            thousands(args.subscribers as u64),
            args.entries.to_string(),
            thousands(o.deliveries as u64),
            o.dropped.to_string(),
            millis(p50),
            millis(p99),
            millis(max),
        ]);
    }
    let (a50, a99, _) = stats(hub_acks);
    println!(
        "one entry per POST every {} ms; latency measured at the client, from just before the \
         POST (or the broadcast) to the frame; POST → 202 alone: p50 {} ms, p99 {} ms\n",
        args.interval_ms,
        millis(a50),
        millis(a99)
    );
    table.print();

    let (before, after, open) = idle_memory(&args).await?;
    println!();
    let mut mem = Table::new(&[
        "idle tail connections",
        "hub RSS before MiB",
        "after MiB",
        "KiB per connection",
    ]);
    mem.row(vec![
        thousands(open as u64),
        format!("{before:.0}"),
        format!("{after:.0}"),
        format!("{:.1}", (after - before) * 1024.0 / open.max(1) as f64),
    ]);
    mem.print();
    Ok(())
}
