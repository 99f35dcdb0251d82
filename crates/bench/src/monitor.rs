//! codi-monitor: IPC round trips, sustained writes (single entries and batches), 1,000
//! concurrent clients, file events and idle memory, against a real daemon process, beside
//! raw SQLite doing the same inserts into the same schema in the same run.

use crate::hubproc::rss_kib;
use crate::report::{Table, machine, micros, rate, stats, thousands};
use coditect_monitor::client::IpcClient;
use coditect_proto::Level;
use coditect_proto::ipc::{LogEntry, LogFilter, Message, Payload, WatchMode};
use rusqlite::params;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

#[derive(clap::Args)]
pub struct Args {
    /// Sequential round trips per latency row
    #[arg(long, default_value_t = 5_000)]
    pub round_trips: usize,
    /// Entries per throughput row
    #[arg(long, default_value_t = 200_000)]
    pub entries: usize,
    /// Entries per LogBatch frame
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Concurrent clients in the many-clients row
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// Files created in the file-events row
    #[arg(long, default_value_t = 20_000)]
    pub files: usize,
    /// SQLite synchronous mode for the daemon and the raw rows (full or normal)
    #[arg(long, default_value = "full")]
    pub synchronous: String,
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("codi-monitor");
    if !path.exists() {
        anyhow::bail!(
            "{} is missing: build it first (cargo build --release -p coditect-monitor)",
            path.display()
        );
    }
    Ok(path)
}

async fn start_daemon(synchronous: &str) -> anyhow::Result<Daemon> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("m.sock");
    let child = Command::new(binary()?)
        .arg("run")
        .arg("--socket")
        .arg(&socket)
        .arg("--db")
        .arg(dir.path().join("m.db"))
        .env_clear()
        .env("HOME", dir.path())
        .env("CODI_SYNCHRONOUS", synchronous)
        .env("CODI_HTTP_LISTEN", "off")
        .env("CODI_LOG_LEVEL", "warn")
        .env("CODI_EXPORT_DIR", dir.path().join("exports"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let d = Daemon { child, socket, dir };
    let deadline = Instant::now() + Duration::from_secs(30);
    while IpcClient::connect_unix(&d.socket).await.is_err() {
        if Instant::now() > deadline {
            anyhow::bail!("codi-monitor did not start");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(d)
}

fn entry(i: usize) -> LogEntry {
    LogEntry {
        level: Level::Info,
        component: "bench".into(),
        message: format!(
            "request {i} handled by worker-{} in 12.5 ms with status 200",
            i % 8
        ),
        metadata: Some(serde_json::json!({"file": "src/handler.rs", "line": i % 500})),
        session_id: Some("bench-session".into()),
        timestamp: None,
        id: None,
    }
}

async fn client(socket: &Path) -> anyhow::Result<IpcClient<UnixStream>> {
    Ok(IpcClient::connect_unix(socket).await?)
}

fn acked(p: &Payload) -> anyhow::Result<()> {
    match p {
        Payload::Acknowledgment { .. } => Ok(()),
        other => anyhow::bail!("not acknowledged: {other:?}"),
    }
}

/// The raw engine: the monitor's own schema in a fresh file, prepared INSERTs of the
/// same rows; (per-insert latencies with a commit each, rows/s in `batch`-row commits).
fn raw_sqlite(
    synchronous: &str,
    single: usize,
    batched: usize,
    batch: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let dir = tempfile::tempdir()?;
    let mut c = rusqlite::Connection::open(dir.path().join("raw.db"))?;
    c.pragma_update(None, "journal_mode", "wal")?;
    c.pragma_update(None, "synchronous", synchronous)?;
    for m in coditect_monitor::store::MIGRATIONS {
        c.execute_batch(m.sql)?;
    }
    let insert = "INSERT INTO logs (id, timestamp, level, component, session_id, message,
                                    metadata, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
    let row = |c: &rusqlite::Connection, i: usize| -> rusqlite::Result<usize> {
        let e = entry(i);
        let now = chrono::Utc::now().timestamp_micros();
        c.prepare_cached(insert)?.execute(params![
            uuid::Uuid::now_v7().as_bytes(),
            now,
            e.level.as_u8(),
            e.component,
            e.session_id,
            e.message,
            e.metadata.map(|m| m.to_string()),
            now
        ])
    };
    let mut lat = Vec::with_capacity(single);
    for i in 0..single {
        let t = Instant::now();
        row(&c, i)?;
        lat.push(t.elapsed());
    }
    let started = Instant::now();
    let mut i = 0;
    while i < batched {
        let tx = c.transaction()?;
        for _ in 0..batch.min(batched - i) {
            row(&tx, 1_000_000 + i)?;
            i += 1;
        }
        tx.commit()?;
    }
    Ok((lat, started.elapsed()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (raw_lat, raw_batched) = raw_sqlite(
        &args.synchronous,
        args.round_trips,
        args.entries,
        args.batch,
    )?;
    let d = start_daemon(&args.synchronous).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(d.child.id());

    let mut latency = Table::new(&[
        "path",
        "round trips",
        "p50 µs",
        "p99 µs",
        "mean µs",
        "vs raw p50",
    ]);
    // One row per path: its name, p50/p99/mean, and p50 as a ratio of `base` (µs) when given.
    let row = |t: &mut Table, name: String, lat: Vec<Duration>, base: Option<(Duration, &str)>| {
        let n = lat.len() as u64;
        let (p50, p99, mean) = stats(lat);
        let ratio = base.map_or("–".to_string(), |(b, unit)| {
            format!("{:.2}{unit}", p50.as_secs_f64() / b.as_secs_f64())
        });
        t.row(vec![
            name,
            thousands(n),
            micros(p50),
            micros(p99),
            micros(mean),
            ratio,
        ]);
        p50
    };
    let raw50 = stats(raw_lat.clone()).0;
    row(
        &mut latency,
        format!(
            "raw SQLite INSERT, own commit (synchronous={})",
            args.synchronous
        ),
        raw_lat,
        Some((raw50, "")),
    );
    // The floor: a bare length-prefixed echo over a Unix socket, in its own process on a
    // runtime like the daemon's, with frames the size of a Hello.
    let bare = bare_round_trips(args.round_trips).await?;
    let b50 = row(
        &mut latency,
        "raw Unix socket echo, same frame size (separate process)".into(),
        bare,
        None,
    );
    // The daemon's share: Hello frames written and the replies read back undecoded, so the
    // next request leaves at once (as in the echo row).
    let lat = undecoded_hellos(&d.socket, args.round_trips).await?;
    row(
        &mut latency,
        "IPC round trip, no store (Hello), reply not decoded".into(),
        lat,
        Some((b50, " × echo")),
    );
    // IPC alone: Hello is answered without touching the store.
    let mut c = client(&d.socket).await?;
    let mut lat = Vec::with_capacity(args.round_trips);
    for _ in 0..args.round_trips {
        let t = Instant::now();
        c.call(Payload::Hello {
            token: String::new(),
        })
        .await?;
        lat.push(t.elapsed());
    }
    row(
        &mut latency,
        "IPC round trip, no store (Hello), IpcClient (decodes)".into(),
        lat,
        Some((b50, " × echo")),
    );
    let mut lat = Vec::with_capacity(args.round_trips);
    for i in 0..args.round_trips {
        let t = Instant::now();
        acked(&c.call(Payload::LogEntry(entry(i))).await?)?;
        lat.push(t.elapsed());
    }
    row(
        &mut latency,
        "LogEntry → durable Acknowledgment".into(),
        lat,
        Some((raw50, "")),
    );

    let mut throughput = Table::new(&[
        "path",
        "clients",
        "entries",
        "seconds",
        "entries/s",
        "vs raw batched",
    ]);
    let raw_rate = args.entries as f64 / raw_batched.as_secs_f64();
    throughput.row(vec![
        format!("raw SQLite INSERT, {}-row transactions", args.batch),
        "1".into(),
        thousands(args.entries as u64),
        format!("{:.2}", raw_batched.as_secs_f64()),
        rate(args.entries, raw_batched),
        "1.00".into(),
    ]);
    // Single entries, pipelined from 8 clients (the daemon's group commit at work).
    let single_n = (args.entries / 4).max(1000);
    let (secs, n) = pipelined(&d.socket, 8, single_n, |i| Payload::LogEntry(entry(i))).await?;
    throughput.row(vec![
        "LogEntry, pipelined (64 in flight per client)".into(),
        "8".into(),
        thousands(n as u64),
        format!("{:.2}", secs.as_secs_f64()),
        rate(n, secs),
        format!("{:.2}", n as f64 / secs.as_secs_f64() / raw_rate),
    ]);
    for clients in [1usize, 4] {
        let frames = args.entries / args.batch;
        let batch = args.batch;
        let (secs, frames_done) =
            pipelined(&d.socket, clients, frames, move |i| Payload::LogBatch {
                entries: (0..batch).map(|k| entry(i * batch + k)).collect(),
            })
            .await?;
        let n = frames_done * args.batch;
        throughput.row(vec![
            format!("LogBatch of {}", args.batch),
            clients.to_string(),
            thousands(n as u64),
            format!("{:.2}", secs.as_secs_f64()),
            rate(n, secs),
            format!("{:.2}", n as f64 / secs.as_secs_f64() / raw_rate),
        ]);
    }
    // Many clients, each connected at once and writing sequentially.
    let per_client = 20;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..args.clients {
        let socket = d.socket.clone();
        tasks.spawn(async move {
            let mut c = client(&socket).await?;
            let mut lat = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                acked(&c.call(Payload::LogEntry(entry(k * per_client + i))).await?)?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r??);
    }
    let secs = started.elapsed();
    let (p50, p99, _) = stats(lat.clone());
    throughput.row(vec![
        format!(
            "LogEntry, {per_client} each, p50 {} µs p99 {} µs",
            micros(p50),
            micros(p99)
        ),
        thousands(args.clients as u64),
        thousands(lat.len() as u64),
        format!("{:.2}", secs.as_secs_f64()),
        rate(lat.len(), secs),
        format!("{:.2}", lat.len() as f64 / secs.as_secs_f64() / raw_rate),
    ]);
    let loaded_rss = rss_kib(d.child.id());

    let (made, recorded) = file_events(&d, args.files).await?;
    let mut files = Table::new(&["path", "files", "seconds", "files/s", "recorded", "lost"]);
    files.row(vec![
        "raw: create the files (the file system alone)".into(),
        thousands(args.files as u64),
        format!("{:.2}", made.as_secs_f64()),
        rate(args.files, made),
        "–".into(),
        "–".into(),
    ]);
    files.row(vec![
        "watched: created until every one is recorded".into(),
        thousands(args.files as u64),
        format!("{:.2}", recorded.1.as_secs_f64()),
        rate(args.files, recorded.1),
        thousands(recorded.0),
        thousands((args.files as u64).saturating_sub(recorded.0)),
    ]);

    println!(
        "codi-monitor, synchronous={}; {}\n",
        args.synchronous,
        machine()
    );
    latency.print();
    println!();
    throughput.print();
    println!();
    files.print();
    println!();
    println!(
        "daemon RSS: idle after start {} KiB, after the load {} KiB",
        thousands(idle_rss),
        thousands(loaded_rss)
    );
    drop(d);
    Ok(())
}

/// `total` requests over `clients` connections, each keeping 64 in flight; (elapsed, done).
async fn pipelined(
    socket: &Path,
    clients: usize,
    total: usize,
    make: impl Fn(usize) -> Payload + Send + Sync + Clone + 'static,
) -> anyhow::Result<(Duration, usize)> {
    const WINDOW: usize = 64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..clients {
        let socket = socket.to_path_buf();
        let make = make.clone();
        let mine: Vec<usize> = (k..total).step_by(clients).collect();
        tasks.spawn(async move {
            let mut c = client(&socket).await?;
            let (mut sent, mut done) = (0, 0);
            while done < mine.len() {
                while sent < mine.len() && sent - done < WINDOW {
                    c.send(&Message::request(make(mine[sent]))).await?;
                    sent += 1;
                }
                acked(&c.reply().await?.payload)?;
                done += 1;
            }
            anyhow::Ok(done)
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        done += r??;
    }
    Ok((started.elapsed(), done))
}

/// Creates `n` files in a watched directory: (time to create them, (recorded, time until
/// all were recorded)).
async fn file_events(d: &Daemon, n: usize) -> anyhow::Result<(Duration, (u64, Duration))> {
    let root = d.dir.path().join("watched");
    std::fs::create_dir_all(&root)?;
    let mut c = client(&d.socket).await?;
    let r = c
        .call(Payload::StartMonitoring {
            path: root.clone(),
            recursive: true,
            patterns: vec![],
            session_id: None,
            mode: WatchMode::Native,
        })
        .await?;
    acked(&r)?;
    let started = Instant::now();
    let dir = root.clone();
    let made = tokio::task::spawn_blocking(move || -> std::io::Result<Duration> {
        for i in 0..n {
            std::fs::write(dir.join(format!("f{i:06}.rs")), b"fn main() {}\n")?;
        }
        Ok(started.elapsed())
    })
    .await??;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut recorded = file_event_count(&mut c).await?;
    while recorded < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        recorded = file_event_count(&mut c).await?;
    }
    Ok((made, (recorded, started.elapsed())))
}

async fn file_event_count(c: &mut IpcClient<UnixStream>) -> anyhow::Result<u64> {
    let filter = LogFilter {
        component: Some("file-monitor".into()),
        ..LogFilter::default()
    };
    match c.call(Payload::QueryLogs { filter, limit: 1 }).await? {
        Payload::LogResults { total_count, .. } => Ok(total_count),
        other => anyhow::bail!("{other:?}"),
    }
}

/// A length-prefixed echo server on `socket` (the floor for IPC round trips).
pub async fn bare_echo(socket: PathBuf) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(&socket)?;
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                buf.resize(u32::from_le_bytes(len) as usize, 0);
                if s.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let mut out = len.to_vec();
                out.extend_from_slice(&buf);
                if s.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Round trips against [`bare_echo`] in a child process.
async fn bare_round_trips(n: usize) -> anyhow::Result<Vec<Duration>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("echo.sock");
    let mut child = Command::new(std::env::current_exe()?)
        .arg("bare-echo")
        .arg(&socket)
        .stdin(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match UnixStream::connect(&socket).await {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => {
                let _ = child.kill();
                return Err(e.into());
            }
        }
    };
    let mut frame = Vec::new();
    coditect_proto::ipc::encode_frame(
        &Message::request(Payload::Hello {
            token: String::new(),
        }),
        &mut frame,
    )?;
    let mut back = vec![0u8; frame.len()];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&frame).await?;
        s.read_exact(&mut back).await?;
        lat.push(t.elapsed());
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(lat)
}

/// Hello round trips with raw frames: the reply's bytes are read, not decoded.
async fn undecoded_hellos(socket: &Path, n: usize) -> anyhow::Result<Vec<Duration>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = UnixStream::connect(socket).await?;
    let mut frame = Vec::new();
    coditect_proto::ipc::encode_frame(
        &Message::request(Payload::Hello {
            token: String::new(),
        }),
        &mut frame,
    )?;
    let (mut len, mut body) = ([0u8; 4], vec![0u8; 64 * 1024]);
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        s.write_all(&frame).await?;
        s.read_exact(&mut len).await?;
        let size = (u32::from_le_bytes(len) as usize).min(body.len());
        s.read_exact(&mut body[..size]).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}
