//! The embedded engine: one SQLite file in WAL mode.
//!
//! Shape: one writer thread that commits queued jobs in groups ([`writer`]), and a pool of
//! read-only connections ([`readers`]). Pragmas: `journal_mode=WAL`, `foreign_keys=ON`,
//! `busy_timeout` (for other processes holding the lock, e.g. a backup), and the
//! configured `synchronous` level, which decides what an acknowledgement means:
//!
//! | `synchronous` | acked write survives a process crash (`kill -9`) | survives power loss / OS crash |
//! |---|---|---|
//! | `full` (default) | yes | yes: the WAL is fsynced before `COMMIT` returns |
//! | `normal` | yes: the write is in the WAL file (OS page cache) | no: the last commits may roll back |
//!
//! Group commit amortises the fsync of `full` over every job committed together.

mod audit;
mod identity;
mod logs;
mod readers;
mod tenants;
mod workspaces;
mod writer;

use crate::{StoreError, migrate};
use coditect_proto::ComponentHealth;
pub use logs::OutboxRow;
use rusqlite::{Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
pub use writer::WriterStats;

/// Longest a health probe waits (a backed-up writer queue reads as unhealthy).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How hard SQLite works to make a commit durable (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synchronous {
    Full,
    Normal,
}

impl Synchronous {
    fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        }
    }
}

impl FromStr for Synchronous {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Synchronous::Full),
            "normal" => Ok(Synchronous::Normal),
            _ => Err("one of: full, normal".into()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SqliteConfig {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// How long a statement waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Read-only connections in the pool.
    pub readers: usize,
    /// Write jobs that may wait for the writer before callers are slowed down.
    pub write_queue: usize,
    /// Most jobs committed in one transaction.
    pub max_group: usize,
    /// The schema: the hub's ([`migrate::SQLITE`]) unless another program (the monitor)
    /// keeps its own tables in this engine.
    pub migrations: &'static [migrate::Migration],
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> SqliteConfig {
        SqliteConfig {
            path: path.into(),
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            write_queue: 1024,
            max_group: 256,
            migrations: migrate::SQLITE,
        }
    }
}

/// Handle to an open SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: writer::Writer,
    readers: readers::Readers,
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies pending migrations and starts the
    /// writer thread.
    pub async fn open(config: SqliteConfig) -> Result<SqliteStore, StoreError> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| StoreError::Internal(format!("open task failed: {e}")))?
    }

    fn open_blocking(mut config: SqliteConfig) -> Result<SqliteStore, StoreError> {
        // SQLite is told never to follow a symlink (below): directories above the file
        // that are symlinks are the operator's layout, resolved here once; the file itself
        // being one is refused.
        if let (Some(dir), Some(name)) = (config.path.parent(), config.path.file_name())
            && !dir.as_os_str().is_empty()
            && let Ok(real) = std::fs::canonicalize(dir)
        {
            config.path = real.join(name);
        }
        crate::files::private_database(&config.path).map_err(|e| {
            StoreError::Internal(format!("cannot create {}: {e}", config.path.display()))
        })?;
        // Switching to WAL and migrating need locks that SQLite may refuse at once (without
        // waiting for busy_timeout) while another process opens the same file: retry.
        let deadline = Instant::now() + config.busy_timeout;
        let conn = loop {
            match open_writer(&config) {
                Err(StoreError::Unavailable(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(rand::random_range(5..50)));
                }
                other => break other?,
            }
        };

        let readers = (0..config.readers.max(1))
            .map(|_| open_reader(&config.path, config.busy_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        let writer = writer::Writer::spawn(conn, config.write_queue, config.max_group)?;
        tracing::info!(path = %config.path.display(), synchronous = config.synchronous.pragma(), "sqlite store open");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: config.path,
                writer,
                readers: readers::Readers::new(readers),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Groups and jobs the writer has committed so far.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    /// Bounds the WAL file: after a commit that leaves it over `bytes` it is checkpointed
    /// and truncated before the commit is answered (0: no bound beyond SQLite's own).
    pub fn set_wal_limit(&self, bytes: u64) {
        self.inner.writer.set_wal_limit(bytes);
    }

    /// Write jobs waiting for the writer.
    pub fn write_queue_depth(&self) -> usize {
        self.inner.writer.queue_depth()
    }

    /// Runs `work` on the writer thread inside a savepoint of the current group
    /// transaction. Resolves once the group committed: an `Ok` is durable.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        use tracing::Instrument;
        let span = crate::trace::call("sqlite", "write", None);
        self.inner.writer.write(work).instrument(span).await
    }

    /// Runs `work` on a pooled read-only connection.
    pub async fn read<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        use tracing::Instrument;
        let span = crate::trace::call("sqlite", "read", None);
        self.inner.readers.read(work).instrument(span).await
    }

    /// Probes both paths: a read, and a (no-op) trip through the writer queue, whose
    /// latency shows how far behind the writer is.
    pub async fn probe(&self) -> ComponentHealth {
        let started = Instant::now();
        let both = async {
            self.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
                .await?;
            self.write(|_| Ok(())).await
        };
        let write = tokio::time::timeout(PROBE_TIMEOUT, both)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("probe timed out".into())));
        ComponentHealth {
            name: "sqlite".into(),
            healthy: write.is_ok(),
            latency_ms: coditect_proto::duration_ms(started.elapsed()),
            critical: true,
            message: write.err().map(|e| probe_message(&e)),
        }
    }

    /// Waits for running reads, commits queued writes, checkpoints the WAL and closes.
    pub async fn close(&self) {
        self.inner.readers.close().await;
        self.inner.writer.close().await;
        tracing::info!(path = %self.inner.path.display(), "sqlite store closed");
    }
}

fn open_writer(config: &SqliteConfig) -> Result<Connection, StoreError> {
    // SQLite follows symlinks unless told not to: a database path that is one is refused.
    let mut conn = Connection::open_with_flags(
        &config.path,
        OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.busy_timeout(config.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "sqlite refused WAL mode (journal_mode is {mode})"
        )));
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous={};
         PRAGMA foreign_keys=ON;
         PRAGMA temp_store=MEMORY;
         PRAGMA journal_size_limit=67108864;",
        config.synchronous.pragma()
    ))?;
    migrate_sqlite(&mut conn, config.migrations)?;
    Ok(conn)
}

fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch("PRAGMA query_only=ON;")?;
    Ok(conn)
}

fn migrate_sqlite(
    conn: &mut Connection,
    migrations: &[migrate::Migration],
) -> Result<(), StoreError> {
    // BEGIN IMMEDIATE takes the write lock first, so concurrent openers serialize here.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(migrate::BOOKKEEPING)?;
    let applied = {
        let mut stmt = tx.prepare("SELECT version, checksum FROM coditect_migrations")?;
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?
    };
    let plan = migrate::plan(&applied, migrations)?;
    plan.log("sqlite");
    for m in &plan.pending {
        tx.execute_batch(m.sql)
            .map_err(|e| StoreError::Migration(format!("{} failed: {e}", m.name)))?;
        tx.execute(
            "INSERT INTO coditect_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![m.version, m.name, m.checksum(), chrono::Utc::now().to_rfc3339()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

/// A health message safe to show: the kind of failure, never paths or SQL.
pub(crate) fn probe_message(err: &StoreError) -> String {
    match err {
        StoreError::Unavailable(_) => "unavailable".into(),
        StoreError::Full(_) => "storage full".into(),
        StoreError::Closed => "closed".into(),
        StoreError::Migration(_) => "schema migration failed".into(),
        StoreError::Conflict(_) | StoreError::QuotaExceeded(_) | StoreError::Internal(_) => {
            "failing".into()
        }
    }
}

/// Microseconds since the epoch, the on-disk form of instants.
pub(crate) fn to_micros(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(us: i64) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
    chrono::DateTime::from_timestamp_micros(us)
        .ok_or_else(|| StoreError::Internal(format!("timestamp {us} out of range")))
}

pub(crate) fn uuid_from_blob(bytes: &[u8]) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::from_slice(bytes)
        .map_err(|_| StoreError::Internal("malformed uuid in store".into()))
}

/// Typed column access in the store's on-disk conventions.
pub(crate) trait RowExt {
    fn uuid(&self, idx: usize) -> Result<uuid::Uuid, StoreError>;
    fn opt_uuid(&self, idx: usize) -> Result<Option<uuid::Uuid>, StoreError>;
    fn instant(&self, idx: usize) -> Result<chrono::DateTime<chrono::Utc>, StoreError>;
    fn opt_instant(&self, idx: usize) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError>;
    fn parsed<T: FromStr>(&self, idx: usize) -> Result<T, StoreError>;
}

impl RowExt for rusqlite::Row<'_> {
    fn uuid(&self, idx: usize) -> Result<uuid::Uuid, StoreError> {
        uuid_from_blob(&self.get::<_, Vec<u8>>(idx)?)
    }

    fn opt_uuid(&self, idx: usize) -> Result<Option<uuid::Uuid>, StoreError> {
        self.get::<_, Option<Vec<u8>>>(idx)?
            .map(|b| uuid_from_blob(&b))
            .transpose()
    }

    fn instant(&self, idx: usize) -> Result<chrono::DateTime<chrono::Utc>, StoreError> {
        from_micros(self.get(idx)?)
    }

    fn opt_instant(&self, idx: usize) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError> {
        self.get::<_, Option<i64>>(idx)?
            .map(from_micros)
            .transpose()
    }

    fn parsed<T: FromStr>(&self, idx: usize) -> Result<T, StoreError> {
        let text: String = self.get(idx)?;
        text.parse()
            .map_err(|_| StoreError::Internal(format!("unexpected value {text:?} in store")))
    }
}

/// A UUID in its on-disk form.
pub(crate) fn blob(id: uuid::Uuid) -> [u8; 16] {
    id.into_bytes()
}

/// Collects every row of `rows` through `map`.
pub(crate) fn collect<T>(
    mut rows: rusqlite::Rows<'_>,
    map: impl Fn(&rusqlite::Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}
