//! Exports: files under a watch that match `monitor.export_patterns` are archived when
//! they are created or changed: copied (or moved, when configured) into
//! `storage.export_dir/<first two hex digits>/<sha256><.ext>`, so one content is stored
//! once whatever its name, and recorded in `export_archive` with its session and size.
//!
//! The copy is atomic: written under a temporary name in the archive, flushed to disk,
//! then renamed; a reader never sees half a file and a crash leaves at most a temporary
//! file behind (removed at the next start). The original is only removed (move) after its
//! archived copy is durable and recorded.
//!
//! What is archived is bounded and never a way in: only regular files, opened without
//! following a symlink anywhere on their path and without blocking (a FIFO, a device or a
//! symlink is skipped, and said so), at most `monitor.export_max_mb`, and only while the
//! archive's file system keeps `monitor.export_min_free_mb` free afterwards, so a copy
//! never takes the store's room. Archived copies are the daemon user's alone (0600 in
//! 0700 directories) whatever the original's mode. At shutdown a copy in progress is
//! abandoned after a grace period (and a read stuck in the kernel is not waited for)
//! rather than holding the daemon up.

use crate::store::{ExportRecord, MonitorStore};
use crate::watch::filter::glob;
use coditect_store::files::{self, Stat};
use globset::{GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub patterns: Vec<String>,
    pub dir: PathBuf,
    pub move_originals: bool,
    /// Larger files are skipped.
    pub max_bytes: u64,
    /// Free bytes the archive's file system must keep after a copy.
    pub min_free_bytes: u64,
}

/// Most export candidates waiting; past it new ones are skipped (and counted).
const QUEUE: usize = 10_000;

/// How long a copy in progress may go on once the daemon is stopping.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Takes export candidates from the watcher; archives them on its own thread.
pub struct Exporter {
    matcher: GlobSet,
    queue: crossbeam_channel::Sender<(PathBuf, Option<String>)>,
    thread: std::thread::JoinHandle<()>,
    abort: Arc<AtomicBool>,
}

/// The export directory, created 0700 when missing and checked like the store's (nobody
/// but us and root can change it or a directory above it); its canonical path. Temporary
/// files left by a crash are removed.
pub fn secure_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = files::prepare_trusted_dir(dir, false)
        .map_err(|e| anyhow::anyhow!("refusing to archive exports in {}: {e}", dir.display()))?;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".incoming-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(dir)
}

impl Exporter {
    /// `None` when no export patterns are configured.
    pub fn start(
        config: ExportConfig,
        store: MonitorStore,
        rt: tokio::runtime::Handle,
    ) -> anyhow::Result<Option<Exporter>> {
        if config.patterns.is_empty() {
            return Ok(None);
        }
        let mut b = GlobSetBuilder::new();
        for p in &config.patterns {
            b.add(glob(p)?);
        }
        let matcher = b.build()?;
        let (queue, rx) = crossbeam_channel::bounded::<(PathBuf, Option<String>)>(QUEUE);
        let abort = Arc::new(AtomicBool::new(false));
        let stop = abort.clone();
        let thread = std::thread::Builder::new()
            .name("exporter".into())
            .spawn(move || {
                for (path, session) in rx {
                    if stop.load(Ordering::Acquire) {
                        skipped("shutdown", &path, "the daemon stopped first");
                        continue;
                    }
                    export_one(&config, &store, &rt, &path, session, &stop);
                }
            })?;
        Ok(Some(Exporter {
            matcher,
            queue,
            thread,
            abort,
        }))
    }

    /// Archives `path` if it matches the export patterns: by its path below the watch
    /// (`relative`), by its name, or by its absolute path.
    pub fn offer(&self, path: PathBuf, relative: &Path, session: Option<String>) {
        let by_name = path
            .file_name()
            .is_some_and(|n| self.matcher.is_match(Path::new(n)));
        if (by_name || self.matcher.is_match(relative) || self.matcher.is_match(&path))
            && let Err(crossbeam_channel::TrySendError::Full((path, _))) =
                self.queue.try_send((path, session))
        {
            skipped("queue_full", &path, "too many exports are waiting");
        }
    }

    /// Archives what is queued, then stops; after [`SHUTDOWN_GRACE`] the copy in progress
    /// is abandoned and what is still queued is skipped.
    pub fn finish(self) {
        drop(self.queue);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let thread = self.thread;
        let waiter = std::thread::spawn(move || {
            let _ = thread.join();
            let _ = done_tx.send(());
        });
        if done_rx.recv_timeout(SHUTDOWN_GRACE).is_err() {
            tracing::warn!("exports still running at shutdown: abandoning them");
            self.abort.store(true, Ordering::Release);
            // A read stuck in the kernel (a hung network file system) never sees the flag:
            // the thread is left to the process's exit rather than holding shutdown.
            if done_rx.recv_timeout(SHUTDOWN_GRACE).is_err() {
                tracing::error!("an export is stuck in a read; not waiting for it");
                return;
            }
        }
        let _ = waiter.join();
    }
}

fn skipped(reason: &'static str, path: &Path, detail: &str) {
    metrics::counter!("codi_exports_skipped_total", "reason" => reason).increment(1);
    tracing::warn!(path = %path.display(), reason, detail, "export skipped");
}

fn export_one(
    config: &ExportConfig,
    store: &MonitorStore,
    rt: &tokio::runtime::Handle,
    path: &Path,
    session: Option<String>,
    abort: &AtomicBool,
) {
    let archived = match archive(config, path, abort) {
        Ok(Outcome::Archived(a)) => a,
        Ok(Outcome::Gone) => return,
        Ok(Outcome::Skipped(reason, detail)) => return skipped(reason, path, &detail),
        Err(e) => {
            metrics::counter!("codi_exports_failed_total").increment(1);
            tracing::warn!(path = %path.display(), error = %e, "export failed");
            return;
        }
    };
    let record = ExportRecord {
        original_path: path.display().to_string(),
        archive_path: archived.path.display().to_string(),
        sha256: archived.sha256,
        session_id: session,
        file_size: archived.size,
    };
    // A store that refuses for a moment (full, busy) gets a few more tries: the archived
    // copy is there either way.
    let mut recorded = rt.block_on(store.record_export(record.clone()));
    for wait_ms in [100, 1_000, 5_000] {
        match &recorded {
            Err(e) if e.is_transient() && !abort.load(Ordering::Acquire) => {
                std::thread::sleep(Duration::from_millis(wait_ms));
                recorded = rt.block_on(store.record_export(record.clone()));
            }
            _ => break,
        }
    }
    match recorded {
        Ok(()) => {
            metrics::counter!("codi_exports_processed_total").increment(1);
            if config.move_originals {
                match files::remove_if_unchanged(path, &archived.version) {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove an exported original")
                    }
                }
            }
        }
        Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot record an export"),
    }
}

pub struct Archived {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The original's version that was archived.
    version: Stat,
}

/// What one attempt came to.
pub enum Outcome {
    Archived(Archived),
    /// The file vanished or changed while it was read (its next change offers it again),
    /// so no archived copy is ever a half-written file and a moved original is never one
    /// that is still growing.
    Gone,
    /// Not archived, on purpose: why (a metric label) and the detail.
    Skipped(&'static str, String),
}

/// Copies `path` into the archive under its content's name.
pub fn archive(config: &ExportConfig, path: &Path, abort: &AtomicBool) -> std::io::Result<Outcome> {
    let (mut src, before) = match files::open_regular_nofollow(path) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Gone),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            return Ok(Outcome::Skipped("not_regular", e.to_string()));
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Ok(Outcome::Skipped(
                "symlink",
                "a directory on its path is a symlink".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    if before.len > config.max_bytes {
        return Ok(Outcome::Skipped(
            "too_large",
            format!(
                "{} bytes is over monitor.export_max_mb ({} bytes)",
                before.len, config.max_bytes
            ),
        ));
    }
    let free = files::available_bytes(&config.dir)?;
    if free < before.len.saturating_add(config.min_free_bytes) {
        return Ok(Outcome::Skipped(
            "low_space",
            format!(
                "copying {} bytes would leave less than monitor.export_min_free_mb ({} bytes) free ({free} bytes are)",
                before.len, config.min_free_bytes
            ),
        ));
    }
    let (tmp_path, mut tmp) = tempfile_in(&config.dir)?;
    let outcome = place(
        config,
        path,
        (&mut src, before),
        (&tmp_path, &mut tmp),
        abort,
    );
    if !matches!(outcome, Ok(Outcome::Archived(_))) {
        // Nothing half-written stays behind, whatever went wrong.
        let _ = std::fs::remove_file(&tmp_path);
    }
    outcome
}

/// Copies the opened original into the temporary file, then renames it into the archive
/// when the original did not change meanwhile.
fn place(
    config: &ExportConfig,
    path: &Path,
    (src, before): (&mut std::fs::File, Stat),
    (tmp_path, tmp): (&Path, &mut std::fs::File),
    abort: &AtomicBool,
) -> std::io::Result<Outcome> {
    let Some((sha256, size)) = copy(src, tmp, before.len, abort)? else {
        return Ok(Outcome::Gone);
    };
    // Unchanged while it was read: same file at the same path, same size and time.
    let now = src.metadata().map(|m| Stat::of(&m)).ok();
    let at_path = files::parent_nofollow(path)
        .and_then(|(dir, name)| files::stat_at(&dir, &name))
        .ok();
    if size != before.len || now != Some(before) || at_path != Some(before) {
        return Ok(Outcome::Gone);
    }
    tmp.sync_all()?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.len() <= 16 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let dir = config.dir.join(&sha256[..2]);
    let dest = dir.join(format!("{sha256}{ext}"));
    files::create_private_dir(&dir)?;
    if std::fs::symlink_metadata(&dest).is_ok() {
        // The same content is archived already.
        let _ = std::fs::remove_file(tmp_path);
    } else {
        std::fs::rename(tmp_path, &dest)?;
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(Outcome::Archived(Archived {
        path: dest,
        sha256,
        size,
        version: before,
    }))
}

/// Copies at most `expected` bytes and hashes them; `None` when there was more (the file
/// grew) or the daemon is stopping.
fn copy(
    src: &mut std::fs::File,
    dst: &mut std::fs::File,
    expected: u64,
    abort: &AtomicBool,
) -> std::io::Result<Option<(String, u64)>> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if abort.load(Ordering::Acquire) {
            return Ok(None);
        }
        let n = match src.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > expected {
            return Ok(None);
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    Ok(Some((hex::encode(hasher.finalize()), size)))
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = dir.join(format!(".incoming-{}", uuid::Uuid::now_v7()));
    // Archived copies are the owner's alone, whatever the original's mode.
    let f = files::create_private_file(&name)?;
    Ok((name, f))
}
