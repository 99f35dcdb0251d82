//! A real hub process for the log benchmarks (its RSS is its own, not the load
//! generator's), a logged-in admin with a workspace and an API key bound to it, and a
//! sampler of the process's resident memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const EMAIL: &str = "bench@example.com";
const PASSWORD: &str = "benchmark passphrase";

pub struct HubProc {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    _dir: tempfile::TempDir,
}

/// The `coditect-hub` binary next to this one (same profile).
fn binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let path = me.with_file_name("coditect-hub");
    if !path.exists() {
        anyhow::bail!(
            "{} is missing: build it first (cargo build --release -p coditect-hub)",
            path.display()
        );
    }
    Ok(path)
}

impl HubProc {
    /// Starts a hub on a fresh data directory with `args` on top of the defaults.
    pub fn spawn(args: &[&str]) -> anyhow::Result<HubProc> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(binary()?)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(args)
            .env("CODITECT_BOOTSTRAP_EMAIL", EMAIL)
            .env("CODITECT_BOOTSTRAP_PASSWORD", PASSWORD)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining the hub's log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let addr = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .filter(|v| v["message"] == "hub listening")
                    .and_then(|v| v["addr"].as_str().and_then(|a| a.parse().ok()));
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                } else if line.contains("\"ERROR\"") {
                    eprintln!("hub: {line}");
                }
            }
        });
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow::anyhow!("the hub did not start listening"))?;
        Ok(HubProc {
            child,
            addr,
            base: format!("http://{addr}"),
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Logs in the bootstrap admin; returns an access token, a new workspace and an API key
    /// bound to it.
    pub async fn setup(&self, client: &reqwest::Client) -> anyhow::Result<Setup> {
        // The bootstrap admin is created just after the hub starts listening.
        let deadline = Instant::now() + Duration::from_secs(30);
        let res = loop {
            let res = client
                .post(format!("{}/api/v1/auth/login", self.base))
                .json(&serde_json::json!({"email": EMAIL, "password": PASSWORD}))
                .send()
                .await?;
            if res.status() == 200 || Instant::now() > deadline {
                break res;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        anyhow::ensure!(res.status() == 200, "login: {}", res.status());
        let token = res.json::<serde_json::Value>().await?["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ws: serde_json::Value = client
            .post(format!("{}/api/v1/workspaces", self.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "bench", "start": false}))
            .send()
            .await?
            .json()
            .await?;
        let workspace = ws["id"].as_str().unwrap_or_default().to_string();
        let key: serde_json::Value = client
            .post(format!("{}/api/v1/api-keys", self.base))
            .bearer_auth(&token)
            .json(&serde_json::json!({"name": "bench", "workspace_id": workspace}))
            .send()
            .await?
            .json()
            .await?;
        Ok(Setup {
            token,
            workspace,
            key: key["key"].as_str().unwrap_or_default().to_string(),
        })
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Setup {
    pub token: String,
    pub workspace: String,
    pub key: String,
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Samples a process's RSS every 100 ms until dropped; `peak()` is the largest seen.
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while !s.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(3600) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        RssSampler { peak, stop }
    }

    pub fn peak_mib(&self) -> f64 {
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
