//! Versioned schema migrations, shared bookkeeping for both engines.
//!
//! Each engine has its own ordered list of SQL files under `migrations/<engine>/`. A
//! migration is applied once, recorded in `coditect_migrations` with a checksum of its text,
//! and never edited afterwards: a changed checksum stops start-up. Applying is serialized
//! (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction-scoped advisory lock) and atomic
//! (all pending migrations commit together or not at all), so several replicas may start
//! at once against one database.

use crate::StoreError;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

macro_rules! migrations {
    ($engine:literal: $($version:literal => $name:literal),* $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!("../migrations/", $engine, "/", $name, ".sql")),
        }),*]
    };
}

pub const SQLITE: &[Migration] = migrations!("sqlite": 1 => "0001_init", 2 => "0002_identity", 3 => "0003_logs", 4 => "0004_log_blooms", 5 => "0005_receipts_tickets", 6 => "0006_sso", 7 => "0007_orchestration", 8 => "0008_pool");
pub const POSTGRES: &[Migration] = migrations!("postgres": 1 => "0001_init", 2 => "0002_identity", 3 => "0003_logs", 4 => "0004_log_blooms", 5 => "0005_receipts_tickets", 6 => "0006_sso", 7 => "0007_orchestration", 8 => "0008_pool");

/// The bookkeeping table, identical on both engines.
pub const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS coditect_migrations (
    version BIGINT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

/// Which of `available` still have to run, given what the database says was applied.
/// Fails if an applied migration's text has changed since. Versions the database knows
/// and this binary does not (a newer replica migrated first) are reported, not fatal:
/// migrations only ever add, so an older binary keeps working during a rolling upgrade.
pub fn plan<'a>(
    applied: &[(i64, String)],
    available: &'a [Migration],
) -> Result<Plan<'a>, StoreError> {
    let mut pending = Vec::new();
    for migration in available {
        match applied.iter().find(|(v, _)| *v == migration.version) {
            Some((_, checksum)) if *checksum != migration.checksum() => {
                return Err(StoreError::Migration(format!(
                    "migration {} ({}) was changed after it was applied",
                    migration.version, migration.name
                )));
            }
            Some(_) => {}
            None => pending.push(migration),
        }
    }
    let unknown = applied
        .iter()
        .map(|(v, _)| *v)
        .filter(|v| !available.iter().any(|m| m.version == *v))
        .collect();
    Ok(Plan { pending, unknown })
}

#[derive(Debug)]
pub struct Plan<'a> {
    pub pending: Vec<&'a Migration>,
    /// Applied versions this binary does not know (written by a newer binary).
    pub unknown: Vec<i64>,
}

impl Plan<'_> {
    pub fn log(&self, engine: &'static str) {
        if !self.unknown.is_empty() {
            tracing::warn!(engine, versions = ?self.unknown, "database has migrations newer than this binary");
        }
        for m in &self.pending {
            tracing::info!(
                engine,
                version = m.version,
                name = m.name,
                "applying migration"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_strictly_increasing_and_match_file_names() {
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
            assert_eq!(list[0].version, 1);
            for m in list {
                assert!(
                    m.name.starts_with(&format!("{:04}_", m.version)),
                    "{}",
                    m.name
                );
            }
        }
        let names = |list: &[Migration]| list.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES), "both engines move in step");
    }

    #[test]
    fn plan_skips_applied_and_rejects_edited() {
        let applied: Vec<_> = SQLITE.iter().map(|m| (m.version, m.checksum())).collect();
        let plan = plan(&applied, SQLITE).unwrap();
        assert!(plan.pending.is_empty());
        assert!(plan.unknown.is_empty());

        let plan_all = super::plan(&[], SQLITE).unwrap();
        assert_eq!(plan_all.pending.len(), SQLITE.len());

        let edited = vec![(1, "0".repeat(64))];
        let err = super::plan(&edited, SQLITE).unwrap_err();
        assert!(matches!(err, StoreError::Migration(m) if m.contains("changed")));

        let mut newer = applied.clone();
        newer.push((9999, "x".into()));
        assert_eq!(super::plan(&newer, SQLITE).unwrap().unknown, vec![9999]);
        assert_eq!(
            super::plan(&applied[..1], SQLITE).unwrap().pending.len(),
            SQLITE.len() - 1
        );
    }
}
