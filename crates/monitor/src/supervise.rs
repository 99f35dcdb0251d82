//! `codi-monitor supervise`: keeps one daemon alive.
//!
//! The supervisor holds a locked pid file (a second supervisor on the same file refuses
//! to start), runs `codi-monitor run` with the same options as a child, and restarts it
//! with exponential backoff when it exits or stops answering its health check (a
//! `GetStatus` over the socket whose store is healthy) several times in a row. A daemon
//! that exits with status 2 (bad configuration) is not restarted: that would loop. On
//! SIGTERM/SIGINT the supervisor stops the daemon (SIGTERM, then SIGKILL after the
//! grace period), removes its pid file and exits 0.

use crate::client::IpcClient;
use coditect_proto::ipc::Payload;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The longest start-up a daemon gets before failed health checks count against it.
const STARTUP_GRACE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct SuperviseOptions {
    pub pid_file: PathBuf,
    pub socket: PathBuf,
    /// Passed to `codi-monitor run` (the `--config`, `--socket`, `--db` given).
    pub daemon_args: Vec<OsString>,
    pub health_interval: Duration,
    /// Failed health checks in a row before the daemon is restarted.
    pub unhealthy_after: u32,
    pub grace: Duration,
}

/// Runs until signalled; the process's exit code.
pub async fn supervise(opts: SuperviseOptions) -> ExitCode {
    let pid_file = match PidFile::acquire(&opts.pid_file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("codi-monitor supervise: {e}");
            return ExitCode::from(1);
        }
    };
    let code = run(&opts).await;
    pid_file.release();
    code
}

async fn run(opts: &SuperviseOptions) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("codi-monitor supervise: cannot find my own binary: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = crate::daemon::signalled();
    tokio::pin!(stop);
    let mut failures = 0u32;
    loop {
        let mut child = match Command::new(&exe)
            .arg("run")
            .args(&opts.daemon_args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the daemon");
                return ExitCode::from(1);
            }
        };
        let started = Instant::now();
        tracing::info!(pid = child.id(), "daemon started");
        let mut unhealthy = 0u32;
        // Start-up (checking the store, resuming watches) may take a while: failures count
        // once the daemon has answered, or after the grace period.
        let mut answered = false;
        let mut tick = tokio::time::interval(opts.health_interval);
        tick.tick().await;
        let why = loop {
            tokio::select! {
                status = child.wait() => {
                    let code = status.ok().and_then(|s| s.code());
                    if code == Some(2) {
                        tracing::error!("the daemon refused its configuration; not restarting");
                        return ExitCode::from(2);
                    }
                    break format!("exited with {code:?}");
                }
                _ = tick.tick() => {
                    let within = opts.health_interval.clamp(Duration::from_millis(500), Duration::from_secs(2));
                    if healthy_within(&opts.socket, within).await {
                        unhealthy = 0;
                        answered = true;
                    } else if answered || started.elapsed() > STARTUP_GRACE {
                        unhealthy += 1;
                        tracing::warn!(unhealthy, "daemon health check failed");
                        if unhealthy >= opts.unhealthy_after {
                            terminate(&mut child, opts.grace).await;
                            break "stopped answering its health check".to_string();
                        }
                    }
                }
                _ = &mut stop => {
                    tracing::info!("stopping the daemon");
                    terminate(&mut child, opts.grace).await;
                    return ExitCode::SUCCESS;
                }
            }
        };
        // A daemon that ran a while earns a fresh start; one that keeps failing waits longer.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let wait = Duration::from_millis(500)
            .saturating_mul(1 << failures.min(7))
            .min(Duration::from_secs(60));
        tracing::warn!(reason = %why, restart_in = ?wait, "daemon stopped; restarting");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return ExitCode::SUCCESS,
        }
    }
}

/// Whether a daemon answers on `socket` with a healthy store (within 2 s).
pub async fn healthy(socket: &Path) -> bool {
    healthy_within(socket, Duration::from_secs(2)).await
}

async fn healthy_within(socket: &Path, within: Duration) -> bool {
    let probe = async {
        let mut c = IpcClient::connect_unix(socket).await.ok()?;
        match c.call(Payload::GetStatus).await.ok()? {
            Payload::Status { components, .. } => Some(
                components
                    .iter()
                    .any(|c| c.name == "store" && c.status == "healthy"),
            ),
            _ => Some(false),
        }
    };
    matches!(tokio::time::timeout(within, probe).await, Ok(Some(true)))
}

/// SIGTERM, then SIGKILL when the daemon has not exited within `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!("the daemon did not stop in time; killing it");
    }
    let _ = child.kill().await;
}

/// A pid file held with an exclusive lock for the supervisor's lifetime.
struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    /// Takes the pid file at `path`: in a directory nobody else can swap it in (ours or
    /// root's, shared only if sticky), created exclusively, or, left by a supervisor that
    /// died, reused only if it is a regular file of ours (never through a symlink).
    fn acquire(path: &Path) -> Result<PidFile, String> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} names no file", path.display()))?;
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let dir = coditect_store::files::prepare_trusted_dir(&dir, true)
            .map_err(|e| format!("refusing to keep the pid file in {}: {e}", dir.display()))?;
        let path = dir.join(name);
        let mut file = match coditect_store::files::create_private_file(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&path)
                    .map_err(|e| format!("cannot open the pid file {}: {e}", path.display()))?;
                let meta = f
                    .metadata()
                    .map_err(|e| format!("cannot inspect {}: {e}", path.display()))?;
                // A second name for the file (a hard link someone made to a file of
                // ours elsewhere) would make us truncate that file.
                if !meta.is_file()
                    || meta.uid() != nix::unistd::geteuid().as_raw()
                    || meta.nlink() != 1
                {
                    return Err(format!(
                        "{} is not a pid file of ours (uid {}): refusing to write into it",
                        path.display(),
                        meta.uid()
                    ));
                }
                f
            }
            Err(e) => {
                return Err(format!(
                    "cannot create the pid file {}: {e}",
                    path.display()
                ));
            }
        };
        if file.try_lock().is_err() {
            let other = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(format!(
                "another supervisor (pid {}) holds {}",
                other.trim(),
                path.display()
            ));
        }
        file.set_len(0)
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .and_then(|_| file.sync_all())
            .map_err(|e| format!("cannot write the pid file {}: {e}", path.display()))?;
        Ok(PidFile { path, _file: file })
    }

    fn release(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
