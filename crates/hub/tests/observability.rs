//! What operators watch: the ADR-029 metric names on `/metrics`, and the shipped alert
//! rules, checked and unit-tested by `promtool` (installed by `scripts/test`).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{Backend, json, spawn_app};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The value of one series in a Prometheus text exposition (0 when absent).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_pipeline_metrics_are_exported() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_t, _admin, tokens) = app.tenant_with_admin("acme").await;
    let metrics = || async { app.get("/metrics").await.text().await.unwrap() };
    let before = metrics().await;
    // Present before anything happened, at zero, so alerts can be evaluated.
    for name in [
        "# TYPE log_ingestion_total counter",
        "# TYPE storage_write_errors_total counter",
        "# TYPE websocket_connections_active gauge",
        "# TYPE log_outbox_depth gauge",
        "# TYPE log_replay_lag_seconds gauge",
        "# TYPE log_tail_dropped_total counter",
        r#"storage_write_errors_total{store="postgres"}"#,
    ] {
        assert!(before.contains(name), "{name} missing:\n{before}");
    }
    let ingested = r#"log_ingestion_total{protocol="native"}"#;
    let ws = json(
        app.post_as(
            "/api/v1/workspaces",
            &tokens.access,
            json!({"name": "w", "start": false}),
        )
        .await,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut req = format!("ws://{}/ws/logs", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", tokens.access).parse().unwrap(),
    );
    let (tail, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let entries: Vec<_> = (0..7)
        .map(|i| json!({"level": "info", "component": "a", "message": format!("m{i}")}))
        .collect();
    let res = app
        .post_as(
            "/api/logs/batch",
            &tokens.access,
            json!({"entries": entries, "workspace_id": ws}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let after = metrics().await;
    assert_eq!(value(&after, ingested) - value(&before, ingested), 7.0);
    assert!(
        after.contains("log_ingestion_duration_seconds_bucket{protocol=\"native\",le=\"0.0001\"}"),
        "{after}"
    );
    assert_eq!(
        value(&after, "websocket_connections_active")
            - value(&before, "websocket_connections_active"),
        1.0
    );
    drop(tail);
}

fn promtool(args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed (scripts/test installs the Debian package prometheus): {e}")
        });
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid_and_fire_when_they_should() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

/// Every series the hub exports after real traffic (logins good and bad, a refresh, a
/// refusal, ingestion, a tail) passes `promtool check metrics`: HELP and TYPE for each,
/// names and units as Prometheus expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_pass_promtool_after_traffic() {
    let app = spawn_app(Backend::Sqlite).await;
    let (_t, admin, tokens) = app.tenant_with_admin("acme").await;
    let post =
        |path: &str, body: serde_json::Value| app.client.post(app.url(path)).json(&body).send();
    let bad = post(
        "/api/v1/auth/login",
        json!({"email": admin.email, "password": "not the password"}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 401);
    let refreshed = post(
        "/api/v1/auth/refresh",
        json!({"refresh_token": tokens.refresh}),
    )
    .await
    .unwrap();
    assert_eq!(refreshed.status(), 200);
    let access = json(refreshed).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        app.get_as("/api/v1/tenants", "not-a-token").await.status(),
        401
    );
    let ws = app.workspace(&access, "w").await;
    let entries = vec![json!({"level": "info", "component": "a", "message": "m"})];
    let res = app
        .post_as(
            "/api/logs/batch",
            &access,
            json!({"entries": entries, "workspace_id": ws}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let text = app.get("/metrics").await.text().await.unwrap();
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test installs the Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}
