//! The shared engine against real PostgreSQL: the suite's cluster for most tests, a
//! private cluster for the tests that stop and start the server.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_store::{AuditStore, PgConfig, PgStore, SchemaState, StoreError, Tenant, TenantStore};
use coditect_testkit::{PgCluster, fresh_database};
use std::time::Duration;

async fn ready_store(url: &str) -> PgStore {
    let store = PgStore::start(&PgConfig::new(url)).expect("start");
    store
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("ready");
    store
}

#[tokio::test]
async fn tenants_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::tenants_round_trip(&store).await;
    common::tenants_paginate_in_id_order(&store).await;
    store.close().await;
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let url = fresh_database().await;
    let stores: Vec<PgStore> = (0..8)
        .map(|_| PgStore::start(&PgConfig::new(url.as_str())).expect("start"))
        .collect();
    for store in &stores {
        store
            .wait_ready(Duration::from_secs(30))
            .await
            .expect("every replica becomes ready");
    }
    // Without the advisory lock, replicas racing on CREATE TABLE fail for good
    // (duplicate table is not transient), so "every replica ready" is the real check.
    let client = stores[0].client().await.unwrap();
    let recorded: i64 = client
        .query_one("SELECT count(*) FROM coditect_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, coditect_store::migrate::POSTGRES.len() as i64);
    drop(client);
    for store in stores {
        store.close().await;
    }
}

#[tokio::test]
async fn an_edited_migration_fails_for_good() {
    let url = fresh_database().await;
    let store = ready_store(&url).await;
    store
        .client()
        .await
        .unwrap()
        .execute(
            "UPDATE coditect_migrations SET checksum = 'edited' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    store.close().await;

    let store = PgStore::start(&PgConfig::new(url.as_str())).unwrap();
    let err = store.wait_ready(Duration::from_secs(30)).await.unwrap_err();
    assert!(matches!(err, StoreError::Migration(_)), "{err}");
    assert!(matches!(store.schema_state(), SchemaState::Failed(_)));
    let probe = store.probe().await;
    assert!(!probe.healthy);
    assert_eq!(probe.message.as_deref(), Some("schema migration failed"));
    assert!(matches!(
        store.get_tenant(coditect_proto::TenantId::new()).await,
        Err(StoreError::Migration(_))
    ));
    store.close().await;
}

#[tokio::test]
async fn statement_timeout_applies_to_every_session() {
    let mut config = PgConfig::new(fresh_database().await);
    config.statement_timeout = Duration::from_millis(200);
    let store = PgStore::start(&config).unwrap();
    store.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = store.client().await.unwrap();
    let err = client.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert!(
        matches!(StoreError::from(err), StoreError::Unavailable(_)),
        "a query over the timeout is cancelled and reported as retryable"
    );
    drop(client);
    store.close().await;
}

#[test]
fn urls_are_checked_before_use() {
    for ok in [
        "postgres://u:p@db:5432/coditect",
        "postgresql://db/coditect",
        "postgres://u@db/coditect?sslmode=disable",
    ] {
        assert_eq!(PgConfig::validate_url(ok), Ok(()), "{ok}");
    }
    for bad in [
        "mysql://u:p@db/coditect",
        "postgres:///coditect",
        "postgres://u:p@db/coditect?sslmode=require",
        "postgres://u:p@db:notaport/coditect",
    ] {
        let err = PgConfig::validate_url(bad).unwrap_err();
        assert!(!err.contains("u:p"), "{err}");
    }
}

#[tokio::test]
async fn target_never_shows_the_password() {
    let config = PgConfig::new("postgres://app:s3cret@db.internal:6543/coditect");
    assert_eq!(config.target(), "app@db.internal:6543/coditect");
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[tokio::test]
async fn starts_while_the_server_is_down_and_connects_when_it_comes_up() {
    // Blocking cluster control is fine: nothing in the store must progress meanwhile.
    let cluster = PgCluster::start().expect("private cluster");
    cluster.stop().unwrap();

    let mut config = PgConfig::new(cluster.url());
    config.connect_timeout = Duration::from_millis(500);
    let store = PgStore::start(&config).expect("starting never needs the server");
    assert!(store.wait_ready(Duration::from_secs(1)).await.is_err());
    assert!(matches!(store.schema_state(), SchemaState::Connecting { attempts } if attempts >= 1));
    let probe = store.probe().await;
    assert!(!probe.healthy);
    assert_eq!(probe.message.as_deref(), Some("unreachable"));
    assert!(matches!(
        store.get_tenant(coditect_proto::TenantId::new()).await,
        Err(StoreError::Unavailable(_))
    ));

    cluster.start_server().expect("start");
    store
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("ready once the server is up");
    assert!(store.probe().await.healthy);
    common::tenants_round_trip(&store).await;
    store.close().await;
    drop(cluster);
}

#[tokio::test]
async fn recovers_after_the_server_restarts() {
    let cluster = PgCluster::start().expect("private cluster");
    let mut config = PgConfig::new(cluster.url());
    config.connect_timeout = Duration::from_millis(500);
    config.pool_size = 4;
    let store = PgStore::start(&config).unwrap();
    store.wait_ready(Duration::from_secs(30)).await.unwrap();
    let before = Tenant::new("before-restart");
    store.create_tenant(&before).await.unwrap();
    // Fill the pool with connections that the restart will kill.
    let mut warm = Vec::new();
    for _ in 0..4 {
        warm.push(store.client().await.unwrap());
    }
    drop(warm);

    cluster.restart().expect("restart");

    // Dead pooled connections are verified and replaced: the next calls succeed without
    // restarting anything on our side.
    let got = store
        .get_tenant(before.id)
        .await
        .expect("read after restart");
    assert_eq!(got.as_ref(), Some(&before));
    let after = Tenant::new("after-restart");
    store
        .create_tenant(&after)
        .await
        .expect("write after restart");
    assert!(store.probe().await.healthy);
    store.close().await;
    drop(cluster);
}

#[tokio::test]
async fn users_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::users_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn sessions_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::sessions_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn login_flows_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::login_flows_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn api_keys_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::api_keys_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn workspaces_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::workspaces_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn orchestration_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::orchestration_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn quota_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::quota_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn audit_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::audit_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn signing_keys_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::signing_keys_conform(&store).await;
    store.close().await;
}

#[tokio::test]
async fn the_audit_log_refuses_updates_deletes_and_truncates() {
    let store = ready_store(&fresh_database().await).await;
    let t = coditect_proto::TenantId::new();
    store
        .append_audit(&[common::audit_record(t, "auth.login", "alice")])
        .await
        .unwrap();
    let client = store.client().await.unwrap();
    for sql in [
        "UPDATE audit_log SET result = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = StoreError::from(client.execute(sql, &[]).await.unwrap_err());
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    drop(client);
    store.close().await;
}

#[tokio::test]
async fn logs_search_matches_brute_force() {
    let store = ready_store(&fresh_database().await).await;
    common::logs_search_matches_brute_force(&store).await;
    store.close().await;
}

#[tokio::test]
async fn logs_are_idempotent_locatable_and_expire() {
    let store = ready_store(&fresh_database().await).await;
    common::logs_are_idempotent_locatable_and_expire(&store).await;
    store.close().await;
}

#[tokio::test]
async fn logs_racing_appends_store_each_id_once() {
    let store = ready_store(&fresh_database().await).await;
    common::logs_racing_appends_store_each_id_once(&store).await;
    store.close().await;
}

/// Migration 0005 on PostgreSQL: receipts written before it (keyed by tenant and batch id
/// alone) keep working, keyed by the workspace of the chunk they were committed with;
/// those it cannot place are not carried over.
#[tokio::test]
async fn receipts_from_before_workspace_keys_keep_their_workspace() {
    use coditect_proto::{TenantId, WorkspaceId};
    let url = fresh_database().await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    // The schema as the version before 0005 left it.
    client
        .batch_execute(coditect_store::migrate::BOOKKEEPING)
        .await
        .unwrap();
    for m in &coditect_store::migrate::POSTGRES[..4] {
        client.batch_execute(m.sql).await.unwrap();
        client
            .execute(
                "INSERT INTO coditect_migrations (version, name, checksum, applied_at)
                 VALUES ($1, $2, $3, now()::text)",
                &[&m.version, &m.name, &m.checksum()],
            )
            .await
            .unwrap();
    }
    let tenant = TenantId::new();
    let (ws, ws2) = (WorkspaceId::new(), WorkspaceId::new());
    let at = coditect_store::now() - chrono::Duration::minutes(5);
    let twin = at + chrono::Duration::seconds(1);
    for (seq, workspace, received) in [(1i64, ws, at), (2, ws, twin), (3, ws2, twin)] {
        client
            .execute(
                "INSERT INTO log_chunks (tenant_id, seq, chunk_id, workspace_id, min_ts, max_ts,
                    count, levels, received_at, data, bloom)
                 VALUES ($1, $2, $3, $4, 1, 1, 1, 4, $5, '\\x00', '\\x00')",
                &[
                    &tenant.as_uuid(),
                    &seq,
                    &uuid::Uuid::now_v7(),
                    &workspace.as_uuid(),
                    &received,
                ],
            )
            .await
            .unwrap();
    }
    let gone = twin + chrono::Duration::seconds(1);
    for (id, created) in [("old-placed", at), ("old-twin", twin), ("old-gone", gone)] {
        client
            .execute(
                "INSERT INTO log_batches (tenant_id, batch_id, response, created_at)
                 VALUES ($1, $2, '{\"processed\":1}', $3)",
                &[&tenant.as_uuid(), &id, &created],
            )
            .await
            .unwrap();
    }
    drop(client);
    let _ = conn.await;

    let store = ready_store(&url).await;
    common::old_receipts_were_carried_over(&store, tenant, ws, at).await;
    store.close().await;
}

#[tokio::test]
async fn claim_conform() {
    let store = ready_store(&fresh_database().await).await;
    common::claim_conform(&store).await;
    store.close().await;
}
