//! `codi2` against what it must not trust (issue 11): a hub that redirects the login
//! elsewhere, a hub whose answer never ends, a malformed hub URL, and a socket in
//! codi-monitor's place served by another user.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_testkit::fake::{Answer, FakeHttp, OtherUser};
use common::*;
use std::time::Duration;

/// F19: a hub answering 307 to another address gets no second POST of the password, and
/// the user is told where it tried to send it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_never_sends_credentials_across_a_redirect() {
    let elsewhere =
        FakeHttp::start(|_| Answer::Raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".into()))
            .await;
    let to = elsewhere.url();
    let hub = FakeHttp::start(move |r| {
        Answer::Raw(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nlocation: {to}{}?token=hidden\r\ncontent-length: 0\r\n\r\n",
            r.path
        ))
    })
    .await;
    let sb = Sandbox::new();
    for args in [
        vec!["login", "--hub", &hub.url(), "--email", "ada@example.com"],
        vec!["login", "--hub", &hub.url(), "--api-key"],
    ] {
        let r = sb
            .run_with(
                &args,
                &[("CODI_PASSWORD", "PASSWORD-SECRET")],
                Some(b"cdk_KEY-SECRET\n"),
            )
            .await;
        r.failed(1, "tried to send this request to");
        assert!(r.stderr.contains(&elsewhere.url()), "{r:?}");
        assert!(
            !r.stderr.contains("hidden"),
            "the query is not repeated: {r:?}"
        );
        assert!(!r.stderr.contains("SECRET"), "{r:?}");
    }
    assert!(!hub.requests().is_empty());
    assert!(
        elsewhere.requests().is_empty(),
        "credentials went elsewhere: {:?}",
        elsewhere.requests()
    );
    assert!(!sb.credentials().exists());
}

/// F18: a hub answering 200 with a body that never ends (declared or chunked) is cut off
/// at codi2's limit with a clear error, instead of filling memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_read_up_to_a_limit() {
    for chunked in [false, true] {
        let hub = FakeHttp::start(move |_| Answer::endless("200 OK", chunked)).await;
        let sb = Sandbox::new();
        let r = sb
            .run_with(
                &["logs", "--hub", &hub.url()],
                &[("CODI_HUB_API_KEY", "cdk_whatever")],
                None,
            )
            .await;
        r.failed(1, "over 100663296 bytes");
    }
}

/// F17: a malformed URL is refused before any name is looked up.
#[tokio::test]
async fn malformed_hub_urls_are_refused_before_any_network_use() {
    let sb = Sandbox::new();
    for url in ["http:///x", "https:///", "http://", "http://?x"] {
        let r = sb
            .run_with(&["login", "--hub", url, "--api-key"], &[], Some(b"cdk_k\n"))
            .await;
        r.failed(2, "has no host");
    }
}

/// A listener run as `other` (Unix socket at `at`, or TCP on loopback when `at` is
/// `tcp`) that appends whatever it receives to `captured`; its address once ready.
async fn impostor(
    other: &OtherUser,
    python: &str,
    at: &str,
    captured: &std::path::Path,
) -> (tokio::process::Child, String) {
    let script = r#"
import socket, sys
if sys.argv[1] == "tcp":
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    where = "%d" % s.getsockname()[1]
else:
    s = socket.socket(socket.AF_UNIX)
    s.bind(sys.argv[1])
    where = sys.argv[1]
s.listen(16)
print(where, flush=True)
s.settimeout(20)
try:
    while True:
        c, _ = s.accept()
        c.settimeout(2)
        got = b""
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                got += d
        except Exception:
            pass
        open(sys.argv[2], "ab").write(got)
except Exception:
    pass
"#;
    let mut c = other.command(python);
    c.args(["-c", script])
        .arg(at)
        .arg(captured)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = tokio::process::Command::from(c)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (child, ready)
}

/// F5: a listener someone else put in codi-monitor's place — the socket in a careless
/// 0777 directory, or the loopback TCP port while the daemon is down — gets nothing:
/// codi2 checks who serves it before sending, and does not fall back to anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codi2_never_talks_to_a_listener_another_user_serves() {
    let Some(other) = OtherUser::create() else {
        eprintln!("skipped: it needs root to create a second user");
        return;
    };
    // The listener runs as the other user: a Python it can execute (the suite's venv may
    // live where only root can reach).
    let Some(python) = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        other
            .command(p)
            .args(["-c", "pass"])
            .status()
            .is_ok_and(|s| s.success())
    }) else {
        eprintln!("skipped: no Python the second user can run");
        return;
    };
    let sb = Sandbox::new();
    let open = sb.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let captured = sb.path().join("captured");
    std::fs::File::create(&captured).unwrap();
    other.give(&captured);

    let socket = open.join("m.sock");
    let (mut unix, _) = impostor(&other, python, socket.to_str().unwrap(), &captured).await;
    let r = sb
        .run_with(
            &["log", "ROOT-SECRET-42"],
            &[("CODI_SOCKET", socket.to_str().unwrap())],
            None,
        )
        .await;
    r.failed(3, "served by another user");

    let (mut tcp, port) = impostor(&other, python, "tcp", &captured).await;
    let r = sb
        .run_with(
            &["log", "ROOT-SECRET-43"],
            &[
                ("CODI_SOCKET", open.join("nothing.sock").to_str().unwrap()),
                ("CODI_TCP_ENABLED", "true"),
                ("CODI_TCP_LISTEN", &format!("127.0.0.1:{port}")),
                ("CODI_TCP_TOKEN", "TOKEN-SECRET-0123456789"),
            ],
            None,
        )
        .await;
    r.failed(3, "served by another user");

    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = (unix.start_kill(), tcp.start_kill());
    let got = String::from_utf8_lossy(&std::fs::read(&captured).unwrap()).into_owned();
    assert!(!got.contains("SECRET"), "the other user captured {got:?}");
    // Nor was it written anywhere else.
    assert!(!sb.path().join("data/codi/m.db").exists());
}
