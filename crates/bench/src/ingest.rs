//! `coditect-bench ingest`: sustained native ingestion over HTTP into a real hub process,
//! embedded and on PostgreSQL, beside the raw engine taking the same rows.
//!
//! `connections` tasks each send `batch`-entry bodies (~190 B per entry, pre-built so the
//! load generator stays cheap) back to back for `seconds`, after a warm-up; every 202 is a
//! durable acknowledgement. Reported: acknowledged entries/s, the ratio to the raw engine's
//! rate for the same rows (SQLite prepared INSERT, synchronous=FULL, 1000 rows per
//! transaction; PostgreSQL binary COPY from as many connections), batch latency p50/p99,
//! and the hub's peak RSS under the load.

use crate::baseline::{pg_copy, sqlite_raw};
use crate::hubproc::{HubProc, RssSampler};
use crate::report::{Table, machine, millis, stats, thousands};
use crate::rows::{Row, generate};
use coditect_store::Synchronous;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of measured load per engine (after a 3 s warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Entries per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Rows for the raw-engine measurement.
    #[arg(long, default_value_t = 200_000)]
    raw_rows: usize,
    /// PostgreSQL base URL (postgres://user@host:port); default: a throw-away cluster with
    /// fsync on.
    #[arg(long)]
    pg_url: Option<String>,
    /// Embedded store only.
    #[arg(long)]
    skip_pg: bool,
}

const LEVELS: [&str; 5] = ["debug", "info", "warn", "error", "fatal"];

/// A native batch body built from generated rows.
pub fn body(rows: &[Row], workspace: &str) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "timestamp": chrono::DateTime::from_timestamp_micros(r.ts_micros)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": LEVELS[(r.level as usize).saturating_sub(1) % LEVELS.len()],
                "component": r.component,
                "message": r.message,
                "metadata": r.metadata_json,
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "entries": entries,
        "workspace_id": workspace,
        "client_version": "coditect-bench",
    }))
    .unwrap_or_default()
}

pub struct Load {
    pub entries: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub errors: u64,
    pub peak_rss_mib: f64,
    pub body_bytes: usize,
}

/// Drives `connections` senders for `seconds` (after a warm-up) against a running hub.
pub async fn drive(hub: &HubProc, args: &Args) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let setup = hub.setup(&client).await?;
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        generate(args.batch * 32)
            .chunks(args.batch)
            .map(|rows| body(rows, &setup.workspace))
            .collect(),
    );
    let body_bytes = bodies[0].len();
    let url = format!("{}/api/logs/batch", hub.base);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..args.connections)
        .map(|c| {
            let (client, url, key, bodies) = (
                client.clone(),
                url.clone(),
                setup.key.clone(),
                bodies.clone(),
            );
            let (measuring, stop, acked, errors) = (
                measuring.clone(),
                stop.clone(),
                acked.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let body = bodies[i % bodies.len()].clone();
                    i += 1;
                    let started = Instant::now();
                    let res = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let ok = match res {
                        Ok(r) if r.status() == 202 => {
                            let v: serde_json::Value = r.json().await.unwrap_or_default();
                            v["processed"].as_u64()
                        }
                        Ok(r) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!(
                                    "ingest: {} {}",
                                    r.status(),
                                    r.text().await.unwrap_or_default()
                                );
                            }
                            None
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("ingest: {e}");
                            }
                            None
                        }
                    };
                    if measuring.load(Ordering::Relaxed)
                        && let Some(n) = ok
                    {
                        latencies.push(started.elapsed());
                        acked.fetch_add(n, Ordering::Relaxed);
                    }
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = RssSampler::start(hub.pid());
    errors.store(0, Ordering::Relaxed);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let entries = acked.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    Ok(Load {
        entries,
        elapsed,
        latencies,
        errors: errors.load(Ordering::Relaxed),
        peak_rss_mib: rss.peak_mib(),
        body_bytes,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("## ingest: {}\n", machine());
    let mut table = Table::new(&[
        "store",
        "path",
        "conns",
        "entries/s",
        "vs raw",
        "batch p50 ms",
        "batch p99 ms",
        "hub peak RSS MiB",
    ]);
    let raw_sqlite = sqlite_raw(args.raw_rows, args.batch, Synchronous::Full).await?;
    let raw_sqlite_rate = args.raw_rows as f64 / raw_sqlite.as_secs_f64();
    table.row(vec![
        "embedded".into(),
        "raw SQLite INSERT (FULL, 1000/tx)".into(),
        "1".into(),
        thousands(raw_sqlite_rate as u64),
        "1.00".into(),
        "".into(),
        "".into(),
        "".into(),
    ]);
    let hub = HubProc::spawn(&["--ingest-rate-per-tenant", "0"])?;
    let load = drive(&hub, &args).await?;
    drop(hub);
    let body_bytes = load.body_bytes;
    row(
        &mut table,
        "embedded",
        "hub POST /api/logs/batch",
        &args,
        load,
        raw_sqlite_rate,
    );

    if !args.skip_pg {
        let cluster;
        let base = match &args.pg_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                cluster = tokio::task::spawn_blocking(coditect_testkit::PgCluster::start_durable)
                    .await??;
                cluster.base_url()
            }
        };
        let raw_url = coditect_testkit::pg::create_database(&base).await;
        let raw_pg = pg_copy(&raw_url, args.raw_rows, args.batch, args.connections).await?;
        let raw_pg_rate = args.raw_rows as f64 / raw_pg.as_secs_f64();
        table.row(vec![
            "PostgreSQL".into(),
            "raw COPY BINARY (commit per 1000)".into(),
            args.connections.to_string(),
            thousands(raw_pg_rate as u64),
            "1.00".into(),
            "".into(),
            "".into(),
            "".into(),
        ]);
        let hub_url = coditect_testkit::pg::create_database(&base).await;
        let hub = HubProc::spawn(&["--ingest-rate-per-tenant", "0", "--database-url", &hub_url])?;
        let load = drive(&hub, &args).await?;
        drop(hub);
        row(
            &mut table,
            "PostgreSQL (dual)",
            "hub POST /api/logs/batch",
            &args,
            load,
            raw_pg_rate,
        );
    }
    println!(
        "{} s per run after a 3 s warm-up; {}-entry JSON bodies of {} KB; every 202 durable\n",
        args.seconds,
        args.batch,
        body_bytes / 1000
    );
    table.print();
    Ok(())
}

fn row(table: &mut Table, store: &str, path: &str, args: &Args, load: Load, raw_rate: f64) {
    let rate = load.entries as f64 / load.elapsed.as_secs_f64();
    let (p50, p99, _) = stats(load.latencies);
    let path = if load.errors > 0 {
        format!("{path} ({} errors)", load.errors)
    } else {
        path.to_string()
    };
    table.row(vec![
        store.into(),
        path,
        args.connections.to_string(),
        thousands(rate as u64),
        format!("{:.2}", rate / raw_rate),
        millis(p50),
        millis(p99),
        format!("{:.0}", load.peak_rss_mib),
    ]);
}
