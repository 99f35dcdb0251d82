//! The real `coditect-hub` binary as a child process, for the tests of its clients (`codi2`,
//! the monitor's sync): embedded SQLite in a data dir of the test's, a first platform admin
//! from the environment, fast Argon2 settings, JSON logs collected from stderr.
//!
//! A hub can be killed (SIGKILL) or stopped (SIGTERM) and restarted on the same port and
//! data dir, which is what a client's reconnect and resume tests need.
//!
//! ```no_run
//! # async fn t(dir: &std::path::Path) {
//! let mut hub = coditect_testkit::hub::HubProcess::start(dir);
//! let token = hub.admin_token().await;
//! let ws = hub.workspace(&token, "dev").await;
//! let key = hub.api_key(&token, Some(&ws)).await;
//! hub.kill();
//! hub.restart();
//! # }
//! ```
//!
//! The binary is the one next to the test executable (`target/<profile>/coditect-hub`);
//! when it is missing it is built once with `cargo build -p coditect-hub --bin coditect-hub`
//! (an existing one is used as it is: after changing the hub, build it, as
//! `cargo build --workspace` and `scripts/test` do). `CODITECT_HUB_BIN` names another one.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The first platform admin every [`HubProcess`] starts with.
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "testkit admin passphrase";

/// How long a start may take before the test gives up (a loaded machine builds and links).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running (or stopped, restartable) `coditect-hub`.
pub struct HubProcess {
    child: Option<Child>,
    data_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    addr: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
    scope: String,
}

/// The path of the `coditect-hub` binary, built on first use when it is missing
/// (`CODITECT_HUB_BIN` overrides).
pub fn hub_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| match std::env::var_os("CODITECT_HUB_BIN") {
            Some(path) => PathBuf::from(path),
            None => workspace_binary("coditect-hub", "coditect-hub"),
        })
        .clone()
}

/// The path of the `codi-monitor` binary (the workspace agent), built on first use when
/// it is missing.
pub fn monitor_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| workspace_binary("coditect-monitor", "codi-monitor"))
        .clone()
}

/// A binary of this workspace, next to the test executable (`target/<profile>/<bin>`),
/// built by cargo in the test's own profile when missing.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // target/<profile>/deps/<test> → target/<profile>/<bin>
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let binary = profile_dir.join(bin);
    if !binary.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // The test's own profile: target/debug is `dev`, others are named as-is.
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(other) => other.to_string(),
        };
        let status = Command::new(cargo)
            .args(["build", "--profile", &profile])
            .args(["-p", package, "--bin", bin])
            .status()
            .unwrap_or_else(|e| panic!("run cargo build for {bin}: {e}"));
        assert!(status.success(), "cargo build -p {package} failed");
        assert!(
            binary.exists(),
            "cargo built {bin}, but not at {}",
            binary.display()
        );
    }
    binary
}

/// Collects a hub's JSON log lines from `stderr` into `lines` (on a thread of its own);
/// the receiver gets the address of every "hub listening" line.
pub fn follow_logs(
    stderr: std::process::ChildStderr,
    lines: Arc<Mutex<Vec<String>>>,
) -> std::sync::mpsc::Receiver<SocketAddr> {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let addr = serde_json::from_str::<Value>(&line)
                .ok()
                .filter(|v| v["message"] == "hub listening")
                .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()));
            if let Some(addr) = addr {
                let _ = addr_tx.send(addr);
            }
            if let Ok(mut l) = lines.lock() {
                l.push(line);
            }
        }
    });
    addr_rx
}

impl HubProcess {
    /// Starts a hub with its data in `dir` on a free loopback port.
    pub fn start(dir: &Path) -> HubProcess {
        HubProcess::start_with(dir, &[], &[])
    }

    /// Like [`HubProcess::start`] with more flags (`--auth-access-ttl`, …) and environment.
    pub fn start_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> HubProcess {
        HubProcess::start_at(dir, SocketAddr::from(([127, 0, 0, 1], 0)), args, env)
    }

    /// Like [`HubProcess::start_with`] on a given address (for a hub that must know its own
    /// URL before it starts, e.g. `--public-url`).
    pub fn start_at(
        dir: &Path,
        addr: SocketAddr,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> HubProcess {
        let mut hub = HubProcess {
            child: None,
            data_dir: dir.to_path_buf(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addr,
            lines: Arc::new(Mutex::new(Vec::new())),
            http: reqwest::Client::new(),
            scope: format!("t{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
        };
        hub.spawn();
        hub
    }

    /// Spawns the binary on `self.addr` and waits for "hub listening"; retries a few times
    /// when the port is not free yet (a restart right after a kill).
    fn spawn(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.try_spawn(deadline) {
                Ok(()) => return,
                // A restart: the port may not be free yet.
                Err(_) if Instant::now() < deadline && self.addr.port() != 0 => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(why) => panic!(
                    "coditect-hub did not start: {why}\n{}",
                    self.logs().join("\n")
                ),
            }
        }
    }

    fn try_spawn(&mut self, deadline: Instant) -> Result<(), String> {
        let mut cmd = Command::new(hub_binary());
        cmd.arg("--listen")
            .arg(self.addr.to_string())
            .args(["--log-format", "json", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--auth-argon2-memory-kib",
                "1024",
                "--auth-argon2-iterations",
                "1",
            ])
            // Its own runtime scope, kept across restarts (so it adopts its workspaces and
            // no parallel test's hub sweeps them).
            .args(["--workspace-scope", &self.scope])
            .arg("--workspace-agent")
            .arg(monitor_binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Only what the test gives: no settings leak in from the developer's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CODITECT_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.env("CODITECT_BOOTSTRAP_EMAIL", ADMIN_EMAIL)
            .env("CODITECT_BOOTSTRAP_PASSWORD", ADMIN_PASSWORD);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", hub_binary().display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let addr_rx = follow_logs(stderr, self.lines.clone());
        loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(50)) {
                self.addr = addr;
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("it exited with {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("it did not log `hub listening` in time".into());
            }
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The runtime scope its workspaces are labelled with.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then waits for a clean exit (at most 30 s, then SIGKILL).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL: no drain, no clean close (what a crash looks like to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and data dir (stopping it first when it runs).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn();
    }

    /// Every line the process logged (across restarts).
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether a JSON log line has this `message`.
    pub fn logged(&self, message: &str) -> bool {
        self.logs()
            .iter()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v["message"] == message))
    }

    /// Logs in; the access token. Panics when the hub refuses.
    pub async fn login(&self, email: &str, password: &str) -> String {
        let (status, body) = self.try_login(email, password).await;
        assert_eq!(status, 200, "login of {email}: {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    /// Logs in; the status and the body.
    pub async fn try_login(&self, email: &str, password: &str) -> (u16, Value) {
        let res = self
            .http
            .post(self.url("/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("POST /api/v1/auth/login");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The first admin's access token (created in the background after start-up: retried
    /// until it exists).
    pub async fn admin_token(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = self.try_login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
            if status == 200 {
                return body["access_token"]
                    .as_str()
                    .expect("access_token")
                    .to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the first admin cannot log in: {status} {body}\n{}",
                self.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POSTs JSON with a bearer token; the body of a 2xx answer (panics otherwise).
    pub async fn post(&self, path: &str, token: &str, body: Value) -> Value {
        let res = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// GETs JSON with a bearer token; the body of a 2xx answer (panics otherwise).
    pub async fn get(&self, path: &str, token: &str) -> Value {
        let res = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "GET {path}: {status} {body}");
        body
    }

    /// A new workspace of the token's tenant; its id.
    pub async fn workspace(&self, token: &str, name: &str) -> String {
        let ws = self
            .post(
                "/api/v1/workspaces",
                token,
                json!({"name": name, "start": false}),
            )
            .await;
        ws["id"].as_str().expect("workspace id").to_string()
    }

    /// A new API key (role `service`: ships and reads logs) made by `token`, limited to
    /// `workspace_id` when given; the secret.
    pub async fn api_key(&self, token: &str, workspace_id: Option<&str>) -> String {
        let mut body = json!({"name": format!("testkit-{}", uuid::Uuid::now_v7().simple())});
        if let Some(ws) = workspace_id {
            body["workspace_id"] = json!(ws);
        }
        let key = self.post("/api/v1/api-keys", token, body).await;
        key["key"].as_str().expect("api key").to_string()
    }

    /// Stores log entries in `workspace_id` through `POST /api/logs/batch`; `entries` are
    /// the API's objects (`{timestamp, level, component, message, …}`).
    pub async fn post_logs(&self, token: &str, workspace_id: &str, entries: Vec<Value>) -> Value {
        self.post(
            "/api/logs/batch",
            token,
            json!({"entries": entries, "workspace_id": workspace_id, "client_version": "testkit"}),
        )
        .await
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        self.kill();
        kill_sandboxes(&self.scope);
    }
}

/// Kills what the hub's process runtime left running under `scope` (workspaces outlive
/// their hub by design; a finished test's must not): every process whose environment
/// carries `CODITECT_RUNTIME_SCOPE=<scope>`, the sandboxes' outer processes.
pub fn kill_sandboxes(scope: &str) {
    let label = format!("CODITECT_RUNTIME_SCOPE={scope}");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        // The outer process and the namespace's init (its fork) both carry the label;
        // killing the init ends everything in the sandbox.
        if environ.split(|b| *b == 0).any(|v| v == label.as_bytes()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
