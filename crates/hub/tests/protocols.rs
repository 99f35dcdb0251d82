//! The standard ingestion protocols on both engines: OTLP/HTTP logs (protobuf and JSON,
//! gzip, partial success, the spec's errors) and Loki push (JSON, protobuf + snappy),
//! with the tenant from the credential and `X-Scope-OrgID` checked against it.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_hub::logs::loki::proto as loki;
use coditect_hub::logs::otlp::Status;
use common::{Backend, TestApp, assert_envelope, json, spawn_app};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde_json::{Value, json};
use std::io::Write;

both_backends!(
    otlp_protobuf_is_stored_with_its_mapping,
    otlp_json_reports_partial_success_and_errors_per_spec,
    otlp_retries_are_stored_once,
    loki_json_and_protobuf_are_stored,
    org_ids_must_match_the_credential,
    entries_naming_no_workspace_go_to_the_tenant_s_default_one,
);

fn now_nanos() -> u64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap() as u64
}

fn string(s: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    })
}

fn kv(key: &str, value: Option<AnyValue>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value,
        ..Default::default()
    }
}

fn record(severity: i32, body: &str, attrs: Vec<KeyValue>) -> LogRecord {
    LogRecord {
        time_unix_nano: now_nanos(),
        severity_number: severity,
        body: string(body),
        attributes: attrs,
        ..Default::default()
    }
}

fn request(
    service: &str,
    extra: Vec<KeyValue>,
    records: Vec<LogRecord>,
) -> ExportLogsServiceRequest {
    let mut attributes = vec![kv("service.name", string(service))];
    attributes.extend(extra);
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes,
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "checkout.lib".into(),
                    version: "1.2.0".into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

async fn post(
    app: &TestApp,
    path: &str,
    token: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(path))
        .bearer_auth(token)
        .header(CONTENT_TYPE, content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

async fn search(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let page = app
        .get_json(&format!("/api/logs?order=asc&{query}"), token)
        .await;
    page["items"].as_array().unwrap().clone()
}

async fn otlp_protobuf_is_stored_with_its_mapping(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "shop").await;
    let session = uuid::Uuid::now_v7().to_string();
    let mut traced = record(
        17,
        "payment declined",
        vec![
            kv(
                "http.status_code",
                Some(AnyValue {
                    value: Some(any_value::Value::IntValue(402)),
                }),
            ),
            kv("session.id", string(&session)),
        ],
    );
    traced.trace_id = (1..=16).collect();
    traced.span_id = (1..=8).collect();
    let mut structured = record(0, "", vec![]);
    structured.severity_text = "Warning".into();
    structured.body = Some(AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList {
            values: vec![kv("order", string("o-1"))],
        })),
    });
    let first = record(9, "cart loaded", vec![]);
    traced.time_unix_nano = first.time_unix_nano + 1000;
    structured.time_unix_nano = first.time_unix_nano + 2000;
    let req = request(
        "checkout",
        vec![kv("host.name", string("web-1"))],
        vec![first, traced, structured],
    );
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "application/x-protobuf",
        &[
            ("x-coditect-workspace-id", &ws),
            ("content-encoding", "gzip"),
        ],
        gzip(&req.encode_to_vec()),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/x-protobuf");
    let answer = ExportLogsServiceResponse::decode(res.bytes().await.unwrap()).unwrap();
    assert_eq!(answer.partial_success, None);

    let items = search(&app, &tokens.access, "component=checkout").await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0]["message"], "cart loaded");
    assert_eq!(items[0]["level"], "info");
    assert_eq!(items[0]["workspace_id"], ws);
    let declined = &items[1];
    assert_eq!(declined["level"], "error");
    assert_eq!(declined["trace_id"], "0102030405060708090a0b0c0d0e0f10");
    assert_eq!(declined["span_id"], "0102030405060708");
    assert_eq!(declined["session_id"], session);
    assert_eq!(declined["metadata"]["http.status_code"], 402);
    assert_eq!(declined["metadata"]["otel.resource"]["host.name"], "web-1");
    assert_eq!(declined["metadata"]["otel.scope"], "checkout.lib@1.2.0");
    assert_eq!(items[2]["level"], "warn");
    assert_eq!(items[2]["message"], r#"{"order":"o-1"}"#);
    // The text index serves OTLP entries like any other.
    let found = search(&app, &tokens.access, "q=declined").await;
    assert_eq!(found.len(), 1);
}

async fn otlp_json_reports_partial_success_and_errors_per_spec(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "shop").await;
    let now = now_nanos();
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "billing"}},
            {"key": "coditect.workspace.id", "value": {"stringValue": ws}},
        ]},
        "scopeLogs": [{"logRecords": [
            {"timeUnixNano": now.to_string(), "severityNumber": 13, "body": {"stringValue": "retrying"},
             "traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
             "attributes": [{"key": "attempt", "value": {"intValue": "3"}}]},
            {"timeUnixNano": "1000000000", "severityNumber": 9, "body": {"stringValue": "from 1970"}},
        ]}],
    }]});
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "application/json",
        &[],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let answer = json(res).await;
    assert_eq!(answer["partialSuccess"]["rejectedLogRecords"], "1");
    assert!(
        answer["partialSuccess"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("in the past"),
        "{answer}"
    );
    let items = search(&app, &tokens.access, "component=billing").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["level"], "warn");
    assert_eq!(items[0]["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(items[0]["metadata"]["attempt"], 3);

    // An empty request is fine.
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "application/json",
        &[],
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(res.status(), 200);

    // Errors: 415, 400 (undecodable, or nothing storable), 401; each with a Status body in
    // the request's encoding.
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "text/plain",
        &[],
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(res.status(), 415);
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "application/x-protobuf",
        &[],
        vec![0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(res.status(), 400);
    let raw = res.bytes().await.unwrap();
    let status = Status::decode(raw.clone()).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
    assert_eq!(status.code, 3);
    assert!(status.message.starts_with("BAD_REQUEST"), "{status:?}");
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "application/json",
        &[],
        b"{\"resourceLogs\": 7}".to_vec(),
    )
    .await;
    assert_eq!(res.status(), 400);
    let body = json(res).await;
    assert_eq!(body["code"], 3);
    assert_eq!(body["error"]["code"], "BAD_REQUEST");
    // serde alone reads an array as the message's fields in order: schemathesis found `[]`
    // answered 200 with nothing stored.
    for body in ["[]", "[[]]", "null"] {
        let res = post(
            &app,
            "/v1/logs",
            &tokens.access,
            "application/json",
            &[],
            body.into(),
        )
        .await;
        assert_eq!(res.status(), 400, "{body}");
    }
    let lost = request("x", vec![], vec![record(9, "where to?", vec![])]);
    let res = app
        .client
        .post(app.url("/v1/logs"))
        .header(CONTENT_TYPE, "application/x-protobuf")
        .body(lost.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(Status::decode(res.bytes().await.unwrap()).unwrap().code, 16);
}

async fn otlp_retries_are_stored_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "shop").await;
    // A key bound to the workspace needs no header.
    let key = app
        .api_key(
            &tokens.access,
            json!({"name": "collector", "workspace_id": ws}),
        )
        .await;
    let req = request(
        "api",
        vec![],
        (0..50)
            .map(|i| record(9, &format!("r{i}"), vec![]))
            .collect(),
    )
    .encode_to_vec();
    for _ in 0..3 {
        let res = post(
            &app,
            "/v1/logs",
            &key,
            "application/x-protobuf",
            &[],
            req.clone(),
        )
        .await;
        assert_eq!(res.status(), 200);
    }
    let items = search(&app, &tokens.access, "component=api&limit=1000").await;
    assert_eq!(items.len(), 50, "a retried export is stored once");
}

async fn loki_json_and_protobuf_are_stored(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "edge").await;
    let key = app
        .api_key(
            &tokens.access,
            json!({"name": "promtail", "workspace_id": ws}),
        )
        .await;
    let now = now_nanos();
    let body = json!({"streams": [
        {"stream": {"service_name": "nginx", "level": "warning", "env": "prod"},
         "values": [
            [now.to_string(), "GET /healthz 200"],
            [(now + 1000).to_string(), "GET /slow 504", {"trace_id": "5b8efff798038103d269b633813fc60c"}],
         ]},
        {"stream": {"job": "cron"}, "values": [[(now + 2000).to_string(), "nightly done"]]},
    ]});
    // Basic credentials with the key as password, as Promtail's basic_auth sends them.
    let send = || {
        app.client
            .post(app.url("/loki/api/v1/push"))
            .basic_auth("acme", Some(&key))
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "gzip")
            .body(gzip(body.to_string().as_bytes()))
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 204);
    assert_eq!(send().await.unwrap().status(), 204, "a retry");
    let items = search(&app, &tokens.access, "").await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0]["component"], "nginx");
    assert_eq!(items[0]["level"], "warn");
    assert_eq!(items[0]["metadata"]["env"], "prod");
    assert_eq!(items[1]["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(items[2]["component"], "cron");
    assert_eq!(items[2]["level"], "info");

    // Protobuf + snappy, as Promtail and Alloy send it.
    let secs = (now / 1_000_000_000) as i64;
    let push = loki::PushRequest {
        streams: vec![loki::Stream {
            labels: format!(
                r#"{{service_name="worker", level="error", coditect_workspace_id="{ws}"}}"#
            ),
            entries: (0..3)
                .map(|i| loki::Entry {
                    timestamp: Some(loki::Timestamp {
                        seconds: secs,
                        nanos: i * 1000,
                    }),
                    line: format!("job {i} failed"),
                    structured_metadata: vec![loki::LabelPair {
                        name: "session_id".into(),
                        value: "not-a-uuid".into(),
                    }],
                })
                .collect(),
            hash: 0,
        }],
    };
    let compressed = snap::raw::Encoder::new()
        .compress_vec(&push.encode_to_vec())
        .unwrap();
    let res = post(
        &app,
        "/loki/api/v1/push",
        &tokens.access,
        "application/x-protobuf",
        &[],
        compressed,
    )
    .await;
    assert_eq!(res.status(), 204);
    let items = search(&app, &tokens.access, "component=worker").await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["level"], "error");
    assert_eq!(items[0]["message"], "job 0 failed", "{items:?}");
    assert_eq!(items[0]["metadata"]["session_id"], "not-a-uuid");

    // A refused entry does not stop the others; the answer names it.
    let mixed = json!({"streams": [{"stream": {"job": "mixed"}, "values": [
        ["1000000000", "too old"], [now.to_string(), "fine"],
    ]}]});
    let res = post(
        &app,
        "/loki/api/v1/push",
        &key,
        "application/json",
        &[],
        mixed.to_string().into_bytes(),
    )
    .await;
    let message = assert_envelope(res, 400, "BAD_REQUEST").await;
    assert!(message.contains("1 of 2"), "{message}");
    assert_eq!(
        search(&app, &tokens.access, "component=mixed").await.len(),
        1
    );

    // Malformed bodies.
    for (ct, body) in [
        ("application/x-protobuf", b"not snappy".to_vec()),
        (
            "application/json",
            b"{\"streams\": [{\"values\": [[1, 2]]}]}".to_vec(),
        ),
        (
            "application/json",
            br#"{"streams":[{"stream":{},"values":[["x","y"]]}]}"#.to_vec(),
        ),
        ("application/json", br#"[[]]"#.to_vec()),
    ] {
        let res = post(&app, "/loki/api/v1/push", &key, ct, &[], body).await;
        assert_eq!(res.status(), 400, "{ct}");
    }
    let res = post(
        &app,
        "/loki/api/v1/push",
        &key,
        "text/plain",
        &[],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(res.status(), 415);
}

async fn org_ids_must_match_the_credential(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "edge").await;
    let tenant_name = app
        .get_json(&format!("/api/v1/tenants/{tenant}"), &tokens.access)
        .await["name"]
        .as_str()
        .unwrap()
        .to_string();
    let (other, _a, _t) = app.tenant_with_admin("globex").await;
    let body = || {
        json!({"streams": [{"stream": {"job": "x", "coditect_workspace_id": ws},
            "values": [[now_nanos().to_string(), "hello"]]}]})
        .to_string()
        .into_bytes()
    };
    for (org, status) in [
        (tenant.to_string(), 204),
        (tenant_name, 204),
        (other.to_string(), 403),
        ("globex".to_string(), 403),
    ] {
        let res = post(
            &app,
            "/loki/api/v1/push",
            &tokens.access,
            "application/json",
            &[("x-scope-orgid", &org)],
            body(),
        )
        .await;
        assert_eq!(res.status(), status, "X-Scope-OrgID {org}");
    }
    let req = request("x", vec![], vec![record(9, "m", vec![])]).encode_to_vec();
    let res = post(
        &app,
        "/v1/logs",
        &tokens.access,
        "application/x-protobuf",
        &[
            ("x-scope-orgid", &other.to_string()),
            ("x-coditect-workspace-id", &ws),
        ],
        req,
    )
    .await;
    assert_eq!(res.status(), 403);
    // A workspace of another tenant is not found, whichever way it is named.
    let (_o, _oa, other_tokens) = app.tenant_with_admin("initech").await;
    let theirs = app.workspace(&other_tokens.access, "theirs").await;
    let res = post(
        &app,
        "/loki/api/v1/push",
        &tokens.access,
        "application/json",
        &[("x-coditect-workspace-id", &theirs)],
        json!({"streams": [{"stream": {"job": "x"}, "values": [[now_nanos().to_string(), "m"]]}]})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(res.status(), 404);
}

/// The official OpenTelemetry Python SDK, configured only by the standard environment
/// variables the README shows, exports to the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opentelemetry_python_sdk_exports_to_the_hub() {
    let python = common::test_python();
    let app = spawn_app(Backend::Sqlite).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let ws = app.workspace(&tokens.access, "shop").await;
    let key = app
        .api_key(&tokens.access, json!({"name": "otel", "workspace_id": ws}))
        .await;
    let endpoint = app.url("/v1/logs");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/otel_sdk_logs.py"
            ))
            .env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")
            .env(
                "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
                format!("Authorization=Bearer%20{key}"),
            )
            .env("OTEL_RESOURCE_ATTRIBUTES", "service.name=checkout")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let items = search(&app, &tokens.access, "component=checkout").await;
    let messages: Vec<&str> = items
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        ["cart loaded", "payment declined", "retrying"],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(items[0]["level"], "info");
    assert_eq!(items[0]["metadata"]["cart.items"], 3);
    assert_eq!(items[1]["level"], "error");
    assert_eq!(items[1]["trace_id"].as_str().unwrap().len(), 32);
    assert_eq!(items[1]["span_id"].as_str().unwrap().len(), 16);
    assert_eq!(items[2]["level"], "warn");
    assert_eq!(items[0]["metadata"]["otel.scope"], "checkout");
}

/// A stock OpenTelemetry SDK or Loki shipper configured with only an endpoint and a user's
/// credential: its entries go to the tenant's `default` workspace, made on first use (one,
/// whoever sends first, never another tenant's); a header or resource attribute still wins.
/// Once the default is deleted such entries are refused with the reason.
async fn entries_naming_no_workspace_go_to_the_tenant_s_default_one(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _admin, tokens) = app.tenant_with_admin("acme").await;
    let (_t2, _admin2, other) = app.tenant_with_admin("globex").await;
    let viewer = app
        .seed_user(tenant, coditect_proto::Role::Viewer, false)
        .await;
    let viewer = app.login(&viewer).await;
    let otlp = |token: String, body: &'static str, headers: Vec<(&'static str, String)>| {
        let req = request("svc", vec![], vec![record(9, body, vec![])]);
        let app = &app;
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            post(
                app,
                "/v1/logs",
                &token,
                "application/x-protobuf",
                &h,
                req.encode_to_vec(),
            )
            .await
        }
    };
    // Who may not write logs makes no default workspace either.
    assert_eq!(
        otlp(viewer.access.clone(), "viewer", vec![]).await.status(),
        403
    );
    assert_eq!(
        otlp(tokens.access.clone(), "first", vec![]).await.status(),
        200
    );
    assert_eq!(
        otlp(tokens.access.clone(), "second", vec![]).await.status(),
        200
    );
    assert_eq!(
        otlp(other.access.clone(), "theirs", vec![]).await.status(),
        200
    );
    let loki = app
        .client
        .post(app.url("/loki/api/v1/push"))
        .bearer_auth(&tokens.access)
        .json(&json!({"streams": [{"stream": {"job": "j"}, "values": [[now_nanos().to_string(), "from loki"]]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(loki.status(), 204);
    let defaults = |token: String| {
        let app = &app;
        async move {
            let page = app.get_json("/api/v1/workspaces", &token).await;
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["name"] == "default")
                .map(|w| w["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let ours = defaults(tokens.access.clone()).await;
    let theirs = defaults(other.access.clone()).await;
    assert_eq!((ours.len(), theirs.len()), (1, 1), "{ours:?} {theirs:?}");
    assert_ne!(ours[0], theirs[0]);
    let items = search(&app, &tokens.access, &format!("workspace_id={}", ours[0])).await;
    let messages: Vec<&str> = items
        .iter()
        .map(|i| i["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["first", "second", "from loki"]);
    // The header still wins.
    let named = app.workspace(&tokens.access, "named").await;
    let res = otlp(
        tokens.access.clone(),
        "to the named one",
        vec![("x-coditect-workspace-id", named.clone())],
    )
    .await;
    assert_eq!(res.status(), 200);
    let items = search(&app, &tokens.access, &format!("workspace_id={named}")).await;
    assert_eq!(items.len(), 1);
    // Deleted, it is not made again: entries naming none are refused, saying why.
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/workspaces/{}", ours[0]),
            &tokens.access,
            None,
        )
        .await;
    assert!(res.status().is_success(), "{}", res.status());
    let res = otlp(tokens.access.clone(), "lost", vec![]).await;
    assert_eq!(res.status(), 400);
    let status = Status::decode(res.bytes().await.unwrap()).unwrap();
    assert!(status.message.contains("no workspace"), "{status:?}");
    assert!(status.message.contains("default"), "{status:?}");
}
