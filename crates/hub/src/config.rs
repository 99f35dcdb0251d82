//! Hub configuration: defaults < TOML file (`--config FILE`) < environment (`CODITECT_*`)
//! < command-line flags.
//!
//! Every setting is declared once in [`SETTINGS`] (its key, flag, environment variable,
//! default and help); the four layers are merged per key, remembering where each value
//! came from, and then parsed into typed fields. A bad value is reported with the key,
//! its source and what is allowed, and the binary exits with code 2.

use clap::{Arg, ArgAction, ArgMatches, Command};
use coditect_store::{PgConfig, SqliteConfig, StoreConfig, Synchronous};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One configurable value, as it appears in each layer.
pub struct Setting {
    /// Key in the TOML file.
    pub key: &'static str,
    /// Long flag, without the dashes.
    pub flag: &'static str,
    pub env: &'static str,
    /// `None`: unset unless given.
    pub default: Option<&'static str>,
    pub help: &'static str,
    /// Never echo the value (it may carry a password).
    pub secret: bool,
}

const fn setting(
    key: &'static str,
    flag: &'static str,
    env: &'static str,
    default: Option<&'static str>,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        flag,
        env,
        default,
        help,
        secret: false,
    }
}

pub const SETTINGS: &[Setting] = &[
    setting(
        "listen",
        "listen",
        "CODITECT_LISTEN",
        Some("127.0.0.1:8080"),
        "Address and port the HTTP API listens on (host:port)",
    ),
    setting(
        "data_dir",
        "data-dir",
        "CODITECT_DATA_DIR",
        Some("data"),
        "Directory for the node's embedded SQLite store and keys; created if missing, must be writable",
    ),
    Setting {
        secret: true,
        ..setting(
            "database_url",
            "database-url",
            "CODITECT_DATABASE_URL",
            None,
            "PostgreSQL URL for shared mode (postgres://user:password@host:port/db); absent = embedded SQLite only",
        )
    },
    setting(
        "log_format",
        "log-format",
        "CODITECT_LOG_FORMAT",
        Some("text"),
        "Log output on stderr: text or json",
    ),
    setting(
        "log_level",
        "log-level",
        "CODITECT_LOG_LEVEL",
        Some("info"),
        "Log filter (tracing directives such as info or coditect_hub=debug,info); RUST_LOG wins when set",
    ),
    setting(
        "otel_endpoint",
        "otel-endpoint",
        "CODITECT_OTEL_ENDPOINT",
        None,
        "Export the hub's own traces over OTLP/HTTP to this collector (http://HOST:4318; /v1/traces is added); also on when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set; absent = off",
    ),
    setting(
        "body_limit",
        "body-limit",
        "CODITECT_BODY_LIMIT",
        Some("5MiB"),
        "Largest request body accepted, in bytes or with a KiB/MiB suffix",
    ),
    setting(
        "request_timeout",
        "request-timeout",
        "CODITECT_REQUEST_TIMEOUT",
        Some("30s"),
        "Longest time a request may take before it is answered 503 (e.g. 30s, 2m)",
    ),
    setting(
        "header_read_timeout",
        "header-read-timeout",
        "CODITECT_HEADER_READ_TIMEOUT",
        Some("10s"),
        "Longest a connection may take to send a request's headers, from its first byte (or from the accept); slower clients are disconnected",
    ),
    setting(
        "keep_alive_timeout",
        "keep-alive-timeout",
        "CODITECT_KEEP_ALIVE_TIMEOUT",
        Some("60s"),
        "How long an idle keep-alive connection stays open between requests",
    ),
    setting(
        "max_connections",
        "max-connections",
        "CODITECT_MAX_CONNECTIONS",
        Some("16384"),
        "Most open connections (live tails included); more are answered 503 and closed",
    ),
    setting(
        "max_connections_per_ip",
        "max-connections-per-ip",
        "CODITECT_MAX_CONNECTIONS_PER_IP",
        Some("1024"),
        "Most open connections from one client address; more are answered 429 and closed (0 = no limit; behind a proxy every client shares its address)",
    ),
    setting(
        "shutdown_timeout",
        "shutdown-timeout",
        "CODITECT_SHUTDOWN_TIMEOUT",
        Some("30s"),
        "On SIGTERM/SIGINT, longest wait for in-flight requests before closing anyway",
    ),
    setting(
        "cors_origins",
        "cors-origins",
        "CODITECT_CORS_ORIGINS",
        None,
        "Comma-separated origins allowed by CORS (e.g. https://app.example.com); absent = CORS off",
    ),
    setting(
        "sqlite_synchronous",
        "sqlite-synchronous",
        "CODITECT_SQLITE_SYNCHRONOUS",
        Some("full"),
        "SQLite durability: full (acks survive power loss) or normal (acks survive a process crash only)",
    ),
    setting(
        "pg_pool_size",
        "pg-pool-size",
        "CODITECT_PG_POOL_SIZE",
        Some("16"),
        "Most PostgreSQL connections this replica opens",
    ),
    setting(
        "pg_statement_timeout",
        "pg-statement-timeout",
        "CODITECT_PG_STATEMENT_TIMEOUT",
        Some("30s"),
        "PostgreSQL statement and lock timeout per query",
    ),
    setting(
        "pg_connect_timeout",
        "pg-connect-timeout",
        "CODITECT_PG_CONNECT_TIMEOUT",
        Some("5s"),
        "Longest wait to open a PostgreSQL connection or borrow one from the pool",
    ),
    setting(
        "auth_issuer",
        "auth-issuer",
        "CODITECT_AUTH_ISSUER",
        Some("coditect"),
        "`iss` of access tokens (usually the hub's public URL); tokens with another are refused",
    ),
    setting(
        "auth_audience",
        "auth-audience",
        "CODITECT_AUTH_AUDIENCE",
        Some("coditect-api"),
        "`aud` of access tokens; tokens with another are refused",
    ),
    setting(
        "auth_access_ttl",
        "auth-access-ttl",
        "CODITECT_AUTH_ACCESS_TTL",
        Some("15m"),
        "Lifetime of access tokens",
    ),
    setting(
        "auth_session_idle_timeout",
        "auth-session-idle-timeout",
        "CODITECT_AUTH_SESSION_IDLE_TIMEOUT",
        Some("24h"),
        "A session unused for this long ends",
    ),
    setting(
        "auth_session_lifetime",
        "auth-session-lifetime",
        "CODITECT_AUTH_SESSION_LIFETIME",
        Some("30d"),
        "A session ends this long after login, however active",
    ),
    setting(
        "auth_session_cache_ttl",
        "auth-session-cache-ttl",
        "CODITECT_AUTH_SESSION_CACHE_TTL",
        Some("2s"),
        "How long a replica trusts its cached view of a session or API key (bounds how late other replicas see a logout)",
    ),
    setting(
        "auth_key_rotation",
        "auth-key-rotation",
        "CODITECT_AUTH_KEY_ROTATION",
        Some("30d"),
        "Age at which this node's token-signing key is replaced (old keys verify until their tokens expire)",
    ),
    setting(
        "auth_signing_key_file",
        "auth-signing-key-file",
        "CODITECT_AUTH_SIGNING_KEY_FILE",
        None,
        "PEM file (PKCS#8 RSA) to sign tokens with instead of generated keys in data_dir/keys; never rotated automatically",
    ),
    setting(
        "auth_login_max_failures",
        "auth-login-max-failures",
        "CODITECT_AUTH_LOGIN_MAX_FAILURES",
        Some("5"),
        "Failed logins allowed per (account, client address) within the window before that pair gets 429; one address across accounts: 10x; one account across addresses: past 10x every attempt is slowed (never refused)",
    ),
    setting(
        "auth_login_window",
        "auth-login-window",
        "CODITECT_AUTH_LOGIN_WINDOW",
        Some("15m"),
        "Window over which failed logins are counted",
    ),
    setting(
        "auth_argon2_memory_kib",
        "auth-argon2-memory-kib",
        "CODITECT_AUTH_ARGON2_MEMORY_KIB",
        Some("19456"),
        "Argon2id memory cost for new password hashes, KiB (OWASP: 19456 with 2 iterations)",
    ),
    setting(
        "auth_argon2_iterations",
        "auth-argon2-iterations",
        "CODITECT_AUTH_ARGON2_ITERATIONS",
        Some("2"),
        "Argon2id time cost (iterations) for new password hashes",
    ),
    setting(
        "bootstrap_email",
        "bootstrap-email",
        "CODITECT_BOOTSTRAP_EMAIL",
        None,
        "On a store without users: e-mail of the first platform admin to create",
    ),
    Setting {
        secret: true,
        ..setting(
            "bootstrap_password",
            "bootstrap-password",
            "CODITECT_BOOTSTRAP_PASSWORD",
            None,
            "On a store without users: password of the first platform admin (prefer the environment)",
        )
    },
    setting(
        "ingest_rate_per_tenant",
        "ingest-rate-per-tenant",
        "CODITECT_INGEST_RATE_PER_TENANT",
        Some("1000000"),
        "Log entries per second one tenant may send (one second of burst); 0 = unlimited",
    ),
    setting(
        "ingest_max_inflight",
        "ingest-max-inflight",
        "CODITECT_INGEST_MAX_INFLIGHT",
        Some("64"),
        "Ingestion requests processed at once (bounds memory); more wait up to 1 s, then 503",
    ),
    setting(
        "tail_queue",
        "tail-queue",
        "CODITECT_TAIL_QUEUE",
        Some("4096"),
        "Live-tail entries queued per connection; past it a slow client gets a `dropped` frame",
    ),
    setting(
        "tail_max_per_tenant",
        "tail-max-per-tenant",
        "CODITECT_TAIL_MAX_PER_TENANT",
        Some("10000"),
        "Live-tail connections one tenant may hold on one hub",
    ),
    setting(
        "log_max_past",
        "log-max-past",
        "CODITECT_LOG_MAX_PAST",
        Some("7d"),
        "Entries timestamped further in the past are rejected",
    ),
    setting(
        "log_max_future",
        "log-max-future",
        "CODITECT_LOG_MAX_FUTURE",
        Some("1h"),
        "Entries timestamped further in the future are rejected",
    ),
    setting(
        "log_retention",
        "log-retention",
        "CODITECT_LOG_RETENTION",
        Some("30d"),
        "How long log entries are kept (by entry timestamp)",
    ),
    setting(
        "log_retention_overrides",
        "log-retention-overrides",
        "CODITECT_LOG_RETENTION_OVERRIDES",
        None,
        "Per-tenant retention: comma-separated TENANT_ID=DURATION (e.g. 0193…=90d)",
    ),
    setting(
        "bootstrap_tenant",
        "bootstrap-tenant",
        "CODITECT_BOOTSTRAP_TENANT",
        Some("default"),
        "Name of the first tenant, created with the first admin",
    ),
    setting(
        "public_url",
        "public-url",
        "CODITECT_PUBLIC_URL",
        None,
        "The hub's URL as browsers reach it (e.g. https://hub.example.com); needed for SSO redirects",
    ),
    setting(
        "sso_oidc_issuer",
        "sso-oidc-issuer",
        "CODITECT_SSO_OIDC_ISSUER",
        None,
        "OpenID Connect issuer for single sign-on (its /.well-known/openid-configuration is read); absent = off",
    ),
    setting(
        "sso_oidc_client_id",
        "sso-oidc-client-id",
        "CODITECT_SSO_OIDC_CLIENT_ID",
        None,
        "The hub's client id at the OpenID Connect provider",
    ),
    Setting {
        secret: true,
        ..setting(
            "sso_oidc_client_secret",
            "sso-oidc-client-secret",
            "CODITECT_SSO_OIDC_CLIENT_SECRET",
            None,
            "The hub's client secret at the OpenID Connect provider (or sso_oidc_client_secret_file)",
        )
    },
    setting(
        "sso_oidc_client_secret_file",
        "sso-oidc-client-secret-file",
        "CODITECT_SSO_OIDC_CLIENT_SECRET_FILE",
        None,
        "File holding the OpenID Connect client secret",
    ),
    setting(
        "sso_github_client_id",
        "sso-github-client-id",
        "CODITECT_SSO_GITHUB_CLIENT_ID",
        None,
        "Client id of the hub's GitHub OAuth app; absent = GitHub login off",
    ),
    Setting {
        secret: true,
        ..setting(
            "sso_github_client_secret",
            "sso-github-client-secret",
            "CODITECT_SSO_GITHUB_CLIENT_SECRET",
            None,
            "Client secret of the hub's GitHub OAuth app (or sso_github_client_secret_file)",
        )
    },
    setting(
        "sso_github_client_secret_file",
        "sso-github-client-secret-file",
        "CODITECT_SSO_GITHUB_CLIENT_SECRET_FILE",
        None,
        "File holding the GitHub client secret",
    ),
    setting(
        "sso_github_url",
        "sso-github-url",
        "CODITECT_SSO_GITHUB_URL",
        Some("https://github.com"),
        "GitHub's web URL (GitHub Enterprise Server: https://HOST)",
    ),
    setting(
        "sso_github_api_url",
        "sso-github-api-url",
        "CODITECT_SSO_GITHUB_API_URL",
        Some("https://api.github.com"),
        "GitHub's API URL (GitHub Enterprise Server: https://HOST/api/v3)",
    ),
    setting(
        "sso_allowed_domains",
        "sso-allowed-domains",
        "CODITECT_SSO_ALLOWED_DOMAINS",
        None,
        "Comma-separated e-mail domains that may log in by SSO (e.g. example.com); absent = any",
    ),
    setting(
        "sso_provision",
        "sso-provision",
        "CODITECT_SSO_PROVISION",
        Some("false"),
        "Create an account on the first SSO login of a verified address in sso_allowed_domains (which it then requires); false: only existing accounts",
    ),
    setting(
        "sso_tenant",
        "sso-tenant",
        "CODITECT_SSO_TENANT",
        Some("default"),
        "Tenant of accounts created on first SSO login (made if missing)",
    ),
    setting(
        "sso_default_role",
        "sso-default-role",
        "CODITECT_SSO_DEFAULT_ROLE",
        Some("member"),
        "Role of accounts created on first SSO login: member or viewer",
    ),
    setting(
        "workspace_runtime",
        "workspace-runtime",
        "CODITECT_WORKSPACE_RUNTIME",
        Some("process"),
        "Runtime of the built-in workspace template: process, docker or kubernetes",
    ),
    setting(
        "workspace_sandbox",
        "workspace-sandbox",
        "CODITECT_WORKSPACE_SANDBOX",
        Some("bubblewrap"),
        "How the process runtime isolates a workspace: bubblewrap, or none (no isolation at all: only for a machine that is itself the sandbox)",
    ),
    setting(
        "workspace_scope",
        "workspace-scope",
        "CODITECT_WORKSPACE_SCOPE",
        Some("default"),
        "Names this hub installation on its runtimes (labels), so several installations can share one Docker engine or machine",
    ),
    setting(
        "workspace_agent",
        "workspace-agent",
        "CODITECT_WORKSPACE_AGENT",
        None,
        "The codi-monitor binary the process runtime runs in each workspace [default: next to coditect-hub]",
    ),
    setting(
        "workspace_cgroup",
        "workspace-cgroup",
        "CODITECT_WORKSPACE_CGROUP",
        None,
        "A delegated cgroup v2 directory for the process runtime's limits (memory, pids, cpu per workspace) [default: none: rlimits]",
    ),
    setting(
        "docker_socket",
        "docker-socket",
        "CODITECT_DOCKER_SOCKET",
        Some("/var/run/docker.sock"),
        "The Docker Engine's API socket (docker runtime)",
    ),
    setting(
        "workspace_kubeconfig",
        "workspace-kubeconfig",
        "CODITECT_WORKSPACE_KUBECONFIG",
        None,
        "A kubeconfig file for the kubernetes runtime [default: KUBECONFIG, ~/.kube/config, else the in-cluster service account]",
    ),
    setting(
        "workspace_kube_hub_url",
        "workspace-kube-hub-url",
        "CODITECT_WORKSPACE_KUBE_HUB_URL",
        None,
        "How a workspace Pod's agent reaches the hub over the cluster network, e.g. http://coditect-hub.coditect.svc:8080 (kubernetes runtime) [default: public_url]",
    ),
    setting(
        "workspace_kube_namespace_prefix",
        "workspace-kube-namespace-prefix",
        "CODITECT_WORKSPACE_KUBE_NAMESPACE_PREFIX",
        Some("coditect-"),
        "Each tenant's workspaces live in the namespace <prefix><tenant id> (kubernetes runtime)",
    ),
    setting(
        "workspace_kube_home_size",
        "workspace-kube-home-size",
        "CODITECT_WORKSPACE_KUBE_HOME_SIZE",
        Some("10Gi"),
        "Size of each workspace's home volume claim (kubernetes runtime)",
    ),
    setting(
        "workspace_kube_storage_class",
        "workspace-kube-storage-class",
        "CODITECT_WORKSPACE_KUBE_STORAGE_CLASS",
        None,
        "Storage class of the home volume claims (kubernetes runtime) [default: the cluster's default]",
    ),
    setting(
        "workspace_image",
        "workspace-image",
        "CODITECT_WORKSPACE_IMAGE",
        Some("coditect-workspace:latest"),
        "Image of workspaces whose template names none (docker, kubernetes); build it with deploy/workspace/build --tag coditect-workspace:latest",
    ),
    setting(
        "workspace_ready_timeout",
        "workspace-ready-timeout",
        "CODITECT_WORKSPACE_READY_TIMEOUT",
        Some("60s"),
        "A starting workspace whose agent has not said ready within this long has failed",
    ),
    setting(
        "workspace_agent_timeout",
        "workspace-agent-timeout",
        "CODITECT_WORKSPACE_AGENT_TIMEOUT",
        Some("30s"),
        "A running workspace whose agent has not reported for this long has failed (and is relaunched)",
    ),
    setting(
        "workspace_runtime_timeout",
        "workspace-runtime-timeout",
        "CODITECT_WORKSPACE_RUNTIME_TIMEOUT",
        Some("60s"),
        "Longest wait for one runtime call (create, start, stop...) before it counts as failed",
    ),
    setting(
        "workspace_stop_grace",
        "workspace-stop-grace",
        "CODITECT_WORKSPACE_STOP_GRACE",
        Some("10s"),
        "How long a stopping workspace may take before it is killed",
    ),
    setting(
        "workspace_quota_count",
        "workspace-quota-count",
        "CODITECT_WORKSPACE_QUOTA_COUNT",
        Some("100"),
        "Most workspaces one tenant may have (0: no limit)",
    ),
    setting(
        "workspace_quota_cpu_millis",
        "workspace-quota-cpu-millis",
        "CODITECT_WORKSPACE_QUOTA_CPU_MILLIS",
        Some("0"),
        "Most CPU (thousandths) one tenant's running workspaces may ask for together (0: no limit)",
    ),
    setting(
        "workspace_quota_memory_mb",
        "workspace-quota-memory-mb",
        "CODITECT_WORKSPACE_QUOTA_MEMORY_MB",
        Some("0"),
        "Most memory (MiB) one tenant's running workspaces may ask for together (0: no limit)",
    ),
];

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("the default"),
            Source::File(path) => write!(f, "config file {}", path.display()),
            Source::Env(var) => write!(f, "environment variable {var}"),
            Source::Flag(flag) => write!(f, "flag --{flag}"),
        }
    }
}

/// A configuration problem. The process exits with code 2 on any of these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key} from {from}: {shown}; expected {allowed}")]
    Invalid {
        key: &'static str,
        from: Source,
        shown: String,
        allowed: String,
    },
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("unknown key `{key}` in config file {path}; known keys: {known}")]
    UnknownKey {
        key: String,
        path: PathBuf,
        known: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// A value that must never be printed (shared with the monitor's configuration).
pub use coditect_proto::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The hub's typed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: Option<Secret>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub body_limit: usize,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_ip: usize,
    pub shutdown_timeout: Duration,
    pub cors_origins: Vec<String>,
    pub sqlite_synchronous: Synchronous,
    pub pg_pool_size: usize,
    pub pg_statement_timeout: Duration,
    pub pg_connect_timeout: Duration,
    pub auth: AuthConfig,
    pub bootstrap: Option<Bootstrap>,
    pub bootstrap_tenant: String,
    pub logs: LogsConfig,
    /// Where the hub's own traces go; `None`: not exported.
    pub otel: Option<OtelConfig>,
    /// Single sign-on; `None`: no external login.
    pub sso: Option<SsoConfig>,
    /// The hub's URL as browsers reach it, without a trailing slash (`None`: URLs the hub
    /// gives are relative).
    pub public_url: Option<String>,
    pub workspaces: WorkspacesConfig,
    sources: BTreeMap<&'static str, Source>,
}

/// External login: OpenID Connect and/or GitHub, and what happens on a first login.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// The hub's public URL, without a trailing slash: redirects come back to
    /// `{public_url}/api/v1/auth/sso/{provider}/callback`.
    pub public_url: String,
    pub oidc: Option<OidcProviderConfig>,
    pub github: Option<GithubProviderConfig>,
    /// Lower-case e-mail domains that may log in; empty: any.
    pub allowed_domains: Vec<String>,
    pub provision: bool,
    pub tenant: String,
    pub default_role: coditect_proto::Role,
}

#[derive(Debug, Clone)]
pub struct OidcProviderConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
}

#[derive(Debug, Clone)]
pub struct GithubProviderConfig {
    pub client_id: String,
    pub client_secret: Secret,
    /// `https://github.com`, without a trailing slash.
    pub web_url: String,
    /// `https://api.github.com`, without a trailing slash.
    pub api_url: String,
}

/// Trace export. Headers, timeout, batching and sampling follow the standard `OTEL_*`
/// variables, which the OpenTelemetry SDK reads itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    /// The traces URL (`…/v1/traces`), from `--otel-endpoint`; `None`: the SDK takes it
    /// from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `coditect-hub` unless `OTEL_SERVICE_NAME` names the service.
    pub service_name: Option<String>,
}

impl OtelConfig {
    /// The export settings from the flag and the standard environment; `Ok(None)` when
    /// export is off.
    fn resolve(
        flag: Option<(String, Source)>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<OtelConfig>, ConfigError> {
        let invalid = |from: Source, shown: &str, allowed: String| ConfigError::Invalid {
            key: "otel_endpoint",
            from,
            shown: format!("{shown:?}"),
            allowed,
        };
        let disabled = env("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
        let from_env = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|k| env(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)));
        if disabled || (flag.is_none() && from_env.is_none()) {
            return Ok(None);
        }
        let plain = |url: &str| {
            let url = url.trim();
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .ok_or_else(|| format!("an http(s)://HOST:PORT URL, not {url}"))?;
            if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
                return Err(format!("an http(s)://HOST:PORT URL, not {url}"));
            }
            Ok(())
        };
        if let Some((key, value)) = &from_env {
            plain(value).map_err(|e| invalid(Source::Env(key), value, e))?;
        }
        let endpoint = match flag {
            Some((url, from)) => {
                plain(&url).map_err(|e| invalid(from, &url, e))?;
                let base = url.trim().trim_end_matches('/');
                Some(if base.ends_with("/v1/traces") {
                    base.to_string()
                } else {
                    format!("{base}/v1/traces")
                })
            }
            None => None,
        };
        let service_name = env("OTEL_SERVICE_NAME")
            .filter(|v| !v.trim().is_empty())
            .is_none()
            .then(|| "coditect-hub".to_string());
        Ok(Some(OtelConfig {
            endpoint,
            service_name,
        }))
    }
}

/// Workspace orchestration settings.
#[derive(Debug, Clone)]
pub struct WorkspacesConfig {
    /// Runtime of the built-in template.
    pub runtime: coditect_workspaces::RuntimeKind,
    /// `false`: `--workspace-sandbox none`, said explicitly.
    pub sandbox: bool,
    pub scope: coditect_workspaces::Scope,
    /// `None`: `codi-monitor` next to the hub's own binary.
    pub agent: Option<PathBuf>,
    /// A delegated cgroup v2 directory for the process runtime; `None`: rlimits.
    pub cgroup: Option<PathBuf>,
    pub docker_socket: PathBuf,
    pub kube: KubeSettings,
    pub image: String,
    pub ready_timeout: Duration,
    pub agent_timeout: Duration,
    pub runtime_timeout: Duration,
    pub stop_grace: Duration,
    pub quota: Quota,
}

/// The kubernetes runtime's settings.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub kubeconfig: Option<PathBuf>,
    /// `None`: `public_url`.
    pub hub_url: Option<String>,
    pub namespace_prefix: String,
    pub home_size: String,
    pub storage_class: Option<String>,
}

/// What one tenant may hold; 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub workspaces: u32,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// Log pipeline settings.
#[derive(Debug, Clone)]
pub struct LogsConfig {
    pub rate_per_tenant: u64,
    pub max_inflight: usize,
    pub tail_queue: usize,
    pub tail_max_per_tenant: usize,
    pub max_past: Duration,
    pub max_future: Duration,
    pub retention: Duration,
    pub retention_overrides: Vec<(coditect_proto::TenantId, Duration)>,
}

impl LogsConfig {
    pub fn retention_for(&self, tenant: coditect_proto::TenantId) -> Duration {
        self.retention_overrides
            .iter()
            .find(|(t, _)| *t == tenant)
            .map_or(self.retention, |(_, d)| *d)
    }
}

/// Identity and token settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub session_idle_timeout: Duration,
    pub session_lifetime: Duration,
    pub session_cache_ttl: Duration,
    pub key_rotation: Duration,
    pub signing_key_file: Option<PathBuf>,
    pub login_max_failures: u32,
    pub login_window: Duration,
    pub argon2_memory_kib: u32,
    pub argon2_iterations: u32,
}

/// The first platform admin, created on a store without users.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub email: coditect_proto::Email,
    pub password: Secret,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the server.
    Serve(Box<Config>),
    /// Administer the store of a (possibly running) hub, then exit.
    Admin(Box<Config>, crate::admin::AdminCommand),
    /// Print the API's OpenAPI document, then exit.
    OpenApi,
}

/// The command-line interface: one flag per setting, plus `--config`.
pub fn command() -> Command {
    let mut cmd =
        Command::new("coditect-hub")
            .version(env!("CARGO_PKG_VERSION"))
            .about("CODITECT hub: the central server of the CODITECT control plane")
            .long_about(
                "CODITECT hub: the central server of the CODITECT control plane.\n\n\
             Every option can also be set in a TOML file (--config FILE, keys as shown in \
             brackets) or in the environment (CODITECT_*). Precedence: defaults < file < \
             environment < flags. An invalid value stops the hub with exit code 2.",
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .help("TOML configuration file [env: CODITECT_CONFIG]")
                    .global(true)
                    .action(ArgAction::Set),
            )
            .subcommand(crate::admin::command())
            .subcommand(Command::new("openapi").about(
                "Print the OpenAPI 3.1 document of the API (as served at /api/openapi.json)",
            ));
    for s in SETTINGS {
        let default = s
            .default
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        cmd = cmd.arg(
            Arg::new(s.key)
                .long(s.flag)
                .value_name("VALUE")
                .help(format!(
                    "{} [key: {}] [env: {}]{default}",
                    s.help, s.key, s.env
                ))
                .global(true)
                .action(ArgAction::Set),
        );
    }
    cmd
}

impl Config {
    /// Parses the command line and loads the configuration, reading the environment
    /// through `env` (injectable for tests).
    pub fn from_args<I, T>(
        args: I,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Invocation, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = command().try_get_matches_from(args)?;
        let invalid = |e: ConfigError| command().error(clap::error::ErrorKind::ValueValidation, e);
        match matches.subcommand() {
            Some(("admin", admin)) => {
                let cmd = crate::admin::AdminCommand::from_matches(admin)
                    .map_err(|e| command().error(clap::error::ErrorKind::ValueValidation, e))?;
                let config = Config::from_matches(admin_leaf(admin), env).map_err(invalid)?;
                Ok(Invocation::Admin(Box::new(config), cmd))
            }
            Some(("openapi", _)) => Ok(Invocation::OpenApi),
            _ => Config::from_matches(&matches, env)
                .map(|c| Invocation::Serve(Box::new(c)))
                .map_err(invalid),
        }
    }

    /// Defaults only, with the data directory set: the starting point for tests.
    pub fn defaults(data_dir: &Path) -> Config {
        let mut config = Config::from_layers(&BTreeMap::new(), None, &|_| None)
            .unwrap_or_else(|e| unreachable!("the built-in defaults are valid: {e}"));
        config.data_dir = data_dir.to_path_buf();
        config
    }

    fn from_matches(
        matches: &ArgMatches,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let flags: BTreeMap<&'static str, String> = SETTINGS
            .iter()
            .filter_map(|s| Some((s.key, matches.get_one::<String>(s.key)?.clone())))
            .collect();
        let file = matches
            .get_one::<String>("config")
            .cloned()
            .or_else(|| env("CODITECT_CONFIG"))
            .map(PathBuf::from);
        Config::from_layers(&flags, file.as_deref(), env)
    }

    fn from_layers(
        flags: &BTreeMap<&'static str, String>,
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file_values = match file {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let mut raw = Raw::default();
        for s in SETTINGS {
            let layered = flags
                .get(s.key)
                .map(|v| (v.clone(), Source::Flag(s.flag)))
                .or_else(|| env(s.env).map(|v| (v, Source::Env(s.env))))
                .or_else(|| {
                    let path = file?.to_path_buf();
                    file_values
                        .get(s.key)
                        .map(|v| (v.clone(), Source::File(path)))
                })
                .or_else(|| s.default.map(|d| (d.to_string(), Source::Default)));
            if let Some((value, source)) = layered {
                raw.values.insert(s.key, (value, source));
            }
        }
        raw.build(env)
    }

    /// Where the value of `key` came from.
    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// The error for a value that parsed but does not work at run time (e.g. an
    /// unwritable data directory).
    pub fn invalid(
        &self,
        key: &'static str,
        shown: impl Into<String>,
        allowed: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            key,
            from: self.source(key),
            shown: shown.into(),
            allowed: allowed.into(),
        }
    }

    pub fn store_config(&self) -> StoreConfig {
        let mut sqlite = SqliteConfig::new(self.data_dir.join("hub.db"));
        sqlite.synchronous = self.sqlite_synchronous;
        StoreConfig {
            sqlite,
            postgres: self.database_url.as_ref().map(|url| {
                let mut pg = PgConfig::new(url.expose());
                pg.pool_size = self.pg_pool_size;
                pg.statement_timeout = self.pg_statement_timeout;
                pg.connect_timeout = self.pg_connect_timeout;
                pg.acquire_timeout = self.pg_connect_timeout;
                pg.application_name = "coditect-hub".into();
                pg
            }),
        }
    }
}

/// Global options are visible on the innermost subcommand's matches.
fn admin_leaf(admin: &ArgMatches) -> &ArgMatches {
    admin.subcommand().map_or(admin, |(_, leaf)| leaf)
}

/// Reads a TOML file into key → value-as-text. Arrays of strings become comma-separated.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    // The parser's own message quotes the offending line, which may hold a password: keep
    // only its reason and position.
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        let at = e.span().map_or(String::new(), |span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        file_err(format!("invalid TOML{at}: {}", e.message().trim()))
    })?;
    let mut out = BTreeMap::new();
    for (key, value) in table {
        let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
            return Err(ConfigError::UnknownKey {
                key,
                path: path.to_path_buf(),
                known: SETTINGS
                    .iter()
                    .map(|s| s.key)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or(()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|()| ConfigError::Invalid {
                    key: setting.key,
                    from: Source::File(path.to_path_buf()),
                    shown: "an array with non-string items".into(),
                    allowed: "an array of strings".into(),
                })?
                .join(","),
            other => {
                return Err(ConfigError::Invalid {
                    key: setting.key,
                    from: Source::File(path.to_path_buf()),
                    shown: format!("a {}", other.type_str()),
                    allowed: "a string or a number".into(),
                });
            }
        };
        out.insert(key, text);
    }
    Ok(out)
}

/// Merged but not yet parsed values.
#[derive(Default)]
struct Raw {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Raw {
    /// Parses `key` with `parse`, which returns what is allowed on failure.
    fn parse<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some((value, source)) = self.values.get(key) else {
            return Ok(None);
        };
        let secret = SETTINGS.iter().any(|s| s.key == key && s.secret);
        parse(value.trim())
            .map(Some)
            .map_err(|allowed| ConfigError::Invalid {
                key,
                from: source.clone(),
                shown: if secret {
                    "the given value".into()
                } else {
                    format!("{value:?}")
                },
                allowed,
            })
    }

    fn required<T>(
        &self,
        key: &'static str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(key, parse)?
            .ok_or_else(|| ConfigError::Usage(format!("{key} has no value")))
    }

    fn build(self, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let duration = |min: Duration, max: Duration| {
            move |s: &str| {
                let allowed = || {
                    format!(
                        "a duration between {} and {} (e.g. 30s, 5m)",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    )
                };
                let d = humantime::parse_duration(s).map_err(|_| allowed())?;
                if d < min || d > max {
                    return Err(allowed());
                }
                Ok(d)
            }
        };
        Ok(Config {
            listen: self.required("listen", |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| "an IP address and port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080".into())
            })?,
            data_dir: self.required("data_dir", |s| {
                if s.is_empty() {
                    Err("a directory path".into())
                } else {
                    Ok(PathBuf::from(s))
                }
            })?,
            database_url: self.parse("database_url", |s| {
                PgConfig::validate_url(s).map(|()| Secret::new(s))
            })?,
            log_format: self.required("log_format", |s| match s.to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("one of: text, json".into()),
            })?,
            log_level: self.required("log_level", |s| {
                tracing_subscriber::EnvFilter::builder()
                    .parse(s)
                    .map(|_| s.to_string())
                    .map_err(|_| "a tracing filter such as info, debug or coditect_hub=debug,warn".into())
            })?,
            body_limit: self.required("body_limit", |s| {
                parse_size(s)
                    .filter(|n| (1024..=1 << 30).contains(n))
                    .ok_or_else(|| "a size between 1KiB and 1GiB, in bytes or with a KiB/MiB/GiB suffix".into())
            })?,
            request_timeout: self.required(
                "request_timeout",
                duration(Duration::from_secs(1), Duration::from_secs(3600)),
            )?,
            header_read_timeout: self.required(
                "header_read_timeout",
                duration(Duration::from_millis(100), Duration::from_secs(3600)),
            )?,
            keep_alive_timeout: self.required(
                "keep_alive_timeout",
                duration(Duration::from_millis(100), Duration::from_secs(86_400)),
            )?,
            max_connections: self.required("max_connections", |s| {
                whole(s, 1, 1 << 24).map(|n| n as usize)
            })?,
            max_connections_per_ip: self.required("max_connections_per_ip", |s| {
                whole(s, 0, 1 << 24).map(|n| n as usize)
            })?,
            shutdown_timeout: self.required(
                "shutdown_timeout",
                duration(Duration::from_secs(0), Duration::from_secs(3600)),
            )?,
            cors_origins: self
                .parse("cors_origins", |s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|o| !o.is_empty())
                        .map(|o| {
                            let host = o
                                .strip_prefix("https://")
                                .or_else(|| o.strip_prefix("http://"));
                            let ok = host.is_some_and(|h| !h.is_empty() && !h.contains('/'))
                                && axum::http::HeaderValue::from_str(o).is_ok();
                            if ok {
                                Ok(o.to_string())
                            } else {
                                Err("comma-separated origins such as https://app.example.com (scheme and host, no path)".to_string())
                            }
                        })
                        .collect()
                })?
                .unwrap_or_default(),
            sqlite_synchronous: self.required("sqlite_synchronous", |s| s.parse())?,
            pg_pool_size: self.required("pg_pool_size", |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| "a whole number from 1 to 1000".into())
            })?,
            pg_statement_timeout: self.required(
                "pg_statement_timeout",
                duration(Duration::from_millis(100), Duration::from_secs(3600)),
            )?,
            pg_connect_timeout: self.required(
                "pg_connect_timeout",
                duration(Duration::from_millis(100), Duration::from_secs(300)),
            )?,
            auth: AuthConfig {
                issuer: self.required("auth_issuer", non_empty)?,
                audience: self.required("auth_audience", non_empty)?,
                access_ttl: self.required("auth_access_ttl", duration(MINUTE, DAY))?,
                session_idle_timeout: self
                    .required("auth_session_idle_timeout", duration(MINUTE, 30 * DAY))?,
                session_lifetime: self
                    .required("auth_session_lifetime", duration(Duration::from_secs(300), 365 * DAY))?,
                session_cache_ttl: self.required(
                    "auth_session_cache_ttl",
                    // Plus one store read, a logout reaches every replica within 5 s.
                    duration(Duration::ZERO, Duration::from_secs(4)),
                )?,
                key_rotation: self.required("auth_key_rotation", duration(HOUR, 365 * DAY))?,
                signing_key_file: self.parse("auth_signing_key_file", |s| {
                    non_empty(s).map(PathBuf::from)
                })?,
                login_max_failures: self.required("auth_login_max_failures", |s| {
                    whole(s, 1, 1000)
                })?,
                login_window: self.required("auth_login_window", duration(Duration::from_secs(1), DAY))?,
                argon2_memory_kib: self.required("auth_argon2_memory_kib", |s| {
                    whole(s, 1024, 4 * 1024 * 1024)
                })?,
                argon2_iterations: self.required("auth_argon2_iterations", |s| whole(s, 1, 100))?,
            },
            bootstrap: self.bootstrap()?,
            bootstrap_tenant: self.required("bootstrap_tenant", non_empty)?,
            logs: LogsConfig {
                rate_per_tenant: self.required("ingest_rate_per_tenant", |s| {
                    s.parse::<u64>().map_err(|_| "a whole number of entries per second (0 = unlimited)".to_string())
                })?,
                max_inflight: self.required("ingest_max_inflight", |s| whole(s, 1, 4096).map(|n| n as usize))?,
                tail_queue: self.required("tail_queue", |s| whole(s, 1, 1 << 20).map(|n| n as usize))?,
                tail_max_per_tenant: self.required("tail_max_per_tenant", |s| whole(s, 1, 1 << 20).map(|n| n as usize))?,
                max_past: self.required("log_max_past", duration(MINUTE, 3650 * DAY))?,
                max_future: self.required("log_max_future", duration(Duration::ZERO, DAY))?,
                retention: self.required("log_retention", duration(HOUR, 3650 * DAY))?,
                retention_overrides: self
                    .parse("log_retention_overrides", |s| {
                        let allowed = || "comma-separated TENANT_ID=DURATION pairs, e.g. 0193…=90d".to_string();
                        s.split(',')
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .map(|pair| {
                                let (t, d) = pair.split_once('=').ok_or_else(allowed)?;
                                let tenant = t.trim().parse().map_err(|_| allowed())?;
                                let d = humantime::parse_duration(d.trim()).map_err(|_| allowed())?;
                                Ok((tenant, d))
                            })
                            .collect()
                    })?
                    .unwrap_or_default(),
            },
            otel: OtelConfig::resolve(self.values.get("otel_endpoint").cloned(), env)?,
            sso: self.sso()?,
            public_url: self.parse("public_url", http_url)?,
            workspaces: WorkspacesConfig {
                runtime: self.required("workspace_runtime", |s| {
                    coditect_workspaces::RuntimeKind::parse(s)
                        .ok_or_else(|| "process, docker or kubernetes".to_string())
                })?,
                sandbox: self.required("workspace_sandbox", |s| match s {
                    "bubblewrap" => Ok(true),
                    "none" => Ok(false),
                    _ => Err("bubblewrap or none".to_string()),
                })?,
                scope: self.required("workspace_scope", coditect_workspaces::Scope::parse)?,
                agent: self.parse("workspace_agent", |s| non_empty(s).map(PathBuf::from))?,
                cgroup: self.parse("workspace_cgroup", |s| non_empty(s).map(PathBuf::from))?,
                docker_socket: self.required("docker_socket", |s| non_empty(s).map(PathBuf::from))?,
                kube: KubeSettings {
                    kubeconfig: self.parse("workspace_kubeconfig", |s| non_empty(s).map(PathBuf::from))?,
                    hub_url: self.parse("workspace_kube_hub_url", http_url)?,
                    namespace_prefix: self.required("workspace_kube_namespace_prefix", |s| {
                        // A DNS label's start: the tenant id (36) follows, within 63.
                        let ok = (1..=26).contains(&s.len())
                            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                            && s.as_bytes()[0].is_ascii_lowercase();
                        ok.then(|| s.to_string())
                            .ok_or_else(|| "1 to 26 lower-case letters, digits or '-', starting with a letter".to_string())
                    })?,
                    home_size: self.required("workspace_kube_home_size", |s| {
                        let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                        let unit = &s[digits.len()..];
                        let ok = !digits.is_empty()
                            && digits.bytes().all(|b| b.is_ascii_digit())
                            && ["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"].contains(&unit);
                        ok.then(|| s.to_string())
                            .ok_or_else(|| "a Kubernetes quantity such as 10Gi".to_string())
                    })?,
                    storage_class: self.parse("workspace_kube_storage_class", non_empty)?,
                },
                image: self.required("workspace_image", |s| {
                    coditect_workspaces::template::valid_image(s)
                        .then(|| s.to_string())
                        .ok_or_else(|| "an image reference, e.g. coditect-workspace:latest".to_string())
                })?,
                ready_timeout: self.required("workspace_ready_timeout", duration(Duration::from_secs(1), HOUR))?,
                agent_timeout: self.required("workspace_agent_timeout", duration(Duration::from_secs(3), HOUR))?,
                runtime_timeout: self.required("workspace_runtime_timeout", duration(Duration::from_secs(1), HOUR))?,
                stop_grace: self.required("workspace_stop_grace", duration(Duration::ZERO, HOUR))?,
                quota: Quota {
                    workspaces: self.required("workspace_quota_count", |s| whole(s, 0, 1_000_000))?,
                    cpu_millis: self.required("workspace_quota_cpu_millis", |s| {
                        s.parse::<u64>().map_err(|_| "a whole number (0 = no limit)".to_string())
                    })?,
                    memory_mb: self.required("workspace_quota_memory_mb", |s| {
                        s.parse::<u64>().map_err(|_| "a whole number (0 = no limit)".to_string())
                    })?,
                },
            },
            sources: self.values.into_iter().map(|(k, (_, src))| (k, src)).collect(),
        })
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// An http(s):// URL, without a trailing `/`.
fn http_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() > "https://".len()
        && !s.contains(char::is_whitespace);
    if ok {
        Ok(s.trim_end_matches('/').to_string())
    } else {
        Err("an http(s):// URL".to_string())
    }
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Err("a non-empty value".into())
    } else {
        Ok(s.to_string())
    }
}

fn whole(s: &str, min: u32, max: u32) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("a whole number from {min} to {max}"))
}

impl Raw {
    /// Both bootstrap values or neither: half a first admin is a mistake worth stopping for.
    /// A client secret given directly or in a file (trimmed), never both.
    fn client_secret(
        &self,
        key: &'static str,
        file_key: &'static str,
    ) -> Result<Option<Secret>, ConfigError> {
        let direct = self.parse(key, |s| non_empty(s).map(Secret::new))?;
        let from_file = self.parse(file_key, |path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("a readable file ({e})"))
                .and_then(|s| non_empty(s.trim()).map_err(|_| "a file holding the secret".into()))
                .map(Secret::new)
        })?;
        match (direct, from_file) {
            (Some(_), Some(_)) => Err(ConfigError::Usage(format!(
                "give {key} or {file_key}, not both"
            ))),
            (a, b) => Ok(a.or(b)),
        }
    }

    fn sso(&self) -> Result<Option<SsoConfig>, ConfigError> {
        let url = http_url;
        let oidc = match (
            self.parse("sso_oidc_issuer", url)?,
            self.parse("sso_oidc_client_id", non_empty)?,
            self.client_secret("sso_oidc_client_secret", "sso_oidc_client_secret_file")?,
        ) {
            (None, None, None) => None,
            (Some(issuer), Some(client_id), Some(client_secret)) => Some(OidcProviderConfig {
                issuer,
                client_id,
                client_secret,
            }),
            _ => {
                return Err(ConfigError::Usage(
                    "OpenID Connect login needs sso_oidc_issuer, sso_oidc_client_id and a client secret".into(),
                ));
            }
        };
        let github = match (
            self.parse("sso_github_client_id", non_empty)?,
            self.client_secret("sso_github_client_secret", "sso_github_client_secret_file")?,
        ) {
            (None, None) => None,
            (Some(client_id), Some(client_secret)) => Some(GithubProviderConfig {
                client_id,
                client_secret,
                web_url: self.required("sso_github_url", url)?,
                api_url: self.required("sso_github_api_url", url)?,
            }),
            _ => {
                return Err(ConfigError::Usage(
                    "GitHub login needs sso_github_client_id and a client secret".into(),
                ));
            }
        };
        if oidc.is_none() && github.is_none() {
            return Ok(None);
        }
        let allowed_domains: Vec<String> = self
            .parse("sso_allowed_domains", |s| {
                Ok(s.split(',')
                    .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                    .filter(|d| !d.is_empty())
                    .collect())
            })?
            .unwrap_or_default();
        let provision = self.required("sso_provision", |s| {
            s.parse::<bool>().map_err(|_| "true or false".to_string())
        })?;
        if provision && allowed_domains.is_empty() {
            // Else anyone with an account at GitHub (or a public issuer) gets one here.
            return Err(ConfigError::Usage(
                "sso_provision makes accounts on first login only for the domains in sso_allowed_domains: give them".into(),
            ));
        }
        let public_url = self.parse("public_url", url)?.ok_or_else(|| {
            ConfigError::Usage(
                "single sign-on needs public_url (CODITECT_PUBLIC_URL): where the provider sends browsers back".into(),
            )
        })?;
        Ok(Some(SsoConfig {
            public_url,
            oidc,
            github,
            allowed_domains,
            provision,
            tenant: self.required("sso_tenant", non_empty)?,
            default_role: self.required("sso_default_role", |s| {
                match s.parse::<coditect_proto::Role>() {
                    Ok(r @ (coditect_proto::Role::Member | coditect_proto::Role::Viewer)) => Ok(r),
                    _ => Err("member or viewer (raise roles afterwards, as an admin)".to_string()),
                }
            })?,
        }))
    }

    fn bootstrap(&self) -> Result<Option<Bootstrap>, ConfigError> {
        let email = self.parse("bootstrap_email", coditect_proto::Email::parse)?;
        let password = self.parse("bootstrap_password", |s| {
            if s.chars().count() < 12 {
                Err("a password of at least 12 characters".to_string())
            } else {
                Ok(Secret::new(s))
            }
        })?;
        match (email, password) {
            (Some(email), Some(password)) => Ok(Some(Bootstrap { email, password })),
            (None, None) => Ok(None),
            (Some(_), None) => Err(ConfigError::Usage(
                "bootstrap_email is set but bootstrap_password is not (CODITECT_BOOTSTRAP_PASSWORD)".into(),
            )),
            (None, Some(_)) => Err(ConfigError::Usage(
                "bootstrap_password is set but bootstrap_email is not (CODITECT_BOOTSTRAP_EMAIL)".into(),
            )),
        }
    }
}

/// `1048576`, `512KiB`, `5MiB`, `1GiB` (also KB/MB/GB, meaning the same binary units).
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: usize = digits.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let lookup = move |k: &str| env.get(k).cloned();
        let argv = std::iter::once("coditect-hub").chain(args.iter().copied());
        match Config::from_args(argv, &lookup) {
            Ok(Invocation::Serve(c)) => Ok(*c),
            Ok(Invocation::Admin(..) | Invocation::OpenApi) => Err("unexpected subcommand".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), contents).unwrap();
        f
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("data"));
        assert!(c.database_url.is_none());
        assert_eq!(c.body_limit, 5 << 20);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.sqlite_synchronous, Synchronous::Full);
        assert!(c.cors_origins.is_empty());
        assert_eq!(c.source("listen"), Source::Default);
    }

    #[test]
    fn layers_override_in_order_file_env_flag() {
        let f = file(
            "listen = \"127.0.0.1:1001\"\ndata_dir = \"/from/file\"\nbody_limit = 2048\npg_pool_size = 3\n",
        );
        let path = f.path().to_str().unwrap();
        let c = load(
            &["--config", path, "--listen", "127.0.0.1:1003"],
            &[
                ("CODITECT_LISTEN", "127.0.0.1:1002"),
                ("CODITECT_DATA_DIR", "/from/env"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 1003);
        assert_eq!(c.source("listen"), Source::Flag("listen"));
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.source("data_dir"), Source::Env("CODITECT_DATA_DIR"));
        assert_eq!(c.body_limit, 2048);
        assert_eq!(c.pg_pool_size, 3);
        assert_eq!(
            c.source("pg_pool_size"),
            Source::File(f.path().to_path_buf())
        );
    }

    #[test]
    fn config_file_can_come_from_the_environment() {
        let f = file("listen = \"127.0.0.1:1001\"\n");
        let c = load(&[], &[("CODITECT_CONFIG", f.path().to_str().unwrap())]).unwrap();
        assert_eq!(c.listen.port(), 1001);
    }

    #[test]
    fn bad_values_name_key_source_and_what_is_allowed() {
        let err = load(&[], &[("CODITECT_LISTEN", "localhost")]).unwrap_err();
        assert!(err.contains("listen"), "{err}");
        assert!(
            err.contains("environment variable CODITECT_LISTEN"),
            "{err}"
        );
        assert!(err.contains("\"localhost\""), "{err}");
        assert!(err.contains("IP address and port"), "{err}");

        let err = load(&["--log-format", "xml"], &[]).unwrap_err();
        assert!(
            err.contains("flag --log-format") && err.contains("text, json"),
            "{err}"
        );

        let f = file("request_timeout = \"forever\"\n");
        let err = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap_err();
        assert!(
            err.contains("request_timeout") && err.contains("config file"),
            "{err}"
        );
        assert!(err.contains("duration"), "{err}");

        let err = load(&["--pg-pool-size", "0"], &[]).unwrap_err();
        assert!(err.contains("1 to 1000"), "{err}");

        let err = load(&["--body-limit", "12XB"], &[]).unwrap_err();
        assert!(err.contains("body_limit"), "{err}");

        let err = load(&["--cors-origins", "https://a.example/path"], &[]).unwrap_err();
        assert!(err.contains("cors_origins"), "{err}");
    }

    #[test]
    fn kubernetes_settings_are_checked() {
        let c = load(
            &[
                "--workspace-kube-hub-url",
                "http://coditect-hub.coditect.svc:8080/",
                "--workspace-kube-storage-class",
                "fast",
            ],
            &[],
        )
        .unwrap();
        let k = &c.workspaces.kube;
        assert_eq!(
            k.hub_url.as_deref(),
            Some("http://coditect-hub.coditect.svc:8080")
        );
        assert_eq!(k.namespace_prefix, "coditect-");
        assert_eq!(k.home_size, "10Gi");
        assert_eq!(k.storage_class.as_deref(), Some("fast"));
        for (flag, value, says) in [
            (
                "--workspace-kube-hub-url",
                "coditect-hub:8080",
                "http(s)://",
            ),
            (
                "--workspace-kube-namespace-prefix",
                "Coditect_",
                "lower-case",
            ),
            (
                "--workspace-kube-namespace-prefix",
                "a-very-long-prefix-for-namespaces-",
                "1 to 26",
            ),
            ("--workspace-kube-home-size", "10 GB", "quantity"),
            ("--workspace-kube-home-size", "Gi", "quantity"),
        ] {
            let err = load(&[flag, value], &[]).unwrap_err();
            assert!(err.contains(says), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn database_url_errors_never_echo_the_secret() {
        let err = load(&[], &[("CODITECT_DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
        assert!(err.contains("database_url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let c = load(
            &[],
            &[("CODITECT_DATABASE_URL", "postgres://u:hunter2@h:5432/db")],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.database_url.unwrap().expose(),
            "postgres://u:hunter2@h:5432/db"
        );
    }

    #[test]
    fn file_problems_are_reported() {
        let err = load(&["--config", "/nonexistent/hub.toml"], &[]).unwrap_err();
        assert!(
            err.contains("cannot read config file /nonexistent/hub.toml"),
            "{err}"
        );

        let f = file("lisen = \"127.0.0.1:1\"\n");
        let err = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap_err();
        assert!(err.contains("unknown key `lisen`"), "{err}");

        let f = file("listen = \"127.0.0.1:1\"\ndatabase_url = \"postgres://u:hunter2@h/db\n");
        let err = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap_err();
        assert!(err.contains("cannot read config file"), "{err}");
        assert!(err.contains("invalid TOML at line 2"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn arrays_in_the_file_become_lists() {
        let f = file("cors_origins = [\"https://a.example\", \"http://localhost:3000\"]\n");
        let c = load(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
        assert_eq!(
            c.cors_origins,
            vec!["https://a.example", "http://localhost:3000"]
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("512KiB"), Some(512 << 10));
        assert_eq!(parse_size("5 MiB"), Some(5 << 20));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("MiB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999MiB"), None);
    }

    #[test]
    fn single_sign_on_settings_hold_together() {
        assert!(load(&[], &[]).unwrap().sso.is_none());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let secret = secret.to_str().unwrap();
        let c = load(
            &[
                "--public-url",
                "https://hub.example.com/",
                "--sso-oidc-issuer",
                "https://login.example.com/realms/dev",
                "--sso-oidc-client-id",
                "hub",
                "--sso-oidc-client-secret-file",
                secret,
                "--sso-allowed-domains",
                "Example.com, @example.org",
            ],
            &[
                ("CODITECT_SSO_GITHUB_CLIENT_ID", "gh"),
                ("CODITECT_SSO_GITHUB_CLIENT_SECRET", "s"),
            ],
        )
        .unwrap();
        let sso = c.sso.unwrap();
        assert_eq!(sso.public_url, "https://hub.example.com");
        assert_eq!(sso.oidc.unwrap().client_secret.expose(), "from-a-file");
        assert_eq!(sso.github.unwrap().api_url, "https://api.github.com");
        assert_eq!(sso.allowed_domains, ["example.com", "example.org"]);
        assert!(
            !sso.provision,
            "accounts are made on first login only when asked"
        );
        assert_eq!(sso.default_role, coditect_proto::Role::Member);
        for (args, says) in [
            (vec!["--sso-github-client-id", "gh"], "client secret"),
            (
                vec![
                    "--sso-github-client-id",
                    "gh",
                    "--sso-github-client-secret",
                    "s",
                ],
                "public_url",
            ),
            (
                vec![
                    "--sso-oidc-issuer",
                    "https://x.example",
                    "--sso-oidc-client-id",
                    "c",
                    "--sso-oidc-client-secret",
                    "s",
                    "--sso-oidc-client-secret-file",
                    secret,
                ],
                "not both",
            ),
            (
                vec![
                    "--public-url",
                    "https://h.example",
                    "--sso-github-client-id",
                    "gh",
                    "--sso-github-client-secret",
                    "s",
                    "--sso-default-role",
                    "admin",
                ],
                "member or viewer",
            ),
            (vec!["--sso-oidc-issuer", "login.example.com"], "URL"),
            (
                vec![
                    "--public-url",
                    "https://h.example",
                    "--sso-github-client-id",
                    "gh",
                    "--sso-github-client-secret",
                    "s",
                    "--sso-provision",
                    "true",
                ],
                "sso_allowed_domains",
            ),
        ] {
            let err = load(&args, &[]).unwrap_err();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        // The secret is never echoed.
        let err = load(&["--sso-github-client-secret", "hunter2-secret"], &[]).unwrap_err();
        assert!(!err.contains("hunter2-secret"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid_and_lists_every_setting_at_its_default() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/hub.example.toml");
        let example = load(&["--config", path], &[]).unwrap();
        let defaults = load(&[], &[]).unwrap();
        assert_eq!(
            format!("{:?}", example.listen),
            format!("{:?}", defaults.listen)
        );
        assert_eq!(example.body_limit, defaults.body_limit);
        assert_eq!(example.pg_pool_size, defaults.pg_pool_size);
        let text = std::fs::read_to_string(path).unwrap();
        for s in SETTINGS {
            assert!(
                text.contains(&format!("{} = ", s.key)),
                "{} is documented",
                s.key
            );
        }
    }

    #[test]
    fn admin_commands_take_the_global_options_after_them() {
        let argv = [
            "coditect-hub",
            "admin",
            "create-user",
            "--email",
            "Ops@Example.com",
            "--role",
            "admin",
            "--data-dir",
            "/srv/hub",
        ];
        match Config::from_args(argv, &|_| None) {
            Ok(Invocation::Admin(
                config,
                crate::admin::AdminCommand::CreateUser { email, role, .. },
            )) => {
                assert_eq!(config.data_dir, PathBuf::from("/srv/hub"));
                assert_eq!(email.as_str(), "ops@example.com");
                assert_eq!(role, coditect_proto::Role::Admin);
            }
            other => panic!("{other:?}"),
        }
        let bad = Config::from_args(
            ["coditect-hub", "admin", "create-user", "--email", "nope"],
            &|_| None,
        );
        assert!(bad.unwrap_err().to_string().contains("--email"));
    }

    #[test]
    fn bootstrap_needs_both_halves_and_a_real_password() {
        let err = load(&[], &[("CODITECT_BOOTSTRAP_EMAIL", "a@b.io")]).unwrap_err();
        assert!(
            err.contains("bootstrap_password is set")
                || err.contains("CODITECT_BOOTSTRAP_PASSWORD"),
            "{err}"
        );
        let err = load(
            &[],
            &[
                ("CODITECT_BOOTSTRAP_EMAIL", "a@b.io"),
                ("CODITECT_BOOTSTRAP_PASSWORD", "short"),
            ],
        )
        .unwrap_err();
        assert!(
            err.contains("12 characters") && !err.contains("short"),
            "{err}"
        );
        let c = load(
            &[],
            &[
                ("CODITECT_BOOTSTRAP_EMAIL", "a@b.io"),
                ("CODITECT_BOOTSTRAP_PASSWORD", "a long enough secret"),
            ],
        )
        .unwrap();
        let b = c.bootstrap.unwrap();
        assert_eq!(b.email.as_str(), "a@b.io");
        assert!(!format!("{:?}", b.password).contains("secret"));
    }

    #[test]
    fn help_names_every_setting_with_its_env_and_key() {
        let help = command().render_long_help().to_string();
        for s in SETTINGS {
            assert!(help.contains(&format!("--{}", s.flag)), "{}", s.flag);
            assert!(help.contains(s.env), "{}", s.env);
        }
    }
}
