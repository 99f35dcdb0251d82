//! The HTTP skeleton against real hubs on both storage engines: health, readiness,
//! metrics, the error envelope for every kind of bad request, request ids, timeouts,
//! CORS and graceful shutdown.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use axum::Router;
use axum::routing::{get, post};
use coditect_hub::AppState;
use coditect_hub::http::Json;
use coditect_proto::Role;
use common::{Backend, assert_envelope, json, spawn_app, spawn_app_with};
use serde::Deserialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Routes mounted only in tests, under the production middleware stack.
fn test_routes() -> Router<AppState> {
    #[derive(Deserialize, serde::Serialize)]
    struct Echo {
        name: String,
        count: u32,
    }
    Router::new()
        .route(
            "/test/echo",
            post(|Json(body): Json<Echo>| async move { axum::Json(body) }),
        )
        .route(
            "/test/panic",
            get(|| async {
                if true {
                    panic!("handler bug with secret detail");
                }
                "unreachable"
            }),
        )
        .route(
            "/test/slow/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                },
            ),
        )
}

async fn app_with_test_routes(backend: Backend) -> common::TestApp {
    spawn_app_with(backend, |_| {}, test_routes()).await
}

both_backends!(
    health_reports_every_store_as_healthy,
    ready_is_ok_once_stores_are_migrated,
    unknown_route_is_a_404_envelope,
    wrong_method_is_a_405_envelope,
    body_over_the_limit_is_a_413_envelope,
    malformed_json_is_a_400_envelope_naming_the_problem,
    handler_panic_is_a_500_envelope_and_the_hub_lives_on,
    request_ids_are_kept_or_minted,
    metrics_label_requests_by_route_template,
    slow_requests_time_out_with_a_503,
    cors_is_off_unless_origins_are_configured,
    shutdown_drains_in_flight_requests_then_closes_the_store,
    shutdown_stops_waiting_at_the_deadline,
);

async fn health_reports_every_store_as_healthy(backend: Backend) {
    let app = spawn_app(backend).await;
    let tenant = app.seed_tenant("ops").await;
    let operator = app.seed_user(tenant, Role::Admin, true).await;
    let token = app.login(&operator).await.access;
    for res in [
        app.get("/health").await,
        app.get_as("/api/admin/health", &token).await,
    ] {
        assert_eq!(res.status(), 200);
        let body = json(res).await;
        assert_eq!(body["status"], "healthy", "{body}");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert!(body["uptime_seconds"].is_u64());
        assert!(body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        let components = body["components"].as_array().expect("components");
        let names: Vec<&str> = components
            .iter()
            .filter_map(|c| c["name"].as_str())
            .filter(|n| !n.starts_with("runtime:"))
            .collect();
        assert!(
            components.iter().any(|c| c["name"] == "runtime:process"),
            "the workspace runtimes are components too: {body}"
        );
        match backend {
            Backend::Sqlite => assert_eq!(names, ["sqlite"]),
            Backend::Postgres => assert_eq!(names, ["sqlite", "postgres", "outbox"]),
        }
        for c in components {
            assert_eq!(c["healthy"], true, "{c}");
            assert!(c["latency_ms"].as_f64().is_some_and(|l| l >= 0.0), "{c}");
        }
    }
    // The admin namespace needs a platform admin.
    assert_envelope(app.get("/api/admin/health").await, 401, "AUTH_REQUIRED").await;
    let tenant_admin = app.seed_user(tenant, Role::Admin, false).await;
    let token = app.login(&tenant_admin).await.access;
    for path in ["/api/admin/health", "/api/admin/metrics"] {
        assert_envelope(app.get_as(path, &token).await, 403, "ACCESS_DENIED").await;
    }
}

async fn ready_is_ok_once_stores_are_migrated(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.get("/ready").await;
    assert_eq!(res.status(), 200);
    assert_eq!(json(res).await["status"], "ready");
}

async fn unknown_route_is_a_404_envelope(backend: Backend) {
    let app = spawn_app(backend).await;
    let message = assert_envelope(app.get("/api/nope?token=abc").await, 404, "NOT_FOUND").await;
    assert!(message.contains("/api/nope"), "{message}");
    assert!(
        !message.contains("token"),
        "query strings are not echoed: {message}"
    );
}

async fn wrong_method_is_a_405_envelope(backend: Backend) {
    let app = spawn_app(backend).await;
    let res = app.client.delete(app.url("/health")).send().await.unwrap();
    let allow = res
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    let message = assert_envelope(res, 405, "METHOD_NOT_ALLOWED").await;
    assert!(message.contains("DELETE"), "{message}");
    assert!(allow.is_some_and(|a| a.contains("GET")), "Allow names GET");
}

async fn body_over_the_limit_is_a_413_envelope(backend: Backend) {
    let app = spawn_app_with(backend, |c| c.body_limit = 1024, test_routes()).await;
    // Declared too large: refused before the body is read, on any route.
    let big = "x".repeat(2048);
    for path in ["/test/echo", "/health"] {
        let res = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_envelope(res, 413, "PAYLOAD_TOO_LARGE").await;
    }
    // Chunked (no Content-Length): refused while reading.
    let response = raw_chunked_post(app.addr, "/test/echo", &big).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"PAYLOAD_TOO_LARGE\""), "{response}");
    // Under the limit is fine.
    let res = app
        .client
        .post(app.url("/test/echo"))
        .json(&serde_json::json!({"name": "a", "count": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// A POST with `Transfer-Encoding: chunked` over a plain TCP socket.
async fn raw_chunked_post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(256) {
        let _ = stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await;
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn malformed_json_is_a_400_envelope_naming_the_problem(backend: Backend) {
    let app = app_with_test_routes(backend).await;
    let post = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/test/echo"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let message = assert_envelope(
        post("{\"name\": \"a\",", "application/json").await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.starts_with("malformed JSON"), "{message}");

    let message = assert_envelope(
        post("{\"name\": \"a\", \"count\": \"many\"}", "application/json")
            .await
            .unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.contains("count"), "names the field: {message}");

    let message = assert_envelope(
        post("{\"name\": \"a\"}", "application/json").await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.contains("missing field `count`"), "{message}");

    let message = assert_envelope(
        post("[\"a\", 1]", "application/json").await.unwrap(),
        400,
        "BAD_REQUEST",
    )
    .await;
    assert!(message.contains("must be a JSON object"), "{message}");

    assert_envelope(
        post("{\"name\": \"a\", \"count\": 1}", "text/plain")
            .await
            .unwrap(),
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    )
    .await;
}

async fn handler_panic_is_a_500_envelope_and_the_hub_lives_on(backend: Backend) {
    // An error-only log still carries the request id on the panic's line.
    let app = spawn_app_with(backend, |c| c.log_level = "error".into(), test_routes()).await;
    let res = app
        .client
        .get(app.url("/test/panic"))
        .header("x-request-id", "panic-probe-7")
        .send()
        .await
        .unwrap();
    let message = assert_envelope(res, 500, "INTERNAL_ERROR").await;
    assert!(
        !message.contains("secret"),
        "panic details stay in the log: {message}"
    );
    let logged = common::captured_logs().into_iter().find(|l| {
        l["message"] == "handler panicked, answered 500"
            && l["span"]["request_id"] == "panic-probe-7"
    });
    let line = logged.expect("the panic is logged with its request id");
    assert!(
        line["panic"].as_str().unwrap().contains("handler bug"),
        "{line}"
    );
    assert_eq!(app.get("/health").await.status(), 200);
}

async fn request_ids_are_kept_or_minted(backend: Backend) {
    let app = spawn_app(backend).await;
    let with = |id: &'static str| {
        app.client
            .get(app.url("/health"))
            .header("x-request-id", id)
            .send()
    };
    let res = with("client-chosen-42").await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "client-chosen-42");

    let res = with("bad id with spaces").await.unwrap();
    let minted = res.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(minted, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(&minted).is_ok(), "{minted}");

    let a = app.get("/nope").await.headers()["x-request-id"].clone();
    let b = app.get("/nope").await.headers()["x-request-id"].clone();
    assert_ne!(a, b, "every request gets its own id, errors included");
}

/// The value of one counter series in a Prometheus text scrape (0 when absent).
fn counter(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_label_requests_by_route_template(backend: Backend) {
    let app = app_with_test_routes(backend).await;
    // The registry is process-wide: compare before and after, never absolute values.
    let slow = r#"http_requests_total{method="GET",route="/test/slow/{ms}",status="200"}"#;
    let before = counter(&app.get("/metrics").await.text().await.unwrap(), slow);
    let tenant = app.seed_tenant("ops").await;
    let operator = app.seed_user(tenant, Role::Admin, true).await;
    let token = app.login(&operator).await.access;
    app.get("/health").await;
    app.get("/test/slow/1").await;
    app.get("/test/slow/2").await;
    app.get("/users/8d2f0c1e-unique-raw-path").await;
    for path in ["/metrics", "/api/admin/metrics"] {
        let res = app.get_as(path, &token).await;
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = res.text().await.unwrap();
        assert!(
            counter(
                &text,
                r#"http_requests_total{method="GET",route="/health",status="200"}"#
            ) >= 1.0,
            "{text}"
        );
        assert_eq!(
            counter(&text, slow) - before,
            2.0,
            "two paths, one series: {text}"
        );
        assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
        assert!(
            text.contains("http_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(!text.contains("8d2f0c1e"), "raw paths never become labels");
        assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
    }
}

async fn slow_requests_time_out_with_a_503(backend: Backend) {
    let app = spawn_app_with(
        backend,
        |c| c.request_timeout = Duration::from_secs(1),
        test_routes(),
    )
    .await;
    let res = app.get("/test/slow/5000").await;
    assert_eq!(res.headers()["retry-after"], "1");
    let message = assert_envelope(res, 503, "UNAVAILABLE").await;
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(app.get("/test/slow/10").await.status(), 200);
}

async fn cors_is_off_unless_origins_are_configured(backend: Backend) {
    let from = |app: &common::TestApp, method: reqwest::Method, origin: &'static str| {
        app.client
            .request(method, app.url("/health"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let allowed = |res: &reqwest::Response| {
        res.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_string())
    };

    let app = spawn_app(backend).await;
    let res = from(&app, reqwest::Method::GET, "https://evil.example")
        .await
        .unwrap();
    assert_eq!(allowed(&res), None, "off by default");
    drop(app);

    let app = spawn_app_with(
        backend,
        |c| c.cors_origins = vec!["https://app.example".into()],
        Router::new(),
    )
    .await;
    let preflight = from(&app, reqwest::Method::OPTIONS, "https://app.example")
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(allowed(&preflight).as_deref(), Some("https://app.example"));
    let other = from(&app, reqwest::Method::GET, "https://evil.example")
        .await
        .unwrap();
    assert_eq!(allowed(&other), None, "only listed origins");
}

async fn shutdown_drains_in_flight_requests_then_closes_the_store(backend: Backend) {
    let mut app = app_with_test_routes(backend).await;
    let in_flight = {
        let url = app.url("/test/slow/700");
        let client = app.client.clone();
        tokio::spawn(async move { client.get(url).send().await })
    };
    // Let the request reach its handler, then ask the hub to stop.
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.trigger_shutdown();
    let res = in_flight
        .await
        .unwrap()
        .expect("in-flight request completes");
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "done");
    app.wait().await.expect("clean stop");

    // Stopped: no new connections, and the store is closed.
    assert!(
        tokio::net::TcpStream::connect(app.addr).await.is_err(),
        "listener closed"
    );
    let probes = app.state.gate().system().probe().await;
    assert!(!probes[0].healthy, "store closed after drain");
}

async fn shutdown_stops_waiting_at_the_deadline(backend: Backend) {
    let mut app = spawn_app_with(
        backend,
        |c| c.shutdown_timeout = Duration::from_millis(300),
        test_routes(),
    )
    .await;
    let stuck = {
        let url = app.url("/test/slow/20000");
        let client = app.client.clone();
        tokio::spawn(async move { client.get(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.trigger_shutdown();
    app.wait().await.expect("stops");
    assert!(
        !stuck.is_finished(),
        "the hub stopped without waiting for the stuck request"
    );
    assert!(
        common::captured_logs()
            .iter()
            .any(|l| l["message"] == "drain deadline passed, closing with requests in flight")
    );
    assert!(
        !app.state.gate().system().probe().await[0].healthy,
        "stores closed"
    );
}
