//! Workspaces on the Docker runtime, end to end: the workspace image built from Debian's
//! packages by `deploy/workspace/build` with the real `codi-monitor`, a real hub, the
//! machine's Docker engine. The agent in the container reaches the hub through the agent
//! socket's directory mounted into it (containers cannot reach the host's network here).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{Backend, TestApp, json, spawn_app_with};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(90);

/// The workspace image with this build's agent, built once per run (cached by content
/// hash across runs).
fn image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/workspace/build");
        let out = Command::new(script)
            .arg("--agent")
            .arg(coditect_testkit::hub::monitor_binary())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "deploy/workspace/build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn wait_for(app: &TestApp, token: &str, id: &str, status: &str, generation: u64) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = json(app.get_as(&format!("/api/v1/workspaces/{id}"), token).await).await;
        if v["status"] == status && v["generation"].as_u64() == Some(generation) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "never {status} ({generation}): {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_running(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + SETTLE;
    loop {
        let v = json(app.get_as(&format!("/api/v1/workspaces/{id}"), token).await).await;
        if v["status"] == "running" {
            return v;
        }
        assert!(Instant::now() < deadline, "never running: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Running means the agent inside the container said ready; SIGKILL to the container
/// brings it back on the same volume; delete removes container, volume and network.
async fn docker_lifecycle_and_recovery(backend: Backend) {
    let image = image().to_string();
    let app = spawn_app_with(
        backend,
        |c| {
            c.workspaces.runtime = coditect_workspaces::RuntimeKind::Docker;
            c.workspaces.image = image;
        },
        axum::Router::new(),
    )
    .await;
    let scope = app.state.config().workspaces.scope.as_str().to_string();
    let (_, _, admin) = app.tenant_with_admin("docker").await;
    let token = admin.access.as_str();
    let created = json(
        app.post_as("/api/v1/workspaces", token, json!({"name": "box"}))
            .await,
    )
    .await;
    assert_eq!(created["runtime"], "docker");
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(&app, token, &id, "running", 1).await;
    let container = format!("coditect-{scope}-{id}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.Config.User}}", &container]),
        "1000:1000"
    );

    // File events in the home reach the hub through the agent's sync.
    let out = docker(&[
        "exec",
        &container,
        "sh",
        "-c",
        "echo kept > /home/coder/work.txt && cat /home/coder/work.txt",
    ]);
    assert_eq!(out, "kept");
    let deadline = Instant::now() + SETTLE;
    loop {
        let page = json(
            app.get_as(
                &format!("/api/logs?workspace_id={id}&component=file-monitor&limit=100"),
                token,
            )
            .await,
        )
        .await;
        if page.to_string().contains("work.txt") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the file event never reached the hub: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGKILL to the container: the health checker sees it exited, the reconciler
    // relaunches it (generation 2) on the same volume.
    docker(&["kill", "-s", "KILL", &container]);
    let back = wait_for(&app, token, &id, "running", 2).await;
    assert_eq!(back["id"], id.as_str());
    assert_eq!(
        docker(&["exec", &container, "cat", "/home/coder/work.txt"]),
        "kept"
    );
    let builds = json(
        app.get_as(&format!("/api/v1/workspaces/{id}/builds"), token)
            .await,
    )
    .await;
    assert_eq!(builds["items"][0]["transition"], "recover");
    assert_eq!(builds["items"][0]["status"], "succeeded");

    // Delete: container, volume and (its tenant's last workspace) network go.
    app.delete_workspace(token, &id, SETTLE).await;
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=dev.coditect.scope={scope}"),
    ]);
    assert!(left.is_empty(), "containers left: {left}");
    let volumes = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=dev.coditect.scope={scope}"),
    ]);
    assert!(volumes.is_empty(), "volumes left: {volumes}");
}

both_backends!(docker_lifecycle_and_recovery);

/// Two replicas on one PostgreSQL and one Docker engine race on every workspace: each
/// ends running with exactly one container. (A launch may fail once when the replicas
/// race to create the tenant's network — Docker allows two of one name and refuses to
/// start on an ambiguous one — and is relaunched; never a second container.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_launch_each_workspace_once() {
    let image = image().to_string();
    let scope = common::test_scope();
    let (image2, scope2) = (image.clone(), scope.clone());
    let first = spawn_app_with(
        Backend::Postgres,
        move |c| {
            c.workspaces.runtime = coditect_workspaces::RuntimeKind::Docker;
            c.workspaces.image = image;
            c.workspaces.scope = scope;
        },
        axum::Router::new(),
    )
    .await;
    let second = common::replica_with(&first, move |c| {
        c.workspaces.runtime = coditect_workspaces::RuntimeKind::Docker;
        c.workspaces.image = image2;
        c.workspaces.scope = scope2;
    })
    .await;
    let scope = first.state.config().workspaces.scope.as_str().to_string();
    let (_, _, admin) = first.tenant_with_admin("race").await;
    let token = admin.access.as_str();
    let mut ids = Vec::new();
    for i in 0..4 {
        // Alternate replicas: each one's reconciler is nudged by its own requests.
        let app = if i % 2 == 0 { &first } else { &second };
        let ws = json(
            app.post_as(
                "/api/v1/workspaces",
                token,
                json!({"name": format!("r{i}")}),
            )
            .await,
        )
        .await;
        ids.push(ws["id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        wait_running(&first, token, id).await;
    }
    let containers = docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Label \"dev.coditect.workspace\"}}",
        "--filter",
        &format!("label=dev.coditect.scope={scope}"),
    ]);
    let mut seen: Vec<&str> = containers.lines().collect();
    seen.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(seen, want, "one container per workspace");
    for id in &ids {
        let builds = json(
            first
                .get_as(&format!("/api/v1/workspaces/{id}/builds"), token)
                .await,
        )
        .await;
        let starts = builds["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["transition"] == "start")
            .count();
        assert_eq!(starts, 1, "asked to start once, recorded once: {builds}");
    }
    drop(second);
}
