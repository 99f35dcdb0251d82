//! One error type for every store operation, classified by what a caller can do about it.

use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StoreError {
    /// The engine cannot be reached or is too busy right now; retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write would break a uniqueness rule.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The tenant would go over one of its quotas; nothing was written.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The disk (or quota) is full; nothing was written.
    #[error("storage full: {0}")]
    Full(String),
    /// The store was closed (the process is shutting down).
    #[error("store closed")]
    Closed,
    /// The schema on disk does not match this binary's migrations.
    #[error("migration failed: {0}")]
    Migration(String),
    /// Anything else: a bug or corruption. Log it; never show it to a client.
    #[error("store failure: {0}")]
    Internal(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Full(_))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        use rusqlite::ffi;
        let rusqlite::Error::SqliteFailure(failure, _) = &err else {
            return StoreError::Internal(err.to_string());
        };
        match (failure.code, failure.extended_code) {
            (_, ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                StoreError::Conflict(err.to_string())
            }
            (ffi::ErrorCode::DatabaseBusy | ffi::ErrorCode::DatabaseLocked, _) => {
                StoreError::Unavailable(err.to_string())
            }
            (ffi::ErrorCode::DiskFull, _) => StoreError::Full(err.to_string()),
            _ => StoreError::Internal(err.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        if let Some(db) = err.as_db_error() {
            let state = db.code();
            let detail = format!("{} ({}): {}", db.severity(), state.code(), db.message());
            let transient = [
                SqlState::QUERY_CANCELED, // statement_timeout
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::T_R_SERIALIZATION_FAILURE,
                SqlState::T_R_DEADLOCK_DETECTED,
                SqlState::LOCK_NOT_AVAILABLE,
            ];
            if *state == SqlState::UNIQUE_VIOLATION {
                return StoreError::Conflict(detail);
            }
            if *state == SqlState::DISK_FULL {
                return StoreError::Full(detail);
            }
            if transient.contains(state) {
                return StoreError::Unavailable(detail);
            }
            return StoreError::Internal(detail);
        }
        // No SQLSTATE: the connection itself failed (refused, reset, closed, timed out).
        StoreError::Unavailable(with_causes(&err))
    }
}

/// `error: cause: cause…`, since some drivers keep the useful part in `source()`.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uniqueness_violations_are_conflicts() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE CHECK (name <> ''));
             INSERT INTO t VALUES (1, 'a');",
        )
        .unwrap();
        let err = |sql: &str| StoreError::from(conn.execute(sql, []).unwrap_err());
        assert!(matches!(
            err("INSERT INTO t VALUES (1, 'b')"),
            StoreError::Conflict(_)
        ));
        assert!(matches!(
            err("INSERT INTO t VALUES (2, 'a')"),
            StoreError::Conflict(_)
        ));
        assert!(matches!(
            err("INSERT INTO t VALUES (3, NULL)"),
            StoreError::Internal(_)
        ));
        assert!(matches!(
            err("INSERT INTO t VALUES (4, '')"),
            StoreError::Internal(_)
        ));
    }
}
