//! The `coditect-hub` binary as operators run it: options, exit codes, signals, logs, and
//! PostgreSQL going away and coming back.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_testkit::PgCluster;
use common::{HubProcess, eventually, run_hub};
use serde_json::Value;
use std::time::Duration;

#[test]
fn help_explains_every_option() {
    let out = run_hub(&["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for s in coditect_hub::config::SETTINGS {
        assert!(help.contains(&format!("--{}", s.flag)), "--{}", s.flag);
        assert!(help.contains(s.env), "{}", s.env);
    }
    assert!(help.contains("--config"));
}

#[test]
fn a_bad_value_exits_2_naming_key_source_and_allowed_values() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = run_hub(&["--data-dir", data], &[("CODITECT_LISTEN", "nowhere")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid listen from environment variable CODITECT_LISTEN"),
        "{err}"
    );
    assert!(err.contains("\"nowhere\""), "{err}");
    assert!(err.contains("expected an IP address and port"), "{err}");

    let out = run_hub(
        &["--data-dir", data, "--sqlite-synchronous", "sometimes"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flag --sqlite-synchronous") && err.contains("full, normal"),
        "{err}"
    );

    let out = run_hub(&["--data-dir", data, "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_data_dir_that_cannot_be_written_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    // A path below a regular file can never be created, even by root.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let data = file.join("data");
    let out = run_hub(
        &["--listen", "127.0.0.1:0"],
        &[("CODITECT_DATA_DIR", data.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid data_dir from environment variable CODITECT_DATA_DIR"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_existing_read_only_data_dir_exits_2() {
    // /proc exists but takes no new files, even from root (for whom chmod changes nothing).
    let out = run_hub(&["--listen", "127.0.0.1:0", "--data-dir", "/proc"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid data_dir from flag --data-dir"),
        "{err}"
    );
    assert!(err.contains("expected a writable directory"), "{err}");
}

#[test]
fn two_hubs_never_share_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = HubProcess::spawn(dir.path(), &[], &[]);
    assert!(first.addr.is_some(), "first hub runs: {:?}", first.logs());
    let mut second = HubProcess::spawn(dir.path(), &[], &[]);
    let status = second
        .wait_exit(Duration::from_secs(20))
        .expect("second hub exits");
    assert_eq!(status.code(), Some(2));
    let logs = second.logs().join("\n");
    assert!(logs.contains("no other running coditect-hub"), "{logs}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly_with_json_logs_carrying_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::spawn(dir.path(), &["--log-level", "info"], &[]);
    assert!(hub.addr.is_some(), "{:?}", hub.logs());
    let client = reqwest::Client::new();
    let res = client
        .get(hub.url("/nope"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    hub.signal("TERM");
    let status = hub.wait_exit(Duration::from_secs(30)).expect("exits");
    assert_eq!(status.code(), Some(0));
    assert!(hub.logged("shutdown requested, draining in-flight requests"));
    assert!(hub.logged("sqlite store closed"));
    assert!(hub.logged("hub stopped"));

    let logs = hub.json_logs();
    assert_eq!(logs.len(), hub.logs().len(), "every line is JSON");
    let request_line = logs
        .iter()
        .find(|l| l["message"] == "request handled")
        .expect("access log line");
    assert_eq!(
        request_line["span"]["request_id"], "trace-me-1",
        "{request_line}"
    );
    assert_eq!(request_line["status"], 404);
    assert_eq!(request_line["span"]["route"], "unmatched");
    // After a clean close the WAL is checkpointed into the database file.
    let wal = dir.path().join("hub.db-wal");
    assert!(
        std::fs::metadata(&wal)
            .map(|m| m.len() == 0)
            .unwrap_or(true)
    );
}

#[tokio::test]
async fn postgres_down_at_start_then_up_then_restarted_is_survived_without_a_restart() {
    // Blocking cluster control is fine here: the hub under test is another process.
    let cluster = PgCluster::start().expect("private cluster");
    cluster.stop().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(
        dir.path(),
        &["--pg-connect-timeout", "500ms"],
        &[("CODITECT_DATABASE_URL", &cluster.url())],
    );
    assert!(
        hub.addr.is_some(),
        "serves while postgres is down: {:?}",
        hub.logs()
    );

    let (status, body) = get_json(&hub.url("/health")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unhealthy");
    let pg = body["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "postgres")
        .expect("postgres component")
        .clone();
    assert_eq!(pg["healthy"], false);
    assert_eq!(get_json(&hub.url("/ready")).await.0, 503);
    assert!(
        eventually(Duration::from_secs(10), || async {
            hub.logged("postgres unreachable, retrying")
        })
        .await,
        "a clear retry line is logged"
    );
    let retry = hub
        .json_logs()
        .into_iter()
        .find(|l| l["message"] == "postgres unreachable, retrying")
        .unwrap();
    assert!(
        retry["attempt"].is_u64() && retry["retry_in_ms"].is_u64(),
        "{retry}"
    );

    cluster.start_server().unwrap();
    assert!(
        becomes_healthy(&hub).await,
        "healthy once postgres is up: {:?}",
        hub.logs()
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            get_json(&hub.url("/ready")).await.0 == 200
        })
        .await,
        "ready once postgres is up and the first start is done"
    );

    // PostgreSQL restarts under a running hub: it recovers by itself.
    cluster.restart().unwrap();
    assert!(
        becomes_healthy(&hub).await,
        "healthy after a restart: {:?}",
        hub.logs()
    );
    for line in hub.logs() {
        assert!(
            !line.contains("panicked") && !line.contains("stack backtrace"),
            "{line}"
        );
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let res = reqwest::get(url).await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn becomes_healthy(hub: &HubProcess) -> bool {
    eventually(Duration::from_secs(30), || async {
        let (status, body) = get_json(&hub.url("/health")).await;
        status == 200 && body["status"] == "healthy"
    })
    .await
}

/// `/ready` answers 200 only once the bootstrap admin exists: a script that waits for it
/// and then logs in is never refused. Hashing at production cost (the defaults) makes the
/// first admin take a while to create; before, `/ready` was 200 meanwhile and the login 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_waits_for_the_first_admin() {
    let dir = tempfile::tempdir().unwrap();
    let (email, password) = ("first@example.com", "a long bootstrap passphrase");
    let hub = HubProcess::spawn(
        dir.path(),
        &[],
        &[
            ("CODITECT_BOOTSTRAP_EMAIL", email),
            ("CODITECT_BOOTSTRAP_PASSWORD", password),
        ],
    );
    let mut saw_not_ready = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (status, body) = get_json(&hub.url("/ready")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        saw_not_ready.get_or_insert(body);
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let login = reqwest::Client::new()
        .post(hub.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        login.status(),
        200,
        "ready, yet the first admin cannot log in"
    );
    if let Some(body) = saw_not_ready {
        eprintln!("not ready meanwhile: {body}");
        assert_eq!(body["status"], "not_ready");
    }
}
