//! The command line, as clap reads it.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use coditect_proto::Level;
use std::path::PathBuf;

const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  failure
  2  usage or bad input
  3  codi-monitor unreachable
  4  hub unreachable
  5  credentials missing or refused
  6  not found

Environment: CODI_CONFIG, CODI_SOCKET, CODI_DB (as codi-monitor reads them), CODI_HUB_URL,
CODI_HUB_API_KEY, CODI_PASSWORD, CODI_TIMEOUT. Credentials from `codi2 login` are kept in
$XDG_CONFIG_HOME/codi/credentials.toml (mode 0600).";

/// The CODITECT command line: logs, file watches and sessions through codi-monitor (or its
/// SQLite file when no daemon runs), and search and live tail on the hub.
#[derive(Debug, Parser)]
#[command(name = "codi2", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// codi-monitor's TOML configuration file [env: CODI_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// codi-monitor's Unix socket [env: CODI_SOCKET]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// codi-monitor's SQLite file (used directly when no daemon answers) [env: CODI_DB]
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Machine-readable output: JSON (one object per line for lists of entries)
    #[arg(long, global = true)]
    pub json: bool,
    /// Say on stderr which way a command went (daemon, SQLite file, hub connection)
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// How long codi-monitor may take to accept or answer before it counts as unreachable
    #[arg(long, global = true, value_name = "DURATION", env = "CODI_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a log entry (or every line of stdin) through codi-monitor
    Log(LogArgs),
    /// Search the entries stored by codi-monitor on this machine
    Query(QueryArgs),
    /// Manage the paths codi-monitor watches
    #[command(subcommand)]
    Watch(WatchCommand),
    /// Open or close a session that entries and file events are attributed to
    #[command(subcommand)]
    Session(SessionCommand),
    /// Whether codi-monitor runs, and the health of its parts
    Status,
    /// Log in to a hub (with an e-mail and password, or an API key)
    Login(LoginArgs),
    /// Forget the credentials of a hub
    Logout(LogoutArgs),
    /// Search the hub's logs
    Logs(LogsArgs),
    /// Follow the hub's logs live (reconnects and resumes after a dropped connection)
    Tail(TailArgs),
    /// Workspaces on the hub: list, create, start, stop, restart, delete, state
    #[command(subcommand)]
    Ws(WsCommand),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum WsCommand {
    /// The workspaces of your tenant
    List {
        #[command(flatten)]
        hub: HubArg,
    },
    /// Create a workspace (started unless --no-start)
    Create {
        /// 1 to 64 letters, digits, spaces, `-`, `_` or `.`
        name: String,
        /// The template's id (default: the hub's built-in template)
        #[arg(long, value_name = "ID")]
        template: Option<String>,
        /// Create it stopped
        #[arg(long)]
        no_start: bool,
        /// Wait until it is running (or has failed)
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        hub: HubArg,
    },
    /// Start a workspace (by id or name)
    Start(WsTarget),
    /// Stop a workspace; its home stays
    Stop(WsTarget),
    /// Stop a workspace and start it again
    Restart(WsTarget),
    /// Delete a workspace and everything it owned
    Delete(WsTarget),
    /// Print a workspace's saved state, or replace it with --set
    State {
        /// The workspace's id or name
        workspace: String,
        /// The new state: a JSON object, or `-` to read it from stdin
        #[arg(long, value_name = "JSON")]
        set: Option<String>,
        /// Only replace the state if it is still at this version (the ETag `get` printed);
        /// default: whatever it is
        #[arg(long, value_name = "ETAG", requires = "set")]
        if_match: Option<String>,
        #[command(flatten)]
        hub: HubArg,
    },
}

#[derive(Debug, Args)]
pub struct WsTarget {
    /// The workspace's id or name
    pub workspace: String,
    /// Wait until the change is done (or has failed)
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub hub: HubArg,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// The message; `-` (or --stdin) reads one entry per line from stdin
    #[arg(required_unless_present = "stdin")]
    pub message: Option<String>,
    /// Read one entry per line from stdin
    #[arg(long, conflicts_with = "message")]
    pub stdin: bool,
    #[arg(long, default_value = "info", value_parser = parse_level)]
    pub level: Level,
    #[arg(long, default_value = "cli")]
    pub component: String,
    /// The session the entries belong to
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
    /// A JSON object stored with every entry
    #[arg(long, value_name = "JSON", value_parser = parse_metadata)]
    pub metadata: Option<serde_json::Value>,
}

/// Filters shared by `query`, `logs` and `tail`.
#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// This level and worse
    #[arg(long, value_parser = parse_level)]
    pub level: Option<Level>,
    #[arg(long)]
    pub component: Option<String>,
    #[arg(long, value_name = "ID")]
    pub session: Option<String>,
}

/// A time window: `--since 1h` (a duration ago) or an RFC 3339 time.
#[derive(Debug, Clone, Args)]
pub struct Window {
    /// Entries from this time: a duration ago (30m, 1h, 2d) or an RFC 3339 time
    #[arg(long, value_parser = parse_time, value_name = "WHEN")]
    pub since: Option<DateTime<Utc>>,
    /// Entries before this time: a duration ago or an RFC 3339 time
    #[arg(long, value_parser = parse_time, value_name = "WHEN")]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub window: Window,
    /// The newest entries up to this many, printed oldest first
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum WatchCommand {
    /// Watch a directory (and, unless --no-recursive, everything below it)
    Add {
        path: PathBuf,
        /// Only files matching this glob (relative to PATH; a leading `!` excludes); repeatable
        #[arg(long = "pattern", value_name = "GLOB")]
        patterns: Vec<String>,
        /// Only PATH itself, not its subdirectories
        #[arg(long)]
        no_recursive: bool,
        /// Attribute the events under PATH to this open session
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Scan periodically instead of using the kernel's events (WSL2 mounts, network shares)
        #[arg(long)]
        poll: bool,
    },
    /// Stop watching a path
    Remove { path: PathBuf },
    /// The watched paths
    List,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Open a session and print its id
    Start {
        /// Who works in this session (a person or an agent)
        #[arg(long)]
        identity: String,
        #[arg(long, value_name = "TYPE")]
        agent_type: Option<String>,
        /// The session's id (default: a new UUIDv7)
        #[arg(long)]
        id: Option<String>,
    },
    /// Close a session
    End { id: String },
}

#[derive(Debug, Args)]
pub struct HubArg {
    /// The hub's base URL (default: the hub last logged in to) [env: CODI_HUB_URL]
    #[arg(long, value_name = "URL")]
    pub hub: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The hub's base URL, e.g. https://hub.example.com [env: CODI_HUB_URL]
    #[arg(long, value_name = "URL")]
    pub hub: Option<String>,
    /// Log in as this user; the password comes from CODI_PASSWORD or stdin (never a flag)
    #[arg(long, conflicts_with = "api_key")]
    pub email: Option<String>,
    /// Log in with an API key, read from CODI_HUB_API_KEY or stdin
    #[arg(long)]
    pub api_key: bool,
    /// The workspace the session is for (e-mail login)
    #[arg(long, value_name = "ID", requires = "email")]
    pub workspace: Option<String>,
    /// Log in in the browser with the hub's single sign-on (OpenID Connect or GitHub); the
    /// URL is printed too, for machines without a browser ($BROWSER opens it when set)
    #[arg(long, conflicts_with_all = ["email", "api_key"])]
    pub sso: bool,
    /// Which single sign-on, when the hub offers several (oidc, github)
    #[arg(long, value_name = "NAME", requires = "sso")]
    pub provider: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    pub hub: HubArg,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub hub: HubArg,
    #[arg(long, value_name = "ID")]
    pub workspace: Option<String>,
    #[command(flatten)]
    pub filters: Filters,
    #[command(flatten)]
    pub window: Window,
    /// Words the message must contain
    #[arg(short, long, value_name = "TEXT")]
    pub query: Option<String>,
    /// The newest entries up to this many, printed oldest first
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub hub: HubArg,
    #[arg(long, value_name = "ID")]
    pub workspace: Option<String>,
    #[command(flatten)]
    pub filters: Filters,
    /// Only messages containing this text (any case)
    #[arg(short, long, value_name = "TEXT")]
    pub query: Option<String>,
}

fn parse_level(s: &str) -> Result<Level, String> {
    s.parse()
}

fn parse_metadata(s: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(s) {
        Ok(v @ serde_json::Value::Object(_)) => Ok(v),
        Ok(_) => Err("metadata must be a JSON object".into()),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// `30m`, `1h`, `2d 4h` (that long ago) or an RFC 3339 time (`2026-11-26T03:00:00Z`).
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time_at(s, Utc::now())
}

pub fn parse_time_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let expected = "expected a duration ago (30m, 1h, 2d) or an RFC 3339 time \
                    (2026-11-26T03:00:00Z)";
    let ago = humantime::parse_duration(s).map_err(|_| expected.to_string())?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| "that is too long ago".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn times_are_durations_ago_or_rfc3339() {
        let now = DateTime::parse_from_rfc3339("2026-11-26T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            parse_time_at("1h", now).unwrap().to_rfc3339(),
            "2026-11-26T02:00:00+00:00"
        );
        assert_eq!(
            parse_time_at("2026-11-25T01:02:03.5+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-11-25T00:02:03.500+00:00"
        );
        let e = parse_time_at("yesterday-ish", now).unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn metadata_must_be_an_object() {
        assert!(parse_metadata(r#"{"a":1}"#).is_ok());
        assert!(parse_metadata("[1]").is_err());
        assert!(parse_metadata("{").is_err());
    }
}
