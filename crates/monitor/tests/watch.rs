//! File watching and exports on real directories: kinds from the file system's state,
//! filters, attribution to sessions, watches resumed after a restart, overflow reported
//! and repaired by a rescan, polling mode, thousands of files without loss, atomic
//! content-addressed exports.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_proto::ErrorCode;
use coditect_proto::ipc::{Payload, StoredLog, WatchMode};
use common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn meta<'a>(e: &'a StoredLog, key: &str) -> &'a serde_json::Value {
    &e.metadata.as_ref().unwrap()[key]
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

#[tokio::test]
async fn events_are_recorded_filtered_and_attributed() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("repo");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::create_dir_all(root.join("target")).unwrap();
    std::fs::write(root.join("src/old.rs"), "old").unwrap();
    let mut c = d.client().await;
    session(&mut c, "s-ada", "ada@example.com", "claude").await;
    accepted(
        &watch(
            &mut c,
            &root,
            &["**/*.rs", "!target/**"],
            Some("s-ada"),
            WatchMode::Native,
        )
        .await,
    );

    std::fs::write(root.join("src/a.rs"), "fn a() {}").unwrap();
    std::fs::write(root.join("README.md"), "not recorded").unwrap();
    std::fs::write(root.join("target/x.rs"), "not recorded").unwrap();
    // Each step once the previous one is recorded (a loaded machine may be slow to).
    assert_eq!(wait_events(&mut c, 1).await.len(), 1);
    std::fs::write(root.join("src/a.rs"), "fn a() { /* longer */ }").unwrap();
    assert_eq!(wait_events(&mut c, 2).await.len(), 2);
    std::fs::rename(root.join("src/a.rs"), root.join("src/b.rs")).unwrap();
    assert_eq!(wait_events(&mut c, 3).await.len(), 3);
    std::fs::remove_file(root.join("src/old.rs")).unwrap();
    // A file made in a new directory right away (before its watch can exist).
    std::fs::create_dir_all(root.join("src/deep/er")).unwrap();
    std::fs::write(root.join("src/deep/er/c.rs"), "c").unwrap();
    let events = wait_events(&mut c, 5).await;
    let seen: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                meta(e, "kind").as_str().unwrap().to_string(),
                meta(e, "path").as_str().unwrap().to_string(),
            )
        })
        .collect();
    let p = |rel: &str| root.join(rel).display().to_string();
    assert_eq!(
        &seen[..3],
        &[
            ("create".to_string(), p("src/a.rs")),
            ("modify".to_string(), p("src/a.rs")),
            ("rename".to_string(), p("src/b.rs")),
        ],
        "{seen:?}"
    );
    let mut tail = seen[3..].to_vec();
    tail.sort();
    assert_eq!(
        tail,
        vec![
            ("create".to_string(), p("src/deep/er/c.rs")),
            ("remove".to_string(), p("src/old.rs")),
        ],
        "{seen:?}"
    );
    assert_eq!(meta(&events[2], "from"), &serde_json::json!(p("src/a.rs")));
    for e in &events {
        assert_eq!(e.session_id.as_deref(), Some("s-ada"));
        assert_eq!(meta(e, "identity"), "ada@example.com");
        assert_eq!(meta(e, "agent_type"), "claude");
        assert_eq!(
            meta(e, "watch"),
            &serde_json::json!(root.display().to_string())
        );
        assert!(e.message.starts_with(meta(e, "kind").as_str().unwrap()));
    }

    // Once the session ends, events are no longer attributed to it.
    accepted(
        &c.call(Payload::SessionEnd {
            session_id: "s-ada".into(),
        })
        .await,
    );
    std::fs::write(root.join("src/after.rs"), "x").unwrap();
    let events = wait_events(&mut c, 6).await;
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events[5].session_id, None);
    assert_eq!(meta(&events[5], "identity"), &serde_json::Value::Null);
    d.stop().await;
}

#[tokio::test]
async fn bad_watch_requests_are_refused_clearly() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let mut c = d.client().await;
    let missing = d.dir.path().join("missing");
    let r = watch(&mut c, &missing, &[], None, WatchMode::Native).await;
    assert_eq!(error_code(&r), ErrorCode::BadRequest);
    let r = watch(
        &mut c,
        d.dir.path(),
        &["src/[", "*.rs"],
        None,
        WatchMode::Native,
    )
    .await;
    assert_eq!(error_code(&r), ErrorCode::BadRequest);
    let r = watch(&mut c, d.dir.path(), &[], Some("nobody"), WatchMode::Native).await;
    assert_eq!(error_code(&r), ErrorCode::NotFound);
    let paths = watch_list(&mut c).await;
    assert!(paths.is_empty(), "{paths:?}");
    d.stop().await;
}

#[tokio::test]
async fn watches_resume_after_a_restart() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("w");
    std::fs::create_dir_all(&root).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    std::fs::write(root.join("before.txt"), "1").unwrap();
    assert_eq!(wait_events(&mut c, 1).await.len(), 1);
    let dir = d.stop().await;

    // While the daemon is down: a change, a new file, a removal.
    std::fs::write(root.join("before.txt"), "changed while down").unwrap();
    std::fs::write(root.join("offline.txt"), "3").unwrap();
    std::fs::write(root.join("doomed.txt"), "4").unwrap();
    let d = spawn_with(dir, false, fast).await;
    let mut c = d.client().await;
    let events = wait_events(&mut c, 3).await;
    let mut offline: Vec<(String, String)> = events[1..]
        .iter()
        .map(|e| {
            assert_eq!(meta(e, "offline"), true, "{e:?}");
            (
                meta(e, "kind").as_str().unwrap().into(),
                meta(e, "path").as_str().unwrap().into(),
            )
        })
        .collect();
    offline.sort();
    let p = |n: &str| root.join(n).display().to_string();
    assert_eq!(
        offline,
        vec![
            ("create".to_string(), p("doomed.txt")),
            ("create".to_string(), p("offline.txt")),
            ("modify".to_string(), p("before.txt")),
        ]
    );
    std::fs::remove_file(root.join("doomed.txt")).unwrap();
    std::fs::write(root.join("after.txt"), "2").unwrap();
    let events = wait_events(&mut c, 6).await;
    assert_eq!(events.len(), 6, "{events:?}");
    let mut last: Vec<(String, String)> = events[4..]
        .iter()
        .map(|e| {
            (
                meta(e, "kind").as_str().unwrap().into(),
                meta(e, "path").as_str().unwrap().into(),
            )
        })
        .collect();
    last.sort();
    assert_eq!(
        last,
        vec![
            ("create".to_string(), p("after.txt")),
            ("remove".to_string(), p("doomed.txt")),
        ]
    );
    d.stop().await;
}

#[tokio::test]
async fn directories_moved_in_and_out_are_followed() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("w");
    let outside = d.dir.path().join("outside");
    std::fs::create_dir_all(root.join("stays")).unwrap();
    std::fs::write(root.join("stays/old.txt"), "1").unwrap();
    std::fs::create_dir_all(outside.join("pkg/src")).unwrap();
    for n in ["a", "b", "c"] {
        std::fs::write(outside.join(format!("pkg/src/{n}.txt")), n).unwrap();
    }
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    std::fs::rename(outside.join("pkg"), root.join("pkg")).unwrap();
    let events = wait_events(&mut c, 3).await;
    let mut created: Vec<String> = events
        .iter()
        .filter(|e| meta(e, "kind") == "create")
        .map(|e| meta(e, "path").as_str().unwrap().to_string())
        .collect();
    created.sort();
    let p = |n: &str| root.join(n).display().to_string();
    assert_eq!(
        created,
        vec![p("pkg/src/a.txt"), p("pkg/src/b.txt"), p("pkg/src/c.txt")]
    );
    settle().await;
    std::fs::rename(root.join("stays"), outside.join("gone")).unwrap();
    let events = wait_events(&mut c, 4).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(meta(&events[3], "kind"), "remove");
    assert_eq!(
        meta(&events[3], "path"),
        &serde_json::json!(p("stays/old.txt"))
    );
    d.stop().await;
}

#[tokio::test]
async fn polling_mode_sees_changes_without_kernel_events() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("mnt");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("existing.txt"), "1").unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Polling).await);
    let paths = watch_list(&mut c).await;
    assert_eq!(paths[0].mode, WatchMode::Polling);
    std::fs::write(root.join("new.txt"), "2").unwrap();
    let events = wait_events(&mut c, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(meta(&events[0], "kind"), "create");
    assert_eq!(
        meta(&events[0], "path"),
        &serde_json::json!(root.join("new.txt"))
    );
    // A change of an existing file (the poller sees a new mtime and size).
    std::fs::write(root.join("existing.txt"), "changed by someone").unwrap();
    let events = wait_events(&mut c, 2).await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(meta(&events[1], "kind"), "modify");
    assert_eq!(
        meta(&events[1], "path"),
        &serde_json::json!(root.join("existing.txt"))
    );
    d.stop().await;
}

/// Every file recorded exactly once: (path → entries) from the database.
fn per_path(db: &Path) -> HashMap<String, usize> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT json_extract(metadata, '$.path'), count(*) FROM logs
             WHERE component = 'file-monitor' AND json_extract(metadata, '$.kind') = 'create'
             GROUP BY 1",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as usize)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

async fn make_files(root: &Path, n: usize) -> Duration {
    let root = root.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        for i in 0..n {
            std::fs::write(root.join(format!("f{i:05}.txt")), i.to_string()).unwrap();
        }
        started.elapsed()
    })
    .await
    .unwrap()
}

async fn wait_files(c: &mut Client<tokio::net::UnixStream>, db: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while per_path(db).len() < n && Instant::now() < deadline {
        // Keep the connection alive while waiting.
        let _ = c.call(Payload::GetStatus).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_overflowing_queue_is_reported_and_repaired_by_a_rescan() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        fast(c);
        c.monitor.event_queue = 16;
    })
    .await;
    let root = d.dir.path().join("burst");
    std::fs::create_dir_all(&root).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    make_files(&root, 3000).await;
    wait_files(&mut c, &d.db, 3000).await;
    let counts = per_path(&d.db);
    assert_eq!(counts.len(), 3000);
    assert!(counts.values().all(|&n| n == 1), "a file recorded twice");
    let overflow = file_events(&mut c)
        .await
        .into_iter()
        .find(|e| meta(e, "kind") == "overflow")
        .expect("the overflow is reported");
    assert_eq!(overflow.level, coditect_proto::Level::Warn);
    match c.call(Payload::GetStatus).await {
        Payload::Status { components, .. } => {
            let w = components.iter().find(|s| s.name == "watcher").unwrap();
            assert!(w.detail.as_deref().unwrap().contains("overflows"), "{w:?}");
        }
        other => panic!("{other:?}"),
    }
    d.stop().await;
}

#[tokio::test]
async fn ten_thousand_new_files_are_each_recorded_once() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("many");
    std::fs::create_dir_all(&root).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    let took = make_files(&root, 10_000).await;
    eprintln!(
        "made 10000 files in {took:?} ({:.0}/s)",
        10_000.0 / took.as_secs_f64()
    );
    wait_files(&mut c, &d.db, 10_000).await;
    let counts = per_path(&d.db);
    assert_eq!(counts.len(), 10_000);
    assert!(counts.values().all(|&n| n == 1), "a file recorded twice");
    d.stop().await;
}

#[tokio::test]
async fn matching_files_are_archived_atomically_by_content() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        fast(c);
        c.monitor.export_patterns = vec!["*.export.md".into(), "reports/**".into()];
    })
    .await;
    let root = d.dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    let mut c = d.client().await;
    session(&mut c, "s-bot", "ci-bot", "codex").await;
    accepted(&watch(&mut c, &root, &[], Some("s-bot"), WatchMode::Native).await);
    let body = b"# decisions\nship it\n";
    std::fs::write(root.join("notes.export.md"), body).unwrap();
    std::fs::write(root.join("same.export.md"), body).unwrap();
    std::fs::write(root.join("plain.md"), b"not exported").unwrap();
    let store_path = d.db.clone();
    let dir = d.dir.path().to_path_buf();
    let exports = exports_until(&store_path, |e| e.len() >= 2).await;
    assert_eq!(exports.len(), 2, "{exports:?}");
    let sha = sha256_hex(body);
    for e in &exports {
        assert_eq!(e.sha256, sha);
        assert_eq!(e.file_size, body.len() as u64);
        assert_eq!(e.session_id.as_deref(), Some("s-bot"));
        assert_eq!(
            PathBuf::from(&e.archive_path),
            dir.join("exports")
                .join(&sha[..2])
                .join(format!("{sha}.md"))
        );
        assert_eq!(std::fs::read(&e.archive_path).unwrap(), body);
        // Originals are untouched by default.
        assert_eq!(std::fs::read(&e.original_path).unwrap(), body);
    }
    // One content, one archived file, no temporary leftovers.
    let files: Vec<_> = walk(&dir.join("exports"));
    assert_eq!(files.len(), 1, "{files:?}");
    // The archive is the owner's alone, whatever the original's mode (0644 here), and so
    // is the store beside it.
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(&dir.join("exports")), 0o700);
    assert_eq!(mode(&dir.join("exports").join(&sha[..2])), 0o700);
    assert_eq!(mode(&dir.join("data")), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = store_path.as_os_str().to_owned();
        p.push(suffix);
        assert_eq!(mode(Path::new(&p)), 0o600, "monitor.db{suffix}");
    }
    let _ = c;
    d.stop().await;
}

#[tokio::test]
async fn exports_can_move_the_originals() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        fast(c);
        c.monitor.export_patterns = vec!["*.log".into()];
        c.monitor.export_move = true;
    })
    .await;
    let root = d.dir.path().join("ws");
    std::fs::create_dir_all(&root).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    let original = root.join("session.log");
    std::fs::write(&original, b"moved").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while original.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!original.exists(), "the original is moved");
    let sha = sha256_hex(b"moved");
    let archived = d
        .dir
        .path()
        .join("exports")
        .join(&sha[..2])
        .join(format!("{sha}.log"));
    assert_eq!(std::fs::read(archived).unwrap(), b"moved");
    d.stop().await;
}

#[tokio::test]
async fn removing_a_nested_watch_keeps_the_enclosing_one_working() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("w");
    let sub = root.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    accepted(&watch(&mut c, &sub, &[], None, WatchMode::Native).await);
    accepted(&c.call(Payload::StopMonitoring { path: sub.clone() }).await);
    std::fs::write(sub.join("still-seen.txt"), "1").unwrap();
    std::fs::write(root.join("top.txt"), "2").unwrap();
    let events = wait_events(&mut c, 2).await;
    let mut paths: Vec<String> = events
        .iter()
        .map(|e| meta(e, "path").as_str().unwrap().to_string())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec![
            sub.join("still-seen.txt").display().to_string(),
            root.join("top.txt").display().to_string()
        ]
    );
    d.stop().await;
}

#[tokio::test]
async fn a_watch_on_an_empty_directory_resumes_with_what_came_while_down() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let root = d.dir.path().join("empty");
    std::fs::create_dir_all(&root).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    let dir = d.stop().await;
    std::fs::write(root.join("arrived.txt"), "while down").unwrap();
    let d = spawn_with(dir, false, fast).await;
    let mut c = d.client().await;
    let events = wait_events(&mut c, 1).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(meta(&events[0], "kind"), "create");
    assert_eq!(meta(&events[0], "offline"), true);
    d.stop().await;
}
