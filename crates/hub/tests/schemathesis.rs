//! Schemathesis (PyPI, in the project's test virtualenv) against a live hub, from the
//! hub's own document, on both engines, as a tenant admin and as a member, with every
//! check on but `positive_data_acceptance` (see the README, "API reference"). Any 5xx,
//! response that breaks its schema, undocumented status or content type, accepted
//! schema-violating request, … fails the test with schemathesis's report.
//!
//! `CODITECT_SCHEMATHESIS_EXAMPLES` (default 30) bounds the examples per operation;
//! `CODITECT_SCHEMATHESIS_SEED` replays a run (schemathesis prints its seed).

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::Role;
use common::{Backend, TestApp, json, spawn_app};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

both_backends!(
    schemathesis_finds_nothing_as_an_admin,
    schemathesis_finds_nothing_as_a_member
);

fn schemathesis() -> PathBuf {
    let python = common::test_python();
    Path::new(&python).with_file_name("st")
}

/// What schemathesis is told besides its command line: which checks, which statuses a
/// schema-violating request may get, and real ids for the operations that name objects (so
/// that they reach the handlers' logic, not only "not found").
fn config(dir: &Path, ids: &[(&str, String)]) -> PathBuf {
    let mut text = String::from(
        r#"
[checks.negative_data_rejection]
# 413: a batch over 1000 entries is "too large", not "bad".
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
"#,
    );
    for (path, id) in ids {
        text.push_str(&format!(
            "\n[[operations]]\ninclude-path = \"{path}\"\nparameters = {{ id = \"{id}\" }}\n"
        ));
    }
    let file = dir.join("schemathesis.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// Runs `st run` against the app as `token`; `args` narrow the run to at least
/// `operations` operations.
async fn run(app: &TestApp, config: &Path, token: &str, args: &[&str], operations: usize) {
    let examples =
        std::env::var("CODITECT_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "30".to_string());
    let report = config.with_file_name(format!("junit-{}.xml", uuid::Uuid::now_v7()));
    let mut cmd = Command::new(schemathesis());
    cmd.arg("--config-file")
        .arg(config)
        .arg("--no-color")
        .arg("run")
        .arg(app.url("/api/openapi.json"))
        .args(["--checks", "all", "--max-examples", &examples])
        // Schema-valid is not always acceptable: a wrong current password, an expiry in
        // the past, "level and min_level both", disabling oneself, a cursor not of ours.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--report", "junit", "--report-junit-path"])
        .arg(&report)
        .args(args);
    if let Ok(seed) = std::env::var("CODITECT_SCHEMATHESIS_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The report can hold huge generated bodies: show its end, where the summary is.
    let tail: String = {
        let lines: Vec<&str> = stdout.lines().collect();
        lines[lines.len().saturating_sub(120)..].join("\n")
    };
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{tail}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran: one test case per operation in the report, none skipped.
    let junit = std::fs::read_to_string(&report).unwrap();
    let cases = junit.matches("<testcase").count();
    assert!(cases >= operations, "{cases} operations tested:\n{tail}");
    assert!(!junit.contains("<skipped"), "operations skipped:\n{junit}");
}

async fn schemathesis_finds_nothing(backend: Backend, role: Role) {
    let app = spawn_app(backend).await;
    let (tenant, admin, _) = app.tenant_with_admin("fuzzed").await;
    let user = match role {
        Role::Admin => admin,
        _ => app.seed_user(tenant, role, false).await,
    };
    let tokens = app.login(&user).await;
    // Another user of the tenant and a session of theirs: what the operations on users and
    // sessions are aimed at (ending the run's own session would end the run).
    let victim = app.seed_user(tenant, Role::Member, false).await;
    let victim_session = app.login(&victim).await.session_id;
    let ws = app.workspace(&tokens.access, "fuzzed-ws").await;
    let key = json(
        app.post_as("/api/v1/api-keys", &tokens.access, json!({"name": "k"}))
            .await,
    )
    .await;
    let entry = uuid::Uuid::now_v7().to_string();
    let res = app
        .post_as(
            "/api/logs/batch",
            &tokens.access,
            json!({"workspace_id": ws, "entries": [{"id": entry, "level": "info",
                "component": "st", "message": "seen"}]}),
        )
        .await;
    assert_eq!(res.status(), 202);
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        &[
            ("/api/v1/users/{id}", victim.id.to_string()),
            ("/api/v1/users/{id}/login-throttle", victim.id.to_string()),
            ("/api/v1/tenants/{id}", tenant.to_string()),
            ("/api/v1/workspaces/{id}", ws.clone()),
            ("/api/v1/sessions/{id}", victim_session),
            (
                "/api/v1/api-keys/{id}",
                key["id"].as_str().unwrap().to_string(),
            ),
            ("/api/logs/{id}", entry),
        ],
    );
    // A session for the logout run, taken now: after the main run's wrong passwords, this
    // address is throttled.
    let spare = app.login(&user).await;
    // Everything but logging out, which would end the session the run uses…
    run(
        &app,
        &config,
        &tokens.access,
        &["--exclude-path", "/api/v1/auth/logout"],
        38,
    )
    .await;
    // …which a session of its own then gets.
    run(
        &app,
        &config,
        &spare.access,
        &["--include-path", "/api/v1/auth/logout"],
        1,
    )
    .await;
    // The hub is still whole (the stateful phase may have made admins that disabled the
    // run's own user: that is allowed, and only ends its sessions).
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get("/ready").await.status(), 200);
}

async fn schemathesis_finds_nothing_as_an_admin(backend: Backend) {
    schemathesis_finds_nothing(backend, Role::Admin).await
}

async fn schemathesis_finds_nothing_as_a_member(backend: Backend) {
    schemathesis_finds_nothing(backend, Role::Member).await
}
