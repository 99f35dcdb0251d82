//! The live tail (`GET /ws/logs`) on both engines: filters, tenant isolation, resuming
//! without gap or duplicate, slow clients, the three ways to authenticate, all-tenant tails
//! for platform admins, shutdown, and (PostgreSQL) entries written on another replica.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Role;
use common::{Backend, TestApp, assert_envelope, json, spawn_app, spawn_app_with};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

both_backends!(
    a_tail_streams_what_matches_its_filters,
    tenants_never_see_each_other,
    a_resumed_tail_has_no_gap_and_no_duplicate,
    a_slow_client_is_told_what_it_missed,
    tickets_and_subprotocols_authenticate,
    bound_keys_and_platform_admins_see_their_scope,
    shutdown_closes_tails,
);

use common::Ws;

fn ws_url(app: &TestApp, query: &str) -> String {
    format!("ws://{}/ws/logs?{query}", app.addr)
}

/// Opens a tail with a bearer header; panics unless the upgrade succeeds.
async fn open(app: &TestApp, token: &str, query: &str) -> Ws {
    common::open_tail(app, token, query).await
}

/// The HTTP refusal of an upgrade: status and error code.
async fn refused(app: &TestApp, token: Option<&str>, query: &str) -> (u16, String) {
    let mut req = ws_url(app, query).into_client_request().unwrap();
    if let Some(token) = token {
        req.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(WsError::Http(res)) => {
            let body: Value = serde_json::from_slice(res.body().as_deref().unwrap()).unwrap();
            (
                res.status().as_u16(),
                body["error"]["code"].as_str().unwrap().to_string(),
            )
        }
        Ok(_) => panic!("upgrade accepted for {query}"),
        Err(e) => panic!("unexpected failure for {query}: {e}"),
    }
}

/// The next JSON frame (pings are answered by the client library).
async fn next(ws: &mut Ws) -> Value {
    serde_json::from_str(&common::next_text(ws).await).unwrap()
}

/// Reads frames until the entry with `message` arrives; returns the log entries before it
/// (not including it) and the `dropped` counts.
async fn until(ws: &mut Ws, message: &str) -> (Vec<Value>, u64) {
    let mut seen = Vec::new();
    let mut dropped = 0;
    loop {
        let frame = next(ws).await;
        match frame["type"].as_str().unwrap() {
            "log" if frame["data"]["message"] == message => return (seen, dropped),
            "log" => seen.push(frame),
            "dropped" => dropped += frame["count"].as_u64().unwrap(),
            other => panic!("unexpected frame type {other}: {frame}"),
        }
    }
}

/// Frames until `n` entries are accounted for (delivered or reported dropped).
async fn until_accounted(ws: &mut Ws, n: u64) -> (Vec<Value>, u64) {
    let mut seen = Vec::new();
    let mut dropped = 0;
    while seen.len() as u64 + dropped < n {
        let frame = next(ws).await;
        match frame["type"].as_str().unwrap() {
            "log" => seen.push(frame),
            "dropped" => dropped += frame["count"].as_u64().unwrap(),
            other => panic!("unexpected frame type {other}: {frame}"),
        }
    }
    (seen, dropped)
}

fn entry(level: &str, component: &str, message: &str) -> Value {
    json!({"level": level, "component": component, "message": message})
}

async fn send(app: &TestApp, token: &str, ws: &str, entries: Vec<Value>) {
    let res = app
        .post_as(
            "/api/logs/batch",
            token,
            json!({"entries": entries, "workspace_id": ws}),
        )
        .await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
}

fn messages(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["data"]["message"].as_str().unwrap().to_string())
        .collect()
}

async fn a_tail_streams_what_matches_its_filters(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let other = app.workspace(&tokens.access, "web").await;
    let mut tail = open(
        &app,
        &tokens.access,
        &format!("workspace_id={ws}&min_level=warn&component=api&q=TIMEOUT"),
    )
    .await;
    let hello = next(&mut tail).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    assert_eq!(hello["tenant_id"], tenant.to_string());
    assert_eq!(hello["workspace_id"], ws);
    assert!(hello["cursor"].is_string());

    send(
        &app,
        &tokens.access,
        &ws,
        vec![
            entry("error", "api", "upstream timeout after 30s"),
            entry("info", "api", "timeout configured"),
            entry("warn", "db", "timeout on replica"),
            entry("warn", "api", "slow request"),
            entry("fatal", "api", "Timeout: giving up"),
        ],
    )
    .await;
    send(
        &app,
        &tokens.access,
        &other,
        vec![entry("error", "api", "timeout elsewhere")],
    )
    .await;
    send(
        &app,
        &tokens.access,
        &ws,
        vec![entry("error", "api", "timeout end")],
    )
    .await;
    let (seen, dropped) = until(&mut tail, "timeout end").await;
    assert_eq!(dropped, 0);
    assert_eq!(
        messages(&seen),
        ["upstream timeout after 30s", "Timeout: giving up"]
    );
    let first = &seen[0];
    assert!(first["cursor"].is_string());
    assert_eq!(first["data"]["level"], "error");
    assert_eq!(first["data"]["component"], "api");
    assert_eq!(first["data"]["workspace_id"], ws);
    assert!(first["data"]["id"].is_string());
    assert!(first["data"]["timestamp"].is_string());

    // Bad parameters are refused before the upgrade, with the envelope.
    assert_eq!(
        refused(&app, Some(&tokens.access), "level=LOUD").await,
        (400, "BAD_REQUEST".to_string())
    );
    assert_eq!(
        refused(&app, Some(&tokens.access), "level=info&min_level=warn").await,
        (400, "BAD_REQUEST".to_string())
    );
    assert_eq!(
        refused(&app, Some(&tokens.access), "cursor=nonsense").await,
        (400, "BAD_REQUEST".to_string())
    );
    assert_eq!(
        refused(&app, Some(&tokens.access), "shape=round").await,
        (400, "BAD_REQUEST".to_string())
    );
    // A workspace of another tenant is "not found", like one that does not exist.
    let (_t2, _a2, t2) = app.tenant_with_admin("globex").await;
    let foreign = app.workspace(&t2.access, "theirs").await;
    assert_eq!(
        refused(
            &app,
            Some(&tokens.access),
            &format!("workspace_id={foreign}")
        )
        .await
        .0,
        404
    );
}

async fn tenants_never_see_each_other(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_a, _admin_a, a) = app.tenant_with_admin("acme").await;
    let (_b, _admin_b, b) = app.tenant_with_admin("globex").await;
    let ws_a = app.workspace(&a.access, "a").await;
    let ws_b = app.workspace(&b.access, "b").await;
    let mut tail_a = open(&app, &a.access, "").await;
    let mut tail_b = open(&app, &b.access, "").await;
    next(&mut tail_a).await;
    next(&mut tail_b).await;
    for i in 0..5 {
        send(
            &app,
            &a.access,
            &ws_a,
            vec![entry("info", "x", &format!("secret of acme {i}"))],
        )
        .await;
    }
    send(
        &app,
        &b.access,
        &ws_b,
        vec![entry("info", "x", "globex end")],
    )
    .await;
    send(&app, &a.access, &ws_a, vec![entry("info", "x", "acme end")]).await;
    let (seen_b, _) = until(&mut tail_b, "globex end").await;
    assert!(seen_b.is_empty(), "globex saw {seen_b:?}");
    let (seen_a, _) = until(&mut tail_a, "acme end").await;
    assert_eq!(seen_a.len(), 5);
    // Whatever globex's tail receives later is never acme's.
    send(
        &app,
        &b.access,
        &ws_b,
        vec![entry("info", "x", "globex end 2")],
    )
    .await;
    let (later, _) = until(&mut tail_b, "globex end 2").await;
    assert!(later.is_empty(), "globex saw {later:?}");
}

async fn a_resumed_tail_has_no_gap_and_no_duplicate(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let mut tail = open(&app, &tokens.access, "component=keep").await;
    next(&mut tail).await;
    let batch = |from: usize, to: usize| {
        (from..to)
            .flat_map(|i| {
                [
                    entry("info", "keep", &format!("n{i}")),
                    entry("info", "skip", &format!("s{i}")),
                ]
            })
            .collect::<Vec<_>>()
    };
    send(&app, &tokens.access, &ws, batch(0, 10)).await;
    send(
        &app,
        &tokens.access,
        &ws,
        vec![entry("info", "keep", "mark")],
    )
    .await;
    let (seen, _) = until(&mut tail, "mark").await;
    assert_eq!(seen.len(), 10);
    // Leave after the fourth entry: the rest of the first batch, the mark and everything
    // written while away must come back, once each, in order.
    let cursor = seen[3]["cursor"].as_str().unwrap().to_string();
    tail.close(None).await.unwrap();
    drop(tail);
    for chunk in 0..5 {
        send(
            &app,
            &tokens.access,
            &ws,
            batch(100 + chunk * 20, 120 + chunk * 20),
        )
        .await;
    }
    let mut tail = open(
        &app,
        &tokens.access,
        &format!("component=keep&cursor={cursor}"),
    )
    .await;
    next(&mut tail).await;
    // Entries written during the resume arrive too, exactly once.
    send(&app, &tokens.access, &ws, batch(500, 510)).await;
    send(
        &app,
        &tokens.access,
        &ws,
        vec![entry("info", "keep", "end")],
    )
    .await;
    let (rest, dropped) = until(&mut tail, "end").await;
    assert_eq!(dropped, 0);
    let expected: Vec<String> = (4..10)
        .map(|i| format!("n{i}"))
        .chain(["mark".to_string()])
        .chain((100..200).map(|i| format!("n{i}")))
        .chain((500..510).map(|i| format!("n{i}")))
        .collect();
    assert_eq!(messages(&rest), expected);
}

async fn a_slow_client_is_told_what_it_missed(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.logs.tail_queue = 8, axum::Router::new()).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let mut slow = open(&app, &tokens.access, "").await;
    let mut quick = open(&app, &tokens.access, "").await;
    next(&mut slow).await;
    next(&mut quick).await;
    // Big entries, many of them, while the slow client reads nothing: its queue and the
    // socket buffers overflow; ingestion and the other client are unaffected.
    let padding = "x".repeat(1000);
    let total = 10 * 1000;
    // Every entry is accounted for, the last one too: delivered, or reported dropped even
    // when nothing comes after it.
    let reader = tokio::spawn(async move {
        let (seen, dropped) = until_accounted(&mut quick, total + 1).await;
        (seen.len(), dropped)
    });
    for b in 0..10 {
        let entries = (0..1000)
            .map(|i| entry("info", "a", &format!("{b}-{i} {padding}")))
            .collect();
        send(&app, &tokens.access, &ws, entries).await;
    }
    send(&app, &tokens.access, &ws, vec![entry("info", "a", "last")]).await;
    let (slow_seen, slow_dropped) = until_accounted(&mut slow, total + 1).await;
    assert!(
        slow_dropped > 0,
        "nothing dropped: the test sent too little"
    );
    let (quick_seen, quick_dropped) = reader.await.unwrap();
    assert_eq!(quick_seen as u64 + quick_dropped, total + 1);
    // Entries arrive in order, whatever was dropped in between.
    let order: Vec<(u64, u64)> = slow_seen
        .iter()
        .filter(|f| f["data"]["message"] != "last")
        .map(|f| {
            let m = f["data"]["message"].as_str().unwrap();
            let (b, rest) = m.split_once('-').unwrap();
            let i = rest.split(' ').next().unwrap();
            (b.parse().unwrap(), i.parse().unwrap())
        })
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
}

async fn tickets_and_subprotocols_authenticate(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "api").await;

    // No credential, a bad one: 401 before any upgrade.
    assert_eq!(
        refused(&app, None, "").await,
        (401, "AUTH_REQUIRED".to_string())
    );
    assert_eq!(
        refused(&app, Some("garbage"), "").await,
        (401, "AUTH_REQUIRED".to_string())
    );

    // A ticket: short-lived, for the WebSocket only.
    let res = app
        .post_as("/api/v1/ws-tickets", &tokens.access, json!({}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = json(res).await;
    let ticket = body["ticket"].as_str().unwrap().to_string();
    assert_eq!(body["expires_in"], 30);
    let (mut by_ticket, _) =
        tokio_tungstenite::connect_async(ws_url(&app, &format!("ticket={ticket}")))
            .await
            .unwrap();
    assert_eq!(next(&mut by_ticket).await["type"], "connected");
    assert_eq!(
        app.get_as("/api/v1/users/me", &ticket).await.status(),
        401,
        "a ticket is not an access token"
    );
    assert_eq!(
        refused(&app, None, &format!("ticket={}", tokens.access)).await,
        (401, "AUTH_REQUIRED".to_string()),
        "an access token is not a ticket"
    );

    // The subprotocol, as a browser would send it; the server picks `coditect.v1`.
    let mut req = ws_url(&app, "").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("coditect.v1, bearer.{}", tokens.access)).unwrap(),
    );
    let (mut by_protocol, res) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(res.headers()["sec-websocket-protocol"], "coditect.v1");
    assert_eq!(next(&mut by_protocol).await["type"], "connected");

    // An API key in the header; tickets are for browser sessions only.
    let key = app
        .api_key(&tokens.access, json!({"name": "ci", "role": "viewer"}))
        .await;
    let mut by_key = open(&app, &key, "").await;
    assert_eq!(next(&mut by_key).await["type"], "connected");
    assert_envelope(
        app.post_as("/api/v1/ws-tickets", &key, json!({})).await,
        400,
        "BAD_REQUEST",
    )
    .await;

    send(&app, &tokens.access, &ws, vec![entry("info", "a", "hello")]).await;
    for tail in [&mut by_ticket, &mut by_protocol, &mut by_key] {
        let (before, _) = until(tail, "hello").await;
        assert!(before.is_empty());
    }

    // Logging out ends what the session's ticket could open.
    let res = app
        .post_as("/api/v1/ws-tickets", &tokens.access, json!({}))
        .await;
    let ticket = json(res).await["ticket"].as_str().unwrap().to_string();
    let res = app
        .post_as("/api/v1/auth/logout", &tokens.access, json!({}))
        .await;
    assert!(res.status().is_success());
    let mut refused_soon = false;
    for _ in 0..50 {
        let attempt =
            tokio_tungstenite::connect_async(ws_url(&app, &format!("ticket={ticket}"))).await;
        if matches!(attempt, Err(WsError::Http(ref r)) if r.status() == 401) {
            refused_soon = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused_soon, "a ticket outlived its session");
}

async fn bound_keys_and_platform_admins_see_their_scope(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_a, _admin, a) = app.tenant_with_admin("acme").await;
    let (_b, _admin_b, b) = app.tenant_with_admin("globex").await;
    let ws1 = app.workspace(&a.access, "one").await;
    let ws2 = app.workspace(&a.access, "two").await;
    let ws_b = app.workspace(&b.access, "b").await;
    let key = app
        .api_key(&a.access, json!({"name": "monitor", "workspace_id": ws1}))
        .await;
    assert_eq!(
        refused(&app, Some(&key), &format!("workspace_id={ws2}")).await,
        (403, "ACCESS_DENIED".to_string())
    );
    let mut bound = open(&app, &key, "").await;
    assert_eq!(next(&mut bound).await["workspace_id"], ws1);

    // Only platform admins tail every tenant.
    assert_eq!(
        refused(&app, Some(&a.access), "all_tenants=true").await,
        (403, "ACCESS_DENIED".to_string())
    );
    let home = app.seed_tenant("platform").await;
    let operator = app.seed_user(home, Role::Admin, true).await;
    let op = app.login(&operator).await;
    let mut everything = open(&app, &op.access, "all_tenants=true").await;
    let hello = next(&mut everything).await;
    assert_eq!(hello["tenant_id"], Value::Null);
    assert_eq!(
        refused(
            &app,
            Some(&op.access),
            "all_tenants=true&cursor=AAAAAAAAAAEAAAAA"
        )
        .await,
        (400, "BAD_REQUEST".to_string())
    );

    send(&app, &a.access, &ws2, vec![entry("info", "x", "in two")]).await;
    send(
        &app,
        &b.access,
        &ws_b,
        vec![entry("info", "x", "in globex")],
    )
    .await;
    send(&app, &a.access, &ws1, vec![entry("info", "x", "in one")]).await;
    let (before, _) = until(&mut bound, "in one").await;
    assert!(before.is_empty(), "the bound key saw {before:?}");
    let mut got = Vec::new();
    while got.len() < 3 {
        let f = next(&mut everything).await;
        got.push(f["data"]["message"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, ["in globex", "in one", "in two"]);
}

async fn shutdown_closes_tails(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let mut tail = open(&app, &tokens.access, "").await;
    next(&mut tail).await;
    app.trigger_shutdown();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tail.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("closed within 10 s");
    assert_eq!(close.unwrap().code, CloseCode::Away);
    app.wait().await.unwrap();
}

/// Two replicas on one PostgreSQL: a tail on one sees what the other stores, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_on_one_replica_sees_writes_on_another() {
    let a = spawn_app(Backend::Postgres).await;
    let url = a.state.config().database_url.clone();
    let b = spawn_app_with(
        Backend::Postgres,
        move |c| c.database_url = url,
        axum::Router::new(),
    )
    .await;
    let (_t, _admin, tokens) = a.tenant_with_admin("acme").await;
    let ws = a.workspace(&tokens.access, "api").await;
    let mut tail = open(&b, &tokens.access, "").await;
    next(&mut tail).await;
    for i in 0..20 {
        let writer = if i % 2 == 0 { &a } else { &b };
        send(
            writer,
            &tokens.access,
            &ws,
            vec![entry("info", "x", &format!("m{i}"))],
        )
        .await;
    }
    send(&a, &tokens.access, &ws, vec![entry("info", "x", "end")]).await;
    let (seen, dropped) = until(&mut tail, "end").await;
    assert_eq!(dropped, 0);
    let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    assert_eq!(messages(&seen), expected);
}
