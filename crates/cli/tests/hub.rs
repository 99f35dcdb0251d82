//! `codi2`'s hub commands against the real `coditect-hub` binary (embedded SQLite): login
//! with an e-mail or an API key, refused credentials, an unreachable hub, search, and the
//! live tail surviving a hub crash and restart without duplicates or gaps.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_testkit::hub::{ADMIN_EMAIL, ADMIN_PASSWORD, HubProcess};
use common::{Sandbox, wait_for};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

fn entries(prefix: &str, n: usize, component: &str) -> Vec<Value> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| {
            json!({
                "timestamp": (now + chrono::Duration::microseconds(i as i64))
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": if i % 10 == 0 { "error" } else { "info" },
                "component": component,
                "message": format!("{prefix}{i}"),
            })
        })
        .collect()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A sandbox logged in to `hub` as the first admin.
async fn logged_in(hub: &HubProcess) -> Sandbox {
    let sb = Sandbox::new();
    sb.run_with(
        &["login", "--hub", &hub.url(""), "--email", ADMIN_EMAIL],
        &[("CODI_PASSWORD", ADMIN_PASSWORD)],
        None,
    )
    .await
    .ok();
    sb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_a_password_or_an_api_key_and_logout() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(hub_dir.path());
    let admin = hub.admin_token().await;
    let ws = hub.workspace(&admin, "cli").await;
    hub.post_logs(&admin, &ws, entries("hello ", 3, "api"))
        .await;
    let sb = Sandbox::new();
    let url = hub.url("");

    // E-mail and password (from stdin).
    let r = sb
        .run_stdin(
            &["login", "--hub", &format!("{url}/"), "--email", ADMIN_EMAIL],
            format!("{ADMIN_PASSWORD}\n").as_bytes(),
        )
        .await;
    r.ok();
    assert_eq!(
        r.stdout.trim(),
        format!("logged in to {url} as {ADMIN_EMAIL} (admin)")
    );
    let creds = sb.credentials();
    assert_eq!(mode(&creds), 0o600);
    assert_eq!(mode(creds.parent().unwrap()), 0o700);
    let stored = std::fs::read_to_string(&creds).unwrap();
    assert!(stored.contains("kind = \"session\""), "{stored}");
    assert!(!r.stdout.contains(ADMIN_PASSWORD) && !r.stderr.contains(ADMIN_PASSWORD));
    assert!(
        !stored.contains(ADMIN_PASSWORD),
        "the password is never stored"
    );
    let access = stored
        .lines()
        .find_map(|l| l.strip_prefix("access_token = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    assert!(!r.stdout.contains(&access) && !r.stderr.contains(&access));

    // The default hub is the one logged in to.
    let r = sb.run(&["logs", "--json"]).await;
    r.ok();
    assert_eq!(r.json_lines().len(), 3, "{r:?}");

    // An API key (from the environment here), for the same hub: replaces the session.
    let key = hub.api_key(&admin, Some(&ws)).await;
    let r = sb
        .run_with(
            &["--json", "login", "--hub", &url, "--api-key"],
            &[("CODI_HUB_API_KEY", &key)],
            None,
        )
        .await;
    r.ok();
    let said = &r.json_lines()[0];
    assert_eq!(said["kind"], "api_key");
    assert_eq!(said["email"], ADMIN_EMAIL);
    assert!(!r.stdout.contains(&key) && !r.stderr.contains(&key));
    assert_eq!(mode(&creds), 0o600);
    let stored = std::fs::read_to_string(&creds).unwrap();
    assert!(stored.contains("kind = \"api_key\""), "{stored}");
    // And from stdin.
    let r = sb
        .run_stdin(
            &["login", "--hub", &url, "--api-key"],
            format!("{key}\n").as_bytes(),
        )
        .await;
    r.ok();
    let r = sb.run(&["logs"]).await;
    r.ok();
    assert_eq!(r.lines().len(), 3);
    assert!(r.lines()[2].ends_with("INFO  api hello 2"), "{r:?}");

    // Logout forgets; then the hub commands say how to log in.
    let r = sb.run(&["logout"]).await;
    r.ok();
    assert_eq!(r.stdout.trim(), format!("logged out of {url}"));
    assert!(!creds.exists());
    sb.run(&["logs", "--hub", &url]).await.failed(
        5,
        &format!("not logged in to {url}: run `codi2 login --hub {url}`"),
    );
    sb.run(&["logs"]).await.failed(5, "no hub given");
    // The environment's key works without logging in.
    let r = sb
        .run_with(
            &["logs", "--hub", &url],
            &[("CODI_HUB_API_KEY", &key)],
            None,
        )
        .await;
    r.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_an_unreachable_hub() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(hub_dir.path());
    hub.admin_token().await;
    let sb = Sandbox::new();
    let url = hub.url("");

    let r = sb
        .run_stdin(
            &["login", "--hub", &url, "--email", ADMIN_EMAIL],
            b"not the password\n",
        )
        .await;
    r.failed(5, "refused the e-mail or password");
    assert!(r.stderr.contains("invalid email or password"), "{r:?}");
    assert!(!r.stderr.contains("not the password"));
    assert!(!sb.credentials().exists());
    // The password may come from CODI_PASSWORD too; a wrong one is refused the same way.
    sb.run_with(
        &["login", "--hub", &url, "--email", ADMIN_EMAIL],
        &[("CODI_PASSWORD", "also wrong")],
        None,
    )
    .await
    .failed(5, "invalid email or password");
    sb.run_stdin(&["login", "--hub", &url, "--api-key"], b"cdk_not_a_key\n")
        .await
        .failed(5, "refused the API key");
    sb.run(&["login", "--hub", &url])
        .await
        .failed(2, "give --email");
    sb.run_stdin(&["login", "--hub", &url, "--email", ADMIN_EMAIL], b"\n")
        .await
        .failed(2, "no password given");
    sb.run(&["login", "--hub", "ftp://x", "--api-key"])
        .await
        .failed(2, "invalid hub URL");
    assert!(!sb.credentials().exists());

    let nowhere = format!("http://127.0.0.1:{}", closed_port());
    sb.run_with(
        &["login", "--hub", &nowhere, "--email", ADMIN_EMAIL],
        &[("CODI_PASSWORD", ADMIN_PASSWORD)],
        None,
    )
    .await
    .failed(4, &format!("cannot reach the hub at {nowhere}"));
    for cmd in ["logs", "tail"] {
        sb.run_with(
            &[cmd, "--hub", &nowhere],
            &[("CODI_HUB_API_KEY", "cdk_whatever")],
            None,
        )
        .await
        .failed(4, &format!("cannot reach the hub at {nowhere}"));
    }
    // A refused key on tail is a credentials error, not a retry loop.
    sb.run_with(
        &["tail", "--hub", &url],
        &[("CODI_HUB_API_KEY", "cdk_not_a_key")],
        None,
    )
    .await
    .failed(5, "refused the credential");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_searches_pages_and_refreshes_an_expired_token() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(hub_dir.path());
    let admin = hub.admin_token().await;
    let ws = hub.workspace(&admin, "search").await;
    let other = hub.workspace(&admin, "other").await;
    hub.post_logs(&admin, &ws, entries("first ", 1000, "api"))
        .await;
    hub.post_logs(&admin, &ws, entries("second ", 500, "db"))
        .await;
    hub.post_logs(&admin, &other, entries("elsewhere ", 5, "api"))
        .await;
    let sb = logged_in(&hub).await;

    // Past one page of the hub's: cursors are followed, oldest printed first, no repeats.
    let r = sb
        .run(&["logs", "--json", "--workspace", &ws, "--limit", "1200"])
        .await;
    r.ok();
    let rows = r.json_lines();
    assert_eq!(rows.len(), 1200);
    let ids: std::collections::HashSet<&str> =
        rows.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1200);
    assert_eq!(rows[1199]["message"], "second 499");
    assert_eq!(rows[0]["message"], "first 300");
    let r = sb
        .run(&["logs", "--workspace", &ws, "--limit", "5000"])
        .await;
    r.ok();
    assert_eq!(r.lines().len(), 1500);

    // Filters.
    let r = sb
        .run(&[
            "logs",
            "--json",
            "--workspace",
            &ws,
            "--component",
            "db",
            "--level",
            "error",
            "--limit",
            "1000",
        ])
        .await;
    r.ok();
    assert_eq!(r.json_lines().len(), 50);
    let r = sb.run(&["logs", "-q", "elsewhere", "--json"]).await;
    r.ok();
    assert_eq!(r.json_lines().len(), 5);
    assert!(
        r.json_lines()
            .iter()
            .all(|v| v["workspace_id"] == other.as_str())
    );
    let r = sb.run(&["logs", "--workspace", &ws, "--until", "1h"]).await;
    r.ok();
    assert!(r.stdout.is_empty());
    sb.run(&["logs", "--workspace", "not-a-uuid"])
        .await
        .failed(2, "the hub at");

    // An access token the hub no longer takes is refreshed, and the new pair kept.
    let creds = sb.credentials();
    let stored = std::fs::read_to_string(&creds).unwrap();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap()
            .to_string()
    };
    let access = field(&stored, "access_token");
    std::fs::write(
        &creds,
        stored.replace(&access, "\"eyJhbGciOiJSUzI1NiJ9.e30.expired\""),
    )
    .unwrap();
    let r = sb.run(&["-v", "logs", "--limit", "3"]).await;
    r.ok();
    assert!(r.stderr.contains("refreshing the session"), "{r:?}");
    assert_eq!(r.lines().len(), 3);
    let refreshed = std::fs::read_to_string(&creds).unwrap();
    assert!(!refreshed.contains("expired"), "{refreshed}");
    assert_ne!(
        field(&refreshed, "refresh_token"),
        field(&stored, "refresh_token")
    );
    assert_eq!(mode(&creds), 0o600);
    // The refresh token was spent: a stale copy of the file cannot refresh again.
    std::fs::write(
        &creds,
        stored.replace(&access, "\"eyJhbGciOiJSUzI1NiJ9.e30.expired\""),
    )
    .unwrap();
    sb.run(&["logs"]).await.failed(5, "log in again");
}

/// Lines a child process prints, collected as they come.
fn collect(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn messages(lines: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    lines
        .lock()
        .unwrap()
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["message"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_live_entries_across_a_hub_crash_and_restart() {
    let hub_dir = tempfile::tempdir().unwrap();
    let mut hub = HubProcess::start(hub_dir.path());
    let admin = hub.admin_token().await;
    let ws = hub.workspace(&admin, "tail").await;
    hub.post_logs(&admin, &ws, entries("before ", 3, "api"))
        .await;
    let sb = logged_in(&hub).await;
    let url = hub.url("");

    let mut child = sb
        .command(&["-v", "tail", "--json", "--workspace", &ws])
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let said = |what: &'static str| {
        let err = err.clone();
        move || err.lock().unwrap().iter().any(|l| l.contains(what))
    };
    assert!(
        wait_for(Duration::from_secs(30), said("tailing")).await,
        "{:?}",
        err.lock().unwrap()
    );

    // Live: what is posted now, not what was there before.
    hub.post_logs(&admin, &ws, entries("a", 10, "api")).await;
    assert!(
        wait_for(Duration::from_secs(30), || out.lock().unwrap().len() >= 10).await,
        "{:?}",
        err.lock().unwrap()
    );

    // A crash: the tail notices, retries, and resumes after the hub is back. Entries
    // posted before it reconnects come from the store, the later ones live.
    hub.kill();
    assert!(
        wait_for(Duration::from_secs(30), said("lost the connection")).await,
        "{:?}",
        err.lock().unwrap()
    );
    hub.restart();
    assert_eq!(hub.url(""), url, "same port");
    hub.post_logs(&admin, &ws, entries("b", 10, "api")).await;
    assert!(
        wait_for(Duration::from_secs(30), said("reconnected")).await,
        "{:?}",
        err.lock().unwrap()
    );
    hub.post_logs(&admin, &ws, entries("c", 10, "api")).await;
    // Another workspace's entries are not this tail's.
    let other = hub.workspace(&admin, "elsewhere").await;
    hub.post_logs(&admin, &other, entries("x", 3, "api")).await;
    hub.post_logs(&admin, &ws, entries("d", 1, "api")).await;
    assert!(
        wait_for(Duration::from_secs(30), || out.lock().unwrap().len() >= 31).await,
        "{:?} {:?}",
        out.lock().unwrap(),
        err.lock().unwrap()
    );
    // A graceful restart too.
    hub.restart();
    hub.post_logs(&admin, &ws, entries("e", 5, "api")).await;
    assert!(
        wait_for(Duration::from_secs(30), || out.lock().unwrap().len() >= 36).await,
        "{:?} {:?}",
        out.lock().unwrap(),
        err.lock().unwrap()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait().unwrap().is_none(), "tail keeps running");
    child.kill().await.unwrap();

    let expected: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|p| (0..10).map(move |i| format!("{p}{i}")))
        .chain(["d0".to_string()])
        .chain((0..5).map(|i| format!("e{i}")))
        .collect();
    assert_eq!(messages(&out), expected, "{:?}", err.lock().unwrap());
}

/// A hub offering GitHub login (the testkit's stand-in of GitHub) at an address it knows
/// before it starts (its public URL).
async fn sso_hub(dir: &std::path::Path) -> (HubProcess, coditect_testkit::github::GitHub) {
    use coditect_testkit::github::{CLIENT_ID, CLIENT_SECRET, GitHub};
    let gh = GitHub::start().await;
    gh.user(
        "octo",
        json!([{"email": "octo@example.com", "primary": true, "verified": true, "visibility": "private"}]),
    );
    gh.user(
        "sloppy",
        json!([{"email": "sloppy@example.com", "primary": true, "verified": false, "visibility": null}]),
    );
    gh.next("octo");
    let port = closed_port();
    let public = format!("http://127.0.0.1:{port}");
    let api = format!("{}/api", gh.url);
    let hub = HubProcess::start_at(
        dir,
        format!("127.0.0.1:{port}").parse().unwrap(),
        &[
            "--public-url",
            &public,
            "--sso-github-client-id",
            CLIENT_ID,
            "--sso-github-url",
            &gh.url,
            "--sso-github-api-url",
            &api,
            "--sso-provision",
            "true",
            "--sso-allowed-domains",
            "example.com",
        ],
        &[("CODITECT_SSO_GITHUB_CLIENT_SECRET", CLIENT_SECRET)],
    );
    (hub, gh)
}

/// `codi2 login --sso` opens the browser on the hub's start URL; the browser (curl here,
/// following every redirect: hub → GitHub → hub → codi2's loopback port) logs in; codi2
/// redeems the one-time code with its PKCE verifier and keeps the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_single_sign_on_in_the_browser() {
    // The script is written before any process starts (a child forked meanwhile could
    // hold it open: "text file busy").
    let sb = Sandbox::new();
    let browser = sb.path().join("browser");
    // (`-b ''`: curl's cookie engine on, as a browser's: the hub binds the login to it.)
    std::fs::write(
        &browser,
        "#!/bin/sh\nexec curl -s -L -b '' -o /dev/null \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&browser, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (hub, gh) = sso_hub(dir.path()).await;
    let url = hub.url("");
    let run = sb
        .run_with(
            &["--json", "login", "--hub", &url, "--sso"],
            &[("BROWSER", browser.to_str().unwrap())],
            None,
        )
        .await;
    run.ok();
    let answer = run.json_lines().pop().unwrap();
    assert_eq!(answer["email"], "octo@example.com");
    assert_eq!(answer["kind"], "session");
    assert_eq!(mode(&sb.credentials()), 0o600);
    // The session works for what follows, and logging out ends it.
    sb.run(&["logs", "--hub", &url, "--limit", "1"]).await.ok();
    sb.run(&["logout", "--hub", &url]).await.ok();

    // A login the hub refuses comes back to codi2, which says why at once.
    gh.next("sloppy");
    let run = sb
        .run_with(
            &["login", "--hub", &url, "--sso"],
            &[("BROWSER", browser.to_str().unwrap())],
            None,
        )
        .await;
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("not verified"), "{run:#?}");
}

/// Without a browser the URL is printed; a person opens it anywhere on this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_browser_the_login_url_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, _gh) = sso_hub(dir.path()).await;
    let url = hub.url("");
    let sb = Sandbox::new();
    let mut cmd = sb.command(&["login", "--hub", &url, "--sso", "--provider", "github"]);
    cmd.env("BROWSER", "/nonexistent/browser")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let start = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("codi2 prints the URL");
        if let Some(u) = line
            .trim()
            .strip_prefix(&format!("{url}/api/v1/auth/sso/github/start?"))
        {
            break format!("{url}/api/v1/auth/sso/github/start?{u}");
        }
    };
    // The person: a browser that follows the redirects back to codi2.
    let person = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let page = person.get(&start).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Logged in"));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let out = sb
        .run(&["--json", "logs", "--hub", &url, "--limit", "1"])
        .await;
    out.ok();

    // Offered logins are named when the choice is wrong.
    sb.run(&["login", "--hub", &url, "--sso", "--provider", "oidc"])
        .await
        .failed(2, "offers no oidc login; it offers: github");
}

/// `codi2 ws`: create and wait, list, state with its version, stop, start, delete — a
/// real hub running a real sandboxed workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_from_the_command_line() {
    let hub_dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::start(hub_dir.path());
    hub.admin_token().await;
    let sb = logged_in(&hub).await;

    let r = sb.run(&["ws", "create", "dev", "--wait", "--json"]).await;
    r.ok();
    let ws: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(ws["status"], "running", "{ws}");
    assert_eq!(ws["generation"], 1);
    let id = ws["id"].as_str().unwrap().to_string();

    let r = sb.run(&["ws", "list"]).await;
    r.ok();
    let line = r
        .lines()
        .into_iter()
        .find(|l| l.contains(&id))
        .unwrap()
        .to_string();
    assert!(
        line.contains("dev") && line.contains("running") && line.contains("process"),
        "{line}"
    );

    sb.run(&["ws", "state", "dev", "--set", r#"{"tabs": 1}"#])
        .await
        .ok();
    sb.run(&[
        "ws",
        "state",
        "dev",
        "--set",
        r#"{"tabs": 2}"#,
        "--if-match",
        "0",
    ])
    .await
    .failed(1, "changed since it was read");
    let r = sb.run(&["ws", "state", "dev", "--json"]).await;
    r.ok();
    assert_eq!(
        serde_json::from_str::<Value>(r.stdout.trim()).unwrap(),
        json!({"etag": "\"1\"", "state": {"tabs": 1}})
    );
    sb.run(&["ws", "state", "dev", "--set", "[1]"])
        .await
        .failed(2, "a JSON object");

    let r = sb.run(&["ws", "stop", "dev", "--wait", "--json"]).await;
    r.ok();
    assert_eq!(
        serde_json::from_str::<Value>(r.stdout.trim()).unwrap()["status"],
        "stopped"
    );
    let r = sb.run(&["ws", "start", &id, "--wait", "--json"]).await;
    r.ok();
    let started: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        (started["status"].as_str(), started["generation"].as_u64()),
        (Some("running"), Some(2))
    );
    let r = sb.run(&["ws", "restart", "dev", "--wait", "--json"]).await;
    r.ok();
    assert_eq!(
        serde_json::from_str::<Value>(r.stdout.trim()).unwrap()["generation"],
        3
    );
    sb.run(&["ws", "delete", "dev", "--wait"]).await.ok();
    sb.run(&["ws", "start", "dev"])
        .await
        .failed(6, "no workspace named");
}
