//! File watching: the paths given by `StartMonitoring` (persisted, resumed after a
//! restart), through the kernel's events or by polling, recorded as log entries with
//! component `file-monitor`.
//!
//! Events only *nominate* paths. After the debounce window the worker looks at each
//! nominated file and compares it with what it last recorded (`known`: size and mtime of
//! every file under a watch), so the kind (`create`, `modify`, `remove`, `rename`) comes
//! from the file system's state, a burst of events on one file is one entry, and an event
//! seen twice records nothing twice. When events were lost (the kernel's queue or ours
//! overflowed), the worker reports it and rescans: every watched tree is compared with
//! `known`, so what changed meanwhile is still recorded.
//!
//! An event is attributed to the session of the deepest enclosing watch whose session is
//! open: its `session_id` on the entry, `identity` and `agent_type` in the metadata.
//! Directories themselves are not recorded, only what is in them.

pub mod filter;
pub mod mounts;

use crate::export::Exporter;
use crate::store::{FileChanges, FileState, MonitorStore, NewEntry};
use coditect_proto::Level;
use coditect_proto::ipc::{WatchMode, WatchedPath};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use filter::PathFilter;
use notify::{EventKind, RecursiveMode, Watcher as _};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::oneshot;

/// Component of every entry the watcher records.
pub const COMPONENT: &str = "file-monitor";

#[derive(Debug, Clone)]
pub struct WatchConfig {
    pub debounce: Duration,
    pub scan_interval: Duration,
    /// Capacity of the queue between the kernel's events and the worker.
    pub event_queue: usize,
    /// Paths never recorded (the store's own files, the export archive): recording them
    /// would feed back into itself. Canonical, as every watched path is.
    pub ignore: Vec<PathBuf>,
    /// Most watches at once.
    pub max_watches: usize,
    /// Most globs in one watch.
    pub max_patterns: usize,
    /// Most files and directories under all watches together.
    pub max_files: usize,
}

/// The longest glob a watch may hold.
pub const MAX_PATTERN_BYTES: usize = 512;

/// The longest a new watch's tree may take to scan before it is refused: the watcher
/// serves every other watch on the same thread.
const SCAN_DEADLINE: Duration = Duration::from_secs(10);

/// What the watcher has seen, for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct WatchStats {
    pub recorded: AtomicU64,
    pub overflows: AtomicU64,
    pub failed_watches: AtomicU64,
    /// Files not recorded because `max_files` was reached.
    pub over_limit: AtomicU64,
}

enum Command {
    /// A watch, whether it is resumed (persisted before this start), and where to answer.
    Add(WatchedPath, bool, oneshot::Sender<Result<PathBuf, String>>),
    Remove(PathBuf),
    Stop,
}

/// The handle: commands go to the worker thread.
pub struct Watcher {
    commands: Sender<Command>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    pub stats: Arc<WatchStats>,
}

impl Watcher {
    /// Starts the worker thread. Store writes run on `rt`.
    pub fn start(
        config: WatchConfig,
        store: MonitorStore,
        exporter: Option<Exporter>,
        rt: tokio::runtime::Handle,
    ) -> std::io::Result<Watcher> {
        let (commands, command_rx) = crossbeam_channel::unbounded();
        let (event_tx, events) = crossbeam_channel::bounded(config.event_queue);
        let overflowed = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WatchStats::default());
        let worker = Worker {
            config,
            store,
            exporter,
            rt,
            events,
            event_tx,
            overflowed,
            native: None,
            next_poll: None,
            watches: Vec::new(),
            known: BTreeMap::new(),
            pending: HashMap::new(),
            oldest: None,
            unsaved: Vec::new(),
            unsaved_exports: Vec::new(),
            files: FileChanges::default(),
            retry_at: None,
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("file-watcher".into())
            .spawn(move || worker.run(command_rx))?;
        Ok(Watcher {
            commands,
            thread: std::sync::Mutex::new(Some(thread)),
            stats,
        })
    }

    /// Starts watching (`resumed`: a watch persisted before this start, whose changes
    /// while the daemon was down are to be recorded); the reason when the path cannot be
    /// watched. The watch is kept under the path's canonical form (no symlink, no `..`),
    /// which is returned.
    pub async fn add(&self, w: WatchedPath, resumed: bool) -> Result<PathBuf, String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Add(w, resumed, tx))
            .map_err(|_| "the file watcher has stopped".to_string())?;
        rx.await
            .map_err(|_| "the file watcher has stopped".to_string())?
    }

    /// For `GetStatus` and `/health`.
    pub fn status(&self) -> coditect_proto::ipc::ComponentStatus {
        let failed = self.stats.failed_watches.load(Ordering::Relaxed);
        let overflows = self.stats.overflows.load(Ordering::Relaxed);
        let over = self.stats.over_limit.load(Ordering::Relaxed);
        let mut detail = format!(
            "{} events recorded, {overflows} overflows, {failed} watches failed",
            self.stats.recorded.load(Ordering::Relaxed)
        );
        if over > 0 {
            detail.push_str(&format!(
                ", {over} files not recorded (monitor.max_watched_files reached)"
            ));
        }
        coditect_proto::ipc::ComponentStatus {
            name: "watcher".into(),
            status: if failed > 0 || over > 0 {
                "degraded"
            } else {
                "healthy"
            }
            .into(),
            detail: Some(detail),
        }
    }

    pub fn remove(&self, path: PathBuf) {
        let _ = self.commands.send(Command::Remove(path));
    }

    /// The form a watched path is kept under: canonical when it exists, else as given.
    pub fn canonical(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }

    /// Records what is pending and stops the worker (blocking: call from a blocking
    /// context or at shutdown).
    pub fn stop(&self) {
        let _ = self.commands.send(Command::Stop);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Size and modification time: what "changed" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: Option<SystemTime>,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: meta.modified().ok(),
        }
    }

    fn state(self, path: &Path) -> FileState {
        let ns = self.mtime.and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_nanos()).ok())
        });
        (path.to_string_lossy().into_owned(), self.len, ns)
    }

    fn from_state(len: u64, ns: Option<i64>) -> Stamp {
        Stamp {
            len,
            mtime: ns
                .and_then(|n| u64::try_from(n).ok())
                .map(|n| std::time::UNIX_EPOCH + Duration::from_nanos(n)),
        }
    }
}

struct Watch {
    spec: WatchedPath,
    filter: PathFilter,
}

impl Watch {
    /// The path below the root, when this watch records it.
    fn covers<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        let rel = path.strip_prefix(&self.spec.path).ok()?;
        if rel.as_os_str().is_empty() {
            return None;
        }
        if !self.spec.recursive && rel.components().count() != 1 {
            return None;
        }
        self.filter.accepts(rel).then_some(rel)
    }
}

struct Pending {
    /// A rename's old path.
    from: Option<PathBuf>,
    seen: chrono::DateTime<chrono::Utc>,
    /// How the change was found when not by an event: `rescan` (after lost events) or
    /// `offline` (made while the daemon was not running); a metadata flag.
    found_by: Option<&'static str>,
}

struct Worker {
    config: WatchConfig,
    store: MonitorStore,
    exporter: Option<Exporter>,
    rt: tokio::runtime::Handle,
    events: Receiver<notify::Result<notify::Event>>,
    event_tx: Sender<notify::Result<notify::Event>>,
    overflowed: Arc<AtomicBool>,
    native: Option<notify::RecommendedWatcher>,
    /// When the polling watches are scanned next (none: there are none).
    next_poll: Option<Instant>,
    /// Deepest root first.
    watches: Vec<Watch>,
    /// Ordered, so the files below a directory are one range.
    known: BTreeMap<PathBuf, Stamp>,
    pending: HashMap<PathBuf, Pending>,
    oldest: Option<Instant>,
    /// Entries whose write failed, retried before anything newer.
    unsaved: Vec<NewEntry>,
    /// What those entries say about the files (written with them).
    files: FileChanges,
    /// Export candidates of those entries: (path, path below its watch, session).
    unsaved_exports: Vec<(PathBuf, PathBuf, Option<String>)>,
    retry_at: Option<Instant>,
    stats: Arc<WatchStats>,
}

/// Most entries kept for a retry while the store refuses writes; past it they are dropped
/// and found again by a rescan once writes succeed.
const MAX_UNSAVED: usize = 100_000;

/// Most nominated paths held before recording, whatever the debounce window.
const MAX_PENDING: usize = 4096;

impl Worker {
    fn run(mut self, commands: Receiver<Command>) {
        loop {
            let mut wait = match self.oldest {
                Some(t) => (t + self.config.debounce).saturating_duration_since(Instant::now()),
                None if !self.unsaved.is_empty() => Duration::from_millis(500),
                None => Duration::from_secs(3600),
            };
            if let Some(at) = self.next_poll {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            crossbeam_channel::select! {
                recv(commands) -> c => match c {
                    Ok(Command::Add(w, resumed, reply)) => {
                        let _ = reply.send(self.add(w, resumed));
                    }
                    Ok(Command::Remove(path)) => self.remove(&path),
                    Ok(Command::Stop) | Err(_) => {
                        self.drain_events();
                        self.flush();
                        if let Some(x) = self.exporter.take() {
                            x.finish();
                        }
                        return;
                    }
                },
                recv(self.events) -> e => {
                    if let Ok(e) = e {
                        self.on_event(e);
                    }
                    // Take what else is queued before looking at the clock.
                    for _ in 0..1024 {
                        match self.events.try_recv() {
                            Ok(e) => self.on_event(e),
                            Err(_) => break,
                        }
                    }
                },
                default(wait) => {},
            }
            if self.overflowed.swap(false, Ordering::AcqRel) {
                self.overflow();
            }
            if self.next_poll.is_some_and(|t| t <= Instant::now()) {
                self.poll();
            }
            let due = self
                .oldest
                .is_some_and(|t| t.elapsed() >= self.config.debounce)
                || self.pending.len() >= MAX_PENDING
                || (self.oldest.is_none() && self.retry_at.is_some_and(|t| t <= Instant::now()));
            if due {
                self.flush();
            }
        }
    }

    fn drain_events(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            self.on_event(e);
        }
        if self.overflowed.swap(false, Ordering::AcqRel) {
            self.overflow();
        }
    }

    fn handler(&self) -> impl notify::EventHandler {
        let (tx, overflowed) = (self.event_tx.clone(), self.overflowed.clone());
        move |e: notify::Result<notify::Event>| {
            if let Err(TrySendError::Full(_)) = tx.try_send(e) {
                overflowed.store(true, Ordering::Release);
            }
        }
    }

    /// Starts watching `spec`. `resumed`: the watch was persisted before this start, so
    /// what changed under it while the daemon was not running is recorded (a new watch
    /// takes what is there now as its baseline).
    fn add(&mut self, mut spec: WatchedPath, resumed: bool) -> Result<PathBuf, String> {
        let max_patterns = self.config.max_patterns;
        if spec.patterns.len() > max_patterns {
            return Err(format!(
                "a watch holds at most {max_patterns} patterns (monitor.max_patterns); this one has {}",
                spec.patterns.len()
            ));
        }
        if spec.patterns.iter().any(|p| p.len() > MAX_PATTERN_BYTES) {
            return Err(format!("a pattern is at most {MAX_PATTERN_BYTES} bytes"));
        }
        let filter = PathFilter::new(&spec.patterns)?;
        // One name per directory: an alias (a symlink, `..`) is the same watch, and the
        // store's own files are recognised under any of them.
        let root = std::fs::canonicalize(&spec.path)
            .map_err(|e| format!("cannot watch {}: {e}", spec.path.display()))?;
        let meta = std::fs::metadata(&root)
            .map_err(|e| format!("cannot watch {}: {e}", spec.path.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", spec.path.display()));
        }
        spec.path = root.clone();
        let replacing = self.watches.iter().any(|w| w.spec.path == root);
        if !replacing && self.watches.len() >= self.config.max_watches {
            return Err(format!(
                "at most {} watches (monitor.max_watches): remove one first",
                self.config.max_watches
            ));
        }
        if let Some(why) = mounts::refusal(&root, spec.recursive, &mounts::mounts()) {
            return Err(why);
        }
        let elsewhere = self
            .known
            .keys()
            .filter(|p| !(replacing && p.starts_with(&root)))
            .count();
        let budget = self.config.max_files.saturating_sub(elsewhere);
        let watch = Watch { spec, filter };
        // Counted before the kernel is asked for anything: a tree too large is refused
        // without a single inotify watch spent on it.
        self.walk(&watch, budget, true)?;
        // A changed watch on the same path replaces the old one.
        let replaced = self
            .watches
            .iter()
            .find(|w| w.spec.path == root)
            .map(|w| w.spec.clone());
        self.remove(&root);
        let baseline = match self.install(&watch, budget, resumed) {
            Ok(b) => b,
            Err(e) => {
                self.unregister(&watch.spec);
                self.rewatch_overlapping(&root, watch.spec.mode);
                if let Some(old) = replaced {
                    // Refused: the watch it was to replace goes on as it was.
                    if let Err(again) = self.add(old, false) {
                        self.stats.failed_watches.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(path = %root.display(), reason = again, "cannot restore the watch a refused one was to replace");
                    }
                }
                return Err(e);
            }
        };
        tracing::info!(path = %root.display(), mode = watch.spec.mode.as_str(), resumed, "watching");
        self.watches.push(watch);
        self.watches
            .sort_by_key(|w| std::cmp::Reverse(w.spec.path.components().count()));
        let (known, changed) = baseline;
        self.known.extend(known);
        for p in changed {
            self.nominate(p, None, Some("offline"));
        }
        Ok(root)
    }

    /// Registers `watch` and takes its baseline.
    #[allow(clippy::type_complexity)]
    fn install(
        &mut self,
        watch: &Watch,
        budget: usize,
        resumed: bool,
    ) -> Result<(Vec<(PathBuf, Stamp)>, Vec<PathBuf>), String> {
        self.register(&watch.spec)?;
        let (current, _) = self.walk(watch, budget, true)?;
        self.baseline(&watch.spec.path, current, resumed)
    }

    /// What is known under a new watch, and what changed since a resumed one was last seen.
    #[allow(clippy::type_complexity)]
    fn baseline(
        &self,
        root: &Path,
        current: Vec<(PathBuf, Stamp)>,
        resumed: bool,
    ) -> Result<(Vec<(PathBuf, Stamp)>, Vec<PathBuf>), String> {
        if !resumed {
            let mut files = FileChanges::default();
            for (p, stamp) in &current {
                files.upsert(stamp.state(p));
            }
            self.rt
                .block_on(self.store.set_watch_files(files))
                .map_err(|e| format!("cannot record the watch's baseline: {e}"))?;
            return Ok((current, Vec::new()));
        }
        let recorded = self
            .rt
            .block_on(self.store.watch_files(root.to_path_buf()))
            .map_err(|e| format!("cannot read what was recorded under the watch: {e}"))?;
        let before: BTreeMap<PathBuf, Stamp> = recorded
            .into_iter()
            .map(|(p, len, ns)| (PathBuf::from(p), Stamp::from_state(len, ns)))
            .collect();
        let now: BTreeMap<&PathBuf, &Stamp> = current.iter().map(|(p, s)| (p, s)).collect();
        let mut changed: Vec<PathBuf> = now
            .iter()
            .filter(|(p, s)| before.get(**p) != Some(**s))
            .map(|(p, _)| (*p).clone())
            .collect();
        changed.extend(before.keys().filter(|p| !now.contains_key(p)).cloned());
        Ok((before.into_iter().collect(), changed))
    }

    /// Asks the kernel (or the poller) for events under `spec.path`.
    fn register(&mut self, spec: &WatchedPath) -> Result<(), String> {
        let mode = if spec.recursive {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let result = match spec.mode {
            WatchMode::Native => {
                if self.native.is_none() {
                    // A symlink in a watched tree is a file like any other, never a way
                    // into the tree it points at.
                    let config = notify::Config::default().with_follow_symlinks(false);
                    self.native = Some(
                        notify::RecommendedWatcher::new(self.handler(), config)
                            .map_err(|e| format!("cannot start the file watcher: {e}"))?,
                    );
                }
                self.native.as_mut().map(|w| w.watch(&spec.path, mode))
            }
            // Polling watches are scanned by the worker itself every `scan_interval`,
            // compared with `known` at full mtime precision (notify's poller compares whole
            // seconds and would miss a change within the second of the last one).
            WatchMode::Polling => {
                self.next_poll.get_or_insert_with(Instant::now);
                None
            }
        };
        match result {
            Some(Err(e)) => Err(format!("cannot watch {}: {e}", spec.path.display())),
            _ => Ok(()),
        }
    }

    fn unregister(&mut self, spec: &WatchedPath) {
        if spec.mode == WatchMode::Native
            && let Some(n) = self.native.as_mut()
        {
            let _ = n.unwatch(&spec.path);
        }
    }

    fn remove(&mut self, root: &Path) {
        let Some(i) = self.watches.iter().position(|w| w.spec.path == root) else {
            return;
        };
        let w = self.watches.remove(i);
        self.unregister(&w.spec);
        self.rewatch_overlapping(root, w.spec.mode);
        let watches = &self.watches;
        let mut forgotten = Vec::new();
        self.known.retain(|p, _| {
            let keep = !p.starts_with(root) || watches.iter().any(|w| w.covers(p).is_some());
            if !keep {
                forgotten.push(p.to_string_lossy().into_owned());
            }
            keep
        });
        let mut forget = FileChanges::default();
        for p in forgotten {
            forget.delete(p);
        }
        if let Err(e) = self.rt.block_on(self.store.set_watch_files(forget)) {
            tracing::warn!(error = %e, "cannot forget the files of a removed watch");
        }
        tracing::info!(path = %root.display(), "stopped watching");
    }

    /// The kernel's watches are per directory: unwatching `root` also dropped those an
    /// enclosing or nested watch relied on. Ask again, and rescan for what happened in
    /// between.
    fn rewatch_overlapping(&mut self, root: &Path, mode: WatchMode) {
        if mode != WatchMode::Native {
            return;
        }
        let overlapping: Vec<WatchedPath> = self
            .watches
            .iter()
            .filter(|o| o.spec.mode == WatchMode::Native)
            .filter(|o| o.spec.path.starts_with(root) || root.starts_with(&o.spec.path))
            .map(|o| o.spec.clone())
            .collect();
        for o in &overlapping {
            if let Err(e) = self.register(o) {
                tracing::warn!(path = %o.path.display(), error = %e, "cannot watch again");
            }
        }
        if !overlapping.is_empty() {
            self.rescan();
        }
    }

    /// The recordable files under a watch now, visiting at most `budget` files and
    /// directories: past it (or past [`SCAN_DEADLINE`]) the reason, when `strict`, else
    /// what was found and `true` (the scan is partial).
    #[allow(clippy::type_complexity)]
    fn walk(
        &self,
        watch: &Watch,
        budget: usize,
        strict: bool,
    ) -> Result<(Vec<(PathBuf, Stamp)>, bool), String> {
        let depth = if watch.spec.recursive { usize::MAX } else { 1 };
        let ignore = &self.config.ignore;
        let started = Instant::now();
        let mut found = Vec::new();
        let entries = walkdir::WalkDir::new(&watch.spec.path)
            .min_depth(1)
            .max_depth(depth)
            .follow_links(false)
            .follow_root_links(false)
            .into_iter()
            .filter_entry(|e| !ignore.iter().any(|i| e.path().starts_with(i)))
            .filter_map(Result::ok);
        for (visited, e) in entries.enumerate() {
            let over = if visited >= budget {
                Some(format!(
                    "{} holds over {budget} files and directories (monitor.max_watched_files, less what other watches hold): watch a smaller tree",
                    watch.spec.path.display()
                ))
            } else if visited % 1024 == 0 && started.elapsed() > SCAN_DEADLINE {
                Some(format!(
                    "{} took over {}s to scan: watch a smaller tree",
                    watch.spec.path.display(),
                    SCAN_DEADLINE.as_secs()
                ))
            } else {
                None
            };
            if let Some(why) = over {
                if strict {
                    return Err(why);
                }
                if self.stats.over_limit.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(reason = %why, "scan cut short");
                }
                return Ok((found, true));
            }
            if !e.file_type().is_dir()
                && watch.covers(e.path()).is_some()
                && let Ok(m) = e.metadata()
            {
                found.push((e.path().to_path_buf(), Stamp::of(&m)));
            }
        }
        Ok((found, false))
    }

    fn on_event(&mut self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error");
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    self.stats.failed_watches.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        if event.need_rescan() {
            self.overflowed.store(true, Ordering::Release);
            return;
        }
        use notify::event::{ModifyKind, RenameMode};
        match event.kind {
            // Metadata events are nominated too: the poller reports a changed mtime that
            // way; a change of permissions alone is dropped at flush (same size and mtime).
            EventKind::Access(_) => {}
            EventKind::Modify(ModifyKind::Name(RenameMode::Both))
                if event.paths.len() == 2 && !event.paths[1].is_dir() =>
            {
                let (from, to) = (&event.paths[0], &event.paths[1]);
                if self.watch_of(to).is_some() {
                    self.nominate(to.clone(), Some(from.clone()), None);
                }
                self.nominate(from.clone(), None, None);
            }
            _ => {
                for p in &event.paths {
                    self.nominate_any(p);
                }
            }
        }
    }

    /// A path of any kind: a directory stands for every file in it (files made in a new
    /// directory before its watch was in place, or moved in with it, have no events of
    /// their own); a path that is gone stands for every file recorded below it (a
    /// directory removed or moved away).
    fn nominate_any(&mut self, p: &Path) {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
            self.nominate_tree(p);
            return;
        }
        if !p.exists() && !self.known.contains_key(p) {
            let below: Vec<PathBuf> = self
                .known
                .range(p.to_path_buf()..)
                .map(|(k, _)| k)
                .take_while(|k| k.starts_with(p))
                .cloned()
                .collect();
            for k in below {
                self.nominate(k, None, None);
            }
        }
        self.nominate(p.to_path_buf(), None, None);
    }

    fn nominate_tree(&mut self, dir: &Path) {
        let found: Vec<PathBuf> = walkdir::WalkDir::new(dir)
            .follow_links(false)
            .follow_root_links(false)
            .into_iter()
            .take(self.config.max_files)
            .filter_map(Result::ok)
            .filter(|e| !e.file_type().is_dir())
            .map(|e| e.path().to_path_buf())
            .collect();
        for p in found {
            self.nominate(p, None, None);
        }
    }

    fn watch_of(&self, path: &Path) -> Option<&Watch> {
        if self.config.ignore.iter().any(|i| path.starts_with(i)) {
            return None;
        }
        self.watches.iter().find(|w| w.covers(path).is_some())
    }

    fn nominate(&mut self, path: PathBuf, from: Option<PathBuf>, found_by: Option<&'static str>) {
        if self.watch_of(&path).is_none() {
            return;
        }
        let p = self.pending.entry(path).or_insert_with(|| Pending {
            from: None,
            seen: chrono::Utc::now(),
            found_by,
        });
        if from.is_some() {
            p.from = from;
        }
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Events were lost: say so, then compare every watched tree with what was recorded.
    fn overflow(&mut self) {
        self.stats.overflows.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("codi_file_events_overflow_total").increment(1);
        tracing::warn!("file event queue overflowed: rescanning the watched trees");
        self.drain_events_without_overflow();
        let n = self.rescan();
        let roots: Vec<String> = self
            .watches
            .iter()
            .map(|w| w.spec.path.display().to_string())
            .collect();
        self.unsaved.push(entry(
            Level::Warn,
            format!(
                "file event queue overflowed; rescanned {} watched trees, {n} changes found",
                roots.len()
            ),
            serde_json::json!({"kind": "overflow", "watches": roots, "changes": n}),
            None,
            chrono::Utc::now(),
        ));
    }

    /// Scans the polling watches (and schedules the next scan while there are any).
    fn poll(&mut self) {
        let polling = |w: &Watch| w.spec.mode == WatchMode::Polling;
        if !self.watches.iter().any(polling) {
            self.next_poll = None;
            return;
        }
        self.rescan_where(polling, None);
        self.next_poll = Some(Instant::now() + self.config.scan_interval);
    }

    /// Compares every watched tree with what was recorded and nominates the differences;
    /// how many.
    fn rescan(&mut self) -> usize {
        self.rescan_where(|_| true, Some("rescan"))
    }

    /// [`rescan`](Self::rescan) for the watches `which` selects.
    fn rescan_where(
        &mut self,
        which: impl Fn(&Watch) -> bool,
        found_by: Option<&'static str>,
    ) -> usize {
        let mut current: HashMap<PathBuf, Stamp> = HashMap::new();
        // Under a watch whose scan was cut short, what was not seen is not gone.
        let mut partial: Vec<PathBuf> = Vec::new();
        for w in self.watches.iter().filter(|w| which(w)) {
            if let Ok((files, cut)) = self.walk(w, self.config.max_files, false) {
                current.extend(files);
                if cut {
                    partial.push(w.spec.path.clone());
                }
            }
        }
        let mut changed: Vec<PathBuf> = current
            .iter()
            .filter(|(p, s)| self.known.get(*p) != Some(s))
            .map(|(p, _)| p.clone())
            .collect();
        changed.extend(
            self.known
                .keys()
                .filter(|p| !current.contains_key(*p))
                .filter(|p| !partial.iter().any(|r| p.starts_with(r)))
                .filter(|p| {
                    self.watches
                        .iter()
                        .find(|w| w.covers(p).is_some())
                        .is_some_and(&which)
                })
                .cloned(),
        );
        let n = changed.len();
        for p in changed {
            self.nominate(p, None, found_by);
        }
        n
    }

    /// Takes what is queued (it is covered by the rescan that follows).
    fn drain_events_without_overflow(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            if let Ok(e) = e
                && !e.need_rescan()
            {
                self.on_event(Ok(e));
            }
        }
    }

    /// Records the nominated paths whose state changed, attributed, in one write.
    fn flush(&mut self) {
        self.oldest = None;
        let mut nominated: Vec<(PathBuf, Pending)> = self.pending.drain().collect();
        // Renames first: their old path is then already accounted for.
        nominated.sort_by_key(|(_, p)| p.from.is_none());
        let mut sessions: HashMap<String, Option<(String, Option<String>)>> = HashMap::new();
        for (path, p) in nominated {
            let Some(watch) = self.watch_of(&path) else {
                continue;
            };
            let root = watch.spec.path.display().to_string();
            let relative = path
                .strip_prefix(&watch.spec.path)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            let stamp = match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => continue,
                Ok(m) => Some(Stamp::of(&m)),
                Err(_) => None,
            };
            let kind = match stamp {
                None => match self.known.remove(&path) {
                    Some(_) => {
                        self.files.delete(path.to_string_lossy().into_owned());
                        "remove"
                    }
                    None => continue, // never recorded: made and gone within the window
                },
                Some(stamp) => {
                    if !self.known.contains_key(&path)
                        && p.from.as_ref().is_none_or(|f| !self.known.contains_key(f))
                        && self.known.len() >= self.config.max_files
                    {
                        if self.stats.over_limit.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(
                                limit = self.config.max_files,
                                "monitor.max_watched_files reached: new files are not recorded"
                            );
                        }
                        continue;
                    }
                    let renamed = p.from.as_ref().and_then(|f| self.known.remove(f));
                    let kind = match (self.known.insert(path.clone(), stamp), renamed) {
                        (_, Some(_)) => "rename",
                        (None, None) => "create",
                        (Some(old), None) if old == stamp => continue,
                        (Some(_), None) => "modify",
                    };
                    if let (Some(f), "rename") = (&p.from, kind) {
                        self.files.delete(f.to_string_lossy().into_owned());
                    }
                    self.files.upsert(stamp.state(&path));
                    kind
                }
            };
            let (session_id, attribution) = self.attribute(&path, &mut sessions);
            let mut meta = serde_json::json!({
                "path": path.display().to_string(),
                "kind": kind,
                "watch": root,
            });
            if let Some(s) = stamp {
                meta["size"] = s.len.into();
            }
            if kind == "rename"
                && let Some(f) = &p.from
            {
                meta["from"] = f.display().to_string().into();
            }
            if let Some(how) = p.found_by {
                meta[how] = true.into();
            }
            if let Some((identity, agent_type)) = attribution {
                meta["identity"] = identity.into();
                if let Some(a) = agent_type {
                    meta["agent_type"] = a.into();
                }
            }
            if kind != "remove" {
                self.unsaved_exports
                    .push((path.clone(), relative, session_id.clone()));
            }
            self.unsaved.push(entry(
                Level::Info,
                format!("{kind} {}", path.display()),
                meta,
                session_id,
                p.seen,
            ));
        }
        if self.unsaved.is_empty() {
            self.retry_at = None;
            return;
        }
        let batch = std::mem::take(&mut self.unsaved);
        let files = std::mem::take(&mut self.files);
        let n = batch.len() as u64;
        let kept = (batch.clone(), files.clone());
        match self.rt.block_on(self.store.append_with(batch, files)) {
            Ok(_) => {
                self.retry_at = None;
                self.stats.recorded.fetch_add(n, Ordering::Relaxed);
                metrics::counter!("codi_logs_total", "source" => "file").increment(n);
                metrics::counter!("codi_file_events_total").increment(n);
                let exports = std::mem::take(&mut self.unsaved_exports);
                if let Some(x) = &self.exporter {
                    for (path, relative, session) in exports {
                        x.offer(path, &relative, session);
                    }
                }
            }
            Err(e) => {
                // Kept and retried: file events are never dropped for a failed write.
                tracing::error!(error = %e, entries = n, "cannot record file events; will retry");
                self.unsaved = kept.0;
                self.files = kept.1;
                if self.unsaved.len() > MAX_UNSAVED {
                    self.give_up_unsaved();
                }
                self.retry_at = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    /// Drops the entries the store would not take, and forgets what they said about the
    /// files, so the rescan that follows finds those changes again: memory stays bounded
    /// however long the store refuses writes.
    fn give_up_unsaved(&mut self) {
        tracing::error!(
            entries = self.unsaved.len(),
            "the store has refused file events for too long: dropping them, to be found again by a rescan"
        );
        for (path, change) in std::mem::take(&mut self.files).into_changes() {
            match change {
                // Recorded as present: forget it, the rescan sees it (again) as new.
                Some(_) => {
                    self.known.remove(Path::new(&path));
                }
                // Recorded as gone: known again as something no file matches, so the
                // rescan reports it gone.
                None => {
                    self.known.insert(
                        PathBuf::from(path),
                        Stamp {
                            len: u64::MAX,
                            mtime: None,
                        },
                    );
                }
            }
        }
        self.unsaved.clear();
        self.unsaved_exports.clear();
        self.overflowed.store(true, Ordering::Release);
    }

    /// The deepest enclosing watch whose session is open: its id and (identity, agent).
    #[allow(clippy::type_complexity)]
    fn attribute(
        &self,
        path: &Path,
        cache: &mut HashMap<String, Option<(String, Option<String>)>>,
    ) -> (Option<String>, Option<(String, Option<String>)>) {
        for w in &self.watches {
            let Some(id) = w.spec.session_id.as_ref() else {
                continue;
            };
            if !path.starts_with(&w.spec.path) {
                continue;
            }
            let session = cache
                .entry(id.clone())
                .or_insert_with(|| {
                    self.rt
                        .block_on(self.store.session(id.clone()))
                        .unwrap_or_else(|e| {
                            tracing::warn!(error = %e, "cannot read the session for attribution");
                            None
                        })
                })
                .clone();
            if let Some(s) = session {
                return (Some(id.clone()), Some(s));
            }
        }
        (None, None)
    }
}

fn entry(
    level: Level,
    message: String,
    metadata: serde_json::Value,
    session_id: Option<String>,
    at: chrono::DateTime<chrono::Utc>,
) -> NewEntry {
    NewEntry {
        id: uuid::Uuid::now_v7(),
        ts: at.timestamp_micros(),
        level,
        component: COMPONENT.into(),
        message,
        metadata: Some(metadata.to_string()),
        session_id,
    }
}
