//! The monitor's local store: one SQLite file in WAL mode, on the same engine as the hub's
//! embedded store (one writer thread with group commit, a pool of readers), with the
//! monitor's own schema (`migrations/`). A write returns once it is committed: an
//! acknowledgement sent after it is durable.

use coditect_proto::Level;
use coditect_proto::ipc::{LogEntry, LogFilter, StoredLog, WatchMode, WatchedPath};
use coditect_store::migrate::Migration;
use coditect_store::{SqliteConfig, SqliteStore, StoreError, Synchronous};
use rusqlite::{OptionalExtension, params};
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_monitor",
        sql: include_str!("../migrations/0001_monitor.sql"),
    },
    Migration {
        version: 2,
        name: "0002_watch_attribution",
        sql: include_str!("../migrations/0002_watch_attribution.sql"),
    },
    Migration {
        version: 3,
        name: "0003_watch_files",
        sql: include_str!("../migrations/0003_watch_files.sql"),
    },
];

/// A file's recorded state: (path, size, modification time in ns since the epoch).
pub type FileState = (String, u64, Option<i64>);

/// What the file watcher knows changed, written with its entries: per path its new
/// (size, mtime) or `None` when it is gone. The last change of a path wins (a file
/// renamed away and made again within one window is there).
#[derive(Debug, Default, Clone)]
pub struct FileChanges {
    changes: std::collections::BTreeMap<String, Option<(u64, Option<i64>)>>,
}

impl FileChanges {
    pub fn upsert(&mut self, (path, len, mtime): FileState) {
        self.changes.insert(path, Some((len, mtime)));
    }

    pub fn delete(&mut self, path: String) {
        self.changes.insert(path, None);
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Per path: its state, or `None` when gone.
    pub fn into_changes(self) -> impl Iterator<Item = (String, Option<(u64, Option<i64>)>)> {
        self.changes.into_iter()
    }
}

/// About the most text one query page loads (a reply frame holds at most 1 MiB).
const MAX_PAGE_BYTES: usize = 900 * 1024;

/// Entries deleted per rotation step when the store is full.
const ROTATE_STEP: u32 = 5_000;

/// Longest accepted message (bytes); longer entries are refused, not truncated.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Longest accepted metadata (bytes of JSON).
pub const MAX_METADATA: usize = 16 * 1024;

#[derive(Clone)]
pub struct MonitorStore {
    db: SqliteStore,
    /// When entries were last stored (µs since the epoch; 0: never since open): the
    /// workspace agent reports it as activity.
    last_append: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

/// Entries on their way to the hub under one `batch_id`.
#[derive(Debug, Clone)]
pub struct SyncBatch {
    pub batch_id: String,
    pub first_seq: i64,
    pub last_seq: i64,
    /// Attempts so far.
    pub retries: u32,
    pub entries: Vec<SyncRow>,
}

/// A stored entry on its way to the hub: its place in the store and its content.
#[derive(Debug, Clone)]
pub struct SyncRow {
    pub seq: i64,
    pub entry: NewEntry,
}

/// A file archived by the exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    pub original_path: String,
    pub archive_path: String,
    pub sha256: String,
    pub session_id: Option<String>,
    pub file_size: u64,
}

/// An entry checked and ready to store.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub id: Uuid,
    pub ts: i64,
    pub level: Level,
    pub component: String,
    pub message: String,
    pub metadata: Option<String>,
    pub session_id: Option<String>,
}

impl NewEntry {
    /// Checks an entry from a client ("parse, don't validate"): the reason when it is
    /// refused.
    pub fn parse(e: LogEntry) -> Result<NewEntry, String> {
        if e.component.trim().is_empty() {
            return Err("component is empty".into());
        }
        if e.component.len() > 256 {
            return Err("component is over 256 bytes".into());
        }
        if e.component.chars().any(char::is_control) {
            // The hub refuses these too (its summaries list components one per line).
            return Err("component must not contain control characters".into());
        }
        if e.message.len() > MAX_MESSAGE {
            return Err(format!("message is over {MAX_MESSAGE} bytes"));
        }
        let metadata = match e.metadata {
            None | Some(serde_json::Value::Null) => None,
            Some(v @ serde_json::Value::Object(_)) => {
                let text = v.to_string();
                // The hub's rules, so that what is stored here is what it takes.
                coditect_proto::check_metadata(&text, MAX_METADATA)?;
                Some(text)
            }
            Some(_) => return Err("metadata must be a JSON object".into()),
        };
        let ts = e
            .timestamp
            .unwrap_or_else(chrono::Utc::now)
            .timestamp_micros();
        if e.id.is_some_and(|id| id.is_nil()) {
            return Err("id must not be the nil UUID".into());
        }
        Ok(NewEntry {
            id: e.id.unwrap_or_else(Uuid::now_v7),
            ts,
            level: e.level,
            component: e.component,
            message: e.message,
            metadata,
            session_id: e.session_id.filter(|s| !s.is_empty()),
        })
    }
}

fn write_file_changes(c: &rusqlite::Connection, files: &FileChanges) -> Result<(), StoreError> {
    for (path, change) in &files.changes {
        match change {
            Some((len, mtime)) => c
                .prepare_cached(
                    "INSERT INTO watch_files (path, len, mtime_ns) VALUES (?1, ?2, ?3)
                     ON CONFLICT (path) DO UPDATE SET len = ?2, mtime_ns = ?3",
                )?
                .execute(params![
                    path,
                    i64::try_from(*len).unwrap_or(i64::MAX),
                    mtime
                ])?,
            None => c
                .prepare_cached("DELETE FROM watch_files WHERE path = ?1")?
                .execute(params![path])?,
        };
    }
    Ok(())
}

/// Where the store at `path` really is, once it is known to be safe there: its directory
/// (created 0700 when missing) and every one above it can be changed by nobody but us and
/// root, and the file itself, when it exists, is a regular file of ours, not a symlink.
/// Anything else is refused, naming the path and why: a daemon running as root must never
/// write its store into a file someone else chose, nor keep it where they can rename it.
pub fn secure_path(path: &Path) -> Result<PathBuf, StoreError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| StoreError::Internal(why);
    let name = path
        .file_name()
        .ok_or_else(|| refuse(format!("{} names no file", path.display())))?;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    let dir = coditect_store::files::prepare_trusted_dir(&dir, false).map_err(|e| {
        refuse(format!(
            "refusing to keep the store in {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(name);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(format!("cannot inspect {}: {e}", path.display()))),
        Ok(m) if m.file_type().is_symlink() => {
            return Err(refuse(format!(
                "{} is a symlink: refusing to follow it (give the real path)",
                path.display()
            )));
        }
        Ok(m) if !m.is_file() => {
            return Err(refuse(format!("{} is not a regular file", path.display())));
        }
        Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => {
            return Err(refuse(format!(
                "{} belongs to another user (uid {}): refusing to write into it",
                path.display(),
                m.uid()
            )));
        }
        Ok(_) => {}
    }
    Ok(path)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl MonitorStore {
    /// Opens (creating the file and its directory, mode 0700, if needed) and migrates.
    pub async fn open(path: &Path, synchronous: Synchronous) -> Result<MonitorStore, StoreError> {
        let path = secure_path(path)?;
        let mut config = SqliteConfig::new(path);
        config.synchronous = synchronous;
        config.migrations = MIGRATIONS;
        config.readers = 2;
        Ok(MonitorStore {
            db: SqliteStore::open(config).await?,
            last_append: Default::default(),
        })
    }

    pub fn path(&self) -> PathBuf {
        self.db.path().to_path_buf()
    }

    /// When entries (IPC writes, file events) were last stored by this process.
    pub fn last_append(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        match self.last_append.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            us => chrono::DateTime::from_timestamp_micros(us),
        }
    }

    /// Stores entries in one transaction; returns once they are durable.
    ///
    /// When the disk (or `storage.max_size_mb`) is full, the oldest entries already on
    /// the hub are deleted to make room, and the write is tried again; unsynced entries
    /// are never deleted for room: with nothing left to rotate, the write fails (and the
    /// caller is told nothing was stored).
    pub async fn append(&self, entries: Vec<NewEntry>) -> Result<u32, StoreError> {
        self.append_with(entries, FileChanges::default()).await
    }

    /// [`append`](Self::append), and the file watcher's new knowledge in the same
    /// transaction.
    pub async fn append_with(
        &self,
        entries: Vec<NewEntry>,
        files: FileChanges,
    ) -> Result<u32, StoreError> {
        let entries = std::sync::Arc::new(entries);
        let files = std::sync::Arc::new(files);
        let mut rotations = 0;
        loop {
            match self.insert(entries.clone(), files.clone()).await {
                Err(StoreError::Full(e)) if rotations < 8 => {
                    rotations += 1;
                    let freed = self.rotate_synced(ROTATE_STEP).await?;
                    if freed == 0 {
                        tracing::error!(error = %e, "storage full and no synced entries left to rotate");
                        return Err(StoreError::Full(e));
                    }
                    metrics::counter!("codi_rotated_entries_total").increment(freed);
                    tracing::warn!(freed, "storage full: deleted the oldest synced entries");
                }
                Ok(n) => {
                    if n > 0 {
                        self.last_append
                            .fetch_max(now_micros(), std::sync::atomic::Ordering::Relaxed);
                    }
                    return Ok(n);
                }
                other => return other,
            }
        }
    }

    async fn insert(
        &self,
        entries: std::sync::Arc<Vec<NewEntry>>,
        files: std::sync::Arc<FileChanges>,
    ) -> Result<u32, StoreError> {
        let n = entries.len() as u32;
        self.db
            .write(move |c| {
                let created = now_micros();
                // One entry per id: a resent entry (its client lost our answer) is already
                // here, and stays as it was.
                let mut stmt = c.prepare_cached(
                    "INSERT INTO logs (id, timestamp, level, component, session_id, message,
                                       metadata, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (id) DO NOTHING",
                )?;
                for e in entries.iter() {
                    stmt.execute(params![
                        e.id.as_bytes(),
                        e.ts,
                        e.level.as_u8(),
                        e.component,
                        e.session_id,
                        e.message,
                        e.metadata,
                        created,
                    ])?;
                }
                write_file_changes(c, &files)?;
                Ok(n)
            })
            .await
    }

    /// What the watcher recorded of the files below `root`.
    pub async fn watch_files(&self, root: PathBuf) -> Result<Vec<FileState>, StoreError> {
        self.db
            .read(move |c| {
                let prefix = format!("{}/", root.to_string_lossy().trim_end_matches('/'));
                let mut stmt = c.prepare_cached(
                    "SELECT path, len, mtime_ns FROM watch_files
                     WHERE substr(path, 1, length(?1)) = ?1",
                )?;
                let rows = stmt.query_map(params![prefix], |r| {
                    Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get(2)?))
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// Records the watcher's baseline of a new watch (what is there needs no entry).
    pub async fn set_watch_files(&self, changes: FileChanges) -> Result<(), StoreError> {
        let changes = std::sync::Arc::new(changes);
        self.db
            .write(move |c| write_file_changes(c, &changes))
            .await
    }

    /// Deletes up to `n` of the oldest entries the hub already has (or refused).
    pub async fn rotate_synced(&self, n: u32) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                let deleted = c
                    .prepare_cached(
                        "DELETE FROM logs WHERE seq IN
                           (SELECT seq FROM logs WHERE synced != 0 ORDER BY seq LIMIT ?1)",
                    )?
                    .execute(params![n])?;
                c.prepare_cached(
                    "DELETE FROM sync_rejected WHERE seq NOT IN (SELECT seq FROM logs)",
                )?
                .execute([])?;
                Ok(deleted as u64)
            })
            .await
    }

    /// Deletes entries older than `cutoff` (µs): only those settled with the hub when
    /// `keep_unsynced`, else all (no hub is configured: nothing would ever sync them).
    pub async fn apply_retention(
        &self,
        cutoff: i64,
        keep_unsynced: bool,
    ) -> Result<u64, StoreError> {
        self.db
            .write(move |c| {
                let deleted = c
                    .prepare_cached(
                        "DELETE FROM logs WHERE timestamp < ?1 AND (synced != 0 OR ?2 = 0)",
                    )?
                    .execute(params![cutoff, keep_unsynced])?;
                c.prepare_cached(
                    "DELETE FROM sync_rejected WHERE seq NOT IN (SELECT seq FROM logs)",
                )?
                .execute([])?;
                c.prepare_cached(
                    "DELETE FROM sessions WHERE ended_at IS NOT NULL AND ended_at < ?1",
                )?
                .execute(params![cutoff])?;
                Ok(deleted as u64)
            })
            .await
    }

    /// Writes rows salvaged from a corrupt file into this (fresh) store, keeping their ids
    /// and sync state.
    pub async fn restore(&self, rows: crate::salvage::Salvaged) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                let mut stmt = c.prepare_cached(
                    "INSERT OR IGNORE INTO logs (id, timestamp, level, component, session_id,
                        message, metadata, synced, sync_timestamp, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                for r in &rows.logs {
                    stmt.execute(params![
                        r.id,
                        r.timestamp,
                        r.level,
                        r.component,
                        r.session_id,
                        r.message,
                        r.metadata,
                        r.synced,
                        r.sync_timestamp,
                        r.created_at
                    ])?;
                }
                let mut stmt = c.prepare_cached(
                    "INSERT OR IGNORE INTO sessions (id, identity, agent_type, started_at, ended_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for r in &rows.sessions {
                    stmt.execute(params![
                        r.id,
                        r.identity,
                        r.agent_type,
                        r.started_at,
                        r.ended_at
                    ])?;
                }
                let mut stmt = c.prepare_cached(
                    "INSERT OR IGNORE INTO monitored_paths (path, recursive, patterns, active,
                        created_at, session_id, mode)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for r in &rows.watches {
                    stmt.execute(params![
                        r.path,
                        r.recursive,
                        r.patterns,
                        r.active,
                        r.created_at,
                        r.session_id,
                        r.mode
                    ])?;
                }
                Ok(())
            })
            .await
    }

    /// Caps the store's files (the database, its WAL and its shared-memory index) at about
    /// `bytes` together: a quarter is the WAL's, which is checkpointed and truncated after
    /// any commit that leaves it larger; the database gets the rest less room for the
    /// index, and SQLite then reports it full, which [`append`](Self::append) answers by
    /// rotating.
    pub async fn set_max_size(&self, bytes: u64) -> Result<(), StoreError> {
        const SHM: u64 = 64 * 1024;
        let wal = (bytes / 4).max(64 * 1024);
        self.db
            .write(move |c| {
                let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
                let page = page.max(512);
                let main = bytes.saturating_sub(wal + SHM) as i64;
                let pages = (main / page).max(16);
                c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
                c.query_row(
                    &format!("PRAGMA journal_size_limit = {wal}"),
                    [],
                    |_| Ok(()),
                )?;
                let checkpoint_pages = (wal as i64 / page / 2).max(16);
                c.query_row(
                    &format!("PRAGMA wal_autocheckpoint = {checkpoint_pages}"),
                    [],
                    |_| Ok(()),
                )?;
                Ok(())
            })
            .await?;
        self.db.set_wal_limit(wal);
        Ok(())
    }

    /// Newest first, at most `limit` (and about [`MAX_PAGE_BYTES`] of text), and how many
    /// match in all.
    pub async fn query(
        &self,
        filter: LogFilter,
        limit: u32,
    ) -> Result<(Vec<StoredLog>, u64), StoreError> {
        self.db
            .read(move |c| {
                let min_level = filter.min_level.map(|l| l.as_u8());
                let since = filter.since.map(|t| t.timestamp_micros());
                let until = filter.until.map(|t| t.timestamp_micros());
                let conditions = "(?1 IS NULL OR level >= ?1)
                    AND (?2 IS NULL OR component = ?2)
                    AND (?3 IS NULL OR session_id = ?3)
                    AND (?4 IS NULL OR timestamp >= ?4)
                    AND (?5 IS NULL OR timestamp < ?5)";
                let total: i64 = c
                    .prepare_cached(&format!("SELECT count(*) FROM logs WHERE {conditions}"))?
                    .query_row(
                        params![min_level, filter.component, filter.session_id, since, until],
                        |r| r.get(0),
                    )?;
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT seq, id, timestamp, level, component, message, metadata, session_id,
                            synced
                     FROM logs WHERE {conditions} AND (?6 IS NULL OR seq < ?6)
                     ORDER BY seq DESC LIMIT ?7"
                ))?;
                let rows = stmt.query_map(
                    params![
                        min_level,
                        filter.component,
                        filter.session_id,
                        since,
                        until,
                        filter.before_seq,
                        limit
                    ],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, u8>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, Option<String>>(6)?,
                            r.get::<_, Option<String>>(7)?,
                            r.get::<_, bool>(8)?,
                        ))
                    },
                )?;
                let mut out = Vec::new();
                let mut bytes = 0usize;
                for row in rows {
                    let (seq, id, ts, level, component, message, metadata, session_id, synced) =
                        row?;
                    // A page never holds more than one reply frame can carry: the rest is
                    // the next page (`before_seq`), not memory spent now.
                    bytes += message.len() + metadata.as_ref().map_or(0, String::len) + 128;
                    if bytes > MAX_PAGE_BYTES && !out.is_empty() {
                        break;
                    }
                    out.push(StoredLog {
                        seq,
                        id: Uuid::from_slice(&id)
                            .map_err(|_| StoreError::Internal(format!("bad id at seq {seq}")))?,
                        timestamp: chrono::DateTime::from_timestamp_micros(ts).unwrap_or_default(),
                        level: Level::from_u8(level).unwrap_or_default(),
                        component,
                        message,
                        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
                        session_id,
                        synced,
                    });
                }
                Ok((out, total.max(0) as u64))
            })
            .await
    }

    pub async fn session_start(
        &self,
        id: String,
        identity: String,
        agent_type: Option<String>,
    ) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO sessions (id, identity, agent_type, started_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id) DO UPDATE SET identity = ?2, agent_type = ?3, ended_at = NULL",
                )?
                .execute(params![id, identity, agent_type, now_micros()])?;
                Ok(())
            })
            .await
    }

    /// Ends a session; false when there is no such open session.
    pub async fn session_end(&self, id: String) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE sessions SET ended_at = ?2 WHERE id = ?1 AND ended_at IS NULL",
                    )?
                    .execute(params![id, now_micros()])?;
                Ok(n == 1)
            })
            .await
    }

    /// The open session with this id: (identity, agent_type).
    pub async fn session(
        &self,
        id: String,
    ) -> Result<Option<(String, Option<String>)>, StoreError> {
        self.db
            .read(move |c| {
                Ok(c.prepare_cached(
                    "SELECT identity, agent_type FROM sessions WHERE id = ?1 AND ended_at IS NULL",
                )?
                .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
            })
            .await
    }

    pub async fn watch_add(&self, w: WatchedPath) -> Result<(), StoreError> {
        let patterns =
            serde_json::to_string(&w.patterns).map_err(|e| StoreError::Internal(e.to_string()))?;
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO monitored_paths (path, recursive, patterns, active, created_at,
                                                  session_id, mode)
                     VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6)
                     ON CONFLICT (path) DO UPDATE
                     SET recursive = ?2, patterns = ?3, active = 1, session_id = ?5, mode = ?6",
                )?
                .execute(params![
                    w.path.to_string_lossy(),
                    w.recursive,
                    patterns,
                    now_micros(),
                    w.session_id,
                    w.mode.as_str(),
                ])?;
                Ok(())
            })
            .await
    }

    /// Stops watching; false when the path was not watched.
    pub async fn watch_remove(&self, path: PathBuf) -> Result<bool, StoreError> {
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "UPDATE monitored_paths SET active = 0 WHERE path = ?1 AND active = 1",
                    )?
                    .execute(params![path.to_string_lossy()])?;
                Ok(n == 1)
            })
            .await
    }

    /// The active watches (what the daemon resumes after a restart).
    pub async fn watches(&self) -> Result<Vec<WatchedPath>, StoreError> {
        self.db
            .read(|c| {
                let mut stmt = c.prepare_cached(
                    "SELECT path, recursive, patterns, session_id, mode FROM monitored_paths
                     WHERE active = 1 ORDER BY path",
                )?;
                let rows = stmt.query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, bool>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (path, recursive, patterns, session_id, mode) = row?;
                    out.push(WatchedPath {
                        path: path.into(),
                        recursive,
                        patterns: serde_json::from_str(&patterns).unwrap_or_default(),
                        mode: match mode.as_str() {
                            "polling" => WatchMode::Polling,
                            _ => WatchMode::Native,
                        },
                        session_id,
                    });
                }
                Ok(out)
            })
            .await
    }

    pub async fn record_export(&self, r: ExportRecord) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO export_archive (original_path, archive_path, sha256, session_id,
                                                 file_size, processed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    r.original_path,
                    r.archive_path,
                    r.sha256,
                    r.session_id,
                    r.file_size as i64,
                    now_micros()
                ])?;
                Ok(())
            })
            .await
    }

    /// The newest exports first.
    pub async fn exports(&self, limit: u32) -> Result<Vec<ExportRecord>, StoreError> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT original_path, archive_path, sha256, session_id, file_size
                     FROM export_archive ORDER BY id DESC LIMIT ?1",
                )?;
                let rows = stmt.query_map(params![limit], |r| {
                    Ok(ExportRecord {
                        original_path: r.get(0)?,
                        archive_path: r.get(1)?,
                        sha256: r.get(2)?,
                        session_id: r.get(3)?,
                        file_size: r.get::<_, i64>(4)?.max(0) as u64,
                    })
                })?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    /// The batch to send next: the oldest one already claimed (a retry keeps its
    /// `batch_id`, so the hub recognises it), else a new one of the oldest unsynced
    /// entries, at most `max_entries` and about `max_bytes` of text.
    pub async fn sync_claim(
        &self,
        max_entries: u32,
        max_bytes: usize,
    ) -> Result<Option<SyncBatch>, StoreError> {
        self.db
            .write(move |c| {
                let claimed: Option<(String, i64, i64, u32)> = c
                    .prepare_cached(
                        "SELECT batch_id, first_seq, last_seq, retry_count FROM sync_queue
                         ORDER BY id LIMIT 1",
                    )?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .optional()?;
                let (batch_id, first, last, retries, fresh) = match claimed {
                    Some((b, f, l, n)) => (b, f, l, n, false),
                    None => {
                        let mut stmt = c.prepare_cached(
                            "SELECT seq, length(message) + coalesce(length(metadata), 0)
                             FROM logs WHERE synced = 0 ORDER BY seq LIMIT ?1",
                        )?;
                        let mut rows = stmt.query(params![max_entries])?;
                        let (mut first, mut last, mut bytes) = (None, 0i64, 0usize);
                        while let Some(r) = rows.next()? {
                            let (seq, len): (i64, i64) = (r.get(0)?, r.get(1)?);
                            if first.is_some() && bytes + len.max(0) as usize + 256 > max_bytes {
                                break;
                            }
                            first.get_or_insert(seq);
                            last = seq;
                            bytes += len.max(0) as usize + 256;
                        }
                        let Some(first) = first else { return Ok(None) };
                        let batch_id = format!("codi-{}", Uuid::now_v7());
                        (batch_id, first, last, 0, true)
                    }
                };
                if fresh {
                    c.prepare_cached(
                        "INSERT INTO sync_queue (batch_id, first_seq, last_seq, created_at)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![batch_id, first, last, now_micros()])?;
                }
                let mut stmt = c.prepare_cached(
                    "SELECT seq, id, timestamp, level, component, message, metadata, session_id
                     FROM logs WHERE seq BETWEEN ?1 AND ?2 AND synced = 0 ORDER BY seq",
                )?;
                let entries = stmt
                    .query_map(params![first, last], |r| {
                        Ok(SyncRow {
                            seq: r.get(0)?,
                            entry: NewEntry {
                                id: Uuid::from_slice(&r.get::<_, Vec<u8>>(1)?).unwrap_or_default(),
                                ts: r.get(2)?,
                                level: Level::from_u8(r.get(3)?).unwrap_or_default(),
                                component: r.get(4)?,
                                message: r.get(5)?,
                                metadata: r.get(6)?,
                                session_id: r.get(7)?,
                            },
                        })
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Some(SyncBatch {
                    batch_id,
                    first_seq: first,
                    last_seq: last,
                    retries,
                    entries,
                }))
            })
            .await
    }

    /// The hub took the batch (202): its rejected entries are moved aside with their
    /// reasons, the rest marked synced, the claim released, in one transaction.
    pub async fn sync_done(
        &self,
        batch: &SyncBatch,
        rejected: Vec<(i64, String)>,
    ) -> Result<(), StoreError> {
        let (batch_id, first, last) = (batch.batch_id.clone(), batch.first_seq, batch.last_seq);
        self.db
            .write(move |c| {
                let now = now_micros();
                for (seq, reason) in &rejected {
                    c.prepare_cached(
                        "INSERT OR REPLACE INTO sync_rejected (seq, reason, rejected_at)
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![seq, reason, now])?;
                    c.prepare_cached("UPDATE logs SET synced = 2 WHERE seq = ?1")?
                        .execute(params![seq])?;
                }
                c.prepare_cached(
                    "UPDATE logs SET synced = 1, sync_timestamp = ?3
                     WHERE seq BETWEEN ?1 AND ?2 AND synced = 0",
                )?
                .execute(params![first, last, now])?;
                c.prepare_cached("DELETE FROM sync_queue WHERE batch_id = ?1")?
                    .execute(params![batch_id])?;
                Ok(())
            })
            .await
    }

    /// A failed attempt: counted and explained on the claim, which stays for the retry.
    pub async fn sync_failed(&self, batch_id: String, error: String) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE sync_queue SET retry_count = retry_count + 1, last_error = ?2,
                            next_retry = ?3
                     WHERE batch_id = ?1",
                )?
                .execute(params![batch_id, error, now_micros()])?;
                Ok(())
            })
            .await
    }

    /// Gives a claim up unsent (the hub found it too large): its entries are claimed
    /// again, in smaller batches.
    pub async fn sync_release(&self, batch_id: String) -> Result<(), StoreError> {
        self.db
            .write(move |c| {
                c.prepare_cached("DELETE FROM sync_queue WHERE batch_id = ?1")?
                    .execute(params![batch_id])?;
                Ok(())
            })
            .await
    }

    /// Entries waiting for the hub, and when the oldest of them was stored (µs).
    pub async fn sync_backlog(&self) -> Result<(u64, Option<i64>), StoreError> {
        self.db
            .read(|c| {
                let oldest: Option<i64> = c
                    .prepare_cached(
                        "SELECT created_at FROM logs WHERE synced = 0 ORDER BY seq LIMIT 1",
                    )?
                    .query_row([], |r| r.get(0))
                    .optional()?;
                let n: i64 = match oldest {
                    None => 0,
                    Some(_) => c
                        .prepare_cached("SELECT count(*) FROM logs WHERE synced = 0")?
                        .query_row([], |r| r.get(0))?,
                };
                Ok((n.max(0) as u64, oldest))
            })
            .await
    }

    /// Entries the hub refused: (seq, message, reason), newest first.
    pub async fn sync_rejections(
        &self,
        limit: u32,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT r.seq, l.message, r.reason FROM sync_rejected r
                     JOIN logs l ON l.seq = r.seq ORDER BY r.seq DESC LIMIT ?1",
                )?;
                let rows =
                    stmt.query_map(params![limit], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
    }

    pub async fn probe(&self) -> coditect_proto::ComponentHealth {
        self.db.probe().await
    }

    pub async fn close(&self) {
        self.db.close().await
    }
}
