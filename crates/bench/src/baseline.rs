//! `coditect-bench baseline`: how fast the engines underneath take log-entry rows, and
//! what the store's group-commit writer costs on top of raw SQLite.
//!
//! - SQLite raw: one connection, WAL, one prepared INSERT, `batch` rows per transaction,
//!   for `synchronous=FULL` and `NORMAL`.
//! - SQLite via the store's writer: the same rows as write jobs of `batch` rows from 1 and
//!   from `clients` concurrent callers (group commit), `synchronous=FULL`.
//! - PostgreSQL raw: binary `COPY` of `batch` rows per statement (each its own commit),
//!   from 1 and from 4 connections, on a cluster with fsync on.

use crate::report::{Table, machine, rate};
use crate::rows::{Row, generate};
use coditect_store::{SqliteConfig, SqliteStore, StoreError, Synchronous};
use rusqlite::params;
use std::time::{Duration, Instant};
use tokio_postgres::types::Type;

#[derive(clap::Args)]
pub struct Args {
    /// Rows per measurement.
    #[arg(long, default_value_t = 200_000)]
    rows: usize,
    /// Rows per transaction / COPY / write job.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent callers of the store's writer.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// PostgreSQL base URL (postgres://user@host:port) to benchmark against; default: a
    /// throw-away cluster with fsync on, started and dropped by the bench.
    #[arg(long)]
    pg_url: Option<String>,
}

const SQLITE_DDL: &str = "CREATE TABLE IF NOT EXISTS bench_logs (
    tenant_id BLOB NOT NULL, id BLOB NOT NULL, workspace_id BLOB NOT NULL,
    ts INTEGER NOT NULL, level INTEGER NOT NULL, component TEXT NOT NULL,
    message TEXT NOT NULL, metadata TEXT,
    PRIMARY KEY (tenant_id, id)) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS bench_logs_ts ON bench_logs (tenant_id, ts);";

const SQLITE_INSERT: &str = "INSERT INTO bench_logs
    (tenant_id, id, workspace_id, ts, level, component, message, metadata)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const PG_DDL: &str = "DROP TABLE IF EXISTS bench_logs;
    CREATE TABLE bench_logs (
    tenant_id uuid NOT NULL, id uuid NOT NULL, workspace_id uuid NOT NULL,
    ts timestamptz NOT NULL, level smallint NOT NULL, component text NOT NULL,
    message text NOT NULL, metadata jsonb,
    PRIMARY KEY (tenant_id, id));
    CREATE INDEX ON bench_logs (tenant_id, ts);";

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("## baseline: {}\n", machine());
    println!(
        "{} rows of ~250 B per measurement, {} rows per transaction/COPY/job; \
         tables keyed (tenant_id, id) with a (tenant_id, ts) index\n",
        args.rows, args.batch
    );
    let mut table = Table::new(&[
        "engine",
        "path",
        "durability",
        "clients",
        "seconds",
        "rows/s",
        "vs raw",
    ]);

    let mut raw_full = Duration::ZERO;
    for sync in [Synchronous::Full, Synchronous::Normal] {
        let elapsed = sqlite_raw(args.rows, args.batch, sync).await?;
        if sync == Synchronous::Full {
            raw_full = elapsed;
        }
        table.row(vec![
            "SQLite".into(),
            "raw INSERT, prepared".into(),
            durability(sync).into(),
            "1".into(),
            format!("{:.2}", elapsed.as_secs_f64()),
            rate(args.rows, elapsed),
            "1.00".into(),
        ]);
    }
    for clients in [1, args.clients] {
        let (elapsed, jobs_per_group) = sqlite_writer(args.rows, args.batch, clients).await?;
        table.row(vec![
            "SQLite".into(),
            format!("store writer ({jobs_per_group:.1} jobs/commit)"),
            durability(Synchronous::Full).into(),
            clients.to_string(),
            format!("{:.2}", elapsed.as_secs_f64()),
            rate(args.rows, elapsed),
            format!("{:.2}", raw_full.as_secs_f64() / elapsed.as_secs_f64()),
        ]);
    }

    let cluster;
    let base = match &args.pg_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            cluster =
                tokio::task::spawn_blocking(coditect_testkit::PgCluster::start_durable).await??;
            cluster.base_url()
        }
    };
    let url = coditect_testkit::pg::create_database(&base).await;
    let mut copy_one = Duration::ZERO;
    for clients in [1, 4] {
        let elapsed = pg_copy(&url, args.rows, args.batch, clients).await?;
        if clients == 1 {
            copy_one = elapsed;
        }
        table.row(vec![
            "PostgreSQL".into(),
            "raw COPY BINARY".into(),
            "fsync, commit per COPY".into(),
            clients.to_string(),
            format!("{:.2}", elapsed.as_secs_f64()),
            rate(args.rows, elapsed),
            format!("{:.2}", copy_one.as_secs_f64() / elapsed.as_secs_f64()),
        ]);
    }
    table.print();
    println!(
        "\n\"vs raw\": speed relative to the 1-client raw row of the same engine (FULL for SQLite)."
    );
    Ok(())
}

fn durability(sync: Synchronous) -> &'static str {
    match sync {
        Synchronous::Full => "synchronous=FULL",
        Synchronous::Normal => "synchronous=NORMAL",
    }
}

fn batches(rows: usize, batch: usize) -> Vec<Vec<Row>> {
    let mut all = generate(rows).into_iter().peekable();
    let mut out = Vec::new();
    while all.peek().is_some() {
        out.push(all.by_ref().take(batch).collect());
    }
    out
}

fn insert_rows(conn: &rusqlite::Connection, rows: &[Row]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(SQLITE_INSERT)?;
    for r in rows {
        stmt.execute(params![
            r.tenant_id.as_bytes().as_slice(),
            r.id.as_bytes().as_slice(),
            r.workspace_id.as_bytes().as_slice(),
            r.ts_micros,
            r.level,
            r.component,
            r.message,
            r.metadata
        ])?;
    }
    Ok(())
}

pub async fn sqlite_raw(rows: usize, batch: usize, sync: Synchronous) -> anyhow::Result<Duration> {
    let data = batches(rows, batch);
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir()?;
        let mut conn = rusqlite::Connection::open(dir.path().join("raw.db"))?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))?;
        let level = match sync {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={level};"))?;
        conn.execute_batch(SQLITE_DDL)?;
        let started = Instant::now();
        for chunk in &data {
            let tx = conn.transaction()?;
            insert_rows(&tx, chunk)?;
            tx.commit()?;
        }
        Ok(started.elapsed())
    })
    .await?
}

/// Returns the elapsed time and the average number of jobs per commit.
async fn sqlite_writer(
    rows: usize,
    batch: usize,
    clients: usize,
) -> anyhow::Result<(Duration, f64)> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("store.db"))).await?;
    store.write(|c| Ok(c.execute_batch(SQLITE_DDL)?)).await?;
    let mut per_client: Vec<Vec<Vec<Row>>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, chunk) in batches(rows, batch).into_iter().enumerate() {
        per_client[i % clients].push(chunk);
    }
    let before = store.writer_stats();
    let started = Instant::now();
    let tasks: Vec<_> = per_client
        .into_iter()
        .map(|chunks| {
            let store = store.clone();
            tokio::spawn(async move {
                for chunk in chunks {
                    store
                        .write(move |c| insert_rows(c, &chunk).map_err(StoreError::from))
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let stats = store.writer_stats();
    store.close().await;
    let groups = (stats.groups - before.groups).max(1) as f64;
    Ok((elapsed, (stats.jobs - before.jobs) as f64 / groups))
}

pub async fn pg_copy(
    url: &str,
    rows: usize,
    batch: usize,
    clients: usize,
) -> anyhow::Result<Duration> {
    let (setup, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    setup.batch_execute(PG_DDL).await?;
    drop(setup);
    let _ = conn.await;

    let mut per_client: Vec<Vec<Vec<Row>>> = (0..clients).map(|_| Vec::new()).collect();
    for (i, chunk) in batches(rows, batch).into_iter().enumerate() {
        per_client[i % clients].push(chunk);
    }
    let mut connections = Vec::new();
    for chunks in per_client {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        connections.push((client, chunks));
    }
    let started = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|(client, chunks)| tokio::spawn(async move { copy_chunks(&client, chunks).await }))
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

async fn copy_chunks(client: &tokio_postgres::Client, chunks: Vec<Vec<Row>>) -> anyhow::Result<()> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    let types = [
        Type::UUID,
        Type::UUID,
        Type::UUID,
        Type::TIMESTAMPTZ,
        Type::INT2,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
    ];
    for chunk in chunks {
        let sink = client
            .copy_in(
                "COPY bench_logs (tenant_id, id, workspace_id, ts, level, component, message, metadata) \
                 FROM STDIN BINARY",
            )
            .await?;
        let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &types));
        for r in &chunk {
            let ts = chrono::DateTime::from_timestamp_micros(r.ts_micros).unwrap_or_default();
            writer
                .as_mut()
                .write(&[
                    &r.tenant_id,
                    &r.id,
                    &r.workspace_id,
                    &ts,
                    &r.level,
                    &r.component,
                    &r.message,
                    &r.metadata_json,
                ])
                .await?;
        }
        writer.finish().await?;
    }
    Ok(())
}
