//! Configuration: defaults < TOML file (`--config`, `CODI_CONFIG`, or
//! `$XDG_CONFIG_HOME/codi/monitor.toml` when it exists) < `CODI_*` variables < flags.
//!
//! The sections are ADR-031's: `[general]`, `[storage]`, `[monitor]`, `[server_hub]`.
//! `codi2` finds the socket and the database through the same [`paths`] functions and
//! the same variables, so both always agree.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub general: General,
    pub storage: Storage,
    pub monitor: Monitor,
    pub server_hub: ServerHub,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct General {
    /// `tracing` filter, e.g. `info` or `codi_monitor=debug`.
    pub log_level: String,
    /// Log as JSON lines (for a service manager) instead of text.
    pub log_json: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    pub sqlite_path: PathBuf,
    /// `full` (survives power loss) or `normal` (survives a crash of the daemon).
    pub synchronous: String,
    /// Entries older than this are deleted: only synced ones when a hub is configured
    /// (unsynced ones are kept), all of them otherwise.
    pub retention_days: u32,
    /// Where exported files are archived (content-addressed).
    pub export_dir: PathBuf,
    /// A cap on the database (MiB); when reached, the oldest synced entries make room.
    /// `None`: the disk's own size is the cap.
    pub max_size_mb: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Monitor {
    pub unix_socket_path: PathBuf,
    /// The TCP listener (containers); off unless enabled, and then its first frame must be
    /// a `Hello` with `tcp_token`.
    pub tcp_enabled: bool,
    pub tcp_listen: SocketAddr,
    pub tcp_token: Option<Secret>,
    /// How long a TCP client has to present the token before it is disconnected.
    #[serde(with = "humantime_serde_compat")]
    pub tcp_auth_timeout: Duration,
    /// Most concurrent IPC connections. At the limit, a new client takes the place of the
    /// one idle longest, so a local client always gets in.
    pub max_connections: usize,
    /// Most TCP connections that have not presented the token yet; at the limit the oldest
    /// of them is dropped for a new one. They never take a Unix client's place.
    pub max_unauthenticated: usize,
    /// A connection with no request for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Most watches at once.
    pub max_watches: usize,
    /// Most include/exclude globs in one watch (each at most 512 bytes).
    pub max_patterns: usize,
    /// Most files and directories under all watches together; a watch that would take more
    /// is refused, and files past it are not recorded (the watcher reports it).
    pub max_watched_files: usize,
    /// File events for one path within this window become one entry.
    #[serde(with = "humantime_serde_compat")]
    pub debounce: Duration,
    /// How often polling watches scan their tree.
    #[serde(with = "humantime_serde_compat")]
    pub scan_interval: Duration,
    /// File events waiting to be processed; past it the queue overflows and the watched
    /// trees are rescanned (nothing is missed, but events become coarser).
    pub event_queue: usize,
    /// Globs (matched against the path under its watch, and the file name) of files to
    /// archive when they are created or changed.
    pub export_patterns: Vec<String>,
    /// Move exported files into the archive instead of copying them.
    pub export_move: bool,
    /// Files larger than this (MiB) are not archived.
    pub export_max_mb: u64,
    /// An export that would leave less than this free (MiB) on the archive's file system
    /// is not made: the store's own room is never spent on copies.
    pub export_min_free_mb: u64,
    /// The loopback HTTP port for `/health` and `/metrics`; `None` = off.
    pub http_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerHub {
    /// The hub's base URL; no sync when absent.
    pub url: Option<String>,
    /// Reach the hub through this Unix socket instead of the network (what a workspace's
    /// agent does); `url` then only names the host in requests.
    pub unix_socket: Option<PathBuf>,
    pub api_key: Option<Secret>,
    /// A file holding the key instead, read before every request: a key rotated in the
    /// file is used without a restart (the workspace agent's key is handed over this way).
    pub api_key_file: Option<PathBuf>,
    pub workspace_id: Option<String>,
    /// Most entries per batch (the hub takes at most 1000).
    pub batch_size: u32,
    /// How often to look for new entries when there is nothing to send.
    #[serde(with = "humantime_serde_compat")]
    pub sync_interval: Duration,
    /// The longest wait between attempts while the hub is unreachable.
    #[serde(with = "humantime_serde_compat")]
    pub max_backoff: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
}

impl Default for ServerHub {
    fn default() -> ServerHub {
        ServerHub {
            url: None,
            unix_socket: None,
            api_key: None,
            api_key_file: None,
            workspace_id: None,
            batch_size: 500,
            sync_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for General {
    fn default() -> General {
        General {
            log_level: "info".into(),
            log_json: false,
        }
    }
}

impl Default for Storage {
    fn default() -> Storage {
        Storage {
            sqlite_path: paths::default_db(),
            synchronous: "full".into(),
            retention_days: 30,
            export_dir: paths::default_export_dir(),
            max_size_mb: None,
        }
    }
}

impl Default for Monitor {
    fn default() -> Monitor {
        Monitor {
            unix_socket_path: paths::default_socket(),
            tcp_enabled: false,
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            tcp_token: None,
            tcp_auth_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_unauthenticated: 64,
            idle_timeout: Duration::from_secs(600),
            max_watches: 128,
            max_patterns: 64,
            max_watched_files: 200_000,
            debounce: Duration::from_millis(100),
            scan_interval: Duration::from_secs(2),
            event_queue: 65_536,
            export_patterns: Vec::new(),
            export_move: false,
            export_max_mb: 64,
            export_min_free_mb: 256,
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9848))),
        }
    }
}

/// A token or key: shown as `***` by `Debug`, so a logged configuration leaks nothing.
pub use coditect_proto::Secret;

/// Values given on the command line (they win over everything).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub db: Option<PathBuf>,
}

/// Where the daemon and `codi2` look, unless told otherwise.
pub mod paths {
    use std::path::PathBuf;

    /// `$XDG_RUNTIME_DIR/codi-monitor.sock`, else `/tmp/codi-<uid>/codi-monitor.sock` (a
    /// directory of the user's own, mode 0700, so nobody else can take the path first).
    pub fn default_socket() -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("codi-monitor.sock"),
            None => PathBuf::from(format!("/tmp/codi-{}", user_tag())).join("codi-monitor.sock"),
        }
    }

    /// `$XDG_DATA_HOME/codi/monitor.db`, else `~/.local/share/codi/monitor.db`.
    pub fn default_db() -> PathBuf {
        data_home().join("codi").join("monitor.db")
    }

    /// `$XDG_DATA_HOME/codi/exports`, else `~/.local/share/codi/exports`.
    pub fn default_export_dir() -> PathBuf {
        data_home().join("codi").join("exports")
    }

    /// `$XDG_CONFIG_HOME/codi`, else `~/.config/codi`.
    pub fn config_dir() -> PathBuf {
        match std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("codi"),
            None => home().join(".config").join("codi"),
        }
    }

    fn data_home() -> PathBuf {
        match std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => home().join(".local").join("share"),
        }
    }

    fn home() -> PathBuf {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
    }

    /// The user's id (so two users of one machine never share a socket).
    fn user_tag() -> String {
        nix::unistd::getuid().to_string()
    }
}

/// A configuration problem, naming the key and where the value came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads from `env` (a lookup, so tests need not touch the process environment).
    pub fn load(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = overrides
            .config
            .clone()
            .or_else(|| env("CODI_CONFIG").map(PathBuf::from));
        let mut config = match file {
            Some(path) => Config::from_file(&path)?,
            None => {
                let implicit = paths::config_dir().join("monitor.toml");
                if implicit.exists() {
                    Config::from_file(&implicit)?
                } else {
                    Config::default()
                }
            }
        };
        config.apply_env(&env)?;
        if let Some(s) = &overrides.socket {
            config.monitor.unix_socket_path = s.clone();
        }
        if let Some(d) = &overrides.db {
            config.storage.sqlite_path = d.clone();
        }
        config.check()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        // toml's message quotes the offending line, which may hold a token: keep only its
        // first line (what and where).
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            ConfigError(format!("{}: {msg}", path.display()))
        })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim()
                .parse()
                .map_err(|e| ConfigError(format!("{key}={v:?} is not valid: {e}")))
        }
        if let Some(v) = env("CODI_SOCKET") {
            self.monitor.unix_socket_path = v.into();
        }
        if let Some(v) = env("CODI_DB") {
            self.storage.sqlite_path = v.into();
        }
        if let Some(v) = env("CODI_LOG_LEVEL") {
            self.general.log_level = v;
        }
        if let Some(v) = env("CODI_LOG_JSON") {
            self.general.log_json = parse("CODI_LOG_JSON", &v)?;
        }
        if let Some(v) = env("CODI_SYNCHRONOUS") {
            self.storage.synchronous = v;
        }
        if let Some(v) = env("CODI_RETENTION_DAYS") {
            self.storage.retention_days = parse("CODI_RETENTION_DAYS", &v)?;
        }
        if let Some(v) = env("CODI_TCP_ENABLED") {
            self.monitor.tcp_enabled = parse("CODI_TCP_ENABLED", &v)?;
        }
        if let Some(v) = env("CODI_TCP_LISTEN") {
            self.monitor.tcp_listen = parse("CODI_TCP_LISTEN", &v)?;
        }
        if let Some(v) = env("CODI_TCP_TOKEN") {
            self.monitor.tcp_token = Some(Secret::new(v));
        }
        if let Some(v) = env("CODI_HTTP_LISTEN") {
            self.monitor.http_listen = match v.trim() {
                "" | "off" => None,
                other => Some(parse("CODI_HTTP_LISTEN", other)?),
            };
        }
        if let Some(v) = env("CODI_MAX_SIZE_MB") {
            self.storage.max_size_mb = Some(parse("CODI_MAX_SIZE_MB", &v)?);
        }
        if let Some(v) = env("CODI_EXPORT_DIR") {
            self.storage.export_dir = v.into();
        }
        if let Some(v) = env("CODI_HUB_URL") {
            self.server_hub.url = Some(v);
        }
        if let Some(v) = env("CODI_HUB_API_KEY_FILE") {
            self.server_hub.api_key_file = Some(v.into());
        }
        if let Some(v) = env("CODI_HUB_SOCKET") {
            self.server_hub.unix_socket = Some(v.into());
        }
        if let Some(v) = env("CODI_HUB_API_KEY") {
            self.server_hub.api_key = Some(Secret::new(v));
        }
        if let Some(v) = env("CODI_HUB_WORKSPACE_ID") {
            self.server_hub.workspace_id = Some(v);
        }
        Ok(())
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.monitor.tcp_enabled
            && self
                .monitor
                .tcp_token
                .as_ref()
                .map(Secret::expose)
                .is_none_or(|t| t.len() < 16)
        {
            return Err(ConfigError(
                "monitor.tcp_enabled needs monitor.tcp_token (CODI_TCP_TOKEN) of at least 16 characters"
                    .into(),
            ));
        }
        self.synchronous()?;
        if let Some(addr) = self.monitor.http_listen
            && !addr.ip().is_loopback()
        {
            return Err(ConfigError(format!(
                "monitor.http_listen={addr}: health and metrics are served on loopback only"
            )));
        }
        if self.monitor.event_queue < 16 {
            return Err(ConfigError(
                "monitor.event_queue must be at least 16".into(),
            ));
        }
        for p in &self.monitor.export_patterns {
            if let Err(e) = globset::Glob::new(p) {
                return Err(ConfigError(format!("monitor.export_patterns: {p:?}: {e}")));
            }
        }
        let hub = &self.server_hub;
        let set = [
            hub.url.is_some(),
            hub.api_key.is_some() || hub.api_key_file.is_some(),
            hub.workspace_id.is_some(),
        ];
        if set.contains(&true) && set.contains(&false) {
            return Err(ConfigError(
                "sync needs all of server_hub.url, server_hub.api_key (or api_key_file) and \
                 server_hub.workspace_id (CODI_HUB_URL, CODI_HUB_API_KEY, CODI_HUB_WORKSPACE_ID)"
                    .into(),
            ));
        }
        if let Some(url) = &hub.url {
            crate::hub_http::HubUrl::parse(url).map_err(|why| {
                ConfigError(match url.contains('@') {
                    true => format!("server_hub.url is not valid: {why}"),
                    false => format!("server_hub.url={url:?} is not valid: {why}"),
                })
            })?;
        }
        if let Some(ws) = &hub.workspace_id
            && uuid::Uuid::parse_str(ws).is_err()
        {
            return Err(ConfigError(format!(
                "server_hub.workspace_id={ws:?} is not a workspace id (a UUID)"
            )));
        }
        if !(1..=1000).contains(&hub.batch_size) {
            return Err(ConfigError(
                "server_hub.batch_size must be between 1 and 1000".into(),
            ));
        }
        let at_least_one = [
            ("monitor.max_connections", self.monitor.max_connections),
            (
                "monitor.max_unauthenticated",
                self.monitor.max_unauthenticated,
            ),
            ("monitor.max_watches", self.monitor.max_watches),
            ("monitor.max_patterns", self.monitor.max_patterns),
            ("monitor.max_watched_files", self.monitor.max_watched_files),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{key} must be at least 1")));
        }
        if self.monitor.idle_timeout < Duration::from_secs(1) {
            return Err(ConfigError(
                "monitor.idle_timeout must be at least 1s".into(),
            ));
        }
        Ok(())
    }

    pub fn synchronous(&self) -> Result<coditect_store::Synchronous, ConfigError> {
        self.storage.synchronous.parse().map_err(|e| {
            ConfigError(format!(
                "storage.synchronous={:?}: {e}",
                self.storage.synchronous
            ))
        })
    }

    /// How long the daemon waits for in-flight work when asked to stop.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "[storage]\nsqlite_path = \"/from/file.db\"\nretention_days = 7\n\
             [monitor]\nunix_socket_path = \"/from/file.sock\"\n\
             [server_hub]\nurl = \"http://hub:8080\"\napi_key = \"k\"\nworkspace_id = \"0193a0e4-4c8a-7000-8000-000000000001\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(file.clone()),
            ..Overrides::default()
        };
        let c = Config::load(&o, env_of(&[("CODI_DB", "/from/env.db")])).unwrap();
        assert_eq!(c.storage.sqlite_path, PathBuf::from("/from/env.db"));
        assert_eq!(c.storage.retention_days, 7);
        assert_eq!(c.monitor.unix_socket_path, PathBuf::from("/from/file.sock"));
        assert_eq!(c.server_hub.url.as_deref(), Some("http://hub:8080"));
        let o = Overrides {
            config: Some(file),
            socket: Some("/flag.sock".into()),
            db: Some("/flag.db".into()),
        };
        let c = Config::load(&o, env_of(&[("CODI_DB", "/from/env.db")])).unwrap();
        assert_eq!(c.storage.sqlite_path, PathBuf::from("/flag.db"));
        assert_eq!(c.monitor.unix_socket_path, PathBuf::from("/flag.sock"));
    }

    #[test]
    fn bad_values_are_named_and_secrets_not_echoed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "[monitor]\ntcp_token = \"s3cret-s3cret-s3cret\"\nbogus = 1\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(file),
            ..Overrides::default()
        };
        let e = Config::load(&o, env_of(&[])).unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");

        let e = Config::load(
            &Overrides::default(),
            env_of(&[("CODI_RETENTION_DAYS", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("CODI_RETENTION_DAYS"), "{e}");
        let e = Config::load(
            &Overrides::default(),
            env_of(&[("CODI_TCP_ENABLED", "true")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tcp_token"), "{e}");
        let mut c = Config::default();
        c.monitor.tcp_token = Some(Secret::new("s3cret-s3cret-s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn the_socket_is_per_user_without_a_runtime_dir() {
        let s = paths::default_socket();
        assert!(s.to_string_lossy().contains("codi-monitor"), "{s:?}");
    }
}

/// `"100ms"`, `"2s"` in the file (humantime), as a `Duration`.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
