//! No acknowledged entry is ever lost: the hub killed with SIGKILL mid-ingest (embedded),
//! and PostgreSQL stopped and restarted under a steady ingest (shared mode).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_testkit::PgCluster;
use common::{Backend, HubProcess, TestApp, eventually, json, spawn_app_with};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PASSWORD: &str = "durability passphrase";

/// `n` entries with explicit ids, and those ids.
fn batch(n: usize, tag: &str) -> (Vec<Value>, Vec<String>) {
    let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let entries = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": id, "level": "info", "component": "load", "message": format!("{tag} {i}"),
                   "timestamp": chrono::Utc::now().to_rfc3339()})
        })
        .collect();
    (entries, ids)
}

/// Every id stored in the workspace (paging through search).
async fn stored_ids(client: &reqwest::Client, base: &str, token: &str, ws: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = client
            .get(format!(
                "{base}/api/logs?workspace_id={ws}&limit=1000{cursor}"
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

async fn login(client: &reqwest::Client, base: &str) -> String {
    let body: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"email": "root@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_sigkill_at_any_moment() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CODITECT_BOOTSTRAP_EMAIL", "root@example.com"),
        ("CODITECT_BOOTSTRAP_PASSWORD", PASSWORD),
    ];
    let args = [
        "--auth-argon2-memory-kib",
        "1024",
        "--auth-argon2-iterations",
        "1",
    ];
    let client = reqwest::Client::new();
    let mut acked: HashSet<String> = HashSet::new();
    let mut ws = String::new();
    for trial in 0..4 {
        let hub = HubProcess::spawn(dir.path(), &args, &env);
        let base = format!("http://{}", hub.addr.expect("hub up"));
        // The first start bootstraps the admin in the background: retry the login a while.
        let mut token = String::new();
        for _ in 0..200 {
            token = login(&client, &base).await;
            if !token.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!token.is_empty(), "login works");
        if ws.is_empty() {
            let created: Value = client
                .post(format!("{base}/api/v1/workspaces"))
                .bearer_auth(&token)
                .json(&json!({"name": "load", "start": false}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            ws = created["id"].as_str().unwrap().to_string();
        }
        // Everything acknowledged before is still there after the previous kill.
        let stored: HashSet<String> = stored_ids(&client, &base, &token, &ws)
            .await
            .into_iter()
            .collect();
        let lost: Vec<&String> = acked.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "trial {trial}: {} acknowledged entries lost",
            lost.len()
        );

        // Four clients ingest; the hub is killed at a random moment.
        let stop = Arc::new(AtomicBool::new(false));
        let fresh = Arc::new(Mutex::new(Vec::<String>::new()));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (client, base, token, ws) =
                    (client.clone(), base.clone(), token.clone(), ws.clone());
                let (stop, fresh) = (stop.clone(), fresh.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (entries, ids) = batch(50, &format!("t{trial}c{c}b{n}"));
                        let res = client
                            .post(format!("{base}/api/logs/batch"))
                            .bearer_auth(&token)
                            .json(&json!({"entries": entries, "workspace_id": ws}))
                            .send()
                            .await;
                        match res {
                            Ok(r) if r.status() == 202 => fresh.lock().unwrap().extend(ids),
                            Ok(_) => {}
                            Err(_) => break, // the hub is gone
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        let delay = 150 + rand::random::<u64>() % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        hub.signal("KILL");
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.await;
        }
        let new: Vec<String> = fresh.lock().unwrap().clone();
        assert!(
            !new.is_empty() || trial > 0,
            "trial {trial}: some batches were acknowledged"
        );
        acked.extend(new);
        drop(hub);
    }
    // A last restart checks the last kill.
    let hub = HubProcess::spawn(dir.path(), &args, &env);
    let base = format!("http://{}", hub.addr.expect("hub up"));
    let token = login(&client, &base).await;
    let stored: HashSet<String> = stored_ids(&client, &base, &token, &ws)
        .await
        .into_iter()
        .collect();
    let lost = acked.difference(&stored).count();
    assert_eq!(
        lost,
        0,
        "of {} acknowledged entries, {lost} lost",
        acked.len()
    );
    eprintln!("{} acknowledged entries survived 4 kills", acked.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopping_mid_ingest_loses_and_duplicates_nothing() {
    let cluster = PgCluster::start().expect("private cluster");
    let url = cluster.url();
    let app: TestApp = spawn_app_with(
        Backend::Postgres,
        move |c| c.database_url = Some(coditect_hub::config::Secret::new(url)),
        axum::Router::new(),
    )
    .await;
    let (_tenant, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = json(
        app.post_as(
            "/api/v1/workspaces",
            &tokens.access,
            json!({"name": "load", "start": false}),
        )
        .await,
    )
    .await;
    let ws = ws["id"].as_str().unwrap().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let storage = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let writer = {
        let (client, url, token, ws) = (
            app.client.clone(),
            app.url("/api/logs/batch"),
            tokens.access.clone(),
            ws.clone(),
        );
        let (stop, acked, storage) = (stop.clone(), acked.clone(), storage.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (entries, ids) = batch(20, &format!("b{n}"));
                let body = json!({"entries": entries, "workspace_id": ws, "batch_id": format!("chaos-{n}")});
                if let Ok(res) = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    && res.status() == 202
                {
                    let answer: Value = res.json().await.unwrap();
                    let s = answer["storage"].as_str().unwrap_or("?").to_string();
                    *storage.lock().unwrap().entry(s).or_default() += 1;
                    acked.lock().unwrap().extend(ids);
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.stop().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start_server().unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    // The outbox drains by itself.
    let system = app.state.gate().system();
    assert!(
        eventually(Duration::from_secs(60), || async {
            system
                .outbox_status()
                .await
                .map(|s| s.depth == 0)
                .unwrap_or(false)
        })
        .await,
        "outbox drained"
    );
    let counts = storage.lock().unwrap().clone();
    assert!(
        counts.get("local_only").copied().unwrap_or(0) > 0,
        "the outage was seen: {counts:?}"
    );
    assert!(counts.get("dual").copied().unwrap_or(0) > 0, "{counts:?}");
    let acked = acked.lock().unwrap().clone();
    let stored = stored_ids(
        &app.client,
        &format!("http://{}", app.addr),
        &tokens.access,
        &ws,
    )
    .await;
    let unique: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique.len(), stored.len(), "nothing stored twice");
    let missing = acked.iter().filter(|id| !unique.contains(id)).count();
    assert_eq!(
        missing,
        0,
        "of {} acknowledged entries, {missing} lost",
        acked.len()
    );
    eprintln!("{} acknowledged, answers {counts:?}", acked.len());
}
