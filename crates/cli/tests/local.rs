//! `codi2` against codi-monitor (a real daemon on a real socket and SQLite file), and
//! without one: the direct fallback on the same file, and the commands that need the
//! daemon failing with exit code 3.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_monitor::store::MonitorStore;
use coditect_proto::ipc::LogFilter;
use coditect_store::Synchronous;
use common::Sandbox;

/// `2026-11-26T03:00:00.123Z LEVEL component [session] message`.
fn is_entry_line(line: &str, rest: &str) -> bool {
    let Some((ts, tail)) = line.split_once(' ') else {
        return false;
    };
    ts.len() == 24
        && ts.ends_with('Z')
        && ts.as_bytes()[19] == b'.'
        && chrono::DateTime::parse_from_rfc3339(ts).is_ok()
        && tail == rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_go_through_the_daemon_and_come_back() {
    let sb = Sandbox::new();
    let daemon = sb.daemon().await;

    let r = sb
        .run(&[
            "-v",
            "log",
            "--level",
            "warn",
            "--component",
            "api",
            "--session",
            "s-1",
            "--metadata",
            r#"{"file":"main.rs","line":3}"#,
            "hello world",
        ])
        .await;
    r.ok();
    assert_eq!(r.stdout.trim(), "stored 1 entry");
    assert!(
        r.stderr
            .contains(&format!("via codi-monitor at {}", sb.socket.display())),
        "{r:?}"
    );

    // 2500 lines from stdin: three batches, each acknowledged.
    let input: String = (0..2500).map(|i| format!("line {i}\n")).collect();
    let r = sb
        .run_stdin(
            &["log", "--stdin", "--component", "batch"],
            input.as_bytes(),
        )
        .await;
    r.ok();
    assert_eq!(r.stdout.trim(), "stored 2500 entries");
    // `-` reads stdin too; empty lines are skipped; --json reports.
    let r = sb
        .run_stdin(
            &["--json", "log", "-", "--component", "dash"],
            b"a\n\nb\r\n",
        )
        .await;
    r.ok();
    let report = &r.json_lines()[0];
    assert_eq!(report["stored"], 2);
    assert_eq!(report["via"], "codi-monitor");

    // Human output: one line per entry, oldest first.
    let r = sb.run(&["query", "--component", "api"]).await;
    r.ok();
    let lines = r.lines();
    assert_eq!(lines.len(), 1, "{r:?}");
    assert!(
        is_entry_line(lines[0], "WARN  api [s-1] hello world"),
        "{:?}",
        lines[0]
    );
    let r = sb
        .run(&["query", "--component", "batch", "--limit", "10"])
        .await;
    r.ok();
    let lines = r.lines();
    assert_eq!(lines.len(), 10);
    assert!(
        is_entry_line(lines[0], "INFO  batch line 2490"),
        "{lines:?}"
    );
    assert!(lines[9].ends_with("INFO  batch line 2499"), "{lines:?}");
    assert!(r.stderr.contains("10 of 2500"), "{r:?}");

    // JSON lines with every field.
    let r = sb
        .run(&["query", "--json", "--level", "warn", "--since", "1h"])
        .await;
    r.ok();
    let rows = r.json_lines();
    assert_eq!(rows.len(), 1, "{r:?}");
    let row = &rows[0];
    assert_eq!(row["message"], "hello world");
    assert_eq!(row["level"], "warn");
    assert_eq!(row["component"], "api");
    assert_eq!(row["session_id"], "s-1");
    assert_eq!(row["metadata"]["file"], "main.rs");
    for field in ["seq", "id", "timestamp", "synced"] {
        assert!(!row[field].is_null(), "{field} in {row}");
    }
    // Filters narrow: nothing is an hour old, nothing is an error.
    for args in [
        &["query", "--until", "1h"][..],
        &["query", "--level", "error"],
        &["query", "--session", "nobody"],
        &["query", "--since", "2099-01-01T00:00:00Z"],
    ] {
        let r = sb.run(args).await;
        r.ok();
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_sessions_through_the_daemon() {
    let sb = Sandbox::new();
    let project = sb.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    let canonical = std::fs::canonicalize(&project).unwrap();
    let daemon = sb.daemon().await;

    // A relative path is sent absolute and canonical.
    let mut cmd = sb.command(&[
        "watch",
        "add",
        "./project/src/..",
        "--pattern",
        "*.rs",
        "--pattern",
        "!target/**",
        "--no-recursive",
        "--poll",
    ]);
    cmd.current_dir(sb.path());
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("watching {}", canonical.display())),
        "{said}"
    );

    let r = sb.run(&["watch", "list", "--json"]).await;
    r.ok();
    let rows = r.json_lines();
    assert_eq!(rows.len(), 1, "{r:?}");
    assert_eq!(rows[0]["path"], canonical.to_str().unwrap());
    assert_eq!(rows[0]["recursive"], false);
    assert_eq!(rows[0]["mode"], "polling");
    assert_eq!(
        rows[0]["patterns"],
        serde_json::json!(["*.rs", "!target/**"])
    );
    let r = sb.run(&["watch", "list"]).await;
    r.ok();
    assert!(r.stdout.starts_with(canonical.to_str().unwrap()), "{r:?}");

    sb.run(&["watch", "remove", canonical.to_str().unwrap()])
        .await
        .ok();
    sb.run(&["watch", "remove", canonical.to_str().unwrap()])
        .await
        .failed(6, "is not watched");
    sb.run(&["watch", "add", "/no/such/dir"])
        .await
        .failed(6, "no such file or directory");
    let r = sb.run(&["watch", "list", "--json"]).await;
    r.ok();
    assert!(r.stdout.is_empty());

    // Sessions: a UUIDv7 by default, or the id given.
    let r = sb
        .run(&[
            "session",
            "start",
            "--identity",
            "alice",
            "--agent-type",
            "claude",
        ])
        .await;
    r.ok();
    let id = uuid::Uuid::parse_str(r.stdout.trim()).unwrap();
    assert_eq!(id.get_version_num(), 7);
    let r = sb
        .run(&[
            "--json",
            "session",
            "start",
            "--identity",
            "bob",
            "--id",
            "s-42",
        ])
        .await;
    r.ok();
    assert_eq!(r.json_lines()[0]["session_id"], "s-42");
    sb.run(&["session", "end", &id.to_string()]).await.ok();
    sb.run(&["session", "end", "s-42"]).await.ok();
    sb.run(&["session", "end", "s-42"])
        .await
        .failed(6, "no open session s-42");

    // Status.
    let r = sb.run(&["status"]).await;
    r.ok();
    assert!(r.stdout.starts_with("codi-monitor "), "{r:?}");
    assert!(r.stdout.contains("store"), "{r:?}");
    let r = sb.run(&["status", "--json"]).await;
    r.ok();
    let s = &r.json_lines()[0];
    assert_eq!(s["running"], true);
    assert!(s["components"].as_array().unwrap().len() >= 2, "{s}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_log_and_query_use_the_file() {
    let sb = Sandbox::new();
    // Nothing logged yet, nothing running: query has nothing to read.
    sb.run(&["query"])
        .await
        .failed(3, "codi-monitor is not running");

    let r = sb
        .run(&["-v", "log", "--component", "offline", "first"])
        .await;
    r.ok();
    assert_eq!(r.stdout.trim(), "stored 1 entry");
    let expected = format!(
        "codi-monitor not reachable at {}: using {} directly",
        sb.socket.display(),
        sb.db.display()
    );
    assert!(r.stderr.contains(&expected), "{r:?}");
    let r = sb
        .run_stdin(
            &["--json", "log", "--stdin", "--component", "offline"],
            b"second\nthird\n",
        )
        .await;
    r.ok();
    assert_eq!(r.json_lines()[0]["via"], "database");
    assert!(sb.db.exists());

    let r = sb.run(&["-v", "query", "--json"]).await;
    r.ok();
    assert!(r.stderr.contains(&expected), "{r:?}");
    let got: Vec<String> = r
        .json_lines()
        .iter()
        .map(|v| v["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, ["first", "second", "third"]);

    // The commands that need the daemon say so, with exit code 3.
    let r = sb.run(&["status"]).await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.contains("codi-monitor is not running"), "{r:?}");
    let r = sb.run(&["status", "--json"]).await;
    assert_eq!(r.code, 3);
    assert_eq!(r.json_lines()[0]["running"], false);
    for args in [
        &["watch", "list"][..],
        &["session", "start", "--identity", "x"],
        &["session", "end", "x"],
    ] {
        sb.run(args)
            .await
            .failed(3, "codi-monitor is not running: nothing answers at");
    }

    // The entries are in the daemon's file: a daemon started on it serves them.
    let store = MonitorStore::open(&sb.db, Synchronous::Full).await.unwrap();
    let (rows, total) = store.query(LogFilter::default(), 10).await.unwrap();
    assert_eq!(total, 3);
    assert!(rows.iter().all(|r| r.component == "offline" && !r.synced));
    store.close().await;
    let daemon = sb.daemon().await;
    let r = sb.run(&["-v", "query", "--component", "offline"]).await;
    r.ok();
    assert!(r.stderr.contains("via codi-monitor at"), "{r:?}");
    assert_eq!(r.lines().len(), 3);
    assert!(r.lines()[2].ends_with("INFO  offline third"), "{r:?}");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_reaches_the_daemon_over_tcp_with_its_token() {
    let sb = Sandbox::new();
    let token = "a-long-enough-test-token";
    let daemon = sb
        .daemon_with(|c| {
            c.monitor.tcp_enabled = true;
            c.monitor.tcp_listen = "127.0.0.1:0".parse().unwrap();
            c.monitor.tcp_token = Some(coditect_monitor::config::Secret::new(token));
        })
        .await;
    let addr = daemon.tcp.unwrap().to_string();
    let unmounted = sb.path().join("not-mounted.sock");
    let tcp = |t: &'static str| {
        vec![
            ("CODI_SOCKET", unmounted.to_str().unwrap().to_string()),
            ("CODI_TCP_ENABLED", "true".to_string()),
            ("CODI_TCP_LISTEN", addr.clone()),
            ("CODI_TCP_TOKEN", t.to_string()),
        ]
    };
    let env = tcp(token);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = sb.run_with(&["-v", "log", "over tcp"], &env, None).await;
    r.ok();
    assert!(
        r.stderr
            .contains(&format!("via codi-monitor at {addr} (TCP")),
        "{r:?}"
    );
    let r = sb.run_with(&["query"], &env, None).await;
    r.ok();
    assert!(r.stdout.trim_end().ends_with("INFO  cli over tcp"), "{r:?}");
    let env = tcp("the-wrong-token-of-length");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sb.run_with(&["status"], &env, None)
        .await
        .failed(5, "refused the TCP token");
    daemon.stop().await;
}

#[tokio::test]
async fn the_config_file_and_flags_name_the_socket_and_database() {
    let sb = Sandbox::new();
    let file = sb.path().join("monitor.toml");
    let db = sb.path().join("from-file.db");
    std::fs::write(
        &file,
        format!(
            "[monitor]\nunix_socket_path = \"{}\"\n[storage]\nsqlite_path = \"{}\"\n",
            sb.path().join("nowhere.sock").display(),
            db.display()
        ),
    )
    .unwrap();
    // CODI_SOCKET / CODI_DB win over the file: clear them, as the user's shell would.
    let mut cmd = sb.command(&["-v", "log", "from the file"]);
    cmd.env_remove("CODI_SOCKET")
        .env_remove("CODI_DB")
        .env("CODI_CONFIG", &file);
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(db.exists());
    // A flag wins over the environment.
    let flag_db = sb.path().join("flag.db");
    let r = sb
        .run(&["--db", flag_db.to_str().unwrap(), "log", "from a flag"])
        .await;
    r.ok();
    assert!(flag_db.exists());
    // A broken config file is a usage error naming it.
    std::fs::write(&file, "[monitor]\nbogus = 1\n").unwrap();
    let r = sb
        .run_with(&["query"], &[("CODI_CONFIG", file.to_str().unwrap())], None)
        .await;
    r.failed(2, "bogus");
}

#[tokio::test]
async fn usage_errors_help_and_completions() {
    let sb = Sandbox::new();
    let r = sb.run(&["--help"]).await;
    r.ok();
    for code in [
        "0  ok",
        "2  usage",
        "3  codi-monitor unreachable",
        "4  hub unreachable",
        "5  credentials",
        "6  not found",
    ] {
        assert!(r.stdout.contains(code), "{code}: {}", r.stdout);
    }
    for shell in ["bash", "zsh", "fish"] {
        let r = sb.run(&["completions", shell]).await;
        r.ok();
        assert!(r.stdout.contains("codi2"), "{shell}");
        assert!(r.stdout.contains("watch"), "{shell}");
    }
    assert_eq!(sb.run(&["log"]).await.code, 2);
    assert_eq!(sb.run(&["frobnicate"]).await.code, 2);
    let r = sb.run(&["query", "--since", "last tuesday"]).await;
    r.failed(2, "--since");
    assert!(r.stderr.contains("RFC 3339"), "{r:?}");
    sb.run(&["query", "--since", "1h", "--until", "2h"])
        .await
        .failed(2, "--since must not be after --until");
    sb.run(&["log", "--metadata", "[1]", "x"])
        .await
        .failed(2, "JSON object");
    sb.run(&["log", "--level", "loud", "x"])
        .await
        .failed(2, "unknown level");
    sb.run(&["log", "--component", " ", "x"])
        .await
        .failed(2, "component is empty");
    // Nothing was stored by the refused commands.
    assert!(!sb.db.exists());
}

#[tokio::test]
async fn a_daemon_that_never_answers_is_reported_unreachable_in_time() {
    let sb = Sandbox::new();
    // A peer that accepts and then says nothing: a hung daemon.
    let listener = tokio::net::UnixListener::bind(&sb.socket).unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            conns.push(s);
        }
    });
    let started = std::time::Instant::now();
    let r = sb.run(&["--timeout", "300ms", "status"]).await;
    r.failed(3, "did not answer within 300ms");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let r = sb
        .run_with(&["log", "hello"], &[("CODI_TIMEOUT", "300ms")], None)
        .await;
    // A hung daemon is not bypassed (it may hold the file, and may yet store the entry):
    // the command says so and fails.
    r.failed(3, "did not answer within 300ms");
    held.abort();
}

async fn stored_messages(db: &std::path::Path, component: &str) -> Vec<String> {
    let s = MonitorStore::open(db, Synchronous::Normal).await.unwrap();
    let filter = LogFilter {
        component: Some(component.into()),
        ..LogFilter::default()
    };
    let (entries, _) = s.query(filter, 10_000).await.unwrap();
    s.close().await;
    entries.into_iter().map(|e| e.message).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stdin_goes_on_in_the_file_when_the_daemon_stops_mid_stream() {
    use tokio::io::AsyncWriteExt;
    let sb = Sandbox::new();
    let d = sb.daemon().await;
    let mut child = sb
        .command(&["-v", "log", "--stdin", "--component", "mid"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..100 {
        stdin
            .write_all(format!("line {i}\n").as_bytes())
            .await
            .unwrap();
    }
    stdin.flush().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored_messages(&sb.db, "mid").await.len() < 100 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    d.stop().await;
    for i in 100..200 {
        stdin
            .write_all(format!("line {i}\n").as_bytes())
            .await
            .unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stored 200 entries"),
        "{out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sending the batch again"), "{err}");
    assert!(err.contains("directly"), "{err}");
    let mut got = stored_messages(&sb.db, "mid").await;
    got.sort();
    let mut want: Vec<String> = (0..200).map(|i| format!("line {i}")).collect();
    want.sort();
    assert_eq!(got, want, "every line once");
}
