//! What a hostile tenant found (issue 10), each reproduced: poisoned entries that broke
//! search and every tenant's tail, idempotency keys crossing workspaces, OTLP requests
//! partly stored behind an error. On both engines.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::{Level, Role};
use coditect_store::{EncodedChunk, LogRecord};
use common::{Backend, TestApp, Ws, assert_envelope, json, next_text, spawn_app};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::net::TcpStream;

both_backends!(
    nesting_and_size_limits_reject_single_entries_on_every_protocol,
    stored_poison_breaks_no_search_and_no_tail,
    idempotency_keys_never_cross_workspaces,
    a_reused_key_for_other_content_is_a_conflict,
    a_multi_workspace_request_is_authorized_whole,
    tickets_are_single_use,
    a_key_cannot_claim_more_than_its_creator_holds,
    a_guesser_cannot_lock_the_owner_out,
);

/// `{"a":{"a":…1…}}`, `depth` objects deep.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// Posts a native batch given as JSON text (serde_json cannot build deeply nested values).
async fn post_raw(app: &TestApp, token: &str, body: String) -> reqwest::Response {
    app.client
        .post(app.url("/api/logs/batch"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn batch_text(ws: &str, entries: &[String]) -> String {
    format!(
        r#"{{"workspace_id":"{ws}","client_version":"t","entries":[{}]}}"#,
        entries.join(",")
    )
}

fn entry_with_metadata(message: &str, metadata: &str) -> String {
    format!(
        r#"{{"timestamp":"{}","level":"info","component":"x","message":"{message}","metadata":{metadata}}}"#,
        now()
    )
}

async fn nesting_and_size_limits_reject_single_entries_on_every_protocol(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;

    // Native: the issue's reproduction (129 levels), just over the limit (33), at it (32).
    let body = batch_text(
        &ws,
        &[
            entry_with_metadata("poison", &nested(129)),
            entry_with_metadata("too deep", &nested(33)),
            entry_with_metadata("deep enough", &nested(32)),
        ],
    );
    let res = post_raw(&app, &tokens.access, body).await;
    assert_eq!(res.status(), 202);
    let body = json(res).await;
    assert_eq!(body["processed"], 1, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(
        rejected
            .iter()
            .map(|r| r["index"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1]
    );
    for r in rejected {
        assert!(
            r["reason"]
                .as_str()
                .unwrap()
                .contains("nested more than 32 levels"),
            "{r}"
        );
    }
    let found = app
        .get_json(&format!("/api/logs?workspace_id={ws}"), &tokens.access)
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");

    // OTLP/JSON: a record whose attribute nests arrays 34 deep (35 with the attributes
    // object) is refused alone; kvlists nest the same way.
    fn nested_value(depth: usize) -> Value {
        let mut v = json!({"intValue": "1"});
        for i in 0..depth {
            v = if i % 2 == 0 {
                json!({"arrayValue": {"values": [v]}})
            } else {
                json!({"kvlistValue": {"values": [{"key": "a", "value": v}]}})
            };
        }
        v
    }
    let record = |message: &str, value: Value| {
        json!({
            "timeUnixNano": (chrono::Utc::now().timestamp_nanos_opt().unwrap()).to_string(),
            "severityNumber": 9,
            "body": {"stringValue": message},
            "attributes": [{"key": "deep", "value": value}],
        })
    };
    let otlp = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "svc"}},
            {"key": "coditect.workspace.id", "value": {"stringValue": ws}},
        ]},
        "scopeLogs": [{"logRecords": [
            record("otlp deep", nested_value(32)),
            record("otlp fine", nested_value(3)),
        ]}],
    }]});
    let res = app.post_as("/v1/logs", &tokens.access, otlp.clone()).await;
    assert_eq!(res.status(), 200);
    let body = json(res).await;
    assert_eq!(body["partialSuccess"]["rejectedLogRecords"], "1", "{body}");
    assert!(
        body["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("nested more than 32 levels"),
        "{body}"
    );

    // OTLP/protobuf: the same request in protobuf.
    let request: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest =
        serde_json::from_value(otlp).unwrap();
    let res = app
        .client
        .post(app.url("/v1/logs"))
        .bearer_auth(&tokens.access)
        .header("content-type", "application/x-protobuf")
        .header("x-coditect-workspace-id", &ws)
        .body(prost::Message::encode_to_vec(&request))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let answer: opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse =
        prost::Message::decode(&res.bytes().await.unwrap()[..]).unwrap();
    assert_eq!(answer.partial_success.unwrap().rejected_log_records, 1);

    // Loki: structured metadata is flat, so its limit is size: a line whose structured
    // metadata is over 16 KiB is refused alone (Loki answers 400 naming it; the rest is
    // stored).
    let big = "x".repeat(17 * 1024);
    let push = json!({"streams": [{
        "stream": {"service_name": "loki-svc", "coditect_workspace_id": ws},
        "values": [
            [format!("{}", chrono::Utc::now().timestamp_nanos_opt().unwrap()), "loki big", {"blob": big}],
            [format!("{}", chrono::Utc::now().timestamp_nanos_opt().unwrap()), "loki fine"],
        ],
    }]});
    let res = app.post_as("/loki/api/v1/push", &tokens.access, push).await;
    let message = assert_envelope(res, 400, "BAD_REQUEST").await;
    assert!(
        message.contains("metadata is over 16384 bytes"),
        "{message}"
    );
    let found = app
        .get_json(
            &format!("/api/logs?workspace_id={ws}&limit=100"),
            &tokens.access,
        )
        .await;
    let mut messages: Vec<&str> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    messages.sort();
    // "otlp fine" twice: once from the JSON request, once from the protobuf one.
    assert_eq!(
        messages,
        vec!["deep enough", "loki fine", "otlp fine", "otlp fine"]
    );
}

async fn tail_of(app: &TestApp, token: &str) -> Ws {
    let mut ws = common::open_tail(app, token, "").await;
    assert!(next_text(&mut ws).await.contains(r#""type":"connected""#));
    ws
}

/// Text frames until one holds `needle`; the frames before it.
async fn until_text(ws: &mut Ws, needle: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let t = next_text(ws).await;
        if t.contains(needle) {
            return before;
        }
        before.push(t);
    }
}

fn record(message: &str, metadata: Option<String>) -> LogRecord {
    LogRecord {
        id: uuid::Uuid::now_v7(),
        ts: chrono::Utc::now().timestamp_micros(),
        level: Level::Info,
        component: "x".into(),
        message: message.into(),
        metadata,
        session_id: None,
        trace_id: None,
        span_id: None,
    }
}

async fn send(app: &TestApp, token: &str, ws: &str, message: &str) {
    let res = app
        .post_as(
            "/api/logs/batch",
            token,
            json!({"workspace_id": ws, "entries": [{"level": "info", "component": "x", "message": message}]}),
        )
        .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
}

/// Records older versions let in (metadata 200 levels deep), and a chunk that no longer
/// decodes, written through the store directly: search, lookup by id and the tail of
/// their tenant still answer, and every other tenant's tail keeps flowing.
async fn stored_poison_breaks_no_search_and_no_tail(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, tokens) = app.tenant_with_admin("victim").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let (_t2, _admin2, other) = app.tenant_with_admin("bystander").await;
    let other_ws = app.workspace(&other.access, "api").await;
    let mut tail = tail_of(&app, &tokens.access).await;
    let mut other_tail = tail_of(&app, &other.access).await;

    let deep = nested(200);
    let poison = record("poison", Some(deep.clone()));
    let poison_id = poison.id;
    let logs = app.state.gate().system().logs();
    let workspace = ws.parse().unwrap();
    let chunk =
        EncodedChunk::encode(tenant, workspace, chrono::Utc::now(), &[poison], None).unwrap();
    logs.append_chunk(&chunk).await.unwrap();
    let mut garbage = EncodedChunk::encode(
        tenant,
        workspace,
        chrono::Utc::now(),
        &[record("never readable", None)],
        None,
    )
    .unwrap();
    garbage.data = vec![1, 0xff, 0xff, 0xff, 0x0f, 9, 9, 9];
    logs.append_chunk(&garbage).await.unwrap();
    // Written around the pipeline, so no tail has heard of them yet: the next entry makes
    // the tail read everything after what it dispatched last.
    send(&app, &tokens.access, &ws, "after the poison").await;

    // The tail delivers the deep record as stored, skips the undecodable chunk, goes on.
    let first = next_text(&mut tail).await;
    assert!(first.contains(r#""message":"poison""#), "{first}");
    assert!(first.contains(&deep), "metadata as stored");
    let between = until_text(&mut tail, "after the poison").await;
    assert!(between.is_empty(), "{between:?}");
    // Other tenants' tails were never stopped.
    send(&app, &other.access, &other_ws, "bystander entry").await;
    assert!(
        until_text(&mut other_tail, "bystander entry")
            .await
            .is_empty()
    );
    send(&app, &tokens.access, &ws, "later still").await;
    until_text(&mut tail, "later still").await;

    // Search answers, with the deep record's metadata as stored.
    let res = app
        .get_as(&format!("/api/logs?workspace_id={ws}"), &tokens.access)
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(text.contains(&deep), "{}", &text[..200.min(text.len())]);
    for m in ["after the poison", "later still"] {
        assert!(text.contains(m), "{m}");
    }
    assert!(!text.contains("never readable"));
    let res = app
        .get_as(&format!("/api/logs/{poison_id}"), &tokens.access)
        .await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains(&deep));
    // A fresh tail works too (the background task was never lost).
    let mut fresh = tail_of(&app, &tokens.access).await;
    send(&app, &tokens.access, &ws, "for the fresh tail").await;
    until_text(&mut fresh, "for the fresh tail").await;
}

fn key_batch(ws: &str, messages: &[&str]) -> Value {
    json!({
        "workspace_id": ws,
        "client_version": "ci/1",
        "entries": messages.iter().map(|m| json!({"level": "info", "component": "ci", "message": m})).collect::<Vec<_>>(),
    })
}

async fn post_keyed(app: &TestApp, token: &str, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/logs/batch"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn messages_in(app: &TestApp, token: &str, ws: &str) -> Vec<String> {
    let found = app
        .get_json(&format!("/api/logs?workspace_id={ws}&limit=1000"), token)
        .await;
    let mut m: Vec<String> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["message"].as_str().unwrap().to_string())
        .collect();
    m.sort();
    m
}

/// The issue's sequence in both orders: a workspace-bound key and an admin use the same
/// `Idempotency-Key` for different batches into two workspaces. Both are stored, neither
/// is answered with the other's receipt.
async fn idempotency_keys_never_cross_workspaces(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    for (round, bound_first) in [(1, true), (2, false)] {
        let ws1 = app.workspace(&tokens.access, &format!("one-{round}")).await;
        let ws2 = app.workspace(&tokens.access, &format!("two-{round}")).await;
        let bound = app
            .api_key(
                &tokens.access,
                json!({"name": format!("ci-{round}"), "workspace_id": ws1}),
            )
            .await;
        let key = format!("build-4711-part-{round}");
        let by_bound = || post_keyed(&app, &bound, &key, key_batch(&ws1, &["bound entry"]));
        let by_admin = || {
            post_keyed(
                &app,
                &tokens.access,
                &key,
                key_batch(&ws2, &["admin entry"]),
            )
        };
        let (first, second) = if bound_first {
            (by_bound().await, by_admin().await)
        } else {
            (by_admin().await, by_bound().await)
        };
        for res in [first, second] {
            assert_eq!(res.status(), 202);
            assert!(res.headers().get("idempotent-replayed").is_none());
            assert_eq!(json(res).await["processed"], 1);
        }
        assert_eq!(
            messages_in(&app, &tokens.access, &ws1).await,
            vec!["bound entry"]
        );
        assert_eq!(
            messages_in(&app, &tokens.access, &ws2).await,
            vec!["admin entry"]
        );
        // Each retry is still recognised as its own batch.
        let retry = by_bound().await;
        assert_eq!(retry.status(), 202);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(
            messages_in(&app, &tokens.access, &ws1).await,
            vec!["bound entry"]
        );
    }
}

/// A key reused for other content, or by the same principal for another workspace, is
/// 409 `CONFLICT` and stores nothing; the retry of the real batch still replays.
async fn a_reused_key_for_other_content_is_a_conflict(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let ws2 = app.workspace(&tokens.access, "web").await;
    let res = post_keyed(&app, &tokens.access, "k-1", key_batch(&ws, &["first"])).await;
    assert_eq!(res.status(), 202);
    // Same workspace, other entries.
    let res = post_keyed(&app, &tokens.access, "k-1", key_batch(&ws, &["second"])).await;
    let message = assert_envelope(res, 409, "CONFLICT").await;
    assert!(message.contains("idempotency key reused"), "{message}");
    // The same principal, the same key, another workspace.
    let res = post_keyed(&app, &tokens.access, "k-1", key_batch(&ws2, &["first"])).await;
    assert_envelope(res, 409, "CONFLICT").await;
    // The batch id in the body is the same key as the header.
    let mut body = key_batch(&ws, &["third"]);
    body["batch_id"] = json!("k-1");
    let res = app.post_as("/api/logs/batch", &tokens.access, body).await;
    assert_envelope(res, 409, "CONFLICT").await;
    assert_eq!(messages_in(&app, &tokens.access, &ws).await, vec!["first"]);
    assert!(messages_in(&app, &tokens.access, &ws2).await.is_empty());
    // A true retry (a new client_version does not make it another request).
    let mut retry = key_batch(&ws, &["first"]);
    retry["client_version"] = json!("ci/2");
    let res = post_keyed(&app, &tokens.access, "k-1", retry).await;
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(messages_in(&app, &tokens.access, &ws).await, vec!["first"]);
}

/// One OTLP request for two workspaces, one of them another tenant's: refused whole
/// (404), nothing of it stored; the same for Loki. With both workspaces the caller's,
/// both parts are stored.
async fn a_multi_workspace_request_is_authorized_whole(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let mine = app.workspace(&tokens.access, "mine").await;
    let (_t2, _admin2, other) = app.tenant_with_admin("other").await;
    let theirs = app.workspace(&other.access, "theirs").await;
    let bound_elsewhere = app.workspace(&tokens.access, "elsewhere").await;
    let member = app.seed_user(_t, Role::Viewer, false).await;
    let viewer = app.login(&member).await;

    let resource = |ws: &str, message: &str| {
        json!({
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "svc"}},
                {"key": "coditect.workspace.id", "value": {"stringValue": ws}},
            ]},
            "scopeLogs": [{"logRecords": [{
                "timeUnixNano": chrono::Utc::now().timestamp_nanos_opt().unwrap().to_string(),
                "body": {"stringValue": message},
            }]}],
        })
    };
    let res = app
        .post_as(
            "/v1/logs",
            &tokens.access,
            json!({"resourceLogs": [resource(&mine, "otlp mine"), resource(&theirs, "otlp theirs")]}),
        )
        .await;
    assert_eq!(res.status(), 404);
    // A viewer may not write at all: 403, nothing stored either.
    let res = app
        .post_as(
            "/v1/logs",
            &viewer.access,
            json!({"resourceLogs": [resource(&mine, "otlp viewer")]}),
        )
        .await;
    assert_eq!(res.status(), 403);
    let loki_line = |ws: &str, message: &str| {
        json!({
            "stream": {"service_name": "svc", "coditect_workspace_id": ws},
            "values": [[chrono::Utc::now().timestamp_nanos_opt().unwrap().to_string(), message]],
        })
    };
    let res = app
        .post_as(
            "/loki/api/v1/push",
            &tokens.access,
            json!({"streams": [loki_line(&mine, "loki mine"), loki_line(&theirs, "loki theirs")]}),
        )
        .await;
    assert_envelope(res, 404, "NOT_FOUND").await;
    assert!(messages_in(&app, &tokens.access, &mine).await.is_empty());
    assert!(messages_in(&app, &other.access, &theirs).await.is_empty());

    // Both the caller's: both stored.
    let res = app
        .post_as(
            "/v1/logs",
            &tokens.access,
            json!({"resourceLogs": [resource(&mine, "otlp mine"), resource(&bound_elsewhere, "otlp elsewhere")]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        messages_in(&app, &tokens.access, &mine).await,
        vec!["otlp mine"]
    );
    assert_eq!(
        messages_in(&app, &tokens.access, &bound_elsewhere).await,
        vec!["otlp elsewhere"]
    );
}

/// Shared mode: an outbox row that no longer decodes, and a chunk PostgreSQL refuses for
/// good (a NUL in a component, which PostgreSQL text cannot hold and older versions let
/// in), no longer hold up the chunks queued behind them: they are set aside with their
/// reason, counted, and the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_sets_aside_what_postgres_refuses_for_good() {
    let app = spawn_app(Backend::Postgres).await;
    let (tenant, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let workspace = ws.parse().unwrap();
    let old = chrono::Utc::now() - chrono::Duration::seconds(30);
    let mut refused = record("refused", None);
    refused.component = "bad\u{0}component".into();
    let rows = [
        EncodedChunk::encode(tenant, workspace, old, &[refused], None)
            .unwrap()
            .to_bytes()
            .unwrap(),
        b"not a chunk".to_vec(),
        EncodedChunk::encode(tenant, workspace, old, &[record("delivered", None)], None)
            .unwrap()
            .to_bytes()
            .unwrap(),
    ];
    let db = rusqlite::Connection::open(app.data_dir.path().join("hub.db")).unwrap();
    for bytes in rows {
        db.execute(
            "INSERT INTO log_outbox (tenant_id, chunk, created_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                tenant.as_uuid().as_bytes().to_vec(),
                bytes,
                old.timestamp_micros()
            ],
        )
        .unwrap();
    }
    let system = app.state.gate().system();
    // The refused chunk is tried a few times (PostgreSQL might have refused it for a
    // passing reason) before it is set aside.
    let mut delivered = false;
    for _ in 0..10 {
        let _ = system.replay_outbox(100).await;
        if messages_in(&app, &tokens.access, &ws).await == vec!["delivered"] {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "the chunk behind the bad ones reached postgres");
    let status = system.outbox_status().await.unwrap();
    assert_eq!((status.depth, status.set_aside), (0, 2), "{status:?}");
    let reasons: Vec<String> = db
        .prepare("SELECT reason FROM log_outbox_set_aside ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(reasons.len(), 2);
    assert!(reasons[0].contains("0x00"), "{reasons:?}");
    assert!(reasons[1].contains("undecodable"), "{reasons:?}");
    // Health says so (degraded: the outbox is not critical).
    let health = json(app.get("/health").await).await;
    assert_eq!(health["status"], "degraded", "{health}");
}

/// A background task that panics is started again (and one that returns is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_task_that_panics_is_restarted() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = spawn_app(Backend::Sqlite).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let task = coditect_hub::server::supervise("test_task", &app.state, move |_state| {
        let runs = counted.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) < 2 {
                panic!("a bad record");
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the third run returns, and with it the supervisor")
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hub_background_restarts_total{task=\"test_task\"} 2")),
        "{metrics}"
    );
}

async fn fresh_ticket(app: &TestApp, token: &str) -> String {
    let res = app.post_as("/api/v1/ws-tickets", token, json!({})).await;
    assert_eq!(res.status(), 200);
    json(res).await["ticket"].as_str().unwrap().to_string()
}

/// Upgrades with `ticket`: true when the tail opened.
async fn upgrade_with(app: &TestApp, ticket: &str) -> bool {
    let url = format!("ws://{}/ws/logs?ticket={ticket}", app.addr);
    match tokio_tungstenite::connect_async(url).await {
        Ok((mut ws, _)) => next_text(&mut ws).await.contains("connected"),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 401);
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "AUTH_REQUIRED");
            false
        }
        Err(e) => panic!("{e}"),
    }
}

/// A ticket opens one tail: the second upgrade with it is refused, and of several racing
/// upgrades exactly one wins.
async fn tickets_are_single_use(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ticket = fresh_ticket(&app, &tokens.access).await;
    assert!(upgrade_with(&app, &ticket).await);
    for _ in 0..2 {
        assert!(!upgrade_with(&app, &ticket).await, "a spent ticket");
    }
    let ticket = fresh_ticket(&app, &tokens.access).await;
    let racing = futures_util::future::join_all((0..6).map(|_| upgrade_with(&app, &ticket))).await;
    assert_eq!(racing.iter().filter(|ok| **ok).count(), 1, "{racing:?}");
}

/// Two replicas on one PostgreSQL: a ticket spent on one is refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_spent_on_one_replica_is_refused_by_another() {
    let a = spawn_app(Backend::Postgres).await;
    let b = common::replica_with(&a, |_| {}).await;
    let (_t, _admin, tokens) = a.tenant_with_admin("acme").await;
    let ticket = fresh_ticket(&a, &tokens.access).await;
    assert!(
        upgrade_with(&b, &ticket).await,
        "any replica honours it once"
    );
    assert!(!upgrade_with(&a, &ticket).await);
    assert!(!upgrade_with(&b, &ticket).await);
}

/// A member may mint keys up to its own role, never above; an admin may not give a
/// service account's key more than the service role.
async fn a_key_cannot_claim_more_than_its_creator_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let member = app.seed_user(tenant, Role::Member, false).await;
    let member_tokens = app.login(&member).await;
    let res = app
        .post_as(
            "/api/v1/api-keys",
            &member_tokens.access,
            json!({"name": "too much", "role": "admin"}),
        )
        .await;
    let message = assert_envelope(res, 403, "ACCESS_DENIED").await;
    assert!(
        message.contains("cannot exceed your role (member)"),
        "{message}"
    );
    for role in ["member", "viewer", "service"] {
        let res = app
            .post_as(
                "/api/v1/api-keys",
                &member_tokens.access,
                json!({"name": role, "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201, "{role}");
    }
    let service = app.seed_user(tenant, Role::Service, false).await;
    let res = app
        .post_as(
            "/api/v1/api-keys",
            &admin_tokens.access,
            json!({"name": "svc", "role": "admin", "owner_id": service.id}),
        )
        .await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
    let res = app
        .post_as(
            "/api/v1/api-keys",
            &admin_tokens.access,
            json!({"name": "svc", "role": "service", "owner_id": service.id}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // The refusal is in the audit trail.
    let audit = app
        .get_json("/api/v1/audit?action=access.denied", &admin_tokens.access)
        .await;
    assert!(
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["result"] == "denied" && r["resource_type"] == "api_key"),
        "{audit}"
    );
}

/// A client whose connections come from `ip` (any 127.x.y.z is this machine).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> u16 {
    client_from(ip)
        .post(app.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn counter(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn clear_throttle(
    app: &TestApp,
    token: &str,
    user: coditect_proto::UserId,
) -> reqwest::Response {
    let path = format!("/api/v1/users/{user}/login-throttle");
    app.call(reqwest::Method::DELETE, &path, token, None).await
}

/// Knowing an address is not enough to lock its owner out: the guessing address is
/// refused, the owner elsewhere logs in; guesses from many addresses only slow the account
/// down; an administrator clears what is left.
async fn a_guesser_cannot_lock_the_owner_out(backend: Backend) {
    let app = common::spawn_app_with(
        backend,
        |c| c.auth.login_max_failures = 3,
        axum::Router::new(),
    )
    .await;
    let (tenant, _admin, admin_tokens) = app.tenant_with_admin("acme").await;
    let owner = app.seed_user(tenant, Role::Member, false).await;
    let wrong = "not the password at all";
    for _ in 0..3 {
        assert_eq!(
            login_from(&app, "127.0.0.2", &owner.email, wrong).await,
            401
        );
    }
    assert_eq!(
        login_from(&app, "127.0.0.2", &owner.email, wrong).await,
        429
    );
    assert_eq!(
        login_from(&app, "127.0.0.2", &owner.email, &owner.password).await,
        429,
        "the guessing address is stopped, even with the right password"
    );
    assert_eq!(
        login_from(&app, "127.0.0.3", &owner.email, &owner.password).await,
        200,
        "the owner, from elsewhere, is not"
    );
    // Guesses from 12 more addresses (36 failures > 10 x 3): slowed, never refused.
    let slowed = "auth_logins_total{result=\"slowed\"}";
    let before = counter(&app.get("/metrics").await.text().await.unwrap(), slowed);
    for i in 0..12 {
        for _ in 0..3 {
            let status = login_from(&app, &format!("127.0.1.{i}"), &owner.email, wrong).await;
            assert_eq!(status, 401);
        }
    }
    assert_eq!(
        login_from(&app, "127.0.0.4", &owner.email, &owner.password).await,
        200
    );
    let after = counter(&app.get("/metrics").await.text().await.unwrap(), slowed);
    assert!(
        after > before,
        "attempts past 30 failures were slowed ({before} -> {after})"
    );
    // An administrator clears the account: the first guessing address may log in again.
    let res = clear_throttle(&app, &admin_tokens.access, owner.id).await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        login_from(&app, "127.0.0.2", &owner.email, &owner.password).await,
        200
    );
    // Only administrators may.
    let member_tokens = app.login(&owner).await;
    let res = clear_throttle(&app, &member_tokens.access, owner.id).await;
    assert_envelope(res, 403, "ACCESS_DENIED").await;
}

/// The administrator's clearing reaches every replica (through the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_throttle_reaches_every_replica() {
    let a = common::spawn_app_with(
        Backend::Postgres,
        |c| c.auth.login_max_failures = 2,
        axum::Router::new(),
    )
    .await;
    let b = common::replica_with(&a, |c| c.auth.login_max_failures = 2).await;
    let (tenant, _admin, admin_tokens) = a.tenant_with_admin("acme").await;
    let owner = a.seed_user(tenant, Role::Member, false).await;
    for _ in 0..2 {
        assert_eq!(
            login_from(&b, "127.0.0.5", &owner.email, "wrong wrong wrong").await,
            401
        );
    }
    assert_eq!(
        login_from(&b, "127.0.0.5", &owner.email, &owner.password).await,
        429
    );
    let res = clear_throttle(&a, &admin_tokens.access, owner.id).await;
    assert_eq!(res.status(), 204);
    assert_eq!(
        login_from(&b, "127.0.0.5", &owner.email, &owner.password).await,
        200
    );
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Everything the hub creates in its data directory is its own alone (0600 files, 0700
/// directories), even under `umask 000`; a database left 0644 by an older version is
/// tightened at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_whatever_the_umask() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("new/data");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 000 && exec "$0" "$@""#)
        .arg(common::hub_binary())
        .args(["admin", "create-tenant", "--name", "acme", "--data-dir"])
        .arg(&data)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&root.path().join("new")), 0o700);
    assert_eq!(mode(&data), 0o700);
    for name in ["hub.db", "hub.db-wal", "hub.db-shm"] {
        let p = data.join(name);
        if p.exists() || name == "hub.db" {
            assert_eq!(mode(&p), 0o600, "{name}");
        }
    }

    // The server, started under umask 000 on a database an older version left 0644.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data.join("hub.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut hub = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"umask 000 && exec "$0" "$@""#)
        .arg(common::hub_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = coditect_testkit::hub::follow_logs(hub.stderr.take().unwrap(), lines.clone())
        .recv_timeout(Duration::from_secs(30))
        .expect("the hub listens");
    // A write, so that the WAL exists.
    let res = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(res.status(), 200);
    for name in ["hub.db", "hub.db-wal", "hub.db-shm", "hub.lock"] {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    assert_eq!(mode(&data.join("keys")), 0o700);
    for key in std::fs::read_dir(data.join("keys")).unwrap() {
        assert_eq!(mode(&key.unwrap().path()), 0o600);
    }
    let _ = hub.kill();
    let _ = hub.wait();
    assert!(
        lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("database file was readable by others; made 0600")),
        "the tightening is logged"
    );
}

/// A raw TCP connection to `app` from `ip`.
async fn raw_from(app: &TestApp, ip: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    socket.connect(app.addr).await.unwrap()
}

/// Whether the server closes `stream` within `within` (reading and discarding anything it
/// sends first).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Everything the server sends on `stream` until it closes it, as text.
async fn read_all(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    stream.write_all(bytes).await.unwrap();
}

const GET_HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nhost: hub\r\n\r\n";

/// What a new connection from `ip` is answered to `GET /health`.
async fn health_answer(app: &TestApp, ip: &str) -> String {
    let mut s = raw_from(app, ip).await;
    write(&mut s, GET_HEALTH).await;
    read_all(&mut s).await
}

/// Slowloris: a connection that sends nothing, one that sends half its headers (and keeps
/// dripping bytes), and an idle keep-alive connection are all cut off; a connection that
/// keeps making requests is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_off() {
    let app = common::spawn_app_with(
        Backend::Sqlite,
        |c| {
            c.header_read_timeout = Duration::from_millis(400);
            c.keep_alive_timeout = Duration::from_millis(800);
        },
        axum::Router::new(),
    )
    .await;
    let generous = Duration::from_secs(10);
    let mut silent = raw_from(&app, "127.0.0.1").await;
    let mut half = raw_from(&app, "127.0.0.1").await;
    write(&mut half, b"GET /health HTTP/1.1\r\nhost: hub\r\nx-slow: ").await;
    let mut idle = raw_from(&app, "127.0.0.1").await;
    write(&mut idle, GET_HEALTH).await;
    let dripping = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if tokio::io::AsyncWriteExt::write_all(&mut half, b"a")
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    });
    assert!(closed_within(&mut silent, generous).await, "silent");
    assert!(closed_within(&mut idle, generous).await, "idle keep-alive");
    assert!(
        dripping.await.unwrap(),
        "half-sent headers, however slowly dripped"
    );
    // Busy: a request every 200 ms for 2.4 s (well past both timeouts), all answered.
    use tokio::io::AsyncReadExt;
    let mut busy = raw_from(&app, "127.0.0.1").await;
    for i in 0..12 {
        write(&mut busy, GET_HEALTH).await;
        let mut buf = [0u8; 2048];
        let n = tokio::time::timeout(generous, busy.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "request {i}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for reason in ["header_read_timeout", "keep_alive_timeout"] {
        assert!(
            metrics.contains(&format!(
                "http_connections_timed_out_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
}

/// Connection caps: per client address (429) and in total (503), answered with the
/// envelope; a closed connection gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_address_and_in_total() {
    let app = common::spawn_app_with(
        Backend::Sqlite,
        |c| {
            c.max_connections = 6;
            c.max_connections_per_ip = 3;
        },
        axum::Router::new(),
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw_from(&app, "127.0.0.9").await);
    }
    // The server counts a connection once it accepted it: let it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = health_answer(&app, "127.0.0.9").await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains(r#""code":"RATE_LIMITED""#), "{answer}");
    for _ in 0..3 {
        held.push(raw_from(&app, "127.0.0.10").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = health_answer(&app, "127.0.0.11").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(r#""code":"UNAVAILABLE""#), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // One goes away: its place is free again.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = raw_from(&app, "127.0.0.11").await;
        write(&mut again, GET_HEALTH).await;
        let mut buf = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut again, &mut buf)
            .await
            .unwrap_or(0);
        if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
    }
    assert!(ok, "the freed slot is taken");
}

/// Errors the hub shapes itself carry the envelope (too many or too large headers); the
/// few hyper answers before any code of ours runs are exactly those the README lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_errors_carry_the_envelope_and_hypers_own_are_the_listed_ones() {
    let app = spawn_app(Backend::Sqlite).await;
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let mut s = raw_from(&app, "127.0.0.1").await;
    write(
        &mut s,
        format!("GET /health HTTP/1.1\r\nhost: hub\r\n{many}connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    let answer = read_all(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains(r#""code":"HEADERS_TOO_LARGE""#), "{answer}");
    let big = "v".repeat(70 * 1024);
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    assert_envelope(res, 431, "HEADERS_TOO_LARGE").await;

    // What hyper answers alone (README, "Errors hyper answers"): an empty body.
    let hyper_own: [(&str, Vec<u8>); 5] = [
        (
            "more than 1000 headers",
            format!(
                "GET /health HTTP/1.1\r\nhost: hub\r\n{}\r\n",
                (0..1001).map(|i| format!("x-h{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
        ),
        (
            "two different Content-Length headers",
            b"POST /api/logs/batch HTTP/1.1\r\nhost: hub\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}".to_vec(),
        ),
        (
            "a raw 0xff byte in the path",
            b"GET /\xff HTTP/1.1\r\nhost: hub\r\n\r\n".to_vec(),
        ),
        (
            "another HTTP version",
            b"GET /health HTTP/3.0\r\nhost: hub\r\n\r\n".to_vec(),
        ),
        (
            "TLS on the plain port",
            vec![0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03],
        ),
    ];
    for (what, request) in hyper_own {
        let mut s = raw_from(&app, "127.0.0.1").await;
        write(&mut s, &request).await;
        let answer = read_all(&mut s).await;
        assert!(
            answer.starts_with("HTTP/1.1 4") && answer.contains("content-length: 0\r\n"),
            "{what}: {answer}"
        );
    }
    // And the hub still serves.
    assert_eq!(app.get("/health").await.status(), 200);
}

fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        / 1024
}

/// The hub's memory stays bounded under a flood of logins at the production Argon2
/// parameters (m = 19 MiB): 64 clients, mostly failing, for 10 s. (Before the hashing
/// pool, each hash's fresh 19 MiB landed in malloc arenas that never gave it back: over
/// 2.5 GiB after 15 s. BENCHMARKS.md, "Auth: memory under a flood of logins".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_under_a_login_flood() {
    const BOUND_MIB: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let email = "flood@example.com";
    let password = "flood password long enough";
    let hub = common::HubProcess::spawn(
        dir.path(),
        &[
            "--auth-login-max-failures",
            "1000",
            "--auth-login-window",
            "1s",
        ],
        &[
            ("CODITECT_BOOTSTRAP_EMAIL", email),
            ("CODITECT_BOOTSTRAP_PASSWORD", password),
        ],
    );
    let login_url = hub.url("/api/v1/auth/login");
    let client = reqwest::Client::new();
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            client
                .post(&login_url)
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await,
        "the bootstrap admin logs in"
    );
    let pid = hub.pid();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (client, url) = (client.clone(), login_url.clone());
            tokio::spawn(async move {
                let mut n = i;
                while tokio::time::Instant::now() < deadline {
                    let pw = if n % 4 == 0 {
                        password
                    } else {
                        "not the password"
                    };
                    let who = if n % 4 == 1 {
                        "nobody@example.com"
                    } else {
                        email
                    };
                    let _ = client
                        .post(&url)
                        .json(&json!({"email": who, "password": pw}))
                        .send()
                        .await;
                    n += 1;
                }
            })
        })
        .collect();
    let mut peak = 0;
    while tokio::time::Instant::now() < deadline {
        peak = peak.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for c in clients {
        c.await.unwrap();
    }
    peak = peak.max(rss_mib(pid));
    assert!(peak > 0, "RSS was read");
    assert!(
        peak < BOUND_MIB,
        "peak RSS {peak} MiB under the login flood"
    );
}
