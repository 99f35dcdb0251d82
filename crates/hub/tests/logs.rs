//! The native log API on both engines: ingestion, per-entry rejection, limits, gzip,
//! idempotency, rate limiting, search and lookup by id.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Role;
use common::{Backend, TestApp, assert_envelope, json, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::io::Write;

both_backends!(
    accepted_entries_are_searchable_and_bad_ones_reported,
    limits_answer_with_the_envelope,
    a_retried_batch_is_stored_once,
    tenants_are_rate_limited,
    search_filters_and_pages,
    only_the_tenant_and_permitted_principals_reach_logs,
);

fn entry(level: &str, component: &str, message: &str) -> Value {
    json!({
        "timestamp": chrono::Utc::now().to_rfc3339(),
        "level": level,
        "component": component,
        "message": message,
        "metadata": {"file": "src/main.rs", "line": 7},
    })
}

async fn send(app: &TestApp, token: &str, ws: &str, entries: Vec<Value>) -> reqwest::Response {
    app.post_as(
        "/api/logs/batch",
        token,
        json!({"entries": entries, "workspace_id": ws, "client_version": "test/1"}),
    )
    .await
}

fn storage_of(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "local",
        Backend::Postgres => "dual",
    }
}

async fn accepted_entries_are_searchable_and_bad_ones_reported(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let entries = vec![
        entry("info", "api", "GET /users 200"),
        entry("LOUD", "api", "bad level"),
        entry("ERROR", "db", "connection reset"),
        json!({"level": "info", "component": "api", "message": "no metadata, no timestamp"}),
        json!({"level": "info", "component": "api", "message": "m", "metadata": "not an object"}),
    ];
    let res = send(&app, &tokens.access, &ws, entries).await;
    assert_eq!(res.status(), 202);
    let body = json(res).await;
    assert_eq!(body["processed"], 3);
    assert_eq!(body["storage"], storage_of(backend));
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(rejected[0]["index"], 1);
    assert!(
        rejected[0]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown level")
    );
    assert_eq!(rejected[1]["index"], 4);
    assert!(!body["batch_id"].as_str().unwrap().is_empty());

    let found = app
        .get_json(&format!("/api/logs?workspace_id={ws}"), &tokens.access)
        .await;
    let items = found["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{found}");
    let messages: Vec<&str> = items
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    assert!(messages.contains(&"connection reset"));
    let err = items.iter().find(|i| i["level"] == "error").unwrap();
    assert_eq!(err["component"], "db");
    assert_eq!(err["workspace_id"], ws.as_str());
    assert_eq!(err["metadata"]["line"], 7);
    // Newest first, and readable by id.
    let ts: Vec<&str> = items
        .iter()
        .map(|i| i["timestamp"].as_str().unwrap())
        .collect();
    assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{ts:?}");
    let one = app
        .get_json(
            &format!("/api/logs/{}", err["id"].as_str().unwrap()),
            &tokens.access,
        )
        .await;
    assert_eq!(one["message"], "connection reset");
    let missing = app
        .get_as(
            &format!("/api/logs/{}", uuid::Uuid::now_v7()),
            &tokens.access,
        )
        .await;
    assert_envelope(missing, 404, "NOT_FOUND").await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn limits_answer_with_the_envelope(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.body_limit = 1 << 20, axum::Router::new()).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let post = |body: Vec<u8>, encoding: Option<&'static str>| {
        let mut req = app
            .client
            .post(app.url("/api/logs/batch"))
            .bearer_auth(&tokens.access)
            .header("content-type", "application/json")
            .body(body);
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        req.send()
    };

    let too_many: Vec<Value> = (0..1001)
        .map(|i| entry("info", "api", &format!("m{i}")))
        .collect();
    let res = send(&app, &tokens.access, &ws, too_many).await;
    let message = assert_envelope(res, 413, "PAYLOAD_TOO_LARGE").await;
    assert!(message.contains("1000"), "{message}");

    assert_envelope(
        post(b"{\"entries\": [".to_vec(), None).await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    let message = assert_envelope(
        post(b"[[]]".to_vec(), None).await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.contains("must be a JSON object"), "{message}");
    let all_bad = vec![entry("nope", "api", "x"), entry("info", "", "y")];
    let message = assert_envelope(
        send(&app, &tokens.access, &ws, all_bad).await,
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.contains("every entry was rejected"), "{message}");
    assert_envelope(
        send(&app, &tokens.access, &ws, vec![]).await,
        400,
        "BAD_REQUEST",
    )
    .await;

    // gzip: accepted when it fits, 413 when it inflates past the limit.
    let body = serde_json::to_vec(
        &json!({"entries": [entry("info", "api", "zipped")], "workspace_id": ws}),
    )
    .unwrap();
    let res = post(gzip(&body), Some("gzip")).await.unwrap();
    assert_eq!(res.status(), 202);
    let padding = "x".repeat(2 << 20);
    let bomb = serde_json::to_vec(
        &json!({"entries": [entry("info", "api", &padding)], "workspace_id": ws}),
    )
    .unwrap();
    let res = post(gzip(&bomb), Some("gzip")).await.unwrap();
    assert_envelope(res, 413, "PAYLOAD_TOO_LARGE").await;
    assert_envelope(
        post(b"not gzip".to_vec(), Some("gzip")).await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert_envelope(
        post(body.clone(), Some("br")).await.unwrap(),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;

    // The workspace must be the caller's.
    let res = send(
        &app,
        &tokens.access,
        &uuid::Uuid::now_v7().to_string(),
        vec![entry("info", "a", "m")],
    )
    .await;
    assert_envelope(res, 404, "NOT_FOUND").await;
    let res = send(
        &app,
        &tokens.access,
        "not-a-uuid",
        vec![entry("info", "a", "m")],
    )
    .await;
    assert_envelope(res, 400, "BAD_REQUEST").await;
}

async fn a_retried_batch_is_stored_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let batch = json!({
        "entries": [entry("info", "api", "once"), entry("warn", "api", "twice?"), entry("bad", "api", "x")],
        "workspace_id": ws,
        "batch_id": "monitor-42",
    });
    let first = app
        .post_as("/api/logs/batch", &tokens.access, batch.clone())
        .await;
    assert_eq!(first.status(), 202);
    let first = json(first).await;
    let retry = app
        .post_as("/api/logs/batch", &tokens.access, batch.clone())
        .await;
    assert_eq!(retry.status(), 202);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry = json(retry).await;
    for field in ["processed", "rejected", "batch_id", "storage"] {
        assert_eq!(retry[field], first[field], "{field}");
    }
    // The same batch under the Idempotency-Key header instead.
    let keyed = json!({"entries": [entry("info", "api", "keyed")], "workspace_id": ws});
    for _ in 0..2 {
        let res = app
            .client
            .post(app.url("/api/logs/batch"))
            .bearer_auth(&tokens.access)
            .header("idempotency-key", "key-7")
            .json(&keyed)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    // Entries with explicit ids are stored once, whatever batch repeats them.
    let id = uuid::Uuid::now_v7().to_string();
    let mut with_id = entry("info", "api", "has an id");
    with_id["id"] = json!(id);
    for _ in 0..2 {
        assert_eq!(
            send(&app, &tokens.access, &ws, vec![with_id.clone()])
                .await
                .status(),
            202
        );
    }
    let found = app
        .get_json(
            &format!("/api/logs?workspace_id={ws}&limit=1000"),
            &tokens.access,
        )
        .await;
    let messages: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    let count = |m: &str| messages.iter().filter(|x| **x == m).count();
    assert_eq!(
        (
            count("once"),
            count("twice?"),
            count("keyed"),
            count("has an id")
        ),
        (1, 1, 1, 1),
        "{messages:?}"
    );
}

async fn tenants_are_rate_limited(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| c.logs.rate_per_tenant = 10,
        axum::Router::new(),
    )
    .await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let ten: Vec<Value> = (0..10)
        .map(|i| entry("info", "api", &format!("m{i}")))
        .collect();
    assert_eq!(
        send(&app, &tokens.access, &ws, ten.clone()).await.status(),
        202
    );
    let res = send(&app, &tokens.access, &ws, ten).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert_envelope(res, 429, "RATE_LIMITED").await;
    // Another tenant has its own budget.
    let (_t2, _a2, other) = app.tenant_with_admin("other").await;
    let ws2 = app.workspace(&other.access, "api").await;
    assert_eq!(
        send(&app, &other.access, &ws2, vec![entry("info", "a", "m")])
            .await
            .status(),
        202
    );
}

async fn search_filters_and_pages(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let other_ws = app.workspace(&tokens.access, "web").await;
    let session = uuid::Uuid::now_v7().to_string();
    for batch in 0..5 {
        let entries: Vec<Value> = (0..50)
            .map(|i| {
                let level = ["debug", "info", "warn", "error"][i % 4];
                let mut e = entry(
                    level,
                    ["api", "db"][i % 2],
                    &format!("request {batch}-{i} needle{}", i % 10),
                );
                if i % 5 == 0 {
                    e["session_id"] = json!(session);
                }
                e
            })
            .collect();
        assert_eq!(send(&app, &tokens.access, &ws, entries).await.status(), 202);
    }
    send(
        &app,
        &tokens.access,
        &other_ws,
        vec![entry("error", "api", "elsewhere needle3")],
    )
    .await;

    let count = |q: String| {
        let (app, ws, token) = (&app, ws.clone(), tokens.access.clone());
        async move {
            let body = app
                .get_json(
                    &format!("/api/logs?workspace_id={ws}&limit=1000&{q}"),
                    &token,
                )
                .await;
            body["items"]
                .as_array()
                .map(|a| a.len())
                .unwrap_or_else(|| panic!("{body}"))
        }
    };
    assert_eq!(count(String::new()).await, 250);
    assert_eq!(count("level=warn".into()).await, 60);
    assert_eq!(count("min_level=warn".into()).await, 120);
    assert_eq!(count("component=db".into()).await, 125);
    assert_eq!(count(format!("session_id={session}")).await, 50);
    assert_eq!(count("q=NEEDLE3".into()).await, 25);
    assert_eq!(count("q=needle3 request".into()).await, 25);
    assert_eq!(count("q=absent".into()).await, 0);
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(count(format!("since={}", urlencode(&future))).await, 0);
    assert_eq!(count(format!("until={}", urlencode(&future))).await, 250);

    // Cursor paging, both orders: every entry exactly once, in order.
    for order in ["desc", "asc"] {
        let mut seen: Vec<String> = Vec::new();
        let mut stamps: Vec<String> = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = app
                .get_json(
                    &format!("/api/logs?workspace_id={ws}&limit=40&order={order}{cursor}"),
                    &tokens.access,
                )
                .await;
            for i in page["items"].as_array().unwrap() {
                seen.push(i["id"].as_str().unwrap().to_string());
                stamps.push(i["timestamp"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = format!("&cursor={c}"),
                None => break,
            }
        }
        assert_eq!(seen.len(), 250, "{order}");
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 250, "{order}: no duplicates");
        let ordered = stamps.windows(2).all(|w| {
            if order == "desc" {
                w[0] >= w[1]
            } else {
                w[0] <= w[1]
            }
        });
        assert!(ordered, "{order}");
    }
    // Bad parameters are 400s.
    for bad in [
        "level=loud",
        "limit=0",
        "limit=1001",
        "order=up",
        "cursor=zzz",
        "level=info&min_level=warn",
        "since=yesterday",
        "nope=1",
    ] {
        let res = app
            .get_as(&format!("/api/logs?{bad}"), &tokens.access)
            .await;
        assert_envelope(res, 400, "BAD_REQUEST").await;
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn only_the_tenant_and_permitted_principals_reach_logs(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let ws2 = app.workspace(&tokens.access, "web").await;
    let res = send(
        &app,
        &tokens.access,
        &ws,
        vec![entry("info", "api", "secret of acme")],
    )
    .await;
    assert_eq!(res.status(), 202);
    let id = app
        .get_json(&format!("/api/logs?workspace_id={ws}"), &tokens.access)
        .await["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Another tenant: sees nothing, cannot write into the workspace.
    let (_t2, _a2, other) = app.tenant_with_admin("other").await;
    let found = app.get_json("/api/logs", &other.access).await;
    assert_eq!(found["items"].as_array().unwrap().len(), 0);
    assert_envelope(
        app.get_as(&format!("/api/logs/{id}"), &other.access).await,
        404,
        "NOT_FOUND",
    )
    .await;
    let res = send(
        &app,
        &other.access,
        &ws,
        vec![entry("info", "api", "intrusion")],
    )
    .await;
    assert_envelope(res, 404, "NOT_FOUND").await;

    // Viewers read but never write.
    let viewer = app.seed_user(tenant, Role::Viewer, false).await;
    let v = app.login(&viewer).await;
    assert_eq!(app.get_as("/api/logs", &v.access).await.status(), 200);
    assert_envelope(
        send(&app, &v.access, &ws, vec![entry("info", "a", "m")]).await,
        403,
        "ACCESS_DENIED",
    )
    .await;

    // A key bound to one workspace writes and reads only there.
    let key = app
        .api_key(
            &tokens.access,
            json!({"name": "monitor", "workspace_id": ws}),
        )
        .await;
    assert_eq!(
        send(&app, &key, &ws, vec![entry("info", "a", "from the key")])
            .await
            .status(),
        202
    );
    assert_envelope(
        send(&app, &key, &ws2, vec![entry("info", "a", "m")]).await,
        403,
        "ACCESS_DENIED",
    )
    .await;
    let mine = app.get_json("/api/logs", &key).await;
    assert_eq!(
        mine["items"].as_array().unwrap().len(),
        2,
        "its workspace only: {mine}"
    );
    let res = app
        .get_as(&format!("/api/logs?workspace_id={ws2}"), &key)
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    // X-API-Key works for ingestion too.
    let res = app
        .client
        .post(app.url("/api/logs/batch"))
        .header("x-api-key", &key)
        .json(&json!({"entries": [entry("info", "a", "via header")], "workspace_id": ws}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
}

/// At most `ingest_max_inflight` ingestion requests are admitted at once, and admission
/// comes before the body is read (so waiting requests hold no body): a request still
/// sending its body holds the only slot, the next one is refused with 503 + Retry-After
/// after its wait, and once the slot is free ingestion goes on.
#[tokio::test]
async fn ingestion_admission_is_bounded_and_precedes_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(
        Backend::Sqlite,
        |c| c.logs.max_inflight = 1,
        axum::Router::new(),
    )
    .await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let body = serde_json::to_vec(&json!({
        "workspace_id": ws,
        "client_version": "test/1",
        "entries": [entry("info", "api", "sent slowly")],
    }))
    .unwrap();
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/logs/batch HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        app.addr,
        tokens.access,
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body[..10]).await.unwrap();
    // Until the hub has admitted the slow request, others still get in.
    let mut attempts = 0;
    let refused = loop {
        attempts += 1;
        assert!(
            attempts < 500,
            "the request sending its body never held the slot"
        );
        let res = send(&app, &tokens.access, &ws, vec![entry("info", "api", "m")]).await;
        if res.status() == 503 {
            break res;
        }
        assert_eq!(res.status(), 202);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    assert_envelope(refused, 503, "UNAVAILABLE").await;

    slow.write_all(&body[10..]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = slow.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed early");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 202"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    drop(slow);
    assert_eq!(
        send(
            &app,
            &tokens.access,
            &ws,
            vec![entry("info", "api", "after")]
        )
        .await
        .status(),
        202
    );
}
