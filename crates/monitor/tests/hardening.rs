//! The daemon probed as a hostile local user and a buggy client would: symlinks, FIFOs,
//! devices and sparse files where exports are taken; a store, an archive or a socket in a
//! directory someone else controls; pseudo file systems, aliases of the store's own
//! directory and unbounded watches; connection floods; a quota that must count every
//! file; metadata nested too deep to return; and fake hubs that redirect or never stop
//! answering. Each test reproduces one finding of issue 11. Tests that need a second Unix
//! user create one (as root) and remove it; run as another user they say so and skip.

#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use coditect_monitor::config::Config;
use coditect_proto::ipc::{AckStatus, ComponentStatus, LogEntry, LogFilter, Payload, WatchMode};
use coditect_proto::{ErrorCode, Level};
use coditect_testkit::fake::{Answer, FakeHttp, OtherUser};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

fn other_user(test: &str) -> Option<OtherUser> {
    let u = OtherUser::create();
    if u.is_none() {
        eprintln!("{test}: skipped, it needs root to create a second user");
    }
    u
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn refusal(p: &Payload) -> String {
    match p {
        Payload::Error { code, message, .. } => {
            assert_eq!(*code, ErrorCode::BadRequest, "{message}");
            message.clone()
        }
        other => panic!("not refused: {other:?}"),
    }
}

async fn status(c: &mut Client<tokio::net::UnixStream>, name: &str) -> ComponentStatus {
    match c.call(Payload::GetStatus).await {
        Payload::Status { components, .. } => {
            components.into_iter().find(|c| c.name == name).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

/// F12, F13/F14: a symlink to a root-only file, a symlinked directory, a FIFO, a device and
/// a 2 GB sparse file match the export pattern; only the regular file is archived, the
/// FIFO holds up neither later exports nor shutdown, and nothing half-written is left.
#[tokio::test]
async fn exports_take_only_regular_files_never_through_a_symlink() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        fast(c);
        c.monitor.export_patterns = vec!["*.export".into()];
        c.monitor.export_max_mb = 1;
        c.monitor.export_min_free_mb = 0;
    })
    .await;
    let secret_dir = d.dir.path().join("root-only");
    std::fs::create_dir(&secret_dir).unwrap();
    chmod(&secret_dir, 0o700);
    let secret = secret_dir.join("shadow");
    std::fs::write(&secret, b"ROOT-ONLY-SECRET").unwrap();
    chmod(&secret, 0o600);
    let root = d.dir.path().join("ws");
    std::fs::create_dir(&root).unwrap();
    // There before the watch: a watcher that followed links would watch the other
    // directory through it.
    std::os::unix::fs::symlink(&secret_dir, root.join("linked")).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    std::os::unix::fs::symlink(&secret, root.join("s.export")).unwrap();
    std::fs::write(secret_dir.join("inner.export"), b"ROOT-ONLY-SECRET too").unwrap();
    nix::unistd::mkfifo(&root.join("pipe.export"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    if is_root() {
        // /dev/zero's numbers: an endless source.
        let made = std::process::Command::new("mknod")
            .arg(root.join("zero.export"))
            .args(["c", "1", "5"])
            .status()
            .unwrap();
        assert!(made.success());
    }
    std::fs::File::create(root.join("huge.export"))
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    // Written last: archived only if nothing before it blocked the exporter.
    std::fs::write(root.join("good.export"), b"fine").unwrap();
    let exports = exports_until(&d.db, |e| !e.is_empty()).await;
    // A little longer, for anything archived after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exports_after = exports_until(&d.db, |_| true).await;
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports_after.len(), 1, "{exports_after:?}");
    assert!(exports[0].original_path.ends_with("good.export"));
    // The watcher did not follow the link into the other directory either.
    let through: Vec<_> = file_events(&mut c)
        .await
        .into_iter()
        .filter(|e| e.message.contains("linked/"))
        .map(|e| e.message)
        .collect();
    assert!(through.is_empty(), "{through:?}");
    let archived = walk(&d.dir.path().join("exports"));
    assert_eq!(archived.len(), 1, "{archived:?}");
    for f in &archived {
        assert!(!std::fs::read(f).unwrap().starts_with(b"ROOT-ONLY"));
        assert_eq!(mode(f), 0o600);
    }
    // Shutdown is not held by the FIFO nobody writes to.
    let dir = tokio::time::timeout(Duration::from_secs(60), d.stop())
        .await
        .expect("the daemon stops although a FIFO matches the export pattern");
    assert!(
        walk(&dir.path().join("exports"))
            .iter()
            .all(|p| !p.to_string_lossy().contains(".incoming-")),
    );
}

/// F13: an export that would fill the file system the store lives on is not made (a small
/// tmpfs holds both); nothing is left behind and the store still takes entries.
#[tokio::test]
async fn an_export_never_takes_the_store_s_room() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let small = tmp.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(small.clone());
    let (db, exports) = (small.join("data/m.db"), small.join("exports"));
    let d = spawn_with(tmp, false, |c| {
        fast(c);
        c.storage.sqlite_path = db;
        c.storage.export_dir = exports;
        c.monitor.export_patterns = vec!["*.bin".into()];
        c.monitor.export_min_free_mb = 4;
    })
    .await;
    let root = d.dir.path().join("ws");
    std::fs::create_dir(&root).unwrap();
    let mut c = d.client().await;
    accepted(&watch(&mut c, &root, &[], None, WatchMode::Native).await);
    std::fs::write(root.join("big.bin"), vec![7u8; 14 << 20]).unwrap();
    std::fs::write(root.join("small.bin"), b"small").unwrap();
    let e = exports_until(&d.db, |e| !e.is_empty()).await;
    assert_eq!(e.len(), 1, "only the small file fits: {e:?}");
    assert!(e[0].original_path.ends_with("small.bin"));
    let leftovers: Vec<_> = walk(&small.join("exports"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".incoming-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    for i in 0..100 {
        accepted(
            &c.call(Payload::LogEntry(entry(
                Level::Info,
                &format!("still room {i}"),
            )))
            .await,
        );
    }
    d.stop().await;
}

/// F1/F2, F3: the store is created private in a directory that already existed wide open
/// and another user cannot read it; a store, a store directory or an export directory
/// reached through a symlink into someone else's hands is refused, and their file is left
/// as it was.
#[tokio::test]
async fn the_store_and_the_archive_are_kept_where_nobody_else_reaches() {
    let Some(other) = other_user("the_store_and_the_archive_are_kept_where_nobody_else_reaches")
    else {
        return;
    };
    // The data directory exists, 0755: the files are 0600 anyway.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    chmod(&dir.path().join("data"), 0o755);
    let d = spawn_with(dir, false, |_| {}).await;
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::LogEntry(entry(Level::Info, "ROOT-SECRET")))
            .await,
    );
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", d.db.display()));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        let read = other.command("head").arg("-c1").arg(&p).output().unwrap();
        assert!(
            !read.status.success(),
            "{} is readable by others",
            p.display()
        );
    }
    drop(c);
    d.stop().await;

    // Someone else's territory, reached by symlinks.
    let theirs = tempfile::tempdir().unwrap();
    chmod(theirs.path(), 0o755);
    other.give(theirs.path());
    let their_file = theirs.path().join("their.db");
    std::fs::write(&their_file, b"theirs").unwrap();
    other.give(&their_file);
    type Arrange<'a> = Box<dyn Fn(&Path, &mut Config) + 'a>;
    let mine = tempfile::tempdir().unwrap();
    let cases: [(&str, Arrange); 4] = [
        (
            "symlink",
            Box::new(|root: &Path, c: &mut Config| {
                std::fs::create_dir_all(root.join("data")).unwrap();
                std::os::unix::fs::symlink(&their_file, root.join("data/m.db")).unwrap();
                c.storage.sqlite_path = root.join("data/m.db");
            }),
        ),
        (
            "belongs to another user",
            Box::new(|root: &Path, c: &mut Config| {
                std::os::unix::fs::symlink(theirs.path(), root.join("data")).unwrap();
                c.storage.sqlite_path = root.join("data/m.db");
            }),
        ),
        (
            "belongs to another user",
            Box::new(|root: &Path, c: &mut Config| {
                std::os::unix::fs::symlink(theirs.path(), root.join("exports")).unwrap();
                c.storage.export_dir = root.join("exports");
            }),
        ),
        (
            // Pointing somewhere of ours, but theirs to point elsewhere later.
            "a symlink of another user's",
            Box::new(|root: &Path, c: &mut Config| {
                std::os::unix::fs::symlink(mine.path(), root.join("data")).unwrap();
                other.give(&root.join("data"));
                c.storage.sqlite_path = root.join("data/m.db");
            }),
        ),
    ];
    for (why, arrange) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let refused = try_spawn_with(dir, false, |c| arrange(&root, c)).await;
        let e = format!("{:#}", refused.err().expect("refused"));
        assert!(e.contains(why), "{e}");
        assert!(!root.join("run/m.sock").exists(), "no socket left behind");
    }
    assert_eq!(std::fs::read(&their_file).unwrap(), b"theirs");
    assert_eq!(std::fs::read_dir(theirs.path()).unwrap().count(), 1);
}

/// F5: a root-owned directory that everyone may write (not sticky) could have the socket
/// swapped: refused. A sticky shared directory (like /tmp) is fine.
#[tokio::test]
async fn the_socket_is_never_put_where_others_can_swap_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let socket = open.join("m.sock");
    let refused = try_spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        c.monitor.unix_socket_path = socket.clone();
    })
    .await;
    let e = format!("{:#}", refused.err().expect("refused"));
    assert!(e.contains("writable by other users"), "{e}");
    assert!(!socket.exists());
    chmod(&open, 0o1777);
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        c.monitor.unix_socket_path = socket.clone();
    })
    .await;
    assert_eq!(mode(&socket) & 0o777, 0o600);
    d.stop().await;
}

/// How many inotify watches this process holds (the daemon runs in it).
fn inotify_watches() -> usize {
    let mut n = 0;
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy().contains("inotify") {
            let info = std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .unwrap_or_default();
            n += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// F7, F8, F10: `/sys`, `/proc`, `/dev` and a tree holding them (`/`, even polled) are
/// refused at once, costing no inotify watch however often they are asked for, and the
/// daemon answers `status` all along.
#[tokio::test]
async fn pseudo_file_systems_are_refused_without_a_trace() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let mut c = d.client().await;
    let fine = d.dir.path().join("ws");
    std::fs::create_dir(&fine).unwrap();
    accepted(&watch(&mut c, &fine, &[], None, WatchMode::Native).await);
    let before = inotify_watches();
    assert!(before > 0);
    for _ in 0..24 {
        let why = refusal(&watch(&mut c, Path::new("/proc"), &[], None, WatchMode::Native).await);
        assert!(why.contains("pseudo file system"), "{why}");
    }
    for (path, how) in [
        ("/sys", WatchMode::Native),
        ("/sys/kernel", WatchMode::Polling),
        ("/dev", WatchMode::Native),
        ("/", WatchMode::Polling),
        ("/", WatchMode::Native),
    ] {
        let started = Instant::now();
        let why = refusal(&watch(&mut c, Path::new(path), &[], None, how).await);
        eprintln!("{path} ({how:?}) refused in {:?}: {why}", started.elapsed());
        assert!(why.contains("pseudo file system"), "{why}");
    }
    assert_eq!(
        inotify_watches(),
        before,
        "refused watches hold no inotify watch"
    );
    assert_eq!(status(&mut c, "watcher").await.status, "healthy");
    let paths = watch_list(&mut c).await;
    assert_eq!(paths.len(), 1);
    d.stop().await;
}

/// F9: the store's directory watched under another name (a symlink, `run/../data`) is
/// the same directory: the store's own writes are never recorded, and the alias removes
/// the watch.
#[tokio::test]
async fn the_store_is_never_watched_under_another_name() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, fast).await;
    let alias = d.dir.path().join("alias");
    std::os::unix::fs::symlink(d.dir.path().join("data"), &alias).unwrap();
    let dotdot = d.dir.path().join("run/../data");
    let mut c = d.client().await;
    accepted(&watch(&mut c, &alias, &[], None, WatchMode::Native).await);
    accepted(&watch(&mut c, &dotdot, &[], None, WatchMode::Polling).await);
    // One directory, one watch, under its real name.
    let paths = watch_list(&mut c).await;
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(
        paths[0].path,
        std::fs::canonicalize(d.dir.path().join("data")).unwrap()
    );
    for i in 0..50 {
        accepted(
            &c.call(Payload::LogEntry(entry(Level::Info, &format!("write {i}"))))
                .await,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let events = file_events(&mut c).await;
    assert!(
        events.is_empty(),
        "{:?}",
        events.iter().map(|e| &e.message).collect::<Vec<_>>()
    );
    accepted(
        &c.call(Payload::StopMonitoring {
            path: alias.clone(),
        })
        .await,
    );
    let paths = watch_list(&mut c).await;
    assert!(paths.is_empty(), "{paths:?}");
    d.stop().await;
}

/// F10/F11: patterns per watch, their length, the number of watches and the files under
/// them are bounded; what is refused says which limit, and `watch list` always fits.
#[tokio::test]
async fn watches_are_bounded() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        fast(c);
        c.monitor.max_watches = 3;
        c.monitor.max_watched_files = 100;
    })
    .await;
    let mut c = d.client().await;
    let tree = |name: &str, files: usize| {
        let p = d.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        for i in 0..files {
            std::fs::write(p.join(format!("f{i}")), b"x").unwrap();
        }
        p
    };
    let many: Vec<String> = (0..65).map(|i| format!("**/*.ext{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let why = refusal(&watch(&mut c, &tree("a", 1), &many, None, WatchMode::Native).await);
    assert!(why.contains("max_patterns"), "{why}");
    let long = "x".repeat(600);
    let why = refusal(&watch(&mut c, &tree("a", 1), &[&long], None, WatchMode::Native).await);
    assert!(why.contains("512 bytes"), "{why}");
    let why = refusal(&watch(&mut c, &tree("big", 150), &[], None, WatchMode::Polling).await);
    assert!(why.contains("max_watched_files"), "{why}");
    for name in ["a", "b", "c"] {
        accepted(&watch(&mut c, &tree(name, 10), &[], None, WatchMode::Native).await);
    }
    let why = refusal(&watch(&mut c, &tree("d", 1), &[], None, WatchMode::Native).await);
    assert!(why.contains("max_watches"), "{why}");
    // Files beyond the budget, made after the watches, are not recorded, and said so.
    let a = d.dir.path().join("a");
    for i in 0..120 {
        std::fs::write(a.join(format!("late{i}")), b"y").unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&mut c, "watcher").await.status != "degraded" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = status(&mut c, "watcher").await;
    assert_eq!(s.status, "degraded", "{s:?}");
    assert!(s.detail.unwrap().contains("max_watched_files"));
    let paths = watch_list(&mut c).await;
    assert_eq!(paths.len(), 3);
    d.stop().await;
}

/// F6/F15: silent TCP connections and idle Unix connections beyond every limit: a local
/// client still gets its answer at once, long before any of them times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_never_lock_out_a_local_client() {
    let d = spawn_with(tempfile::tempdir().unwrap(), true, |c| {
        c.monitor.max_connections = 256;
        c.monitor.max_unauthenticated = 16;
        c.monitor.tcp_auth_timeout = Duration::from_secs(600);
    })
    .await;
    let tcp = d.tcp.unwrap();
    let mut silent = Vec::new();
    for _ in 0..1000 {
        silent.push(tokio::net::TcpStream::connect(tcp).await.unwrap());
    }
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::UnixStream::connect(&d.socket).await.unwrap());
    }
    let started = Instant::now();
    let mut c = tokio::time::timeout(Duration::from_secs(30), d.client())
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(30), status(&mut c, "store"))
        .await
        .expect("status is answered while the flood holds its connections");
    eprintln!(
        "status answered in {:?} under 1000 silent TCP and 1000 idle Unix connections",
        started.elapsed()
    );
    assert_eq!(answered.status, "healthy");
    // An authenticated TCP client gets in too.
    let mut t = Client::new(tokio::net::TcpStream::connect(tcp).await.unwrap());
    accepted(
        &t.call(Payload::Hello {
            token: TOKEN.into(),
        })
        .await,
    );
    drop((silent, idle));
    d.stop().await;
}

/// 12: with `storage.max_size_mb = 5` the database, its WAL and its index stay within 5
/// MiB together, up to the moment the store says it is full.
#[tokio::test]
async fn the_quota_counts_every_file_of_the_store() {
    let d = spawn_with(tempfile::tempdir().unwrap(), false, |c| {
        c.storage.max_size_mb = Some(5);
    })
    .await;
    let mut c = d.client().await;
    let files = |db: &Path| -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .map(|s| std::fs::metadata(format!("{}{s}", db.display())).map_or(0, |m| m.len()))
            .sum()
    };
    let text = "y".repeat(1000);
    let mut largest = 0;
    let mut full = false;
    for batch in 0..200 {
        let entries: Vec<LogEntry> = (0..100)
            .map(|i| entry(Level::Info, &format!("{batch}-{i} {text}")))
            .collect();
        match c.call(Payload::LogBatch { entries }).await {
            Payload::Acknowledgment {
                status: AckStatus::Accepted,
                ..
            } => {}
            Payload::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::Unavailable, "{message}");
                full = true;
                break;
            }
            other => panic!("{other:?}"),
        }
        largest = largest.max(files(&d.db));
    }
    assert!(full, "5 MiB cannot hold 20 MB of entries");
    largest = largest.max(files(&d.db));
    eprintln!("largest footprint: {largest} bytes");
    assert!(
        largest <= 5 << 20,
        "the store's files reached {largest} bytes"
    );
    d.stop().await;
}

/// A frame holding one entry whose metadata nests `levels` deep, encoded (and the value
/// dropped) on a thread with room for the recursion that takes.
fn deep_entry_frame(levels: usize, batch: bool) -> (uuid::Uuid, Vec<u8>) {
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let mut deep = serde_json::json!({"leaf": 1});
            for _ in 0..levels {
                deep = serde_json::json!({ "k": deep });
            }
            let mut e = entry(Level::Info, "deep");
            e.metadata = Some(deep);
            let m = match batch {
                false => coditect_proto::ipc::Message::request(Payload::LogEntry(e)),
                true => {
                    coditect_proto::ipc::Message::request(Payload::LogBatch { entries: vec![e] })
                }
            };
            let mut out = Vec::new();
            coditect_proto::ipc::encode_frame(&m, &mut out).unwrap();
            (m.id, out)
        })
        .unwrap()
        .join()
        .unwrap()
}

/// 13: metadata nested deeper than the hub's limit is refused with the reason, never
/// stored to come back as `null`; a frame nested far deeper (1,000 levels) is refused
/// before it is decoded, without exhausting the daemon's stack.
#[tokio::test]
async fn metadata_too_deep_to_return_is_refused() {
    use tokio::io::AsyncWriteExt;
    let d = spawn_daemon(false).await;
    let mut c = d.client().await;
    for batch in [false, true] {
        let (id, frame) = deep_entry_frame(40, batch);
        c.stream.write_all(&frame).await.unwrap();
        let reply = c.reply().await.unwrap();
        assert_eq!(reply.id, id);
        match reply.payload {
            Payload::Acknowledgment {
                status: AckStatus::Rejected(reason),
                ..
            } => assert!(reason.contains("more than 32 levels"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let (_, frame) = deep_entry_frame(1000, batch);
        c.stream.write_all(&frame).await.unwrap();
        match c.reply().await.unwrap().payload {
            Payload::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::BadRequest);
                assert!(message.contains("nested deeper than 64"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // The connection goes on, and nothing was stored.
    assert_eq!(stored_count(&mut c, LogFilter::default()).await, 0);
    d.stop().await;
}

fn syncing(hub: &str) -> impl FnOnce(&mut Config) {
    let hub = hub.to_string();
    move |c: &mut Config| {
        c.server_hub.url = Some(hub);
        c.server_hub.api_key = Some(coditect_monitor::config::Secret::new("cdk_test_key"));
        c.server_hub.workspace_id = Some("0193a0e4-4c8a-7000-8000-000000000001".into());
        c.server_hub.sync_interval = Duration::from_millis(50);
        c.server_hub.max_backoff = Duration::from_millis(300);
        c.server_hub.request_timeout = Duration::from_secs(5);
    }
}

/// Waits (at most 30 s) until sync reports an error that contains `needle`.
async fn sync_error(c: &mut Client<tokio::net::UnixStream>, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(c, "sync").await;
        let detail = s.detail.unwrap_or_default();
        if detail.contains(needle) || Instant::now() > deadline {
            return detail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// F16: a 307/308 to another address is never followed: the batch is not sent there, not
/// marked synced, and sync says where the hub pointed.
#[tokio::test]
async fn sync_never_follows_a_redirect() {
    let elsewhere = FakeHttp::start(|_| {
        Answer::Raw("HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}".into())
    })
    .await;
    let to = elsewhere.url();
    let hub = FakeHttp::start(move |r| {
        let status = if r.path.contains("batch") { 307 } else { 308 };
        Answer::Raw(format!(
            "HTTP/1.1 {status} Redirect\r\nlocation: {to}/api/logs/batch\r\ncontent-length: 0\r\n\r\n"
        ))
    })
    .await;
    let d = spawn_with(tempfile::tempdir().unwrap(), false, syncing(&hub.url())).await;
    let mut c = d.client().await;
    accepted(
        &c.call(Payload::LogEntry(entry(Level::Info, "stays here")))
            .await,
    );
    let detail = sync_error(&mut c, "redirect").await;
    assert!(detail.contains(&elsewhere.url()), "{detail}");
    assert!(detail.contains("1 entries pending"), "{detail}");
    assert!(!hub.requests().is_empty());
    assert!(elsewhere.requests().is_empty(), "the batch went elsewhere");
    d.stop().await;
}

/// F18: a hub answering 202 with an endless body (declared, or chunked) costs the monitor
/// at most its answer limit; the batch stays unsynced and the reason is reported.
#[tokio::test]
async fn sync_reads_a_bounded_answer() {
    for chunked in [false, true] {
        let hub = FakeHttp::start(move |_| Answer::endless("202 Accepted", chunked)).await;
        let d = spawn_with(tempfile::tempdir().unwrap(), false, syncing(&hub.url())).await;
        let mut c = d.client().await;
        accepted(&c.call(Payload::LogEntry(entry(Level::Info, "kept"))).await);
        let detail = sync_error(&mut c, "over 1048576 bytes").await;
        assert!(detail.contains("over 1048576 bytes"), "{detail}");
        assert!(detail.contains("1 entries pending"), "{detail}");
        d.stop().await;
    }
}
