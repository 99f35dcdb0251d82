//! The `codi-monitor` binary as operators run it: help, exit codes, SIGTERM, `supervise`
//! (pid file, restarts, stop), `health`, the container entrypoint and the systemd units.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use coditect_monitor::client::IpcClient;
use coditect_proto::Level;
use coditect_proto::ipc::{LogEntry, LogFilter, Payload};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_codi-monitor");

struct Dirs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    socket: PathBuf,
    db: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    Dirs {
        socket: root.join("run/m.sock"),
        db: root.join("data/m.db"),
        root,
        _tmp: tmp,
    }
}

fn monitor(d: &Dirs, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .arg("--socket")
        .arg(&d.socket)
        .arg("--db")
        .arg(&d.db)
        .env_clear()
        .env("HOME", &d.root)
        .env("CODI_HTTP_LISTEN", "off")
        .env("CODI_EXPORT_DIR", d.root.join("exports"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

fn signal(pid: u32, sig: &str) {
    assert!(
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

fn exited(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    wait_for(timeout, || child.try_wait().unwrap())
}

async fn log_one(socket: &Path, message: &str) {
    let mut c = IpcClient::connect_unix(socket).await.unwrap();
    let reply = c
        .call(Payload::LogEntry(LogEntry {
            level: Level::Info,
            component: "proc".into(),
            message: message.into(),
            metadata: None,
            session_id: None,
            timestamp: None,
            id: None,
        }))
        .await
        .unwrap();
    assert!(matches!(reply, Payload::Acknowledgment { .. }), "{reply:?}");
}

async fn messages(socket: &Path) -> Vec<String> {
    let mut c = IpcClient::connect_unix(socket).await.unwrap();
    match c
        .call(Payload::QueryLogs {
            filter: LogFilter {
                component: Some("proc".into()),
                ..LogFilter::default()
            },
            limit: 100,
        })
        .await
        .unwrap()
    {
        Payload::LogResults { entries, .. } => entries.into_iter().map(|e| e.message).collect(),
        other => panic!("{other:?}"),
    }
}

async fn answers(socket: &Path) -> bool {
    coditect_monitor::supervise::healthy(socket).await
}

async fn wait_healthy(socket: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if answers(socket).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn help_lists_the_modes_and_flags() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "run",
        "supervise",
        "health",
        "--config",
        "--socket",
        "--db",
        "CODI_CONFIG",
    ] {
        assert!(help.contains(s), "{s} missing from:\n{help}");
    }
}

#[test]
fn a_bad_setting_exits_2_naming_it() {
    let d = dirs();
    let out = monitor(&d, &["run"])
        .env("CODI_RETENTION_DAYS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CODI_RETENTION_DAYS"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_what_was_acknowledged_and_removes_the_socket() {
    let d = dirs();
    let mut child = monitor(&d, &["run"]).spawn().unwrap();
    assert!(wait_healthy(&d.socket).await);
    log_one(&d.socket, "before sigterm").await;
    // A second daemon on the same socket refuses, saying why.
    let out = monitor(&d, &["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(child.id(), "TERM");
    let status = tokio::task::block_in_place(|| exited(&mut child, Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!d.socket.exists(), "the socket file is removed");
    let out = monitor(&d, &["health"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));

    let mut child = monitor(&d, &["run"]).spawn().unwrap();
    assert!(wait_healthy(&d.socket).await);
    assert_eq!(messages(&d.socket).await, vec!["before sigterm"]);
    let out = monitor(&d, &["health"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    signal(child.id(), "INT");
    let status = tokio::task::block_in_place(|| exited(&mut child, Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervise_restarts_a_dead_daemon_and_stops_it_on_sigterm() {
    let d = dirs();
    let pid_file = d.root.join("run/monitor.pid");
    let mut sup = monitor(
        &d,
        &[
            "supervise",
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--health-interval",
            "200ms",
            "--stop-timeout",
            "1s",
        ],
    )
    .spawn()
    .unwrap();
    assert!(
        wait_healthy(&d.socket).await,
        "the supervised daemon answers"
    );
    let recorded: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(recorded, sup.id());
    log_one(&d.socket, "survives").await;

    // A second supervisor on the same pid file refuses.
    let out = monitor(&d, &["supervise", "--pid-file", pid_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another supervisor"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The daemon dies hard; the supervisor brings up a new one on the same store.
    let first = wait_for(Duration::from_secs(5), || {
        children(sup.id()).first().copied()
    })
    .unwrap();
    signal(first, "KILL");
    let second = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(30), || {
            children(sup.id()).first().copied().filter(|p| *p != first)
        })
    })
    .expect("a new daemon");
    assert!(wait_healthy(&d.socket).await);
    assert_eq!(messages(&d.socket).await, vec!["survives"]);

    // A daemon that stops answering (frozen) is replaced too, once the supervisor has
    // seen it answer (until then it is given time to start).
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(second, "STOP");
    let third = tokio::task::block_in_place(|| {
        wait_for(Duration::from_secs(30), || {
            children(sup.id()).first().copied().filter(|p| *p != second)
        })
    })
    .expect("the frozen daemon is replaced");
    assert!(wait_healthy(&d.socket).await);
    let _ = third;

    signal(sup.id(), "TERM");
    let status = tokio::task::block_in_place(|| exited(&mut sup, Duration::from_secs(40)));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!pid_file.exists(), "the pid file is removed");
    assert!(!d.socket.exists(), "the daemon was stopped cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_entrypoint_runs_the_daemon_with_tcp_from_a_secret_file() {
    let d = dirs();
    let token_file = d.root.join("token");
    std::fs::write(&token_file, "container-token-0123456789").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitor/container-entrypoint.sh");
    let mut child = Command::new("sh")
        .arg(&script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &d.root)
        .env("CODI_MONITOR_BIN", BIN)
        .env("CODI_DB", &d.db)
        .env("CODI_SOCKET", &d.socket)
        .env("CODI_EXPORT_DIR", d.root.join("exports"))
        .env("CODI_HTTP_LISTEN", "off")
        .env("CODI_TCP_TOKEN_FILE", &token_file)
        .env("CODI_TCP_LISTEN", format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_healthy(&d.socket).await);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        IpcClient::connect_tcp(addr, "wrong-token-wrong-token")
            .await
            .is_err()
    );
    let mut c = IpcClient::connect_tcp(addr, "container-token-0123456789")
        .await
        .unwrap();
    assert!(matches!(
        c.call(Payload::GetStatus).await.unwrap(),
        Payload::Status { .. }
    ));
    // exec: the signal reaches the daemon itself.
    signal(child.id(), "TERM");
    let status = tokio::task::block_in_place(|| exited(&mut child, Duration::from_secs(20)));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!d.socket.exists());
}

#[test]
fn the_systemd_units_start_what_the_binary_accepts() {
    use clap::Parser;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/monitor");
    for unit in ["codi-monitor.service", "codi-monitor.user.service"] {
        let text = std::fs::read_to_string(dir.join(unit)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{unit} has no ExecStart"));
        let args: Vec<&str> = exec.split_whitespace().collect();
        assert!(args[0].ends_with("/codi-monitor"), "{unit}: {exec}");
        let parsed = coditect_monitor::cli::Cli::try_parse_from(&args);
        assert!(parsed.is_ok(), "{unit}: {exec}: {:?}", parsed.err());
        for key in [
            "NoNewPrivileges=true",
            "PrivateTmp=true",
            "RestartPreventExitStatus=2",
        ] {
            assert!(text.contains(key), "{unit} lacks {key}");
        }
    }
}

/// F4: `supervise --socket D/mon.sock` with `D` someone else's, or with `D/mon.pid` a
/// symlink to a file of root's: refused, and the file it points to is left as it was.
#[test]
fn the_pid_file_is_never_written_through_a_symlink_or_in_someone_else_s_directory() {
    let d = dirs();
    let precious = d.root.join("precious");
    std::fs::write(&precious, b"precious").unwrap();
    let run = |dir: &Path| {
        // The pid file goes beside the socket: D/mon.pid.
        let mut child = Command::new(BIN)
            .arg("supervise")
            .arg("--socket")
            .arg(dir.join("mon.sock"))
            .arg("--db")
            .arg(&d.db)
            .env_clear()
            .env("HOME", &d.root)
            .env("CODI_HTTP_LISTEN", "off")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = exited(&mut child, Duration::from_secs(30)).expect("it exits");
        let mut err = String::new();
        use std::io::Read;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        (status, err)
    };
    // Ours, but the pid file is a symlink.
    let own = d.root.join("own");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::symlink(&precious, own.join("mon.pid")).unwrap();
    let (status, err) = run(&own);
    assert!(!status.success(), "{err}");
    assert!(err.contains("mon.pid"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
    // A hard link to it under the pid file's name.
    let linked = d.root.join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::fs::hard_link(&precious, linked.join("mon.pid")).unwrap();
    let (status, err) = run(&linked);
    assert!(!status.success(), "{err}");
    assert!(err.contains("not a pid file of ours"), "{err}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
    // Someone else's directory (as root: a second user made for the test).
    match coditect_testkit::fake::OtherUser::create() {
        None => eprintln!("the other-user case is skipped: it needs root"),
        Some(other) => {
            let theirs = d.root.join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::symlink(&precious, theirs.join("mon.pid")).unwrap();
            other.give(&theirs.join("mon.pid"));
            other.give(&theirs);
            let (status, err) = run(&theirs);
            assert!(!status.success(), "{err}");
            assert!(err.contains("belongs to another user"), "{err}");
            assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
        }
    }
}
