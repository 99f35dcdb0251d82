//! Property tests of every ingestion parser and of the search parameters, through the real
//! handlers of a live hub: random and mutated bodies (native JSON, gzip, OTLP protobuf and
//! JSON, Loki JSON and snappy protobuf) and random queries never panic the hub, never get
//! a 5xx, and leave search and the live tail working. On both engines.
//!
//! The seed is printed; `CODITECT_FUZZ_SEED=<n>` replays a run, `CODITECT_FUZZ_CASES`
//! runs more cases per parser (default 150).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{Backend, TestApp, json, spawn_app_with};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{Value, json};

both_backends!(ingestion_and_search_survive_random_input);

fn seed() -> u64 {
    std::env::var("CODITECT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random)
}

fn cases() -> usize {
    std::env::var("CODITECT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150)
}

/// A mutation of `input`: bit flips, insertions, deletions, truncation, duplicated or
/// spliced ranges, interesting bytes; sometimes several.
fn mutate(rng: &mut StdRng, input: &[u8], other: &[u8]) -> Vec<u8> {
    const INTERESTING: [&[u8]; 14] = [
        b"\x00",
        b"\xff",
        b"\xc3\x28",
        b"{",
        b"[",
        b"\"",
        b"\\u0000",
        b"\\ud800",
        b"-1",
        b"1e999",
        b"18446744073709551616",
        b"null",
        b"{\"a\":",
        b"\x16\x03\x01",
    ];
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len().max(1);
        let at = rng.random_range(0..len).min(out.len());
        match rng.random_range(0..8) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let bytes = INTERESTING[rng.random_range(0..INTERESTING.len())];
                out.splice(at..at, bytes.iter().copied());
            }
            2 if !out.is_empty() => {
                let end = (at + rng.random_range(1..64)).min(out.len());
                out.drain(at..end);
            }
            3 => out.truncate(at),
            4 if !out.is_empty() => {
                let end = (at + rng.random_range(1..256)).min(out.len());
                let copy = out[at..end].to_vec();
                for _ in 0..rng.random_range(1..8) {
                    out.splice(at..at, copy.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            6 => {
                let mut noise = vec![0u8; rng.random_range(1..128)];
                rng.fill_bytes(&mut noise);
                out.splice(at..at, noise);
            }
            _ => {
                let depth = rng.random_range(100..3000);
                let open = if rng.random_bool(0.5) { b'[' } else { b'{' };
                out.splice(at..at, std::iter::repeat_n(open, depth));
            }
        }
    }
    out
}

/// JSON values meant to break a field: wrong types, extremes, deep nesting.
fn odd_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..10) {
        0 => Value::Null,
        1 => json!(u64::MAX),
        2 => json!(-1),
        3 => json!(f64::MAX),
        4 => json!("x".repeat(rng.random_range(0..200_000))),
        5 => json!("\u{0}\u{1}\n\u{7f}é\u{10ffff}"),
        6 => json!([1, "two", {"three": 3}]),
        7 => json!({"nested": {"deeper": [{"k": true}]}}),
        8 => json!(true),
        _ => json!(""),
    }
}

/// A valid document with one random field (at any depth) replaced by an odd value.
fn twist(rng: &mut StdRng, mut doc: Value) -> Value {
    // Choose the path first (reading), then follow it (writing).
    let mut path: Vec<Value> = Vec::new();
    let mut at = &doc;
    loop {
        let step = match at {
            Value::Object(m) if !m.is_empty() && rng.random_bool(0.7) => {
                let keys: Vec<&String> = m.keys().collect();
                json!(keys[rng.random_range(0..keys.len())])
            }
            Value::Array(a) if !a.is_empty() && rng.random_bool(0.7) => {
                json!(rng.random_range(0..a.len()))
            }
            _ => break,
        };
        at = match &step {
            Value::String(k) => &at[k.as_str()],
            _ => &at[step.as_u64().unwrap() as usize],
        };
        path.push(step);
    }
    let mut target = &mut doc;
    for step in &path {
        target = match step {
            Value::String(k) => &mut target[k.as_str()],
            _ => &mut target[step.as_u64().unwrap() as usize],
        };
    }
    *target = odd_value(rng);
    doc
}

struct Target {
    path: &'static str,
    content_type: &'static str,
    encoding: Option<&'static str>,
}

impl Target {
    fn plain(path: &'static str, content_type: &'static str) -> Target {
        Target {
            path,
            content_type,
            encoding: None,
        }
    }
}

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap()
}

fn native(ws: &str) -> Value {
    json!({
        "workspace_id": ws,
        "client_version": "fuzz/1",
        "batch_id": format!("fuzz-{}", uuid::Uuid::now_v7()),
        "entries": [
            {"timestamp": chrono::Utc::now().to_rfc3339(), "level": "warn", "component": "api",
             "message": "upstream slow", "metadata": {"route": "/x", "ms": 912},
             "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
            {"level": "info", "component": "db", "message": "ok", "id": uuid::Uuid::now_v7().to_string()},
        ],
    })
}

fn otlp(ws: &str) -> Value {
    json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "svc"}},
            {"key": "coditect.workspace.id", "value": {"stringValue": ws}},
        ]},
        "scopeLogs": [{"scope": {"name": "lib", "version": "1"}, "logRecords": [{
            "timeUnixNano": now_ns().to_string(),
            "severityNumber": 13,
            "severityText": "WARN",
            "body": {"stringValue": "otlp entry"},
            "attributes": [
                {"key": "n", "value": {"intValue": "7"}},
                {"key": "list", "value": {"arrayValue": {"values": [{"boolValue": true}]}}},
                {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"doubleValue": 1.5}}]}}},
            ],
            "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spanId": "00f067aa0ba902b7",
        }]}],
    }]})
}

fn loki(ws: &str) -> Value {
    json!({"streams": [{
        "stream": {"service_name": "nginx", "level": "warn", "coditect_workspace_id": ws},
        "values": [
            [now_ns().to_string(), "GET /slow 504"],
            [now_ns().to_string(), "with metadata", {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}],
        ],
    }]})
}

fn loki_protobuf(ws: &str) -> Vec<u8> {
    use coditect_hub::logs::loki::proto::{Entry, LabelPair, PushRequest, Stream, Timestamp};
    let now = chrono::Utc::now();
    PushRequest {
        streams: vec![Stream {
            labels: format!(
                r#"{{service_name="api", coditect_workspace_id="{ws}", level="error"}}"#
            ),
            entries: vec![Entry {
                timestamp: Some(Timestamp {
                    seconds: now.timestamp(),
                    nanos: 0,
                }),
                line: "loki protobuf line".into(),
                structured_metadata: vec![LabelPair {
                    name: "trace_id".into(),
                    value: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                }],
            }],
            hash: 0,
        }],
    }
    .encode_to_vec()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn snappy(bytes: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new().compress_vec(bytes).unwrap()
}

async fn post(app: &TestApp, token: &str, target: &Target, body: Vec<u8>) -> u16 {
    let mut req = app
        .client
        .post(app.url(target.path))
        .bearer_auth(token)
        .header("content-type", target.content_type);
    if let Some(e) = target.encoding {
        req = req.header("content-encoding", e);
    }
    req.body(body).send().await.unwrap().status().as_u16()
}

/// Statuses seen, per parser (printed at the end: a run where nothing got through or
/// nothing was refused would be fuzzing nothing).
static SEEN: std::sync::Mutex<std::collections::BTreeMap<(&'static str, u16), usize>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn check(status: u16, what: &'static str, seed: u64, case: usize) {
    *SEEN.lock().unwrap().entry((what, status)).or_default() += 1;
    assert!(
        status < 500,
        "{what} case {case} answered {status} (replay with CODITECT_FUZZ_SEED={seed})"
    );
}

async fn ingestion_and_search_survive_random_input(backend: Backend) {
    let seed = seed();
    eprintln!("fuzz seed {seed} (CODITECT_FUZZ_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    // No rate limit: every body reaches its parser.
    let app = spawn_app_with(backend, |c| c.logs.rate_per_tenant = 0, axum::Router::new()).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("fuzz").await;
    let ws = app.workspace(&tokens.access, "api").await;
    let token = tokens.access.clone();
    let n = cases();

    let native_t = Target::plain("/api/logs/batch", "application/json");
    let native_gz = Target {
        encoding: Some("gzip"),
        ..native_t
    };
    let otlp_pb = Target::plain("/v1/logs", "application/x-protobuf");
    let otlp_json = Target::plain("/v1/logs", "application/json");
    let loki_json = Target::plain("/loki/api/v1/push", "application/json");
    let loki_pb_t = Target::plain("/loki/api/v1/push", "application/x-protobuf");

    // The bodies the mutations start from are valid: each is accepted as it is.
    for (target, body) in [
        (&native_t, serde_json::to_vec(&native(&ws)).unwrap()),
        (&native_gz, gzip(&serde_json::to_vec(&native(&ws)).unwrap())),
        (&otlp_json, serde_json::to_vec(&otlp(&ws)).unwrap()),
        (
            &otlp_pb,
            serde_json::from_value::<ExportLogsServiceRequest>(otlp(&ws))
                .unwrap()
                .encode_to_vec(),
        ),
        (&loki_json, serde_json::to_vec(&loki(&ws)).unwrap()),
        (&loki_pb_t, snappy(&loki_protobuf(&ws))),
    ] {
        let status = post(&app, &token, target, body).await;
        assert!(
            (200..300).contains(&status),
            "{} {}: {status}",
            target.path,
            target.content_type
        );
    }

    for case in 0..n {
        // Per parser: structure-aware twists of a valid document and byte-level mutations
        // of its encoding (compressed ones mutated before or after compression).
        let doc = native(&ws);
        let raw = serde_json::to_vec(&doc).unwrap();
        let twisted = serde_json::to_vec(&twist(&mut rng, doc)).unwrap();
        let mutated = mutate(&mut rng, &raw, &twisted);
        let gzipped = if rng.random_bool(0.5) {
            gzip(&mutated)
        } else {
            mutate(&mut rng, &gzip(&raw), &[])
        };
        let otlp_doc = otlp(&ws);
        let otlp_raw = serde_json::to_vec(&otlp_doc).unwrap();
        let pb = serde_json::from_value::<ExportLogsServiceRequest>(otlp_doc.clone())
            .unwrap()
            .encode_to_vec();
        let otlp_twisted = serde_json::to_vec(&twist(&mut rng, otlp_doc)).unwrap();
        let loki_doc = loki(&ws);
        let loki_raw = serde_json::to_vec(&loki_doc).unwrap();
        let loki_twisted = serde_json::to_vec(&twist(&mut rng, loki_doc)).unwrap();
        let loki_pb = loki_protobuf(&ws);
        let snappied = if rng.random_bool(0.5) {
            snappy(&mutate(&mut rng, &loki_pb, &[]))
        } else {
            mutate(&mut rng, &snappy(&loki_pb), &[])
        };
        let bodies: [(&Target, &'static str, Vec<u8>); 9] = [
            (&native_t, "native twisted", twisted),
            (&native_t, "native mutated", mutated),
            (&native_gz, "native gzip", gzipped),
            (&otlp_pb, "otlp protobuf", mutate(&mut rng, &pb, &raw)),
            (
                &otlp_json,
                "otlp json mutated",
                mutate(&mut rng, &otlp_raw, &otlp_twisted),
            ),
            (&otlp_json, "otlp json twisted", otlp_twisted),
            (
                &loki_json,
                "loki json mutated",
                mutate(&mut rng, &loki_raw, &loki_twisted),
            ),
            (&loki_json, "loki json twisted", loki_twisted),
            (&loki_pb_t, "loki protobuf", snappied),
        ];
        for (target, what, body) in bodies {
            check(post(&app, &token, target, body).await, what, seed, case);
        }

        // Search parameters: known keys with odd values, unknown keys, odd encodings.
        let keys = [
            "workspace_id",
            "level",
            "min_level",
            "component",
            "session_id",
            "since",
            "until",
            "q",
            "limit",
            "order",
            "cursor",
            "trace_id",
            "x",
        ];
        let values = [
            "",
            "%00",
            "%ff",
            "-1",
            "0",
            "1001",
            "99999999999999999999",
            "asc",
            "warn",
            "2026-13-45T99:99:99Z",
            "9999-12-31T23:59:59Z",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            "%E2%80%AE",
            "a%20b%20c",
            &ws,
            "not-a-uuid",
        ];
        let query: Vec<String> = (0..rng.random_range(0..6))
            .map(|_| {
                let k = keys[rng.random_range(0..keys.len())];
                let v = if rng.random_bool(0.2) {
                    "q".repeat(rng.random_range(0..5000))
                } else {
                    values[rng.random_range(0..values.len())].to_string()
                };
                format!("{k}={v}")
            })
            .collect();
        let path = format!("/api/logs?{}", query.join("&"));
        check(
            app.get_as(&path, &token).await.status().as_u16(),
            "search",
            seed,
            case,
        );
    }

    let seen = SEEN.lock().unwrap().clone();
    eprintln!("statuses: {seen:?}");
    // Mutations must mostly be refused (else they mutate nothing); the valid bodies they
    // start from were accepted (checked before the loop).
    let kinds: std::collections::BTreeSet<&str> = seen.keys().map(|(w, _)| *w).collect();
    for what in kinds {
        let refused = seen.iter().any(|((w, s), _)| *w == what && *s >= 400);
        assert!(refused, "{what} was never refused: {seen:?}");
    }

    // The hub still serves: a search, a lookup, and a live tail that gets a new entry.
    let found = app
        .get_json(&format!("/api/logs?workspace_id={ws}&limit=5"), &token)
        .await;
    assert!(found["items"].is_array(), "{found}");
    let mut tail = common::open_tail(&app, &token, &format!("workspace_id={ws}")).await;
    assert!(common::next_text(&mut tail).await.contains("connected"));
    let res = app
        .post_as(
            "/api/logs/batch",
            &token,
            json!({"workspace_id": ws, "entries": [{"level": "info", "component": "x", "message": "after the fuzz"}]}),
        )
        .await;
    assert_eq!(res.status(), 202, "{}", json(res).await);
    while !common::next_text(&mut tail)
        .await
        .contains("after the fuzz")
    {}
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        !metrics.contains("hub_background_restarts_total{"),
        "no background task panicked"
    );
}
