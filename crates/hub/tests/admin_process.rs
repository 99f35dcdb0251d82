//! The first admin and the `admin` sub-commands, through the real binary, on both engines.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use common::{HubProcess, eventually, run_hub, run_hub_with_stdin};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "operator passphrase 1";

async fn login(hub: &HubProcess, email: &str, password: &str) -> (u16, Value) {
    let res = reqwest::Client::new()
        .post(hub.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn get(hub: &HubProcess, path: &str, token: &str) -> Value {
    reqwest::Client::new()
        .get(hub.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn admin(
    data: &Path,
    args: &[&str],
    extra_env: &[(&str, &str)],
    stdin: &str,
) -> std::process::Output {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--auth-argon2-memory-kib",
        "1024",
    ]);
    run_hub_with_stdin(&all, extra_env, stdin)
}

#[tokio::test]
async fn the_first_admin_comes_from_the_environment_once() {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("CODITECT_BOOTSTRAP_EMAIL", "root@example.com"),
        ("CODITECT_BOOTSTRAP_PASSWORD", PASSWORD),
    ];
    let mut hub = HubProcess::spawn(dir.path(), &[], &env);
    assert!(hub.addr.is_some(), "{:?}", hub.logs());
    assert!(
        eventually(Duration::from_secs(20), || async {
            login(&hub, "root@example.com", PASSWORD).await.0 == 200
        })
        .await,
        "{:?}",
        hub.logs()
    );
    assert!(hub.logged("created the first platform admin"));
    let token = login(&hub, "root@example.com", PASSWORD).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let me = get(&hub, "/api/v1/users/me", &token).await;
    assert_eq!(
        (me["role"].as_str(), me["platform_admin"].as_bool()),
        (Some("admin"), Some(true))
    );
    let tenants = get(&hub, "/api/v1/tenants", &token).await;
    assert_eq!(tenants["items"][0]["name"], "default");
    assert!(
        !hub.logs().join("\n").contains(PASSWORD),
        "the password never reaches the log"
    );

    // A restart with the same settings creates nobody new.
    hub.signal("TERM");
    hub.wait_exit(Duration::from_secs(20)).unwrap();
    let hub = HubProcess::spawn(dir.path(), &[], &env);
    let token = login(&hub, "root@example.com", PASSWORD).await.1["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let users = get(&hub, "/api/v1/users", &token).await;
    assert_eq!(users["items"].as_array().unwrap().len(), 1);
    assert!(!hub.logged("created the first platform admin"));
}

#[test]
fn without_a_first_admin_the_log_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(dir.path(), &[], &[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !hub.logs().join("\n").contains("no users yet") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let logs = hub.logs().join("\n");
    assert!(
        logs.contains("CODITECT_BOOTSTRAP_EMAIL") && logs.contains("admin create-user"),
        "{logs}"
    );
}

#[tokio::test]
async fn admin_commands_work_on_a_running_embedded_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(dir.path(), &[], &[]);
    assert!(hub.addr.is_some());

    let out = admin(dir.path(), &["create-tenant", "--name", "acme"], &[], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("created tenant acme"));
    let again = admin(dir.path(), &["create-tenant", "--name", "acme"], &[], "");
    assert_eq!(again.status.code(), Some(2));

    let create = [
        "create-user",
        "--email",
        "ops@example.com",
        "--role",
        "admin",
        "--tenant",
        "acme",
        "--platform-admin",
    ];
    let out = admin(dir.path(), &create, &[], &format!("{PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = login(&hub, "ops@example.com", PASSWORD).await;
    assert_eq!(status, 200, "the running hub sees the new user: {body}");
    let token = body["access_token"].as_str().unwrap().to_string();

    // Mistakes are exit code 2 with a clear message.
    let dup = admin(dir.path(), &create, &[], &format!("{PASSWORD}\n"));
    assert_eq!(dup.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let nowhere = admin(
        dir.path(),
        &[
            "create-user",
            "--email",
            "x@example.com",
            "--tenant",
            "nope",
        ],
        &[],
        &format!("{PASSWORD}\n"),
    );
    assert_eq!(nowhere.status.code(), Some(2));
    let weak = admin(
        dir.path(),
        &[
            "create-user",
            "--email",
            "y@example.com",
            "--tenant",
            "acme",
        ],
        &[],
        "short\n",
    );
    assert_eq!(weak.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 12"));
    let bad_role = admin(
        dir.path(),
        &["create-user", "--email", "z@example.com", "--role", "root"],
        &[],
        "",
    );
    assert_eq!(bad_role.status.code(), Some(2));
    // Password from the environment; a service account without one.
    let env_pw = admin(
        dir.path(),
        &[
            "create-user",
            "--email",
            "dev@example.com",
            "--tenant",
            "acme",
        ],
        &[("CODITECT_ADMIN_PASSWORD", PASSWORD)],
        "",
    );
    assert!(env_pw.status.success());
    assert_eq!(login(&hub, "dev@example.com", PASSWORD).await.0, 200);
    let svc = admin(
        dir.path(),
        &[
            "create-user",
            "--email",
            "bot@example.com",
            "--tenant",
            "acme",
            "--role",
            "service",
            "--no-password",
        ],
        &[],
        "",
    );
    assert!(svc.status.success());

    // Audited as the command line's doing.
    let audit = get(&hub, "/api/v1/audit?action=user.create", &token).await;
    let records = audit["items"].as_array().unwrap();
    assert_eq!(records.len(), 3, "{audit}");
    assert!(records.iter().all(|r| r["actor_type"] == "cli"));
}

#[tokio::test]
async fn admin_commands_work_on_postgres() {
    let url = coditect_testkit::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let db = ["--database-url", url.as_str()];
    let mut args = vec![
        "create-user",
        "--email",
        "pg-ops@example.com",
        "--role",
        "admin",
        "--tenant",
        "pgco",
        "--create-tenant",
    ];
    args.extend_from_slice(&db);
    let out = admin(dir.path(), &args, &[], &format!("{PASSWORD}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut args = vec!["create-tenant", "--name", "second"];
    args.extend_from_slice(&db);
    assert!(admin(dir.path(), &args, &[], "").status.success());

    // Another node (its own data dir) on the same database sees them.
    let node = tempfile::tempdir().unwrap();
    let hub = HubProcess::spawn(node.path(), &db, &[]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            login(&hub, "pg-ops@example.com", PASSWORD).await.0 == 200
        })
        .await,
        "{:?}",
        hub.logs()
    );
}

#[tokio::test]
async fn rotate_key_writes_a_private_key_the_hub_then_signs_with() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_hub(
        &[
            "admin",
            "rotate-key",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let kid = printed
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_end_matches(';')
        .to_string();

    let keys = dir.path().join("keys");
    assert_eq!(
        std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let file = std::fs::read_dir(&keys)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().contains(&kid))
        .expect("a file for the new key");
    assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);

    let env = [
        ("CODITECT_BOOTSTRAP_EMAIL", "root@example.com"),
        ("CODITECT_BOOTSTRAP_PASSWORD", PASSWORD),
    ];
    let hub = HubProcess::spawn(dir.path(), &[], &env);
    let jwks = reqwest::get(hub.url("/.well-known/jwks.json"))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str()),
        "{jwks} {kid}"
    );
}
