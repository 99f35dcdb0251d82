//! The embedded engine against real SQLite files.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_store::{
    AuditStore, SqliteConfig, SqliteStore, StoreError, Synchronous, Tenant, TenantStore,
};
use std::sync::mpsc;
use std::time::Duration;

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(dir.path().join("test.db")))
        .await
        .expect("open")
}

#[tokio::test]
async fn tenants_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::tenants_round_trip(&store).await;
    common::tenants_paginate_in_id_order(&store).await;
    store.close().await;
}

#[tokio::test]
async fn opens_in_wal_with_foreign_keys_and_the_configured_durability() {
    let dir = tempfile::tempdir().unwrap();
    for (sync, level) in [(Synchronous::Full, 2), (Synchronous::Normal, 1)] {
        let mut config = SqliteConfig::new(dir.path().join(format!("{level}.db")));
        config.synchronous = sync;
        let store = SqliteStore::open(config).await.unwrap();
        let (mode, fk, synchronous) = store
            .write(|c| {
                let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
                let fk: i64 = c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))?;
                let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
                Ok((mode, fk, sync))
            })
            .await
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(fk, 1);
        assert_eq!(synchronous, level);
        store.close().await;
    }
}

#[tokio::test]
async fn migrations_apply_once_and_reopen_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let count = |store: SqliteStore| async move {
        let n = store
            .read(|c| {
                Ok(
                    c.query_row("SELECT count(*) FROM coditect_migrations", [], |r| {
                        r.get::<_, i64>(0)
                    })?,
                )
            })
            .await
            .unwrap();
        store.close().await;
        n
    };
    let first = count(open(&dir).await).await;
    let second = count(open(&dir).await).await;
    assert_eq!(first, coditect_store::migrate::SQLITE.len() as i64);
    assert_eq!(second, first);
}

#[tokio::test]
async fn concurrent_openers_of_one_file_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(open(&dir), open(&dir));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn an_edited_migration_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    open(&dir).await.close().await;
    let conn = rusqlite_connection(&dir);
    conn.execute(
        "UPDATE coditect_migrations SET checksum = 'edited' WHERE version = 1",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(SqliteConfig::new(dir.path().join("test.db")))
        .await
        .err()
        .expect("open must fail");
    assert!(
        matches!(err, StoreError::Migration(ref m) if m.contains("changed")),
        "{err}"
    );
}

fn rusqlite_connection(dir: &tempfile::TempDir) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.path().join("test.db")).unwrap()
}

#[tokio::test]
async fn queued_writes_commit_in_groups_and_a_failing_job_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("test.db"));
    config.max_group = 128;
    let store = SqliteStore::open(config).await.unwrap();
    let before = store.writer_stats();

    // Park the writer on a job that waits until 300 more jobs are queued behind it.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (running_tx, running_rx) = mpsc::channel::<()>();
    let blocker = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(move |_| {
                    running_tx.send(()).unwrap();
                    release_rx.recv_timeout(Duration::from_secs(30)).ok();
                    Ok(())
                })
                .await
        })
    };
    tokio::task::spawn_blocking(move || running_rx.recv().unwrap())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // Every third job reuses one name: exactly one of those may win.
            let name = if i % 3 == 1 {
                "dup".to_string()
            } else {
                format!("t{i}")
            };
            let tenant = Tenant::new(name);
            let result = store.create_tenant(&tenant).await;
            (i, tenant, result)
        }));
    }
    while store.write_queue_depth() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release_tx.send(()).unwrap();
    blocker.await.unwrap().unwrap();

    let mut ok = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (i, tenant, result) = task.await.unwrap();
        match result {
            Ok(()) => ok.push(tenant),
            Err(StoreError::Conflict(_)) => {
                assert_eq!(i % 3, 1);
                conflicts += 1;
            }
            Err(e) => panic!("job {i}: {e}"),
        }
    }
    assert_eq!(conflicts, 99, "100 jobs wanted the same name: one won");
    assert_eq!(ok.len(), 201);
    for t in &ok {
        assert_eq!(store.get_tenant(t.id).await.unwrap().as_ref(), Some(t));
    }
    let stats = store.writer_stats();
    assert_eq!(stats.jobs - before.jobs, 301);
    // 1 group for the blocker, then 300 queued jobs in groups of at most 128.
    assert_eq!(stats.groups - before.groups, 1 + 3);
    store.close().await;
}

#[tokio::test]
async fn a_panicking_write_job_is_an_error_and_the_writer_survives() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let result = store
        .write(|_| -> Result<(), StoreError> { panic!("boom") })
        .await;
    assert!(matches!(result, Err(StoreError::Internal(_))));
    common::tenants_round_trip(&store).await;
    store.close().await;
}

#[tokio::test]
async fn readers_never_block_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.create_tenant(&Tenant::new("before")).await.unwrap();

    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (written_tx, written_rx) = mpsc::channel::<()>();
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .read(move |c| {
                    // Hold a read transaction open (a snapshot) until the write is done.
                    c.execute_batch("BEGIN")?;
                    let before: i64 =
                        c.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))?;
                    started_tx.send(()).unwrap();
                    let writer_finished = written_rx.recv_timeout(Duration::from_secs(20)).is_ok();
                    let during: i64 =
                        c.query_row("SELECT count(*) FROM tenants", [], |r| r.get(0))?;
                    c.execute_batch("COMMIT")?;
                    Ok((writer_finished, before, during))
                })
                .await
        })
    };
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    store.create_tenant(&Tenant::new("during")).await.unwrap();
    written_tx.send(()).unwrap();
    let (writer_finished, before, during) = reader.await.unwrap().unwrap();
    assert!(
        writer_finished,
        "the write committed while a read transaction was open"
    );
    assert_eq!((before, during), (1, 1), "the reader keeps its snapshot");
    assert_eq!(store.list_tenants(None, 10).await.unwrap().len(), 2);
    store.close().await;
}

#[tokio::test]
async fn close_commits_queued_writes_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let writes: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.create_tenant(&Tenant::new(format!("q{i}"))).await })
        })
        .collect();
    tokio::task::yield_now().await;
    store.close().await;
    let mut acked = 0;
    for w in writes {
        match w.await.unwrap() {
            Ok(()) => acked += 1,
            Err(StoreError::Closed) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        store.create_tenant(&Tenant::new("late")).await,
        Err(StoreError::Closed)
    ));
    // Every acknowledged write is on disk after a reopen; nothing unacknowledged is.
    let reopened = open(&dir).await;
    assert_eq!(reopened.list_tenants(None, 100).await.unwrap().len(), acked);
    reopened.close().await;
}

#[tokio::test]
async fn probe_reports_a_healthy_store_and_a_closed_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let probe = store.probe().await;
    assert!(probe.healthy && probe.critical);
    assert_eq!(probe.name, "sqlite");
    store.close().await;
    let probe = store.probe().await;
    assert!(!probe.healthy);
    assert_eq!(probe.message.as_deref(), Some("closed"));
}

#[tokio::test]
async fn reads_abandoned_by_their_caller_give_their_connection_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("test.db"));
    config.readers = 2;
    let store = SqliteStore::open(config).await.unwrap();
    // Far more abandoned reads than connections: each caller gives up mid-read.
    for _ in 0..10 {
        let slow = store.read(|_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(1), slow)
                .await
                .is_err()
        );
    }
    for _ in 0..10 {
        store
            .get_tenant(coditect_proto::TenantId::new())
            .await
            .unwrap();
    }
    assert!(store.probe().await.healthy);
    store.close().await;
}

#[tokio::test]
async fn users_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::users_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn sessions_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::sessions_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn login_flows_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::login_flows_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn api_keys_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::api_keys_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn workspaces_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::workspaces_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn orchestration_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::orchestration_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn quota_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::quota_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn audit_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::audit_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn signing_keys_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::signing_keys_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn the_audit_log_refuses_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    let t = coditect_proto::TenantId::new();
    store
        .append_audit(&[common::audit_record(t, "auth.login", "alice")])
        .await
        .unwrap();
    for sql in [
        "UPDATE audit_log SET result = 'forged'",
        "DELETE FROM audit_log",
    ] {
        let err = store
            .write(move |c| Ok(c.execute(sql, [])?))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    store.close().await;
}

#[tokio::test]
async fn logs_search_matches_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::logs_search_matches_brute_force(&store).await;
    store.close().await;
}

#[tokio::test]
async fn logs_are_idempotent_locatable_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::logs_are_idempotent_locatable_and_expire(&store).await;
    store.close().await;
}

#[tokio::test]
async fn logs_racing_appends_store_each_id_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::logs_racing_appends_store_each_id_once(&store).await;
    store.close().await;
}

/// Migration 0005 carries receipts written by earlier versions (keyed by tenant and batch
/// id alone) over to receipts keyed by workspace: the workspace comes from the chunk the
/// receipt was committed with; receipts it cannot place are not carried over.
#[tokio::test]
async fn receipts_from_before_workspace_keys_keep_their_workspace() {
    use coditect_proto::{TenantId, WorkspaceId};
    use coditect_store::LogStore;
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("test.db"));
    config.migrations = &coditect_store::migrate::SQLITE[..4];
    let old = SqliteStore::open(config).await.unwrap();
    let tenant = TenantId::new();
    let (ws, ws2) = (WorkspaceId::new(), WorkspaceId::new());
    let record = || common::record(10, coditect_proto::Level::Info, "api", "m", None);
    let placed = common::chunk(tenant, ws, &[record()]);
    old.append_chunk(&placed).await.unwrap();
    // Two chunks of the tenant received in the same microsecond for two workspaces.
    let mut twin_a = common::chunk(tenant, ws, &[record()]);
    let mut twin_b = common::chunk(tenant, ws2, &[record()]);
    let twin_at = placed.received_at + chrono::Duration::seconds(1);
    (twin_a.received_at, twin_b.received_at) = (twin_at, twin_at);
    old.append_chunk(&twin_a).await.unwrap();
    old.append_chunk(&twin_b).await.unwrap();
    let micros = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros();
    let (at, twin, gone) = (
        micros(placed.received_at),
        micros(twin_at),
        micros(twin_at) + 7,
    );
    let tenant_blob = tenant.as_uuid().as_bytes().to_vec();
    old.write(move |c| {
        for (id, created) in [("old-placed", at), ("old-twin", twin), ("old-gone", gone)] {
            c.execute(
                "INSERT INTO log_batches (tenant_key, batch_id, response, created_at)
                 VALUES ((SELECT tenant_key FROM log_tenants WHERE tenant_id = ?1), ?2, ?3, ?4)",
                rusqlite::params![tenant_blob, id, r#"{"processed":1}"#, created],
            )?;
        }
        Ok(())
    })
    .await
    .unwrap();
    old.close().await;

    let store = open(&dir).await;
    common::old_receipts_were_carried_over(&store, tenant, ws, placed.received_at).await;
    store.close().await;
}

#[tokio::test]
async fn claim_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    common::claim_conform(&store).await;
    store.close().await;
}
