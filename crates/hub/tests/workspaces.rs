//! Workspaces end to end on the process runtime: a real hub (on both store engines), real
//! bubblewrap sandboxes, and the real `codi-monitor agent` inside each, reporting through
//! the hub's agent socket with the key minted for its workspace.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{Backend, TestApp, eventually, json, spawn_app};
use serde_json::{Value, json};
use std::time::Duration;

/// Long enough for a sandbox to start on a loaded 2-core machine.
const SETTLE: Duration = Duration::from_secs(60);

async fn ws_json(app: &TestApp, token: &str, id: &str) -> (u16, Value) {
    let res = app.get_as(&format!("/api/v1/workspaces/{id}"), token).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Waits until the workspace is `status` (and, when given, on `generation`); its view.
async fn wait_for(
    app: &TestApp,
    token: &str,
    id: &str,
    status: &str,
    generation: Option<u64>,
) -> Value {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (_, v) = ws_json(app, token, id).await;
        if v["status"] == status && generation.is_none_or(|g| v["generation"].as_u64() == Some(g)) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workspace never became {status} ({generation:?}): {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn orchestrator_messages(app: &TestApp, token: &str, id: &str) -> Vec<String> {
    let page = app
        .get_json(
            &format!("/api/logs?workspace_id={id}&component=orchestrator&limit=100&order=asc"),
            token,
        )
        .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn home(app: &TestApp, id: &str) -> std::path::PathBuf {
    app.data_dir.path().join("workspaces").join(id).join("home")
}

/// Create → running (the agent said ready) → stop → start → delete, with builds, logs,
/// the versioned state and the agent's key along the way.
async fn lifecycle(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.tenant_with_admin("ws").await;
    let token = admin.access.as_str();

    let res = app
        .post_as("/api/v1/workspaces", token, json!({"name": "dev"}))
        .await;
    assert_eq!(res.status(), 201);
    let created = json(res).await;
    assert_eq!(created["desired"], "running");
    assert_eq!(created["runtime"], "process");
    let id = created["id"].as_str().unwrap().to_string();

    let running = wait_for(&app, token, &id, "running", Some(1)).await;
    assert!(
        running["ready_at"].is_string(),
        "running means the agent said ready: {running}"
    );
    assert!(running["last_seen_at"].is_string());

    // The agent's own store lives in the persistent home; the home is its own.
    let home = home(&app, &id);
    assert!(
        home.join(".coditect/monitor.db").exists(),
        "the agent runs from the home"
    );
    std::fs::write(home.join("notes.txt"), "kept").unwrap();
    // The agent watches the home; its file events reach the hub through its sync.
    let seen = eventually(SETTLE, || async {
        let page = app
            .get_json(
                &format!("/api/logs?workspace_id={id}&component=file-monitor&limit=100"),
                token,
            )
            .await;
        page.to_string().contains("notes.txt")
    })
    .await;
    assert!(seen, "the agent's file event never reached the hub");

    // The builds and the workspace's own log show the history.
    let builds = app
        .get_json(&format!("/api/v1/workspaces/{id}/builds"), token)
        .await;
    let first = &builds["items"][0];
    assert_eq!(
        (first["transition"].as_str(), first["status"].as_str()),
        (Some("start"), Some("succeeded"))
    );
    assert!(first["initiator"].as_str().unwrap().starts_with("user:"));
    let messages = orchestrator_messages(&app, token, &id).await;
    assert!(
        messages.iter().any(|m| m.starts_with("workspace starting")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("workspace running")),
        "{messages:?}"
    );

    // The agent's key: one live service key bound to this workspace.
    let keys = app.get_json("/api/v1/api-keys", token).await;
    let agent_keys: Vec<&Value> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["workspace_id"] == id.as_str() && k["revoked_at"].is_null())
        .collect();
    assert_eq!(agent_keys.len(), 1, "{keys}");
    assert_eq!(agent_keys[0]["role"], "service");

    // The state: If-Match is required, a stale version is refused.
    let put = |etag: Option<&'static str>, body: Value| {
        let mut req = app
            .client
            .put(app.url(&format!("/api/v1/workspaces/{id}/state")))
            .bearer_auth(token)
            .json(&body);
        if let Some(e) = etag {
            req = req.header("if-match", e);
        }
        req.send()
    };
    assert_eq!(put(None, json!({"tab": 1})).await.unwrap().status(), 400);
    let stored = put(Some("\"0\""), json!({"tab": 1})).await.unwrap();
    assert_eq!(stored.status(), 200);
    assert_eq!(stored.headers()["etag"], "\"1\"");
    let stale = put(Some("\"0\""), json!({"tab": 2})).await.unwrap();
    common::assert_envelope(stale, 412, "PRECONDITION_FAILED").await;
    assert_eq!(
        put(Some("*"), json!([1])).await.unwrap().status(),
        400,
        "only an object"
    );
    let read = app
        .get_as(&format!("/api/v1/workspaces/{id}/state"), token)
        .await;
    assert_eq!(read.headers()["etag"], "\"1\"");
    assert_eq!(json(read).await, json!({"tab": 1}));

    // Stop: the home stays, the key is revoked.
    let res = app
        .post_as(&format!("/api/v1/workspaces/{id}/stop"), token, json!({}))
        .await;
    assert_eq!(res.status(), 202);
    wait_for(&app, token, &id, "stopped", None).await;
    assert_eq!(
        std::fs::read_to_string(home.join("notes.txt")).unwrap(),
        "kept"
    );
    let keys = app.get_json("/api/v1/api-keys", token).await;
    assert!(
        keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["workspace_id"] != id.as_str() || !k["revoked_at"].is_null()),
        "no live agent key while stopped: {keys}"
    );

    // Start again: a new launch on the same home; restart makes another.
    app.post_as(&format!("/api/v1/workspaces/{id}/start"), token, json!({}))
        .await;
    wait_for(&app, token, &id, "running", Some(2)).await;
    app.post_as(
        &format!("/api/v1/workspaces/{id}/restart"),
        token,
        json!({}),
    )
    .await;
    wait_for(&app, token, &id, "running", Some(3)).await;
    let builds = app
        .get_json(&format!("/api/v1/workspaces/{id}/builds"), token)
        .await;
    let transitions: Vec<(&str, &str)> = builds["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["transition"].as_str().unwrap(),
                b["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        transitions,
        [
            ("restart", "succeeded"),
            ("start", "succeeded"),
            ("stop", "succeeded"),
            ("start", "succeeded")
        ]
    );
    assert_eq!(
        std::fs::read_to_string(home.join("notes.txt")).unwrap(),
        "kept"
    );

    // Delete: everything it owned goes, then the workspace.
    app.delete_workspace(token, &id, SETTLE).await;
    assert!(!home.exists(), "its home was removed");
    let audit = app.get_json("/api/v1/audit?limit=1000", token).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    for a in [
        "workspace.create",
        "workspace.stop",
        "workspace.start",
        "workspace.restart",
        "workspace.delete",
        "workspace.build",
    ] {
        assert!(actions.contains(&a), "{a} audited: {actions:?}");
    }
}

/// SIGKILL to the sandboxed process tree: the health checker notices, the workspace is
/// relaunched on the same home with the same state, and its id stays.
async fn recovery(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.tenant_with_admin("recover").await;
    let token = admin.access.as_str();
    let created = json(
        app.post_as("/api/v1/workspaces", token, json!({"name": "dev"}))
            .await,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(&app, token, &id, "running", Some(1)).await;
    std::fs::write(home(&app, &id).join("work.txt"), "unsaved? no: saved").unwrap();
    let res = app
        .client
        .put(app.url(&format!("/api/v1/workspaces/{id}/state")))
        .bearer_auth(token)
        .header("if-match", "*")
        .json(&json!({"cursor": 42}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Kill the namespace's init: the whole sandboxed tree dies at once.
    let runtime = app
        .state
        .orchestrator()
        .runtime(coditect_workspaces::RuntimeKind::Process)
        .unwrap()
        .clone();
    let instance = coditect_workspaces::InstanceRef {
        tenant: created["tenant_id"].as_str().unwrap().parse().unwrap(),
        workspace: id.parse().unwrap(),
    };
    let observed = runtime.inspect(instance).await.unwrap().unwrap();
    let pid: i32 = observed.runtime_id.parse().unwrap();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    for child in children.split_whitespace() {
        std::process::Command::new("kill")
            .args(["-KILL", child])
            .status()
            .unwrap();
    }

    let back = wait_for(&app, token, &id, "running", Some(2)).await;
    assert_eq!(back["id"], id.as_str(), "the same workspace, the same URL");
    assert_eq!(
        std::fs::read_to_string(home(&app, &id).join("work.txt")).unwrap(),
        "unsaved? no: saved"
    );
    let state = app
        .get_json(&format!("/api/v1/workspaces/{id}/state"), token)
        .await;
    assert_eq!(state, json!({"cursor": 42}));
    let builds = app
        .get_json(&format!("/api/v1/workspaces/{id}/builds"), token)
        .await;
    let newest = &builds["items"][0];
    assert_eq!(newest["transition"], "recover");
    assert_eq!(newest["status"], "succeeded");
    assert_eq!(newest["initiator"], "system:orchestrator");
    let messages = orchestrator_messages(&app, token, &id).await;
    assert!(
        messages
            .iter()
            .any(|m| m.contains("failed") && m.contains("relaunching")),
        "{messages:?}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("session_recovery_time"),
        "recovery is measured"
    );
    assert!(metrics.contains("container_launch_time"));
}

/// Quotas: over the tenant's workspace count, a create is refused with QUOTA_EXCEEDED.
async fn quota(backend: Backend) {
    let app = common::spawn_app_with(
        backend,
        |c| c.workspaces.quota.workspaces = 2,
        axum::Router::new(),
    )
    .await;
    let (_, _, admin) = app.tenant_with_admin("quota").await;
    let token = admin.access.as_str();
    for name in ["a", "b"] {
        let res = app
            .post_as(
                "/api/v1/workspaces",
                token,
                json!({"name": name, "start": false}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    let res = app
        .post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "c", "start": false}),
        )
        .await;
    let message = common::assert_envelope(res, 409, "QUOTA_EXCEEDED").await;
    assert!(message.contains("workspace quota is 2"), "{message}");
}

/// Only the workspace's own agent key may report, and only for its current launch.
async fn reports_are_the_agents_own(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.tenant_with_admin("report").await;
    let token = admin.access.as_str();
    let id = app.workspace(token, "quiet").await;
    let body = json!({"workspace_id": id, "instance": "abc", "ready": true});
    let res = app
        .post_as("/api/v1/agent/report", token, body.clone())
        .await;
    common::assert_envelope(res, 403, "ACCESS_DENIED").await;
    let bound = app
        .api_key(
            token,
            json!({"name": "bound", "role": "service", "workspace_id": id}),
        )
        .await;
    let res = app.post_as("/api/v1/agent/report", &bound, body).await;
    common::assert_envelope(res, 409, "CONFLICT").await;
    let res = app
        .post_as(
            "/api/v1/agent/report",
            &bound,
            json!({"workspace_id": id, "instance": "not/hex", "ready": true}),
        )
        .await;
    common::assert_envelope(res, 400, "BAD_REQUEST").await;
}

/// A template's warm pool: instances wait ready; a new workspace of the template is one
/// of them, handed to its owner (a new key) without a restart; the pool refills.
async fn warm_pool(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _, admin) = app.tenant_with_admin("pool").await;
    let token = admin.access.as_str();
    let member = app
        .seed_user(tenant, coditect_proto::Role::Member, false)
        .await;
    let member_token = app.login(&member).await.access;
    let t = json(
        app.post_as(
            "/api/v1/templates",
            token,
            json!({"name": "warm", "spec": {"pool_size": 2, "idle_timeout_secs": 60}}),
        )
        .await,
    )
    .await;
    let template = t["id"].as_str().unwrap().to_string();
    let ready_pool = |n: usize| {
        let app = &app;
        async move {
            let list = app.get_json("/api/v1/workspaces", token).await;
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["pooled"] == true && w["status"] == "running")
                .count()
                >= n
        }
    };
    assert!(
        eventually(SETTLE, || ready_pool(2)).await,
        "the pool never filled"
    );

    let res = app
        .post_as(
            "/api/v1/workspaces",
            &member_token,
            json!({"name": "mine", "template_id": template}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let mine = json(res).await;
    assert_eq!(
        mine["status"], "running",
        "claimed, not started cold: {mine}"
    );
    assert_eq!(mine["pooled"], false);
    assert_eq!(mine["owner_id"], member.id.to_string());
    assert_eq!(mine["name"], "mine");
    let id = mine["id"].as_str().unwrap().to_string();
    let generation = mine["generation"].as_u64().unwrap();
    let claimed_at = chrono::Utc::now();

    // Its agent reports with the new owner's key (the pool account's is revoked), on the
    // same launch: no restart.
    let seen_after_claim = eventually(SETTLE, || {
        let (app, member_token, id) = (&app, &member_token, &id);
        async move {
            let (_, v) = ws_json(app, member_token, id).await;
            v["last_seen_at"]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .is_some_and(|t| t > claimed_at + chrono::Duration::milliseconds(100))
        }
    })
    .await;
    assert!(
        seen_after_claim,
        "the agent never reported with its new key"
    );
    let (_, now) = ws_json(&app, &member_token, &id).await;
    assert_eq!(now["status"], "running");
    assert_eq!(
        now["generation"].as_u64(),
        Some(generation),
        "the same launch"
    );
    let keys = app.get_json("/api/v1/api-keys", token).await;
    let live: Vec<&Value> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["workspace_id"] == id.as_str() && k["revoked_at"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "{keys}");
    assert_eq!(live[0]["owner_id"], member.id.to_string());
    let builds = app
        .get_json(&format!("/api/v1/workspaces/{id}/builds"), &member_token)
        .await;
    assert_eq!(builds["items"][0]["transition"], "claim");
    assert_eq!(
        builds["items"][0]["initiator"],
        format!("user:{}", member.id)
    );

    // The pool refills; a claim is counted.
    assert!(
        eventually(SETTLE, || ready_pool(2)).await,
        "the pool never refilled"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("pool_claims_total{outcome=\"hit\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("pool_size{"), "pool size is a metric");

    // The pool shrinks with its template, and goes with it; the claimed workspace stays.
    let pooled = |n: usize| {
        let app = &app;
        async move {
            let list = app.get_json("/api/v1/workspaces", token).await;
            list["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["pooled"] == true)
                .count()
                == n
        }
    };
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/api/v1/templates/{template}"),
            token,
            Some(json!({"name": "warm", "spec": {"pool_size": 1, "idle_timeout_secs": 60}})),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        eventually(SETTLE, || pooled(1)).await,
        "the pool never shrank"
    );
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/templates/{template}"),
            token,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    assert!(
        eventually(SETTLE, || pooled(0)).await,
        "the pool of a deleted template was never drained"
    );
    let (_, mine) = ws_json(&app, &member_token, &id).await;
    assert_eq!(
        mine["status"], "running",
        "a claimed workspace is not the pool's"
    );
}

/// Templates are checked when written; a devcontainer.json's unsupported keys are said.
async fn templates(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, _, admin) = app.tenant_with_admin("tpl").await;
    let token = admin.access.as_str();
    let res = app
        .post_as(
            "/api/v1/templates",
            token,
            json!({"name": "bad", "spec": {"resources": {"memory_mb": 1}}}),
        )
        .await;
    let message = common::assert_envelope(res, 400, "BAD_REQUEST").await;
    assert!(message.contains("memory_mb"), "{message}");
    let res = app
        .post_as(
            "/api/v1/templates",
            token,
            json!({"name": "typo", "spec": {"runtim": "process"}}),
        )
        .await;
    common::assert_envelope(res, 400, "BAD_REQUEST").await;
    let devcontainer = r#"{
        // a comment, as the spec allows
        "name": "py",
        "image": "coditect-workspace:latest",
        "forwardPorts": [8888],
        "containerEnv": {"MODE": "dev"},
        "postCreateCommand": "echo created",
        "features": {"ghcr.io/devcontainers/features/node:1": {}},
        "customizations": {"vscode": {}}
    }"#;
    let res = app
        .post_as(
            "/api/v1/templates",
            token,
            json!({"name": "py", "devcontainer": devcontainer}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let t = json(res).await;
    assert_eq!(t["unsupported"], json!(["customizations", "features"]));
    assert_eq!(t["spec"]["runtime"], "docker");
    assert_eq!(t["spec"]["apps"][0]["port"], 8888);
    assert_eq!(t["spec"]["env"]["MODE"], "dev");
    let id = t["id"].as_str().unwrap();
    let res = app
        .post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "x", "template_id": uuid::Uuid::now_v7(), "start": false}),
        )
        .await;
    common::assert_envelope(res, 404, "NOT_FOUND").await;
    let res = app
        .post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "from-py", "template_id": id, "start": false}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(json(res).await["runtime"], "docker");
    let res = app
        .call(
            reqwest::Method::DELETE,
            &format!("/api/v1/templates/{id}"),
            token,
            None,
        )
        .await;
    assert_eq!(res.status(), 204);
    let res = app.get_as(&format!("/api/v1/templates/{id}"), token).await;
    common::assert_envelope(res, 404, "NOT_FOUND").await;
}

/// A Docker engine that cannot be reached: `/health` says so (degraded, not down), the
/// workspace fails with the reason and is retried.
async fn docker_unreachable(backend: Backend) {
    let app = common::spawn_app_with(
        backend,
        |c| {
            c.workspaces.runtime = coditect_workspaces::RuntimeKind::Docker;
            c.workspaces.docker_socket = "/nonexistent/docker.sock".into();
        },
        axum::Router::new(),
    )
    .await;
    let health = json(app.get("/health").await).await;
    assert_eq!(health["status"], "degraded", "{health}");
    let docker = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "runtime:docker")
        .unwrap()
        .clone();
    assert_eq!(docker["healthy"], false);
    assert_eq!(docker["critical"], false);
    assert!(
        !docker.to_string().contains("nonexistent"),
        "no paths in /health: {docker}"
    );

    let (_, _, admin) = app.tenant_with_admin("nodocker").await;
    let token = admin.access.as_str();
    let created = json(
        app.post_as("/api/v1/workspaces", token, json!({"name": "d"}))
            .await,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let failed = wait_for(&app, token, &id, "failed", None).await;
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.contains("unavailable"), "{reason}");
    assert_eq!(
        failed["desired"], "running",
        "still wanted: retried when Docker is back"
    );
}

/// A template that starts on login: the login answers the workspace's URL, the session
/// shows its container status, a second login lands in the same one.
async fn login_lands_in_a_workspace(backend: Backend) {
    let app = spawn_app(backend).await;
    let (tenant, _, admin) = app.tenant_with_admin("home").await;
    let res = app
        .post_as(
            "/api/v1/templates",
            &admin.access,
            json!({"name": "home", "spec": {"start_on_login": true, "pool_size": 1}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // The template keeps one warm: the first login claims it rather than starting cold.
    let warm = || async {
        let list = app.get_json("/api/v1/workspaces", &admin.access).await;
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["pooled"] == true && w["status"] == "running")
            .and_then(|w| w["id"].as_str())
            .map(str::to_string)
    };
    assert!(
        eventually(SETTLE, || async { warm().await.is_some() }).await,
        "the pool never filled"
    );
    let pooled = warm().await.unwrap();
    let member = app
        .seed_user(tenant, coditect_proto::Role::Member, false)
        .await;
    let login = || async {
        json(
            app.client
                .post(app.url("/api/v1/auth/login"))
                .json(&json!({"email": member.email, "password": member.password}))
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let first = login().await;
    let id = first["workspace_id"]
        .as_str()
        .expect("a workspace for the login")
        .to_string();
    assert_eq!(first["workspace_url"], format!("/w/{id}/"));
    assert_eq!(id, pooled, "the login claimed the warm instance");
    let token = first["access_token"].as_str().unwrap().to_string();
    let (_, claimed) = ws_json(&app, &token, &id).await;
    assert_eq!(claimed["pooled"], false);
    assert_eq!(claimed["owner_id"], member.id.to_string());
    assert_eq!(claimed["generation"], 1, "the same launch: no restart");
    let session = first["session_id"].as_str().unwrap().to_string();
    let ready = eventually(SETTLE, || {
        let (app, token, session) = (&app, &token, &session);
        async move {
            let s = app
                .get_json(&format!("/api/v1/sessions/{session}"), token)
                .await;
            s["container_status"] == "ready"
        }
    })
    .await;
    assert!(ready, "the login's workspace never became ready");
    let s = app
        .get_json(&format!("/api/v1/sessions/{session}"), &token)
        .await;
    assert_eq!(s["workspace"]["id"], id.as_str());
    assert_eq!(s["workspace"]["owner_id"], member.id.to_string());
    assert_eq!(s["workspace_url"], format!("/w/{id}/"));

    let second = login().await;
    assert_eq!(
        second["workspace_id"],
        id.as_str(),
        "the same workspace, the same URL"
    );

    let containers = app.get_json("/api/v1/containers", &token).await;
    let items = containers["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{containers}");
    assert_eq!(items[0]["status"], "ready");
    assert_eq!(items[0]["health"], "healthy");
    assert!(items[0]["container_id"].is_string(), "{containers}");
    let res = app.post_as("/api/v1/containers", &token, json!({})).await;
    assert_eq!(res.status(), 202);
    assert_eq!(json(res).await["workspace_id"], id.as_str());
}

/// `kill -9` of the hub right after asking for workspaces (some mid-start): the restarted
/// hub adopts what runs by its labels — one sandbox per workspace, never a second — and
/// its sweep removes a sandbox labelled as its own that its store does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_start_adopts_and_sweeps() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = coditect_testkit::hub::HubProcess::start(dir.path());
    let token = hub.admin_token().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let ws = hub
            .post(
                "/api/v1/workspaces",
                &token,
                json!({"name": format!("k{i}")}),
            )
            .await;
        ids.push(ws["id"].as_str().unwrap().to_string());
    }
    hub.kill();

    // A sandbox of this hub's scope that no store knows.
    let runtime = coditect_workspaces::process::ProcessRuntime::new(
        coditect_workspaces::process::ProcessConfig {
            root: dir.path().join("workspaces"),
            scope: coditect_workspaces::Scope::parse(hub.scope()).unwrap(),
            sandbox: coditect_workspaces::process::Sandbox::Bubblewrap(
                coditect_workspaces::process::Sandbox::find_bubblewrap().unwrap(),
            ),
            agent_binary: coditect_testkit::hub::monitor_binary(),
            cgroups: None,
        },
    )
    .unwrap();
    use coditect_workspaces::Runtime as _;
    let orphan = coditect_workspaces::InstanceRef {
        tenant: coditect_proto::TenantId::new(),
        workspace: coditect_proto::WorkspaceId::new(),
    };
    runtime
        .start(&coditect_workspaces::Spec {
            instance: orphan,
            generation: 1,
            image: None,
            command: None,
            env: Default::default(),
            resources: Default::default(),
            network: false,
            agent: coditect_workspaces::AgentSetup {
                key: coditect_proto::Secret::new("cdk_nothing"),
                hub_socket_dir: dir.path().join("agent"),
                hub_socket_name: "hub.sock".into(),
                instance_token: "0".into(),
            },
        })
        .await
        .unwrap();

    hub.restart();
    let token = hub.admin_token().await;
    for id in &ids {
        let deadline = std::time::Instant::now() + SETTLE;
        loop {
            let v = hub.get(&format!("/api/v1/workspaces/{id}"), &token).await;
            if v["status"] == "running" {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} never ran again: {v}\n{}",
                hub.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let listed = runtime.list().await.unwrap();
        let mut seen: Vec<String> = listed
            .iter()
            .map(|o| o.instance.workspace.to_string())
            .collect();
        seen.sort_unstable();
        let mut want = ids.clone();
        want.sort_unstable();
        if seen == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "one sandbox per workspace and no orphan: {seen:?} vs {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The kubernetes runtime end to end, against the stand-in API server with a stand-in
/// kubelet that runs each Pod's `codi-monitor agent` as a local process (no cluster can
/// run here): the hub makes the tenant's namespace, policy, claim, secret and Pod; the
/// agent reaches the hub over the network at the configured Service URL with the key
/// from the secret and says ready; a killed agent is relaunched as a new Pod on the same
/// claim with the home's file still there; stop deletes the Pod and keeps the claim;
/// delete removes the claim and the secret.
async fn kubernetes(backend: Backend) {
    use coditect_testkit::kube_api::{FakeKubeApi, Kubelet};
    const SERVICE: &str = "http://coditect-hub.coditect.svc:8080";
    let api = FakeKubeApi::start().await;
    let scratch = tempfile::tempdir().unwrap();
    let kubeconfig = scratch.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let app = common::spawn_app_with(
        backend,
        |c| {
            c.workspaces.runtime = coditect_workspaces::RuntimeKind::Kubernetes;
            c.workspaces.kube.kubeconfig = Some(kubeconfig.clone());
            c.workspaces.kube.hub_url = Some(SERVICE.into());
        },
        axum::Router::new(),
    )
    .await;
    let kubelet = Kubelet::start(
        &api,
        coditect_testkit::hub::monitor_binary(),
        scratch.path().to_path_buf(),
        (SERVICE.to_string(), format!("http://{}", app.addr)),
    );
    let health = json(app.get("/health").await).await;
    let k8s = health["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "runtime:kubernetes")
        .cloned()
        .unwrap_or_default();
    assert_eq!(k8s["healthy"], true, "{health}");

    let (tenant, _, admin) = app.tenant_with_admin("k8s").await;
    let token = admin.access.as_str();
    let created = json(
        app.post_as("/api/v1/workspaces", token, json!({"name": "pod"}))
            .await,
    )
    .await;
    assert_eq!(created["runtime"], "kubernetes", "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let log = scratch.path().join(format!("logs/ws-{id}.log"));
    let running =
        tokio::time::timeout(SETTLE, wait_for(&app, token, &id, "running", Some(1))).await;
    assert!(
        running.is_ok(),
        "not running; the agent said: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let ns = format!("/api/v1/namespaces/coditect-{tenant}");
    let pod_path = format!("{ns}/pods/ws-{id}");
    let pod = api.object(&pod_path).expect("the workspace's pod");
    let env = pod["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains(SERVICE), "{env}");
    assert!(!env.contains("cdk_"), "no key in the pod's spec: {env}");
    assert!(
        api.object(&format!("{ns}/persistentvolumeclaims/ws-{id}-home"))
            .is_some()
    );
    assert!(
        api.object(&format!(
            "/apis/networking.k8s.io/v1/namespaces/coditect-{tenant}/networkpolicies/deny-ingress"
        ))
        .is_some()
    );
    let home = scratch.path().join(format!("ws-{id}-home"));
    std::fs::write(home.join("work.txt"), "kept on the claim").unwrap();

    // The agent dies: the pod fails, the hub relaunches a new pod on the same claim.
    let pid = kubelet.pid(&pod_path).expect("the agent runs");
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let back = wait_for(&app, token, &id, "running", Some(2)).await;
    assert_eq!(back["id"], id.as_str());
    assert_eq!(
        api.object(&pod_path).unwrap()["metadata"]["labels"]["dev.coditect.generation"],
        "2"
    );
    assert_eq!(
        std::fs::read_to_string(home.join("work.txt")).unwrap(),
        "kept on the claim"
    );
    let builds = app
        .get_json(&format!("/api/v1/workspaces/{id}/builds"), token)
        .await;
    assert_eq!(builds["items"][0]["transition"], "recover", "{builds}");

    // Stop: the pod goes, the claim stays.
    let res = app
        .post_as(&format!("/api/v1/workspaces/{id}/stop"), token, json!({}))
        .await;
    assert_eq!(res.status(), 202);
    wait_for(&app, token, &id, "stopped", None).await;
    assert!(api.object(&pod_path).is_none());
    assert!(
        api.object(&format!("{ns}/persistentvolumeclaims/ws-{id}-home"))
            .is_some()
    );

    // Delete: claim and secret go too.
    app.delete_workspace(token, &id, SETTLE).await;
    assert!(
        api.object(&format!("{ns}/persistentvolumeclaims/ws-{id}-home"))
            .is_none()
    );
    assert!(api.object(&format!("{ns}/secrets/ws-{id}-agent")).is_none());
}

/// A workspace from a Git repository served on loopback behind Basic auth: cloned by the
/// hub on the first start with the credential given in the URL, which is found nowhere
/// afterwards (not in the clone's config, the home, the API, the logs or the stored
/// spec); later starts leave the home alone; a wrong credential fails the start with a
/// reason that does not repeat it; a non-http URL is refused.
async fn from_a_repository(backend: Backend) {
    use coditect_testkit::git_http::GitHttp;
    const TOKEN: &str = "s3cr3t-t0ken";
    let served = tempfile::tempdir().unwrap();
    let git = GitHttp::start(served.path().to_path_buf(), "alice", TOKEN).await;
    git.repository("app", &[("README.md", "hello from git\n")]);
    let app = spawn_app(backend).await;
    let (tenant, _, admin) = app.tenant_with_admin("repo").await;
    let token = admin.access.as_str();
    let port_url = git.url.trim_start_matches("http://");
    let clean = format!("{}/app.git", git.url);
    let res = app
        .post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "cloned", "repository": {"url": format!("http://alice:{TOKEN}@{port_url}/app.git"), "ref": "main"}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created = json(res).await;
    assert!(!created.to_string().contains(TOKEN), "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(&app, token, &id, "running", Some(1)).await;

    let home = home(&app, &id);
    assert_eq!(
        std::fs::read_to_string(home.join("README.md")).unwrap(),
        "hello from git\n"
    );
    let config = std::fs::read_to_string(home.join(".git/config")).unwrap();
    assert!(config.contains(&format!("url = {clean}")), "{config}");
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => files(&entry.path(), out),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    let mut all = Vec::new();
    files(&home, &mut all);
    assert!(all.len() > 5, "a clone's files: {all:?}");
    for path in all {
        let bytes = std::fs::read(&path).unwrap_or_default();
        assert!(
            !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
            "the credential is in {}",
            path.display()
        );
    }
    assert!(git.requests().iter().all(|(_, authorized)| *authorized));
    let ws = app
        .state
        .gate()
        .system()
        .get_workspace(tenant, id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!ws.spec.contains(TOKEN), "erased once cloned: {}", ws.spec);
    assert!(ws.spec.contains("\"cloned\":true"), "{}", ws.spec);
    let messages = orchestrator_messages(&app, token, &id).await;
    assert!(
        messages
            .iter()
            .any(|m| m == &format!("home cloned from {clean}")),
        "{messages:?}"
    );
    let found = app
        .get_json(&format!("/api/logs?q={TOKEN}&limit=10"), token)
        .await;
    assert_eq!(
        found["items"],
        json!([]),
        "no log entry holds the credential"
    );

    // Later starts leave the home alone (no second clone).
    std::fs::write(home.join("README.md"), "edited").unwrap();
    let before = git.requests().len();
    for step in ["stop", "start"] {
        let res = app
            .post_as(&format!("/api/v1/workspaces/{id}/{step}"), token, json!({}))
            .await;
        assert_eq!(res.status(), 202);
    }
    wait_for(&app, token, &id, "running", Some(2)).await;
    assert_eq!(
        std::fs::read_to_string(home.join("README.md")).unwrap(),
        "edited"
    );
    assert_eq!(git.requests().len(), before, "not cloned again");

    // A wrong credential: the start fails, saying so without repeating it.
    let created = json(
        app.post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "denied", "repository": {"url": format!("http://alice:wr0ng-pass@{port_url}/app.git")}}),
        )
        .await,
    )
    .await;
    let denied = created["id"].as_str().unwrap().to_string();
    let failed = wait_for(&app, token, &denied, "failed", None).await;
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("cannot clone {clean}")),
        "{reason}"
    );
    assert!(!reason.contains("wr0ng-pass"), "{reason}");

    for bad in ["file:///etc", "/srv/repo.git", "ssh://git@host/r.git"] {
        let res = app
            .post_as(
                "/api/v1/workspaces",
                token,
                json!({"name": "bad", "repository": {"url": bad}}),
            )
            .await;
        common::assert_envelope(res, 400, "BAD_REQUEST").await;
    }
}

/// A workspace's status as the list shows it (reading one workspace counts as using it).
async fn listed_status(app: &TestApp, token: &str, id: &str) -> String {
    let page = app.get_json("/api/v1/workspaces?limit=100", token).await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == id)
        .map(|w| w["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// Idle stop: the template's idle timeout counts from the last sign of use (here an API
/// read of the workspace), not from when it started; once it passes, the orchestrator
/// stops the workspace (an `idle-stop` build) and its home stays. Time is the hub's
/// manual clock moved forward (the agent's own timeout is set beyond it).
async fn idle_stop(backend: Backend) {
    let app = common::spawn_app_with(
        backend,
        |c| c.workspaces.agent_timeout = Duration::from_secs(3600),
        axum::Router::new(),
    )
    .await;
    let (_, _, admin) = app.tenant_with_admin("idle").await;
    let token = admin.access.as_str();
    let template = json(
        app.post_as(
            "/api/v1/templates",
            token,
            json!({"name": "sleepy", "spec": {"idle_timeout_secs": 60}}),
        )
        .await,
    )
    .await;
    let created = json(
        app.post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "nap", "template_id": template["id"]}),
        )
        .await,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    wait_for(&app, token, &id, "running", Some(1)).await;
    std::fs::write(home(&app, &id).join("work.txt"), "kept").unwrap();

    // 40 s on, it is used (read through the API); 70 s after it started, 30 s after that
    // use: still running.
    app.clock.advance(Duration::from_secs(40));
    assert_eq!(ws_json(&app, token, &id).await.0, 200);
    app.clock.advance(Duration::from_secs(30));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(listed_status(&app, token, &id).await, "running");

    // 61 s after the last use: stopped by the orchestrator, the home kept.
    app.clock.advance(Duration::from_secs(31));
    assert!(
        eventually(SETTLE, || async {
            listed_status(&app, token, &id).await == "stopped"
        })
        .await,
        "never stopped for idleness"
    );
    let builds = app
        .get_json(&format!("/api/v1/workspaces/{id}/builds"), token)
        .await;
    let newest = &builds["items"][0];
    assert_eq!(newest["transition"], "idle-stop", "{builds}");
    assert_eq!(newest["initiator"], "system:orchestrator");
    assert_eq!(newest["status"], "succeeded");
    assert_eq!(
        std::fs::read_to_string(home(&app, &id).join("work.txt")).unwrap(),
        "kept"
    );
    let messages = orchestrator_messages(&app, token, &id).await;
    assert!(messages.iter().any(|m| m.contains("idle")), "{messages:?}");
}

/// A runtime that accepts calls and never answers (a Docker socket that reads and holds):
/// the call times out (`--workspace-runtime-timeout`), the workspace fails saying so, and
/// the reconciler goes on with other work: a process workspace made after it runs.
async fn a_hanging_runtime_times_out(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let app = common::spawn_app_with(
        backend,
        |c| {
            c.workspaces.docker_socket = socket.clone();
            c.workspaces.runtime_timeout = Duration::from_secs(1);
        },
        axum::Router::new(),
    )
    .await;
    let (_, _, admin) = app.tenant_with_admin("hung").await;
    let token = admin.access.as_str();
    let template = json(
        app.post_as(
            "/api/v1/templates",
            token,
            json!({"name": "hung", "spec": {"runtime": "docker"}}),
        )
        .await,
    )
    .await;
    let hung = json(
        app.post_as(
            "/api/v1/workspaces",
            token,
            json!({"name": "hung", "template_id": template["id"]}),
        )
        .await,
    )
    .await;
    let hung = hung["id"].as_str().unwrap().to_string();
    let failed = wait_for(&app, token, &hung, "failed", None).await;
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.contains("answer"), "{reason}");
    let fine = json(
        app.post_as("/api/v1/workspaces", token, json!({"name": "fine"}))
            .await,
    )
    .await;
    let fine = fine["id"].as_str().unwrap().to_string();
    wait_for(&app, token, &fine, "running", Some(1)).await;
}

both_backends!(
    a_hanging_runtime_times_out,
    idle_stop,
    from_a_repository,
    kubernetes,
    login_lands_in_a_workspace,
    docker_unreachable,
    lifecycle,
    recovery,
    quota,
    reports_are_the_agents_own,
    warm_pool,
    templates
);
