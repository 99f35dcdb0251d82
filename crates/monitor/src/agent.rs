//! `codi-monitor agent`: the agent inside every workspace, started by the hub's runtime.
//!
//! It is the ordinary daemon (IPC socket, durable store, file watching, sync) configured
//! from the environment the runtime sets (`coditect_workspaces::agent_env`): its store and
//! socket live in the persistent home (`~/.coditect/`), the home is watched (but not
//! `.coditect`, `.cache`, `.git`), and the sync reaches the hub through the socket mounted
//! at `CODITECT_HUB_SOCKET` (or, where there is no shared machine — a Kubernetes pod — over
//! the network at `CODITECT_HUB_URL`) with the workspace-bound key in
//! `CODITECT_AGENT_KEY_FILE`. So
//! the workspace's logs and file events reach the hub with nothing installed at run time.
//!
//! Beside the daemon it reports readiness and activity to the hub every couple of seconds
//! (`POST /api/v1/agent/report`), and runs the template's commands in the home:
//! `CODITECT_POST_CREATE_COMMAND` once per home, `CODITECT_POST_START_COMMAND` and then
//! `CODITECT_WORKSPACE_COMMAND` on every start, their output stored as log entries
//! (component `workspace`). A 409 to a report means this launch is over (a newer one
//! replaced it, or the workspace was stopped): the agent stops everything and exits.

use crate::config::Config;
use crate::daemon::{Daemon, signalled};
use crate::store::{MonitorStore, NewEntry};
use coditect_proto::Level;
use coditect_proto::ipc::{WatchMode, WatchedPath};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The host name requests name when the socket is what reaches the hub.
const SOCKET_HUB_URL: &str = "http://coditect-hub";
/// Longest wait for one report.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the runtime told the agent.
#[derive(Debug, Clone)]
pub struct AgentEnv {
    /// The hub's agent socket; `None`: `hub_url` is reached over the network.
    pub hub_socket: Option<PathBuf>,
    pub hub_url: String,
    /// Read before every request: a pool claim hands the workspace to its new owner by
    /// rotating it.
    pub key_file: PathBuf,
    pub workspace_id: coditect_proto::WorkspaceId,
    pub instance: String,
    pub home: PathBuf,
    pub post_create: Option<String>,
    pub post_start: Option<String>,
    pub command: Option<String>,
}

impl AgentEnv {
    /// Reads the environment; the first thing missing or wrong, in words.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<AgentEnv, String> {
        let need = |k: &str| {
            env(k)
                .filter(|v| !v.is_empty())
                .ok_or(format!("{k} is not set"))
        };
        let key_file = PathBuf::from(need("CODITECT_AGENT_KEY_FILE")?);
        let key = std::fs::read_to_string(&key_file)
            .map_err(|e| format!("cannot read the agent key at {}: {e}", key_file.display()))?;
        if key.trim().is_empty() {
            return Err(format!("the agent key at {} is empty", key_file.display()));
        }
        let workspace_id = need("CODITECT_WORKSPACE_ID")?
            .parse()
            .map_err(|_| "CODITECT_WORKSPACE_ID is not a workspace id".to_string())?;
        let optional = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let (hub_socket, hub_url) = match (
            optional("CODITECT_HUB_SOCKET"),
            optional("CODITECT_HUB_URL"),
        ) {
            (Some(socket), _) => (Some(PathBuf::from(socket)), SOCKET_HUB_URL.to_string()),
            (None, Some(url)) => {
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| format!("CODITECT_HUB_URL is not a URL: {e}"))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err("CODITECT_HUB_URL must be http:// or https://".into());
                }
                (None, url.trim_end_matches('/').to_string())
            }
            (None, None) => {
                return Err("CODITECT_HUB_SOCKET (or CODITECT_HUB_URL) is not set".into());
            }
        };
        Ok(AgentEnv {
            hub_socket,
            hub_url,
            key_file,
            workspace_id,
            instance: need("CODITECT_INSTANCE")?,
            home: PathBuf::from(need("HOME")?),
            post_create: optional("CODITECT_POST_CREATE_COMMAND"),
            post_start: optional("CODITECT_POST_START_COMMAND"),
            command: optional("CODITECT_WORKSPACE_COMMAND"),
        })
    }

    fn state_dir(&self) -> PathBuf {
        self.home.join(".coditect")
    }

    /// The daemon's configuration inside the workspace.
    pub fn config(&self, mut config: Config) -> Config {
        let dir = self.state_dir();
        config.monitor.unix_socket_path = dir.join("monitor.sock");
        config.monitor.http_listen = None;
        config.monitor.tcp_enabled = false;
        config.storage.sqlite_path = dir.join("monitor.db");
        config.storage.export_dir = dir.join("exports");
        config.server_hub.url = Some(self.hub_url.clone());
        config.server_hub.unix_socket = self.hub_socket.clone();
        config.server_hub.api_key = None;
        config.server_hub.api_key_file = Some(self.key_file.clone());
        config.server_hub.workspace_id = Some(self.workspace_id.to_string());
        config
    }
}

/// Runs the agent until SIGTERM or the hub says this launch is over.
pub async fn run(env: AgentEnv, config: Config) -> ExitCode {
    let config = env.config(config);
    if let Err(e) = watch_home(&env, &config).await {
        tracing::warn!(error = %e, "cannot watch the home; file events will not be recorded");
    }
    let daemon = match Daemon::start(config).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the agent cannot start");
            return ExitCode::from(1);
        }
    };
    let store = daemon.store();
    let http = match crate::hub_http::client(
        concat!("codi-monitor-agent/", env!("CARGO_PKG_VERSION")),
        Duration::from_secs(5),
        REPORT_TIMEOUT,
        env.hub_socket.as_deref(),
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up HTTP to the hub");
            return ExitCode::from(1);
        }
    };
    let (over_tx, over_rx) = tokio::sync::oneshot::channel::<()>();
    let reporter = tokio::spawn(report_loop(http, env.clone(), store.clone(), over_tx));
    let commands = tokio::spawn(run_commands(env.clone(), store));
    daemon
        .run(async move {
            tokio::select! {
                () = signalled() => tracing::info!("asked to stop"),
                _ = over_rx => tracing::info!("the hub says this launch is over; stopping"),
            }
        })
        .await;
    reporter.abort();
    // Dropping the task drops its children: they are killed (kill_on_drop).
    commands.abort();
    let _ = commands.await;
    ExitCode::SUCCESS
}

/// Records the home as a watched path (excluding the agent's own files), before the
/// daemon starts watching what its store lists.
async fn watch_home(env: &AgentEnv, config: &Config) -> anyhow::Result<()> {
    let store = MonitorStore::open(&config.storage.sqlite_path, config.synchronous()?).await?;
    let watched = store.watches().await?;
    if !watched.iter().any(|w| w.path == env.home) {
        store
            .watch_add(WatchedPath {
                path: env.home.clone(),
                recursive: true,
                patterns: vec![
                    "!.coditect/**".into(),
                    "!.cache/**".into(),
                    "!.git/**".into(),
                ],
                mode: WatchMode::Native,
                session_id: None,
            })
            .await?;
    }
    store.close().await;
    Ok(())
}

/// Reports every `report_every_ms` the hub asks for; tells `over` on a 409.
async fn report_loop(
    http: reqwest::Client,
    env: AgentEnv,
    store: MonitorStore,
    over: tokio::sync::oneshot::Sender<()>,
) {
    let url = format!("{}/api/v1/agent/report", env.hub_url);
    let mut every = Duration::from_secs(2);
    let mut failures = 0u32;
    loop {
        let body = serde_json::json!({
            "workspace_id": env.workspace_id,
            "instance": env.instance,
            "ready": true,
            "activity_at": store.last_append(),
        });
        let sent = http
            .post(&url)
            .bearer_auth(crate::sync::ApiKey::File(env.key_file.clone()).current())
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(res) if res.status().is_success() => {
                if failures > 0 {
                    tracing::info!("reaching the hub again");
                }
                failures = 0;
                if let Ok(bytes) = crate::hub_http::read_body(res, 1 << 20).await
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && let Some(ms) = v.get("report_every_ms").and_then(|m| m.as_u64())
                {
                    every = Duration::from_millis(ms.clamp(200, 60_000));
                }
            }
            Ok(res) if res.status() == reqwest::StatusCode::CONFLICT => {
                let _ = over.send(());
                return;
            }
            Ok(res) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(status = res.status().as_u16(), "the hub refused a report");
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(error = %crate::hub_http::without_url(&e), "cannot reach the hub");
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The template's commands, in the home, one after the other; the last one (the
/// workspace command) may run for the workspace's life.
async fn run_commands(env: AgentEnv, store: MonitorStore) {
    let marker = env.state_dir().join("post-create.done");
    if let Some(cmd) = &env.post_create
        && !marker.exists()
        && run_one("post-create", cmd, &env.home, &store).await
    {
        let _ = std::fs::write(&marker, b"");
    }
    if let Some(cmd) = &env.post_start {
        run_one("post-start", cmd, &env.home, &store).await;
    }
    if let Some(cmd) = &env.command {
        run_one("command", cmd, &env.home, &store).await;
    }
}

/// Runs `sh -c cmd` in `home`, its output lines stored as entries; true if it exited 0.
async fn run_one(what: &'static str, cmd: &str, home: &Path, store: &MonitorStore) -> bool {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(home)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            record(store, Level::Error, what, format!("cannot start: {e}")).await;
            return false;
        }
    };
    record(store, Level::Info, what, format!("started: {cmd}")).await;
    let out = child
        .stdout
        .take()
        .map(|o| lines(o, Level::Info, what, store.clone()));
    let err = child
        .stderr
        .take()
        .map(|e| lines(e, Level::Warn, what, store.clone()));
    let status = child.wait().await;
    for task in [out, err].into_iter().flatten() {
        let _ = task.await;
    }
    match status {
        Ok(s) if s.success() => {
            record(store, Level::Info, what, "exited 0".into()).await;
            true
        }
        Ok(s) => {
            record(store, Level::Error, what, format!("exited: {s}")).await;
            false
        }
        Err(e) => {
            record(
                store,
                Level::Error,
                what,
                format!("cannot wait for it: {e}"),
            )
            .await;
            false
        }
    }
}

fn lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    level: Level,
    what: &'static str,
    store: MonitorStore,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            record(&store, level, what, line).await;
        }
    })
}

async fn record(store: &MonitorStore, level: Level, what: &str, message: String) {
    let message: String = message.chars().take(8 * 1024).collect();
    let entry = NewEntry {
        id: uuid::Uuid::now_v7(),
        ts: chrono::Utc::now().timestamp_micros(),
        level,
        component: "workspace".into(),
        message,
        metadata: Some(serde_json::json!({ "source": what }).to_string()),
        session_id: None,
    };
    if let Err(e) = store.append(vec![entry]).await {
        tracing::warn!(error = %e, "cannot store a command's output");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::HashMap;

    fn env_with(extra: &[(&str, &str)], key_file: &Path) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("CODITECT_AGENT_KEY_FILE", key_file.to_str().unwrap()),
            (
                "CODITECT_WORKSPACE_ID",
                "01a233ab-72cb-720f-a3d2-ac42aa3dcc80",
            ),
            ("CODITECT_INSTANCE", "tok"),
            ("HOME", "/home/coder"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    #[test]
    fn the_hub_is_reached_by_socket_or_by_url_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("agent-key");
        std::fs::write(&key, "cdk_x").unwrap();
        let parse = |extra: &[(&str, &str)]| {
            let env = env_with(extra, &key);
            AgentEnv::from_env(|k| env.get(k).cloned())
        };
        let socket = parse(&[("CODITECT_HUB_SOCKET", "/run/coditect/hub/hub.sock")]).unwrap();
        assert_eq!(
            socket.hub_socket.as_deref(),
            Some(Path::new("/run/coditect/hub/hub.sock"))
        );
        assert_eq!(socket.hub_url, SOCKET_HUB_URL);
        let config = socket.config(Config::default());
        assert_eq!(config.server_hub.unix_socket, socket.hub_socket);

        let url = parse(&[("CODITECT_HUB_URL", "http://coditect-hub.coditect.svc:8080/")]).unwrap();
        assert_eq!(url.hub_socket, None);
        assert_eq!(url.hub_url, "http://coditect-hub.coditect.svc:8080");
        let config = url.config(Config::default());
        assert_eq!(config.server_hub.unix_socket, None);
        assert_eq!(
            config.server_hub.url.as_deref(),
            Some("http://coditect-hub.coditect.svc:8080")
        );

        let err = parse(&[]).unwrap_err();
        assert!(err.contains("CODITECT_HUB_SOCKET"), "{err}");
        let err = parse(&[("CODITECT_HUB_URL", "ftp://hub")]).unwrap_err();
        assert!(err.contains("http"), "{err}");
        let err = parse(&[("CODITECT_HUB_URL", "not a url")]).unwrap_err();
        assert!(err.contains("not a URL"), "{err}");
    }
}
