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
        let hub = FakeHttp::start(move |_| match chunked {
            false => Answer::Endless(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10737418240\r\n\r\n".into(),
            ),
            true => Answer::EndlessChunked(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".into(),
            ),
        })
        .await;
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

/// F5: a listener someone else swapped in for codi-monitor's socket gets nothing: codi2
/// checks who serves the socket before sending, and does not fall back to anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codi2_never_talks_to_a_socket_another_user_serves() {
    let Some(other) = OtherUser::create() else {
        eprintln!("skipped: it needs root to create a second user");
        return;
    };
    let sb = Sandbox::new();
    // A directory the other user may write, as a careless 0777 one would be.
    let open = sb.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let socket = open.join("m.sock");
    let captured = sb.path().join("captured");
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(16)
print("ready", flush=True)
s.settimeout(20)
got = b""
try:
    while True:
        c, _ = s.accept()
        c.settimeout(2)
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
    std::fs::File::create(&captured).unwrap();
    other.give(&captured);
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
    let mut listener = tokio::process::Command::from({
        let mut c = other.command(python);
        c.args(["-c", script])
            .arg(&socket)
            .arg(&captured)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        c
    })
    .kill_on_drop(true)
    .spawn()
    .unwrap();
    {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(listener.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"));
    }
    let r = sb
        .run_with(
            &["log", "ROOT-SECRET-42"],
            &[("CODI_SOCKET", socket.to_str().unwrap())],
            None,
        )
        .await;
    r.failed(3, "served by another user");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = listener.start_kill();
    let got = std::fs::read(&captured).unwrap();
    assert!(
        !String::from_utf8_lossy(&got).contains("ROOT-SECRET"),
        "the other user captured it"
    );
    // Nor was it written anywhere else.
    assert!(!sb.path().join("data/codi/m.db").exists());
}
