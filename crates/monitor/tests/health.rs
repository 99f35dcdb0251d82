//! `/health` and `/metrics` on the loopback port, over real HTTP.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Level;
use coditect_proto::ipc::Payload;
use common::*;
use serde_json::Value;

#[tokio::test]
async fn health_names_components_and_metrics_carry_the_monitor_series() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        c.monitor.http_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let http = d.http.expect("the health port is bound");
    assert!(http.ip().is_loopback());
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::LogEntry(entry(Level::Info, "counted")))
            .await,
    );

    let res = reqwest::get(format!("http://{http}/health")).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "healthy", "{body}");
    assert!(body["uptime_seconds"].is_u64());
    let names: Vec<&str> = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["store", "ipc", "watcher", "sync"]);
    assert_eq!(body["components"][3]["status"], "disabled");

    let res = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for series in [
        "codi_logs_total{source=\"ipc\"}",
        "codi_ipc_duration_seconds_bucket{type=\"log_entry\"",
        "codi_exports_processed_total",
        "codi_sync_lag_seconds",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    let res = reqwest::get(format!("http://{http}/nope")).await.unwrap();
    assert_eq!(res.status(), 404);
    d.stop().await;
}

#[tokio::test]
async fn a_health_port_in_use_does_not_stop_the_daemon() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        c.monitor.http_listen = Some(addr);
    })
    .await;
    assert_eq!(d.http, None);
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::LogEntry(entry(Level::Info, "still here")))
            .await,
    );
    d.stop().await;
}
