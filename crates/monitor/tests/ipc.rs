//! The daemon over real sockets and a real SQLite file: replies carry request ids, entries
//! are durable when acknowledged, bad frames never hurt the daemon, the socket is private
//! and owned by one daemon, TCP needs the token.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

use coditect_monitor::config::Config;
use coditect_monitor::daemon::Daemon;
use coditect_monitor::store::MonitorStore;
use coditect_proto::ipc::{AckStatus, LogEntry, LogFilter, Message, Payload, encode_frame};
use coditect_proto::{ErrorCode, Level};
use coditect_store::Synchronous;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

mod common;
use common::*;

#[tokio::test]
async fn acknowledged_entries_are_durable_and_queryable() {
    let d = spawn_daemon(false).await;
    let mut c = d.client().await;
    assert_eq!(
        accepted(&c.call(Payload::LogEntry(entry(Level::Info, "hello"))).await),
        1
    );
    let batch: Vec<LogEntry> = (0..500)
        .map(|i| entry(Level::Warn, &format!("b{i}")))
        .collect();
    assert_eq!(
        accepted(&c.call(Payload::LogBatch { entries: batch }).await),
        500
    );
    // Pipelined: 100 requests in one write, 100 replies in order.
    let msgs: Vec<Message> = (0..100)
        .map(|i| Message::request(Payload::LogEntry(entry(Level::Error, &format!("p{i}")))))
        .collect();
    let mut out = Vec::new();
    for m in &msgs {
        encode_frame(m, &mut out).unwrap();
    }
    c.stream.write_all(&out).await.unwrap();
    for m in &msgs {
        let r = c.reply().await.unwrap();
        assert_eq!(r.id, m.id);
        assert_eq!(accepted(&r.payload), 1);
    }
    match c
        .call(Payload::QueryLogs {
            filter: LogFilter {
                min_level: Some(Level::Error),
                ..LogFilter::default()
            },
            limit: 10,
        })
        .await
    {
        Payload::LogResults {
            entries,
            total_count,
        } => {
            assert_eq!(total_count, 100);
            assert_eq!(entries.len(), 10);
            assert_eq!(entries[0].message, "p99", "newest first");
            assert_eq!(
                entries[0].metadata,
                Some(serde_json::json!({"file": "main.rs"}))
            );
            assert_eq!(entries[0].session_id.as_deref(), Some("s-1"));
        }
        other => panic!("{other:?}"),
    }
    // A bad entry is refused with its reason; a batch with one is refused whole.
    let mut bad = entry(Level::Info, "x");
    bad.metadata = Some(serde_json::json!([1, 2]));
    assert!(matches!(
        c.call(Payload::LogEntry(bad.clone())).await,
        Payload::Acknowledgment { status: AckStatus::Rejected(r), .. } if r.contains("object")
    ));
    assert!(matches!(
        c.call(Payload::LogBatch { entries: vec![entry(Level::Info, "ok"), bad] }).await,
        Payload::Acknowledgment { status: AckStatus::Rejected(r), stored: 0, .. } if r.starts_with("entry 1")
    ));
    assert_eq!(
        error_code(
            &c.call(Payload::QueryLogs {
                filter: LogFilter::default(),
                limit: 0
            })
            .await
        ),
        ErrorCode::BadRequest
    );

    // What was acknowledged is in the file, read by another opener after the daemon stops.
    let db = d.db.clone();
    let socket = d.socket.clone();
    let _dir = d.stop().await;
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    let store = MonitorStore::open(&db, Synchronous::Full).await.unwrap();
    let (_, total) = store.query(LogFilter::default(), 1).await.unwrap();
    assert_eq!(total, 601);
    store.close().await;
}

#[tokio::test]
async fn bad_frames_never_hurt_the_daemon() {
    let d = spawn_daemon(false).await;
    // Undecodable but whole: an error, and the connection goes on.
    let mut c = d.client().await;
    let junk = b"\x93not msgpack";
    let mut frame = (junk.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(junk);
    c.stream.write_all(&frame).await.unwrap();
    assert_eq!(
        error_code(&c.reply().await.unwrap().payload),
        ErrorCode::BadRequest
    );
    assert!(matches!(
        c.call(Payload::GetStatus).await,
        Payload::Status { .. }
    ));
    // A reply sent as a request: an error.
    assert_eq!(
        error_code(
            &c.call(Payload::Status {
                components: vec![],
                uptime_ms: 0,
                version: String::new()
            })
            .await
        ),
        ErrorCode::BadRequest
    );
    // Over the limit: an error, then the daemon closes.
    let mut c2 = d.client().await;
    c2.stream
        .write_all(&(2u32 << 20).to_le_bytes())
        .await
        .unwrap();
    assert_eq!(
        error_code(&c2.reply().await.unwrap().payload),
        ErrorCode::PayloadTooLarge
    );
    assert!(
        c2.reply().await.is_none(),
        "closed after an oversized frame"
    );
    // A client that vanishes mid-frame.
    let mut c3 = d.client().await;
    c3.stream.write_all(&[200, 0, 0, 0, 1, 2]).await.unwrap();
    drop(c3);
    // Random bytes from many clients at once.
    let mut tasks = Vec::new();
    for seed in 0..20u64 {
        let socket = d.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = UnixStream::connect(socket).await.unwrap();
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let bytes: Vec<u8> = (0..4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = s.write_all(&bytes).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Still serving.
    let mut c4 = d.client().await;
    assert_eq!(
        accepted(
            &c4.call(Payload::LogEntry(entry(Level::Info, "still here")))
                .await
        ),
        1
    );
    d.stop().await;
}

#[tokio::test]
async fn the_socket_is_private_and_owned_by_one_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let d = spawn_daemon(false).await;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // A second daemon on the same socket refuses to start, and leaves the first alone.
    let mut config = Config::default();
    config.monitor.unix_socket_path = d.socket.clone();
    config.storage.sqlite_path = d.dir.path().join("other.db");
    let err = Daemon::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("already running"), "{err}");
    let mut c = d.client().await;
    assert!(matches!(
        c.call(Payload::GetStatus).await,
        Payload::Status { .. }
    ));
    let socket = d.socket.clone();
    let dir = d.stop().await;

    // A stale socket file (its daemon died without cleaning up) is replaced.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    assert!(socket.exists());
    let d = spawn_in(dir, false).await;
    let mut c = d.client().await;
    assert_eq!(
        accepted(
            &c.call(Payload::LogEntry(entry(Level::Info, "after stale")))
                .await
        ),
        1
    );
    d.stop().await;
}

#[tokio::test]
async fn tcp_needs_the_token_first() {
    let d = spawn_daemon(true).await;
    let addr = d.tcp.unwrap();
    // No Hello: refused and closed.
    let mut c = Client::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert_eq!(
        error_code(&c.call(Payload::GetStatus).await),
        ErrorCode::AuthRequired
    );
    assert!(c.reply().await.is_none());
    // A wrong token: the same.
    let mut c = Client::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    assert_eq!(
        error_code(
            &c.call(Payload::Hello {
                token: "not-the-token-at-all".into()
            })
            .await
        ),
        ErrorCode::AuthRequired
    );
    // A large first frame is not read before the token: refused and closed.
    let mut c = Client::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    c.stream
        .write_all(&(512 * 1024u32).to_le_bytes())
        .await
        .unwrap();
    let reply = c.reply().await.unwrap();
    assert_eq!(error_code(&reply.payload), ErrorCode::AuthRequired);
    assert!(c.reply().await.is_none());
    // The token: served.
    let mut c = Client::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    accepted(
        &c.call(Payload::Hello {
            token: TOKEN.into(),
        })
        .await,
    );
    assert_eq!(
        accepted(
            &c.call(Payload::LogEntry(entry(Level::Info, "over tcp")))
                .await
        ),
        1
    );
    d.stop().await;
}

#[tokio::test]
async fn sessions_and_watches_persist() {
    let d = spawn_daemon(false).await;
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::SessionStart {
            session_id: "s-9".into(),
            identity: "ada@example.com".into(),
            agent_type: Some("claude".into()),
        })
        .await,
    );
    let watched = d.dir.path().join("src");
    std::fs::create_dir_all(&watched).unwrap();
    accepted(
        &c.call(Payload::StartMonitoring {
            path: watched.clone(),
            recursive: true,
            patterns: vec!["**/*.rs".into(), "!target/**".into()],
            session_id: Some("s-9".into()),
            mode: Default::default(),
        })
        .await,
    );
    assert_eq!(
        error_code(
            &c.call(Payload::StartMonitoring {
                path: "relative".into(),
                recursive: true,
                patterns: vec![],
                session_id: None,
                mode: Default::default(),
            })
            .await
        ),
        ErrorCode::BadRequest
    );
    assert_eq!(
        error_code(
            &c.call(Payload::SessionEnd {
                session_id: "nope".into()
            })
            .await
        ),
        ErrorCode::NotFound
    );
    let dir = d.stop().await;
    // After a restart, the watch is still there and the session still open.
    let d = spawn_in(dir, false).await;
    let mut c = d.client().await;
    let paths = watch_list(&mut c).await;
    assert_eq!(paths.len(), 1);
    assert_eq!(paths[0].path, watched);
    assert_eq!(paths[0].patterns, vec!["**/*.rs", "!target/**"]);
    accepted(
        &c.call(Payload::SessionEnd {
            session_id: "s-9".into(),
        })
        .await,
    );
    accepted(&c.call(Payload::StopMonitoring { path: watched }).await);
    let paths = watch_list(&mut c).await;
    assert!(paths.is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_at_once_are_all_served() {
    let d = spawn_daemon(false).await;
    let mut clients = Vec::new();
    for _ in 0..1000 {
        clients.push(d.client().await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        tasks.spawn(async move {
            for i in 0..2 {
                let m = format!("client {k} entry {i}");
                assert_eq!(
                    accepted(&c.call(Payload::LogEntry(entry(Level::Info, &m))).await),
                    1
                );
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let mut c = d.client().await;
    assert_eq!(stored_count(&mut c, LogFilter::default()).await, 2000);
    d.stop().await;
}

#[tokio::test]
async fn a_query_page_never_outgrows_one_frame() {
    let d = spawn_daemon(false).await;
    let mut c = d.client().await;
    let big = "x".repeat(60 * 1024);
    for _ in 0..30 {
        accepted(&c.call(Payload::LogEntry(entry(Level::Info, &big))).await);
    }
    match c
        .call(Payload::QueryLogs {
            filter: LogFilter::default(),
            limit: 30,
        })
        .await
    {
        Payload::LogResults {
            entries,
            total_count,
        } => {
            assert_eq!(total_count, 30);
            assert!(
                !entries.is_empty() && entries.len() < 30,
                "{}",
                entries.len()
            );
            // The next page starts where this one ended.
            let before = entries.last().unwrap().seq;
            match c
                .call(Payload::QueryLogs {
                    filter: LogFilter {
                        before_seq: Some(before),
                        ..LogFilter::default()
                    },
                    limit: 30,
                })
                .await
            {
                Payload::LogResults { entries: next, .. } => {
                    assert!(next.iter().all(|e| e.seq < before));
                    assert!(!next.is_empty());
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    d.stop().await;
}

#[tokio::test]
async fn pipelined_entries_are_answered_in_order_each_on_its_own_merits() {
    let d = spawn_daemon(false).await;
    let mut c = d.client().await;
    let mut sent = Vec::new();
    let mut frames = Vec::new();
    for i in 0..300 {
        let mut e = entry(Level::Info, &format!("p-{i}"));
        if i == 150 {
            e.component = String::new();
        }
        let m = Message::request(Payload::LogEntry(e));
        sent.push(m.id);
        encode_frame(&m, &mut frames).unwrap();
    }
    // All at once, so the daemon finds many in one read.
    c.stream.write_all(&frames).await.unwrap();
    for (i, id) in sent.iter().enumerate() {
        let reply = c.reply().await.unwrap();
        assert_eq!(reply.id, *id, "replies come in request order");
        match (i, reply.payload) {
            (
                150,
                Payload::Acknowledgment {
                    status: AckStatus::Rejected(reason),
                    ..
                },
            ) => assert!(reason.contains("component"), "{reason}"),
            (
                _,
                Payload::Acknowledgment {
                    status: AckStatus::Accepted,
                    stored: 1,
                    ..
                },
            ) if i != 150 => {}
            (i, other) => panic!("reply {i}: {other:?}"),
        }
    }
    assert_eq!(stored_count(&mut c, LogFilter::default()).await, 299);
    d.stop().await;
}

#[tokio::test]
async fn an_entry_resent_with_its_id_is_stored_once() {
    let d = spawn_daemon(false).await;
    let mut c = d.client().await;
    let mut e = entry(Level::Info, "sent twice");
    e.id = Some(uuid::Uuid::now_v7());
    accepted(&c.call(Payload::LogEntry(e.clone())).await);
    // A client that lost the answer sends the same entries again, alone and in a batch.
    accepted(&c.call(Payload::LogEntry(e.clone())).await);
    let mut other = entry(Level::Info, "new");
    other.id = Some(uuid::Uuid::now_v7());
    accepted(
        &c.call(Payload::LogBatch {
            entries: vec![e.clone(), other],
        })
        .await,
    );
    match c
        .call(Payload::QueryLogs {
            filter: LogFilter::default(),
            limit: 10,
        })
        .await
    {
        Payload::LogResults {
            entries,
            total_count,
        } => {
            assert_eq!(total_count, 2, "{entries:?}");
            assert!(entries.iter().any(|s| s.id == e.id.unwrap()));
        }
        other => panic!("{other:?}"),
    }
    // The nil id is no id.
    let mut nil = entry(Level::Info, "nil");
    nil.id = Some(uuid::Uuid::nil());
    match c.call(Payload::LogEntry(nil)).await {
        Payload::Acknowledgment {
            status: AckStatus::Rejected(reason),
            ..
        } => assert!(reason.contains("nil"), "{reason}"),
        other => panic!("{other:?}"),
    }
    d.stop().await;
}

#[tokio::test]
async fn a_tcp_client_that_never_authenticates_is_let_go() {
    let d = spawn_with(tempfile::tempdir().unwrap(), true, |c| {
        c.monitor.tcp_auth_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut c = Client::new(
        tokio::net::TcpStream::connect(d.tcp.unwrap())
            .await
            .unwrap(),
    );
    let started = std::time::Instant::now();
    // Silent: the daemon closes the connection once the time is up.
    assert!(c.reply().await.is_none());
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    // An authenticated client is not bound by it.
    let mut c = Client::new(
        tokio::net::TcpStream::connect(d.tcp.unwrap())
            .await
            .unwrap(),
    );
    accepted(
        &c.call(Payload::Hello {
            token: TOKEN.into(),
        })
        .await,
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    accepted(
        &c.call(Payload::LogEntry(entry(Level::Info, "still here")))
            .await,
    );
    d.stop().await;
}
