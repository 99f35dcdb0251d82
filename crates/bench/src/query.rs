//! `coditect-bench query`: searches over a large tenant (10M entries by default), through
//! `GET /api/logs` of a real hub process, beside the same questions asked of the raw
//! engine: SQLite with the entries as plain rows, indexed by `(tenant, ts)`.
//!
//! The entries span the last six days; levels, components and messages as in the other
//! suites, with the word `checkout` in 1 % of messages and one message carrying a unique
//! order id. Each query asks for up to 1000 results, newest first.

use crate::hubproc::HubProc;
use crate::report::{Table, machine, millis, stats, thousands};
use crate::rows::COMPONENTS;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    /// Entries stored before querying.
    #[arg(long, default_value_t = 10_000_000)]
    entries: usize,
    /// Timed runs per query (after one untimed).
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    /// Skip the raw SQLite comparison (it loads the same entries a second time).
    #[arg(long)]
    skip_raw: bool,
}

const BATCH: usize = 1000;
const SPAN_US: i64 = 6 * 86_400 * 1_000_000;
const LEVELS: [&str; 5] = ["debug", "info", "warn", "error", "fatal"];
const UNIQUE: &str = "order-7f3a9c";

/// Entry `i` of `n`: (ts µs, level index, component, message).
fn entry(i: usize, n: usize, t0: i64) -> (i64, usize, &'static str, String) {
    let ts = t0 + (i as i64) * (SPAN_US / n.max(1) as i64);
    let word = if i % 100 == 7 { "checkout" } else { "request" };
    let mut message = format!(
        "{word} {i} handled, status=200, latency_ms={}, bytes={}",
        i % 97,
        (i * 31) % 65536
    );
    if i == n / 2 {
        message.push(' ');
        message.push_str(UNIQUE);
    }
    (ts, i % 5, COMPONENTS[i % COMPONENTS.len()], message)
}

fn body(from: usize, n: usize, t0: i64, workspace: &str) -> Vec<u8> {
    let entries: Vec<serde_json::Value> = (from..(from + BATCH).min(n))
        .map(|i| {
            let (ts, level, component, message) = entry(i, n, t0);
            serde_json::json!({
                "timestamp": chrono::DateTime::from_timestamp_micros(ts).unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": LEVELS[level],
                "component": component,
                "message": message,
                "metadata": {"file": format!("src/module_{}.rs", i % 40), "line": i % 900},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"entries": entries, "workspace_id": workspace}))
        .unwrap_or_default()
}

struct Question {
    name: &'static str,
    query: String,
    sql: String,
    iterations: usize,
}

fn questions(t0: i64, iterations: usize) -> Vec<Question> {
    let mid = t0 + SPAN_US / 2;
    let (since, until) = (mid, mid + 3_600_000_000);
    let rfc = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap_or_default()
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    let order = "ORDER BY ts DESC LIMIT 1000";
    vec![
        Question {
            name: "newest 1000",
            query: "limit=1000".into(),
            sql: format!("SELECT * FROM logs WHERE tenant = ?1 {order}"),
            iterations,
        },
        Question {
            name: "level ≥ error, component=api",
            query: "min_level=error&component=api&limit=1000".into(),
            sql: format!(
                "SELECT * FROM logs WHERE tenant = ?1 AND level >= 3 AND component = 'api' {order}"
            ),
            iterations,
        },
        Question {
            name: "one hour mid-range, component=auth",
            query: format!(
                "since={}&until={}&component=auth&limit=1000",
                rfc(since),
                rfc(until)
            ),
            sql: format!(
                "SELECT * FROM logs WHERE tenant = ?1 AND ts >= {since} AND ts < {until} \
                 AND component = 'auth' {order}"
            ),
            iterations,
        },
        Question {
            name: "text: checkout (1 % of entries)",
            query: "q=checkout&limit=1000".into(),
            sql: format!(
                "SELECT * FROM logs WHERE tenant = ?1 AND message LIKE '%checkout%' {order}"
            ),
            iterations,
        },
        Question {
            name: "text: a unique order id (1 entry)",
            query: format!("q={UNIQUE}&limit=1000"),
            sql: format!(
                "SELECT * FROM logs WHERE tenant = ?1 AND message LIKE '%{UNIQUE}%' {order}"
            ),
            iterations: iterations.min(10),
        },
    ]
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("## query: {}\n", machine());
    let n = args.entries;
    let t0 = chrono::Utc::now().timestamp_micros() - SPAN_US - 60_000_000;
    let hub = HubProc::spawn(&["--ingest-rate-per-tenant", "0"])?;
    let client = reqwest::Client::new();
    let setup = hub.setup(&client).await?;

    // Load through the public API, four connections.
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let (client, next, url, key, ws) = (
                client.clone(),
                next.clone(),
                format!("{}/api/logs/batch", hub.base),
                setup.key.clone(),
                setup.workspace.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let from = next.fetch_add(BATCH, Ordering::Relaxed);
                    if from >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let res = client
                        .post(&url)
                        .bearer_auth(&key)
                        .header("content-type", "application/json")
                        .body(body(from, n, t0, &ws))
                        .send()
                        .await?;
                    anyhow::ensure!(res.status() == 202, "load: {}", res.status());
                }
            })
        })
        .collect();
    for l in loaders {
        l.await??;
    }
    let load = started.elapsed();
    println!(
        "{} entries loaded through POST /api/logs/batch in {:.0} s ({}/s, 4 connections, \
         generating bodies included); hub RSS after loading {:.0} MiB\n",
        thousands(n as u64),
        load.as_secs_f64(),
        thousands((n as f64 / load.as_secs_f64()) as u64),
        hub.rss_kib() as f64 / 1024.0
    );

    let raw = if args.skip_raw {
        None
    } else {
        Some(raw_sqlite(n, t0).await?)
    };
    let mut table = Table::new(&[
        "query",
        "results",
        "hub p50 ms",
        "hub p99 ms",
        "raw SQLite p50 ms",
        "raw SQLite p99 ms",
        "hub / raw (p50)",
    ]);
    for q in questions(t0, args.iterations) {
        let url = format!("{}/api/logs?{}", hub.base, q.query);
        let mut samples = Vec::new();
        let mut results = 0;
        for i in 0..=q.iterations {
            // Timed: the request and the whole body; parsing it is the client's business.
            let started = Instant::now();
            let body = client
                .get(&url)
                .bearer_auth(&setup.token)
                .send()
                .await?
                .bytes()
                .await?;
            if i > 0 {
                samples.push(started.elapsed());
            }
            let page: serde_json::Value = serde_json::from_slice(&body)?;
            results = page["items"].as_array().map_or(0, Vec::len);
        }
        let (p50, p99, _) = stats(samples);
        let (raw50, raw99) = match &raw {
            Some(r) => {
                let (a, b, _) = stats(r.time(&q.sql, q.iterations).await?);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let show = |d: Option<Duration>| d.map_or("–".into(), millis);
        table.row(vec![
            q.name.into(),
            results.to_string(),
            millis(p50),
            millis(p99),
            show(raw50),
            show(raw99),
            raw50.map_or("–".into(), |r| {
                format!("{:.2}", p50.as_secs_f64() / r.as_secs_f64())
            }),
        ]);
    }
    table.print();
    println!(
        "\nhub: HTTP, JSON of up to 1000 entries included; raw: rows read into memory, no JSON."
    );
    Ok(())
}

/// id, ts, level, component, message, metadata.
type RawRow = (Vec<u8>, i64, i64, String, String, Option<String>);

/// The raw engine with the same entries as rows.
struct RawSqlite {
    path: std::path::PathBuf,
    tenant: Uuid,
    _dir: tempfile::TempDir,
}

async fn raw_sqlite(n: usize, t0: i64) -> anyhow::Result<RawSqlite> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("raw.db");
    let tenant = Uuid::now_v7();
    let p = path.clone();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = rusqlite::Connection::open(&p)?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
        conn.execute_batch(
            "PRAGMA synchronous=NORMAL;
             CREATE TABLE logs (tenant BLOB NOT NULL, id BLOB NOT NULL, ts INTEGER NOT NULL,
               level INTEGER NOT NULL, component TEXT NOT NULL, message TEXT NOT NULL,
               metadata TEXT, PRIMARY KEY (tenant, id)) WITHOUT ROWID;
             CREATE INDEX logs_ts ON logs (tenant, ts);",
        )?;
        for from in (0..n).step_by(BATCH) {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO logs (tenant, id, ts, level, component, message, metadata)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for i in from..(from + BATCH).min(n) {
                    let (ts, level, component, message) = entry(i, n, t0);
                    let metadata = format!(
                        "{{\"file\":\"src/module_{}.rs\",\"line\":{}}}",
                        i % 40,
                        i % 900
                    );
                    stmt.execute(rusqlite::params![
                        tenant.as_bytes().as_slice(),
                        Uuid::now_v7().as_bytes().as_slice(),
                        ts,
                        level as i64,
                        component,
                        message,
                        metadata
                    ])?;
                }
            }
            tx.commit()?;
        }
        Ok(())
    })
    .await??;
    println!(
        "raw SQLite: the same entries as rows loaded in {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    Ok(RawSqlite {
        path,
        tenant,
        _dir: dir,
    })
}

impl RawSqlite {
    async fn time(&self, sql: &str, iterations: usize) -> anyhow::Result<Vec<Duration>> {
        let (path, tenant, sql) = (self.path.clone(), self.tenant, sql.to_string());
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(&path)?;
            let mut stmt = conn.prepare(&sql)?;
            let mut samples = Vec::new();
            for i in 0..=iterations {
                let started = Instant::now();
                let rows: Vec<RawRow> = stmt
                    .query_map([tenant.as_bytes().as_slice()], |r| {
                        Ok((
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    })?
                    .collect::<Result<_, _>>()?;
                std::hint::black_box(&rows);
                if i > 0 {
                    samples.push(started.elapsed());
                }
            }
            Ok(samples)
        })
        .await?
    }
}
