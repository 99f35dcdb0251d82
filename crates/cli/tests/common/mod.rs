//! The harness: the built `codi2` run as a process in a sandbox (its own HOME, XDG dirs,
//! socket and database, nothing from the developer's environment), and codi-monitor
//! started in-process on that socket and database.

#![allow(dead_code, clippy::unwrap_used)] // each test file uses a part; a panic fails a test

use coditect_monitor::config::Config;
use coditect_monitor::daemon::Daemon;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

pub const CODI2: &str = env!("CARGO_BIN_EXE_codi2");

/// One user's machine: HOME, config, data and runtime dirs, the monitor's socket and file.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub db: PathBuf,
    /// Extra environment for every run.
    pub env: Vec<(String, String)>,
}

/// What a run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, 0, "{self:#?}");
        assert!(
            !self.stderr.contains("panicked"),
            "a panic in codi2: {self:#?}"
        );
        self
    }

    #[track_caller]
    pub fn failed(&self, code: i32, stderr_has: &str) -> &Run {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(self.stderr.contains(stderr_has), "{self:#?}");
        assert!(
            self.stderr.starts_with("codi2: ") || self.code == 2,
            "{self:#?}"
        );
        assert!(
            !self.stderr.contains("panicked"),
            "a panic in codi2: {self:#?}"
        );
        self
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for d in ["home", "config", "data", "run"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Sandbox {
            socket: dir.path().join("run").join("m.sock"),
            db: dir.path().join("data").join("codi").join("m.db"),
            dir,
            env: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Where `codi2 login` keeps credentials here.
    pub fn credentials(&self) -> PathBuf {
        self.path()
            .join("config")
            .join("codi")
            .join("credentials.toml")
    }

    /// `codi2 ARGS` with the sandbox's environment only (socket and database through
    /// CODI_SOCKET and CODI_DB, as codi-monitor reads them).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(CODI2);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path().join("home"))
            .env("XDG_CONFIG_HOME", self.path().join("config"))
            .env("XDG_DATA_HOME", self.path().join("data"))
            .env("XDG_RUNTIME_DIR", self.path().join("run"))
            .env("CODI_SOCKET", &self.socket)
            .env("CODI_DB", &self.db)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[], None).await
    }

    pub async fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run_with(args, &[], Some(stdin)).await
    }

    /// With more environment, and stdin when given.
    pub async fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Run {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            let input = input.to_vec();
            tokio::spawn(async move {
                let _ = pipe.write_all(&input).await;
                let _ = pipe.shutdown().await;
            });
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("codi2 finishes within a minute")
            .unwrap();
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// codi-monitor on this sandbox's socket and database, in this process.
    pub async fn daemon(&self) -> TestDaemon {
        self.daemon_with(|_| {}).await
    }

    /// With `adjust` applied to its configuration.
    pub async fn daemon_with(&self, adjust: impl FnOnce(&mut Config)) -> TestDaemon {
        let mut config = Config::default();
        config.monitor.unix_socket_path = self.socket.clone();
        config.storage.sqlite_path = self.db.clone();
        config.storage.export_dir = self.path().join("exports");
        config.monitor.http_listen = None;
        adjust(&mut config);
        let daemon = Daemon::start(config).await.unwrap();
        let tcp = daemon.tcp_addr();
        let (tx, rx) = oneshot::channel();
        let done = tokio::spawn(daemon.run(async {
            let _ = rx.await;
        }));
        TestDaemon {
            stop: Some(tx),
            done,
            tcp,
        }
    }
}

pub struct TestDaemon {
    /// The TCP listener's address, when enabled.
    pub tcp: Option<std::net::SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl TestDaemon {
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.done).await.unwrap();
    }
}

/// Waits until `check` holds, at most `timeout`.
pub async fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check()
}
