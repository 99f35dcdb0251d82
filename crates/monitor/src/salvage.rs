//! A corrupt store is never fatal and never silently lost: at start-up the file is
//! checked (`PRAGMA quick_check`); a file that fails (or is not a database at all) is
//! moved aside as `<name>.corrupt.<UTC timestamp>` (with its `-wal`), a fresh store is
//! created, and every row that can still be read from the old file (entries, sessions,
//! watches) is copied into it. The report says how many.

use crate::store::MonitorStore;
use coditect_store::{StoreError, Synchronous};
use rusqlite::{Connection, OpenFlags, params};
use std::path::{Path, PathBuf};

/// What a salvage found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalvageReport {
    pub moved_to: PathBuf,
    pub reason: String,
    pub entries: u64,
    pub sessions: u64,
    pub watches: u64,
}

/// Why the file at `path` is corrupt; `Ok(None)` when it is sound (or absent), `Err` when
/// it cannot be judged (no permission, an I/O error): that is no reason to move it aside.
pub fn check(path: &Path) -> Result<Option<String>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let verdict = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|conn| {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0))
    });
    match verdict {
        Ok(s) if s == "ok" => Ok(None),
        Ok(s) => Ok(Some(s)),
        Err(e) if is_corruption(&e) => Ok(Some(e.to_string())),
        Err(e) => Err(StoreError::Internal(format!(
            "cannot check {}: {e}",
            path.display()
        ))),
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Opens the store at `path`, salvaging it first when it is corrupt.
pub async fn open(
    path: &Path,
    synchronous: Synchronous,
) -> Result<(MonitorStore, Option<SalvageReport>), StoreError> {
    let path = &crate::store::secure_path(path)?;
    let owned = path.to_path_buf();
    let problem = tokio::task::spawn_blocking(move || check(&owned))
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))??;
    let Some(reason) = problem else {
        return Ok((MonitorStore::open(path, synchronous).await?, None));
    };
    tracing::error!(path = %path.display(), reason = %reason, "the store is corrupt: salvaging it");
    // The fresh store is built beside the old one and only then swapped in: a crash on the
    // way leaves the corrupt file where it was, and the next start salvages it again.
    let fresh = sibling(path, ".salvage");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(sibling(&fresh, suffix));
    }
    let from = path.to_path_buf();
    let rows = tokio::task::spawn_blocking(move || read_what_can_be_read(&from))
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?;
    let (entries, sessions, watches) = (
        rows.logs.len() as u64,
        rows.sessions.len() as u64,
        rows.watches.len() as u64,
    );
    let building = MonitorStore::open(&fresh, synchronous).await?;
    let restored = building.restore(rows).await;
    building.close().await;
    restored?;
    let moved_to = move_aside(path)
        .map_err(|e| StoreError::Internal(format!("cannot move the corrupt store aside: {e}")))?;
    std::fs::rename(&fresh, path).map_err(|e| {
        StoreError::Internal(format!("cannot put the salvaged store in place: {e}"))
    })?;
    let store = MonitorStore::open(path, synchronous).await?;
    let report = SalvageReport {
        moved_to,
        reason,
        entries,
        sessions,
        watches,
    };
    tracing::warn!(
        moved_to = %report.moved_to.display(),
        entries = report.entries,
        sessions = report.sessions,
        watches = report.watches,
        "salvaged the readable rows of the corrupt store"
    );
    Ok((store, Some(report)))
}

/// `path` with `suffix` appended to its name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let mut target = path.as_os_str().to_owned();
    target.push(format!(".corrupt.{stamp}"));
    let target = PathBuf::from(target);
    std::fs::rename(path, &target)?;
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = target.as_os_str().to_owned();
        to.push(suffix);
        if Path::new(&from).exists() {
            std::fs::rename(&from, &to)?;
        }
    }
    Ok(target)
}

/// Rows read back from a damaged file, column for column.
#[derive(Debug, Default)]
pub struct Salvaged {
    pub logs: Vec<LogRow>,
    pub sessions: Vec<SessionRow>,
    pub watches: Vec<WatchRow>,
}

#[derive(Debug)]
pub struct LogRow {
    pub id: Vec<u8>,
    pub timestamp: i64,
    pub level: i64,
    pub component: String,
    pub session_id: Option<String>,
    pub message: String,
    pub metadata: Option<String>,
    pub synced: i64,
    pub sync_timestamp: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug)]
pub struct SessionRow {
    pub id: String,
    pub identity: String,
    pub agent_type: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

#[derive(Debug)]
pub struct WatchRow {
    pub path: String,
    pub recursive: bool,
    pub patterns: String,
    pub active: bool,
    pub created_at: i64,
    pub session_id: Option<String>,
    pub mode: String,
}

/// How far a damaged file's `seq` is believed (a garbage maximum must not mean years of
/// probing).
const MAX_SEQ: i64 = 100_000_000;

const LOG_COLUMNS: &str = "id, timestamp, level, component, session_id, message, metadata, \
                           synced, sync_timestamp, created_at";

/// One entry as read, made valid where a damaged value would break the fresh store (an id
/// that is not 16 bytes gets a new one, a level out of range becomes `info`).
fn log_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogRow> {
    let id: Vec<u8> = r.get(0)?;
    let level: i64 = r.get(2)?;
    Ok(LogRow {
        id: if id.len() == 16 {
            id
        } else {
            uuid::Uuid::now_v7().as_bytes().to_vec()
        },
        timestamp: r.get(1)?,
        level: if (0..=5).contains(&level) { level } else { 2 },
        component: r.get(3)?,
        session_id: r.get(4)?,
        message: r.get(5)?,
        metadata: r.get(6)?,
        synced: r.get(7)?,
        sync_timestamp: r.get(8)?,
        created_at: r.get(9)?,
    })
}

/// Reads entries in ranges of `seq`; a range that fails is read row by row, so one bad
/// page costs the rows on it, not the rest.
fn read_what_can_be_read(path: &Path) -> Salvaged {
    let mut out = Salvaged::default();
    let Ok(conn) = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE) else {
        return out;
    };
    let max_seq: i64 = conn
        .query_row("SELECT max(seq) FROM logs", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .ok()
        .flatten()
        .or_else(|| {
            conn.query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'logs'",
                [],
                |r| r.get(0),
            )
            .ok()
        })
        .unwrap_or(0)
        .clamp(0, MAX_SEQ);
    const RANGE: i64 = 1000;
    let mut start = 1;
    while start <= max_seq {
        let end = start.saturating_add(RANGE);
        let range: rusqlite::Result<Vec<LogRow>> = conn
            .prepare(&format!(
                "SELECT {LOG_COLUMNS} FROM logs WHERE seq >= ?1 AND seq < ?2 ORDER BY seq"
            ))
            .and_then(|mut s| s.query_map(params![start, end], log_row)?.collect());
        match range {
            Ok(rows) => out.logs.extend(rows),
            Err(_) => {
                for seq in start..end {
                    if let Ok(row) = conn.query_row(
                        &format!("SELECT {LOG_COLUMNS} FROM logs WHERE seq = ?1"),
                        params![seq],
                        log_row,
                    ) {
                        out.logs.push(row);
                    }
                }
            }
        }
        start = end;
    }
    if let Ok(mut s) =
        conn.prepare("SELECT id, identity, agent_type, started_at, ended_at FROM sessions")
        && let Ok(rows) = s.query_map([], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
                identity: r.get(1)?,
                agent_type: r.get(2)?,
                started_at: r.get(3)?,
                ended_at: r.get(4)?,
            })
        })
    {
        out.sessions.extend(rows.filter_map(Result::ok));
    }
    if let Ok(mut s) = conn.prepare(
        "SELECT path, recursive, patterns, active, created_at, session_id, mode
         FROM monitored_paths",
    ) && let Ok(rows) = s.query_map([], |r| {
        Ok(WatchRow {
            path: r.get(0)?,
            recursive: r.get(1)?,
            patterns: r.get(2)?,
            active: r.get(3)?,
            created_at: r.get(4)?,
            session_id: r.get(5)?,
            mode: r.get(6)?,
        })
    }) {
        out.watches.extend(rows.filter_map(Result::ok));
    }
    out
}
