//! The hub's own traces: a real hub process exporting over OTLP/HTTP to a receiver in this
//! test that decodes every `ExportTraceServiceRequest` it gets, on both engines.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use axum::body::Bytes;
use axum::routing::post;
use common::{Backend, HubProcess};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

both_backends!(requests_and_their_store_calls_are_traced_and_continue_the_caller_s_trace);

/// A stand-in OTLP/HTTP collector: every span received, with its service name.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let r = r.clone();
                async move {
                    let req = ExportTraceServiceRequest::decode(body).unwrap();
                    let mut spans = r.spans.lock().unwrap();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|res| &res.attributes)
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            spans.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
                        }
                    }
                    // ExportTraceServiceResponse {} in protobuf is empty.
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, url)
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, found: impl Fn(&[(String, Span)]) -> bool) {
        let ok = common::eventually(Duration::from_secs(20), || {
            let spans = self.spans();
            let ok = found(&spans);
            async move { ok }
        })
        .await;
        assert!(ok, "no {what} among {:#?}", self.names());
    }

    fn names(&self) -> Vec<String> {
        self.spans().iter().map(|(_, s)| s.name.clone()).collect()
    }
}

fn text(v: &any_value::Value) -> Option<String> {
    match v {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr(span: &Span, key: &str) -> Option<any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

async fn requests_and_their_store_calls_are_traced_and_continue_the_caller_s_trace(
    backend: Backend,
) {
    let (receiver, url) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--otel-endpoint".to_string(), url.clone()];
    if backend == Backend::Postgres {
        args.extend([
            "--database-url".to_string(),
            coditect_testkit::fresh_database().await,
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env = [
        ("CODITECT_BOOTSTRAP_EMAIL", "ops@example.com"),
        ("CODITECT_BOOTSTRAP_PASSWORD", "correct horse battery"),
        ("CODITECT_AUTH_ARGON2_MEMORY_KIB", "1024"),
        ("CODITECT_AUTH_ARGON2_ITERATIONS", "1"),
        // Batches leave every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut hub = HubProcess::spawn(dir.path(), &args, &env);
    let client = reqwest::Client::new();
    assert!(
        common::eventually(Duration::from_secs(30), || {
            let (client, url) = (client.clone(), hub.url("/ready"));
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await
    );

    // A caller with a trace of its own logs in: the request continues that trace.
    let res = client
        .post(hub.url("/api/v1/auth/login"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"email": "ops@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let token = res.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();

    let login = |spans: &[(String, Span)]| {
        spans
            .iter()
            .find(|(_, s)| s.name == "POST /api/v1/auth/login" && hex(&s.trace_id) == TRACE)
            .map(|(service, s)| (service.clone(), s.clone()))
    };
    receiver
        .wait_for("login span", |spans| login(spans).is_some())
        .await;
    let (service, server) = login(&receiver.spans()).unwrap();
    assert_eq!(service, "coditect-hub");
    assert_eq!(
        hex(&server.parent_span_id),
        PARENT,
        "continues the caller's span"
    );
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        attr(&server, "http.route"),
        Some(any_value::Value::StringValue("/api/v1/auth/login".into()))
    );
    assert_eq!(
        attr(&server, "http.response.status_code"),
        Some(any_value::Value::IntValue(200))
    );

    // Its store calls are child spans of it, named by engine and operation.
    let system = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgresql",
    };
    let server_id = server.span_id.clone();
    receiver
        .wait_for("store span", |spans| {
            spans
                .iter()
                .any(|(_, s)| s.parent_span_id == server_id && s.name.starts_with(system))
        })
        .await;
    let calls: Vec<Span> = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id == server_id && s.name.starts_with(system))
        .collect();
    for call in &calls {
        assert_eq!(call.kind, SpanKind::Client as i32, "{}", call.name);
        assert_eq!(hex(&call.trace_id), TRACE);
        assert_eq!(
            attr(call, "db.system.name"),
            Some(any_value::Value::StringValue(system.into()))
        );
        assert!(call.end_time_unix_nano >= call.start_time_unix_nano);
    }
    if backend == Backend::Postgres {
        // One statement per call, its text without the values.
        assert!(
            calls.iter().any(|c| matches!(
                attr(c, "db.query.text"),
                Some(any_value::Value::StringValue(sql)) if sql.contains("FROM users")
            )),
            "{:#?}",
            calls.iter().map(|c| &c.name).collect::<Vec<_>>()
        );
    }

    // The request's log lines carry the trace id.
    let lines: Vec<Value> = hub
        .json_logs()
        .into_iter()
        .filter(|l| l["span"]["request_id"] == request_id.as_str())
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l["span"]["trace_id"] == TRACE),
        "{lines:#?}"
    );

    // A request without a caller's trace starts one; its log lines name it too.
    let res = client
        .get(hub.url("/api/v1/users/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    receiver
        .wait_for("me span", |spans| {
            spans.iter().any(|(_, s)| s.name == "GET /api/v1/users/me")
        })
        .await;
    let me = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "GET /api/v1/users/me")
        .unwrap();
    assert!(me.parent_span_id.is_empty(), "a root span");
    let logged: Vec<Value> = hub
        .json_logs()
        .into_iter()
        .filter(|l| l["span"]["request_id"] == request_id.as_str())
        .collect();
    assert!(!logged.is_empty());
    assert!(
        logged
            .iter()
            .all(|l| l["span"]["trace_id"] == hex(&me.trace_id).as_str()),
        "{logged:#?}"
    );

    // Background work (the outbox, retention, …) sends no store spans of its own: every
    // store span belongs to a request.
    let by_id: HashMap<Vec<u8>, Span> = receiver
        .spans()
        .into_iter()
        .map(|(_, s)| (s.span_id.clone(), s))
        .collect();
    for span in by_id.values() {
        if span.kind == SpanKind::Client as i32 {
            assert!(
                by_id.contains_key(&span.parent_span_id),
                "{} has no parent",
                span.name
            );
        }
    }
    hub.signal("TERM");
    assert!(hub.wait_exit(Duration::from_secs(30)).is_some());
}

/// Off by default: a hub without an endpoint exports nothing, and still puts the caller's
/// trace id on its log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_endpoint_nothing_is_exported_and_logs_still_name_the_trace() {
    let (receiver, _url) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::spawn(dir.path(), &[], &[]);
    // (Probes log at debug: a route whose answers are logged.)
    let res = reqwest::Client::new()
        .get(hub.url("/api/v1/users/me"))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    hub.signal("TERM");
    assert!(hub.wait_exit(Duration::from_secs(30)).is_some());
    // Exited (so anything buffered would have been flushed): nothing arrived.
    assert!(receiver.spans().is_empty());
    let lines: Vec<Value> = hub
        .json_logs()
        .into_iter()
        .filter(|l| l["span"]["request_id"] == request_id.as_str())
        .collect();
    assert!(!lines.is_empty());
    assert!(lines.iter().all(|l| l["span"]["trace_id"] == TRACE));
}

/// The standard variables turn export on too, and a URL the exporter cannot use stops the
/// hub with exit code 2 and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_variables_turn_export_on_and_bad_endpoints_are_refused() {
    let (receiver, url) = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_SERVICE_NAME", "hub-eu-1"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut hub = HubProcess::spawn(dir.path(), &[], &env);
    let res = reqwest::get(hub.url("/api/v1/users/me")).await.unwrap();
    assert_eq!(res.status(), 401);
    receiver
        .wait_for("me span", |spans| {
            spans
                .iter()
                .any(|(service, s)| s.name == "GET /api/v1/users/me" && service == "hub-eu-1")
        })
        .await;
    hub.signal("TERM");
    assert!(hub.wait_exit(Duration::from_secs(30)).is_some());

    let out = common::run_hub(
        &["--data-dir", "/nonexistent"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector.example:4318")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("http(s)://"),
        "{err}"
    );
    let out = common::run_hub(&["--otel-endpoint", "collector:4318"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("otel"));
}
