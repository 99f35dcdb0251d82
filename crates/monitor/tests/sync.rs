//! Sync against a real `coditect-hub` process: every acknowledged entry reaches the hub
//! exactly once across a hub crash during steady logging; entries the hub rejects are set
//! aside with its reason; refused credentials keep everything local and say why.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_monitor::store::MonitorStore;
use coditect_proto::Level;
use coditect_proto::ipc::{ComponentStatus, LogEntry, Payload};
use coditect_store::Synchronous;
use coditect_testkit::hub::HubProcess;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn hub_settings(
    c: &mut coditect_monitor::config::Config,
    hub: &HubProcess,
    key: &str,
    workspace: &str,
) {
    c.server_hub.url = Some(hub.url(""));
    c.server_hub.api_key = Some(coditect_monitor::config::Secret::new(key));
    c.server_hub.workspace_id = Some(workspace.into());
    c.server_hub.batch_size = 50;
    c.server_hub.sync_interval = Duration::from_millis(100);
    c.server_hub.max_backoff = Duration::from_millis(800);
    c.server_hub.request_timeout = Duration::from_secs(5);
}

fn line(component: &str, message: String) -> LogEntry {
    LogEntry {
        level: Level::Info,
        component: component.into(),
        message,
        metadata: None,
        session_id: Some("local-session".into()),
        timestamp: None,
        id: None,
    }
}

/// Every entry of `component` on the hub: message → how many times.
async fn on_hub(
    hub: &HubProcess,
    token: &str,
    workspace: &str,
    component: &str,
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!(
            "/api/logs?workspace_id={workspace}&component={component}&limit=1000&order=asc"
        );
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page: Value = hub.get(&path, token).await;
        for item in page["items"].as_array().unwrap() {
            *out.entry(item["message"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// Waits until nothing is left to sync (at most 60 s).
async fn drained(db: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let s = MonitorStore::open(db, Synchronous::Normal).await.unwrap();
        let (pending, _) = s.sync_backlog().await.unwrap();
        s.close().await;
        if pending == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A hub process with an admin token, a workspace and an API key bound to it.
async fn hub_with_key(dir: &std::path::Path) -> (HubProcess, String, String, String) {
    let hub = tokio::task::block_in_place(|| HubProcess::start(dir));
    let token = hub.admin_token().await;
    let workspace = hub.workspace(&token, "laptop").await;
    let key = hub.api_key(&token, Some(&workspace)).await;
    (hub, token, workspace, key)
}

/// The daemon's `sync` component.
async fn sync_status(c: &mut Client<tokio::net::UnixStream>) -> ComponentStatus {
    match c.call(Payload::GetStatus).await {
        Payload::Status { components, .. } => {
            components.into_iter().find(|s| s.name == "sync").unwrap()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_arrives_exactly_once_across_a_hub_crash() {
    let hub_dir = tempfile::tempdir().unwrap();
    let (mut hub, _, workspace, key) = hub_with_key(hub_dir.path()).await;
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        hub_settings(c, &hub, &key, &workspace)
    })
    .await;

    // Steady logging from another task while the hub goes away and comes back.
    let socket = d.socket.clone();
    let writer = tokio::spawn(async move {
        let mut c = Client::new(tokio::net::UnixStream::connect(&socket).await.unwrap());
        let started = Instant::now();
        let mut n = 0usize;
        while started.elapsed() < Duration::from_secs(6) {
            accepted(
                &c.call(Payload::LogEntry(line("steady", format!("m-{n}"))))
                    .await,
            );
            n += 1;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        n
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::block_in_place(|| hub.kill());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = d.client().await;
    let sync = sync_status(&mut c).await;
    assert_eq!(sync.status, "degraded", "{sync:?}");
    assert!(
        sync.detail.as_deref().unwrap().contains("unreachable"),
        "{sync:?}"
    );
    tokio::task::block_in_place(|| hub.restart());
    let written = writer.await.unwrap();
    assert!(written > 200, "only {written} entries written");

    assert!(drained(&d.db).await, "entries left unsynced");
    let token = hub.admin_token().await;
    let seen = on_hub(&hub, &token, &workspace, "steady").await;
    let missing: Vec<usize> = (0..written)
        .filter(|i| !seen.contains_key(&format!("m-{i}")))
        .collect();
    assert!(missing.is_empty(), "missing on the hub: {missing:?}");
    let doubled: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "stored twice: {doubled:?}");
    assert_eq!(seen.len(), written);
    let sync = sync_status(&mut c).await;
    assert_eq!(sync.status, "healthy", "{sync:?}");
    d.stop().await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_entries_are_set_aside_and_bad_keys_keep_everything() {
    let hub_dir = tempfile::tempdir().unwrap();
    let (mut hub, token, workspace, key) = hub_with_key(hub_dir.path()).await;

    // A key the hub does not know: nothing leaves, the status says why.
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        hub_settings(c, &hub, "cdk_not-a-real-key-0000000000000000", &workspace)
    })
    .await;
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::LogEntry(line("keyed", "kept".into())))
            .await,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let detail = loop {
        let detail = sync_status(&mut c).await.detail.unwrap();
        if detail.contains("last error") || Instant::now() > deadline {
            break detail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(detail.contains("refused the credentials"), "{detail}");
    assert!(detail.contains("1 entries pending"), "{detail}");
    assert!(
        !detail.contains("cdk_not-a-real-key"),
        "the key is never shown: {detail}"
    );
    let dir = d.stop().await;

    // With the right key: the entry kept above goes, a too-old entry is refused by the
    // hub and set aside with its reason, never retried.
    let d = spawn_with(dir, false, |c| hub_settings(c, &hub, &key, &workspace)).await;
    let mut c = d.client().await;
    let mut old = line("keyed", "from last month".into());
    old.timestamp = Some(chrono::Utc::now() - chrono::Duration::days(30));
    accepted(
        &c.call(Payload::LogBatch {
            entries: vec![old, line("keyed", "fresh".into())],
        })
        .await,
    );
    assert!(drained(&d.db).await, "entries left unsynced");
    let seen = on_hub(&hub, &token, &workspace, "keyed").await;
    assert_eq!(
        seen,
        HashMap::from([("kept".to_string(), 1), ("fresh".to_string(), 1)])
    );
    let store = MonitorStore::open(&d.db, Synchronous::Normal)
        .await
        .unwrap();
    let rejected = store.sync_rejections(10).await.unwrap();
    store.close().await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].1, "from last month");
    assert!(rejected[0].2.contains("timestamp"), "{rejected:?}");
    d.stop().await;
    hub.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_hub_is_waited_for_as_it_asks() {
    let hub_dir = tempfile::tempdir().unwrap();
    // 100 entries per second for the tenant: the backlog below takes ~5 s to let in.
    let hub = tokio::task::block_in_place(|| {
        HubProcess::start_with(hub_dir.path(), &["--ingest-rate-per-tenant", "100"], &[])
    });
    let token = hub.admin_token().await;
    let workspace = hub.workspace(&token, "laptop").await;
    let key = hub.api_key(&token, Some(&workspace)).await;
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        hub_settings(c, &hub, &key, &workspace);
        c.server_hub.batch_size = 100;
        // Without Retry-After the syncer would retry every few milliseconds.
        c.server_hub.max_backoff = Duration::from_millis(20);
    })
    .await;
    let mut c = d.client().await;
    let entries: Vec<LogEntry> = (0..500)
        .map(|i| line("limited", format!("r-{i}")))
        .collect();
    accepted(&c.call(Payload::LogBatch { entries }).await);
    let mut saw_limit = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sync = sync_status(&mut c).await;
        let detail = sync.detail.unwrap_or_default();
        saw_limit |= detail.contains("RATE_LIMITED");
        if detail.starts_with("0 entries pending") || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_limit, "the hub never said it was rate limiting");
    let seen = on_hub(&hub, &token, &workspace, "limited").await;
    assert_eq!(seen.len(), 500);
    assert!(seen.values().all(|n| *n == 1));
    let refused = hub
        .logs()
        .iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .is_ok_and(|v| v["message"] == "request handled" && v["status"] == 429)
        })
        .count();
    assert!(
        (1..=20).contains(&refused),
        "{refused} requests refused: Retry-After was not honoured"
    );
    d.stop().await;
}

/// A hub that answers the first batch `409 CONFLICT` (its batch id was used for other
/// content, e.g. by this monitor before an upgrade changed how it writes entries) and
/// accepts the rest: the monitor sends the same entries again under a new batch id, and
/// they are marked synced. (The real hub's 409 is tested in the hub's hardening tests; a
/// stand-in makes this client-side path deterministic.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_batch_id_is_given_up_for_a_new_one() {
    use std::sync::{Arc, Mutex};
    /// (batch id, entry ids) of every batch the stand-in received.
    type Received = Arc<Mutex<Vec<(String, Vec<String>)>>>;
    let seen: Received = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/api/logs/batch",
        axum::routing::post(move |body: axum::Json<Value>| {
            let recorded = recorded.clone();
            async move {
                let batch_id = body["batch_id"].as_str().unwrap_or_default().to_string();
                let ids: Vec<String> = body["entries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["id"].as_str().unwrap().to_string())
                    .collect();
                let n = ids.len();
                let first = {
                    let mut seen = recorded.lock().unwrap();
                    seen.push((batch_id.clone(), ids));
                    seen.len() == 1
                };
                if first {
                    return (
                        axum::http::StatusCode::CONFLICT,
                        axum::Json(serde_json::json!({"error": {"code": "CONFLICT",
                            "message": "idempotency key reused for a different request",
                            "timestamp": "2026-12-01T00:00:00Z"}})),
                    );
                }
                (
                    axum::http::StatusCode::ACCEPTED,
                    axum::Json(serde_json::json!({"processed": n, "rejected": [],
                        "storage": "local", "batch_id": batch_id})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        c.server_hub.url = Some(format!("http://{addr}"));
        c.server_hub.api_key = Some(coditect_monitor::config::Secret::new(
            "cdk_stand-in-key-000000000000000000",
        ));
        c.server_hub.workspace_id = Some(uuid::Uuid::now_v7().to_string());
        c.server_hub.sync_interval = Duration::from_millis(100);
        c.server_hub.max_backoff = Duration::from_millis(800);
    })
    .await;
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::LogBatch {
            entries: (0..3)
                .map(|i| line("rekey", format!("entry {i}")))
                .collect(),
        })
        .await,
    );
    assert!(drained(&d.db).await, "entries left unsynced");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0].0, seen[1].0, "a new batch id");
    assert_eq!(seen[0].1, seen[1].1, "the same entries, by their ids");
    d.stop().await;
}
