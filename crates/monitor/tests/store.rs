//! The store under pressure, on real SQLite files: a full store rotates only synced
//! entries, retention keeps what the hub has not got, a corrupt file is moved aside and
//! its readable rows salvaged.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_monitor::store::{MonitorStore, NewEntry};
use coditect_proto::Level;
use coditect_proto::ipc::{LogFilter, Payload};
use coditect_store::{StoreError, Synchronous};
use common::*;
use std::path::Path;

fn new_entry(i: usize, ts: chrono::DateTime<chrono::Utc>) -> NewEntry {
    NewEntry {
        id: uuid::Uuid::now_v7(),
        ts: ts.timestamp_micros(),
        level: Level::Info,
        component: "t".into(),
        message: format!("entry {i} {}", "x".repeat(1000)),
        metadata: None,
        session_id: None,
    }
}

async fn mark_all_synced(s: &MonitorStore) {
    while let Some(b) = s.sync_claim(1000, usize::MAX).await.unwrap() {
        s.sync_done(&b, Vec::new()).await.unwrap();
    }
}

async fn count(s: &MonitorStore, filter: LogFilter) -> u64 {
    s.query(filter, 1).await.unwrap().1
}

async fn unsynced(s: &MonitorStore) -> u64 {
    s.sync_backlog().await.unwrap().0
}

#[tokio::test]
async fn a_full_store_rotates_synced_entries_and_never_unsynced_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = MonitorStore::open(&dir.path().join("m.db"), Synchronous::Normal)
        .await
        .unwrap();
    s.set_max_size(512 * 1024).await.unwrap();
    let now = chrono::Utc::now();
    // Fill with unsynced entries until the store refuses.
    let mut stored = 0usize;
    let err = loop {
        let batch: Vec<NewEntry> = (0..50).map(|i| new_entry(stored + i, now)).collect();
        match s.append(batch).await {
            Ok(n) => stored += n as usize,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert!(stored > 100, "{stored}");
    // The refused batch left nothing behind, and nothing was deleted to make room.
    assert_eq!(count(&s, LogFilter::default()).await, stored as u64);
    assert_eq!(unsynced(&s).await, stored as u64);

    // Once the hub has them, the oldest make room for new entries.
    mark_all_synced(&s).await;
    let mut more = 0usize;
    let half = stored / 100;
    for _ in 0..half {
        let batch: Vec<NewEntry> = (0..50)
            .map(|i| new_entry(100_000 + more + i, now))
            .collect();
        more += s.append(batch).await.unwrap() as usize;
    }
    assert_eq!(more, half * 50);
    assert_eq!(unsynced(&s).await, more as u64, "every new entry is kept");
    let (newest, _) = s.query(LogFilter::default(), 1).await.unwrap();
    assert!(
        newest[0]
            .message
            .starts_with(&format!("entry {} ", 100_000 + more - 1))
    );
    // Fill again with unsynced ones only: the synced rest goes first, then a refusal.
    let err = loop {
        let batch: Vec<NewEntry> = (0..50).map(|i| new_entry(200_000 + i, now)).collect();
        match s.append(batch).await {
            Ok(n) => more += n as usize,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert_eq!(
        unsynced(&s).await,
        more as u64,
        "no unsynced entry was dropped"
    );
    s.close().await;
}

#[tokio::test]
async fn retention_keeps_what_the_hub_has_not_got() {
    let dir = tempfile::tempdir().unwrap();
    let s = MonitorStore::open(&dir.path().join("m.db"), Synchronous::Normal)
        .await
        .unwrap();
    let old = chrono::Utc::now() - chrono::Duration::days(40);
    s.append((0..10).map(|i| new_entry(i, old)).collect())
        .await
        .unwrap();
    mark_all_synced(&s).await;
    s.append((10..15).map(|i| new_entry(i, old)).collect())
        .await
        .unwrap();
    s.append(vec![new_entry(99, chrono::Utc::now())])
        .await
        .unwrap();
    let cutoff = (chrono::Utc::now() - chrono::Duration::days(30)).timestamp_micros();
    assert_eq!(s.apply_retention(cutoff, true).await.unwrap(), 10);
    assert_eq!(count(&s, LogFilter::default()).await, 6);
    assert_eq!(unsynced(&s).await, 6);
    // Without a hub nothing would ever sync them: old entries go regardless.
    assert_eq!(s.apply_retention(cutoff, false).await.unwrap(), 5);
    assert_eq!(count(&s, LogFilter::default()).await, 1);
    s.close().await;
}

fn corrupt_files(db: &Path) -> Vec<std::path::PathBuf> {
    let name = db.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&format!("{name}.corrupt."))
                && !n.ends_with("-wal")
                && !n.ends_with("-shm")
        })
        .collect()
}

async fn salvage_report(c: &mut Client<tokio::net::UnixStream>) -> serde_json::Value {
    match c
        .call(Payload::QueryLogs {
            filter: LogFilter {
                component: Some("codi-monitor".into()),
                ..LogFilter::default()
            },
            limit: 10,
        })
        .await
    {
        Payload::LogResults { entries, .. } => entries
            .into_iter()
            .find_map(|e| e.metadata.filter(|m| m["kind"] == "salvage"))
            .expect("the salvage is recorded"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_corrupt_store_is_moved_aside_and_its_readable_rows_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("m.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    {
        let s = MonitorStore::open(&db, Synchronous::Full).await.unwrap();
        let now = chrono::Utc::now();
        s.append((0..3000).map(|i| new_entry(i, now)).collect())
            .await
            .unwrap();
        s.session_start("s-1".into(), "ada".into(), None)
            .await
            .unwrap();
        s.close().await;
    }
    {
        // Everything into the main file, then garbage over a page in its middle.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
        drop(c);
        let len = std::fs::metadata(&db).unwrap().len();
        let mut bytes = std::fs::read(&db).unwrap();
        let page = (len / 4096 / 2) as usize * 4096;
        for b in &mut bytes[page..page + 4096] {
            *b = 0xA5;
        }
        std::fs::write(&db, bytes).unwrap();
    }
    let d = spawn_with(dir, false, |_| {}).await;
    assert_eq!(
        corrupt_files(&d.db).len(),
        1,
        "the corrupt file is kept aside"
    );
    let mut c = d.client().await;
    let report = salvage_report(&mut c).await;
    let salvaged = report["entries"].as_u64().unwrap();
    assert!(salvaged > 2000 && salvaged < 3000, "{report}");
    assert_eq!(report["sessions"], 1);
    let kept = stored_count(
        &mut c,
        LogFilter {
            component: Some("t".into()),
            ..LogFilter::default()
        },
    )
    .await;
    assert_eq!(kept, salvaged);
    // The fresh store is sound and takes writes.
    accepted(&c.call(Payload::LogEntry(entry(Level::Info, "after"))).await);
    let db = d.db.clone();
    let _dir = d.stop().await;
    let c = rusqlite::Connection::open(&db).unwrap();
    let check: String = c.query_row("PRAGMA quick_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_replaced_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("m.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, vec![0x42u8; 64 * 1024]).unwrap();
    let d = spawn_with(dir, false, |_| {}).await;
    assert_eq!(corrupt_files(&d.db).len(), 1);
    let mut c = d.client().await;
    let report = salvage_report(&mut c).await;
    assert_eq!(report["entries"], 0);
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("not a database"),
        "{report}"
    );
    d.stop().await;
}
