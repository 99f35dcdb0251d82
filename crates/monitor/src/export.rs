//! Exports: files under a watch that match `monitor.export_patterns` are archived when
//! they are created or changed: copied (or moved, when configured) into
//! `storage.export_dir/<first two hex digits>/<sha256><.ext>`, so one content is stored
//! once whatever its name, and recorded in `export_archive` with its session and size.
//!
//! The copy is atomic: written under a temporary name in the archive, flushed to disk,
//! then renamed; a reader never sees half a file and a crash leaves at most a temporary
//! file behind. The original is only removed (move) after its archived copy is durable
//! and recorded.

use crate::store::{ExportRecord, MonitorStore};
use crate::watch::filter::glob;
use globset::{GlobSet, GlobSetBuilder};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub patterns: Vec<String>,
    pub dir: PathBuf,
    pub move_originals: bool,
}

/// Takes export candidates from the watcher; archives them on its own thread.
pub struct Exporter {
    matcher: GlobSet,
    queue: crossbeam_channel::Sender<(PathBuf, Option<String>)>,
    thread: std::thread::JoinHandle<()>,
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
        let (queue, rx) = crossbeam_channel::unbounded::<(PathBuf, Option<String>)>();
        let thread = std::thread::Builder::new()
            .name("exporter".into())
            .spawn(move || {
                for (path, session) in rx {
                    match archive(&config, &path) {
                        Ok(Some(archived)) => {
                            let record = ExportRecord {
                                original_path: path.display().to_string(),
                                archive_path: archived.path.display().to_string(),
                                sha256: archived.sha256,
                                session_id: session,
                                file_size: archived.size,
                            };
                            // A store that refuses for a moment (full, busy) gets a few
                            // more tries: the archived copy is there either way.
                            let mut recorded = rt.block_on(store.record_export(record.clone()));
                            for wait_ms in [100, 1_000, 5_000] {
                                match &recorded {
                                    Err(e) if e.is_transient() => {
                                        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
                                        recorded = rt.block_on(store.record_export(record.clone()));
                                    }
                                    _ => break,
                                }
                            }
                            match recorded {
                                Ok(()) => {
                                    metrics::counter!("codi_exports_processed_total").increment(1);
                                    if config.move_originals
                                        && version(&path).ok() == Some(archived.version)
                                        && let Err(e) = std::fs::remove_file(&path)
                                    {
                                        tracing::warn!(path = %path.display(), error = %e, "cannot remove an exported original");
                                    }
                                }
                                Err(e) => {
                                    tracing::error!(path = %path.display(), error = %e, "cannot record an export")
                                }
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            metrics::counter!("codi_exports_failed_total").increment(1);
                            tracing::warn!(path = %path.display(), error = %e, "export failed");
                        }
                    }
                }
            })?;
        Ok(Some(Exporter {
            matcher,
            queue,
            thread,
        }))
    }

    /// Archives `path` if it matches the export patterns: by its path below the watch
    /// (`relative`), by its name, or by its absolute path.
    pub fn offer(&self, path: PathBuf, relative: &Path, session: Option<String>) {
        let by_name = path
            .file_name()
            .is_some_and(|n| self.matcher.is_match(Path::new(n)));
        if by_name || self.matcher.is_match(relative) || self.matcher.is_match(&path) {
            let _ = self.queue.send((path, session));
        }
    }

    /// Archives what is queued, then stops.
    pub fn finish(self) {
        drop(self.queue);
        let _ = self.thread.join();
    }
}

pub struct Archived {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The original's version that was archived.
    version: (u64, u64, Option<std::time::SystemTime>),
}

/// What identifies one version of a file: inode, size, modification time.
fn version(path: &Path) -> std::io::Result<(u64, u64, Option<std::time::SystemTime>)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.ino(), m.len(), m.modified().ok()))
}

/// Copies `path` into the archive under its content's name; `None` when it vanished or
/// changed while being copied (its next change offers it again), so no archived copy is
/// ever a half-written file and a moved original is never one that is still growing.
pub fn archive(config: &ExportConfig, path: &Path) -> std::io::Result<Option<Archived>> {
    let before = match version(path) {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut src = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    coditect_store::files::create_private_dir(&config.dir)?;
    let mut tmp = tempfile_in(&config.dir)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.1.write_all(&buf[..n])?;
        size += n as u64;
    }
    tmp.1.sync_all()?;
    if size != before.1 || version(path).ok() != Some(before) {
        let _ = std::fs::remove_file(&tmp.0);
        return Ok(None);
    }
    let sha256 = hex::encode(hasher.finalize());
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.len() <= 16 && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let dir = config.dir.join(&sha256[..2]);
    coditect_store::files::create_private_dir(&dir)?;
    let dest = dir.join(format!("{sha256}{ext}"));
    if dest.exists() {
        let _ = std::fs::remove_file(&tmp.0);
    } else {
        std::fs::rename(&tmp.0, &dest)?;
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(Some(Archived {
        path: dest,
        sha256,
        size,
        version: before,
    }))
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = dir.join(format!(".incoming-{}", uuid::Uuid::now_v7()));
    // Archived copies are the owner's alone, whatever the original's mode.
    let f = coditect_store::files::create_private_file(&name)?;
    Ok((name, f))
}
