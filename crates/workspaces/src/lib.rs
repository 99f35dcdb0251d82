//! Where a workspace runs: one [`Runtime`] trait and its drivers.
//!
//! - [`process`]: the embedded default, a process tree in a bubblewrap sandbox on the hub's
//!   own machine (or, when asked explicitly, no sandbox at all);
//! - [`docker`]: one container per workspace through the Docker Engine API;
//! - [`kubernetes`]: a Pod, a volume claim and a secret per workspace, a namespace per
//!   tenant, through the Kubernetes API server.
//!
//! Beside them, what a workspace is made from: [`template::TemplateSpec`] (checked once,
//! when written) and [`devcontainer`], which reads a repository's `devcontainer.json` into one.
//!
//! Invariants: nothing here knows HTTP or the store. A driver knows a workspace only by
//! its [`InstanceRef`] and finds what it created by its *labels* (container labels, the
//! environment of a sandbox's outer process), never by memory alone, so a hub restarted
//! after `kill -9` adopts what it finds and an orphan can always be found and removed.
//! Every call is idempotent: starting what runs returns it, stopping what is stopped and
//! destroying what is gone succeed.
//!
//! Inside every workspace the same contract holds, whatever the runtime: the home is
//! persistent, the agent (`codi-monitor agent`) is the first process, and it learns where
//! it is from the environment variables named in [`agent_env`].

pub mod cgroup;
pub mod devcontainer;
pub mod docker;
pub mod git;
pub mod kubernetes;
pub mod process;
mod procfs;
pub mod template;

use async_trait::async_trait;
use coditect_proto::{Secret, TenantId, WorkspaceId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Labels put on everything a driver creates.
pub mod labels {
    /// The hub installation the object belongs to (see [`super::Scope`]).
    pub const SCOPE: &str = "dev.coditect.scope";
    pub const TENANT: &str = "dev.coditect.tenant";
    pub const WORKSPACE: &str = "dev.coditect.workspace";
    /// Which start of the workspace the object is: a relaunch after a crash is a new one.
    pub const GENERATION: &str = "dev.coditect.generation";
}

/// The labels of an object a driver makes for `instance`: scope, tenant, workspace, and
/// the generation on what belongs to one launch (not on what outlives it).
pub(crate) fn object_labels(
    scope: &Scope,
    instance: InstanceRef,
    generation: Option<u64>,
) -> Vec<(String, String)> {
    let mut l = vec![
        (labels::SCOPE.to_string(), scope.as_str().to_string()),
        (labels::TENANT.to_string(), instance.tenant.to_string()),
        (
            labels::WORKSPACE.to_string(),
            instance.workspace.to_string(),
        ),
    ];
    if let Some(g) = generation {
        l.push((labels::GENERATION.to_string(), g.to_string()));
    }
    l
}

/// Names the hub installation that owns runtime objects, so several hubs can share one
/// Docker engine or machine without adopting or sweeping each other's workspaces.
/// 1 to 32 lower-case letters, digits or `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    pub fn parse(raw: &str) -> Result<Scope, String> {
        let ok = (1..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-');
        if ok {
            Ok(Scope(raw.to_string()))
        } else {
            Err(format!(
                "runtime scope {raw:?}: 1 to 32 lower-case letters, digits or '-', not starting with '-'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a runtime knows a workspace by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceRef {
    pub tenant: TenantId,
    pub workspace: WorkspaceId,
}

/// Resource limits; `None` is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Thousandths of a CPU.
    pub cpu_millis: Option<u32>,
    pub memory_mb: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u32>,
}

/// Everything a runtime needs to run one start (generation) of a workspace.
#[derive(Debug, Clone)]
pub struct Spec {
    pub instance: InstanceRef,
    /// Bumped by every fresh launch (start after stop, relaunch after a crash).
    pub generation: u64,
    /// The image (container runtimes); the process runtime ignores it.
    pub image: Option<String>,
    /// A shell command the agent runs beside itself once ready (the template's command).
    pub command: Option<String>,
    /// Extra environment for the agent and what it starts.
    pub env: BTreeMap<String, String>,
    pub resources: Resources,
    /// `false`: no network at all inside (the agent reaches the hub through its socket).
    pub network: bool,
    pub agent: AgentSetup,
}

/// How the agent inside reaches and proves itself to the hub.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// The workspace-bound API key minted for this workspace (never a hub credential).
    pub key: Secret,
    /// The host directory holding the hub's agent socket; mounted read-only, as a
    /// directory so that a hub restart (a new socket inode) is seen inside.
    pub hub_socket_dir: PathBuf,
    /// The socket's file name in that directory.
    pub hub_socket_name: String,
    /// Identifies this launch in the agent's reports (so a report from a previous
    /// generation is never taken for the current one).
    pub instance_token: String,
}

/// Where the agent's inputs are inside a sandbox or container.
pub mod inside {
    pub const HOME: &str = "/home/coder";
    pub const HUB_DIR: &str = "/run/coditect/hub";
    pub const SECRETS_DIR: &str = "/run/coditect/secrets";
    pub const KEY_FILE: &str = "/run/coditect/secrets/agent-key";
    pub const UID: u32 = 1000;
}

/// How the agent inside reaches the hub.
#[derive(Debug, Clone, Copy)]
pub enum HubAddress<'a> {
    /// The hub's agent socket, at this path inside (process and Docker runtimes).
    Socket(&'a str),
    /// A URL over the network (Kubernetes: the hub's Service).
    Url(&'a str),
}

/// The environment that tells the agent where it is: what every driver sets.
pub fn agent_env(
    spec: &Spec,
    hub: HubAddress<'_>,
    key_file: &str,
    home: &str,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let fixed = [
        ("HOME", home.to_string()),
        match hub {
            HubAddress::Socket(path) => ("CODITECT_HUB_SOCKET", path.to_string()),
            HubAddress::Url(url) => ("CODITECT_HUB_URL", url.to_string()),
        },
        ("CODITECT_AGENT_KEY_FILE", key_file.to_string()),
        ("CODITECT_TENANT_ID", spec.instance.tenant.to_string()),
        ("CODITECT_WORKSPACE_ID", spec.instance.workspace.to_string()),
        ("CODITECT_GENERATION", spec.generation.to_string()),
        ("CODITECT_INSTANCE", spec.agent.instance_token.clone()),
    ];
    for (k, v) in fixed {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v));
    }
    if let Some(command) = &spec.command {
        env.retain(|(name, _)| name != "CODITECT_WORKSPACE_COMMAND");
        env.push(("CODITECT_WORKSPACE_COMMAND".into(), command.clone()));
    }
    env
}

/// What a runtime sees of a workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub instance: InstanceRef,
    pub generation: u64,
    pub phase: Phase,
    /// The runtime's own name for it: a container id, a process id.
    pub runtime_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Created, never started.
    Created,
    Running,
    /// Not running any more: its exit code when the runtime knows it, and whether the
    /// kernel killed it for memory.
    Exited {
        code: Option<i64>,
        oom: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Process,
    Docker,
    Kubernetes,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Process => "process",
            RuntimeKind::Docker => "docker",
            RuntimeKind::Kubernetes => "kubernetes",
        }
    }

    pub fn parse(raw: &str) -> Option<RuntimeKind> {
        match raw {
            "process" => Some(RuntimeKind::Process),
            "docker" => Some(RuntimeKind::Docker),
            "kubernetes" => Some(RuntimeKind::Kubernetes),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime cannot be reached (daemon down, socket missing): try again later.
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
    /// The image is not on this engine; the text says how to build it.
    #[error("image {image} is missing: {hint}")]
    ImageMissing { image: String, hint: String },
    /// The spec asks for something this runtime cannot do.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl RuntimeError {
    /// Whether waiting may cure it (the reconciler retries instead of failing the workspace).
    pub fn is_transient(&self) -> bool {
        matches!(self, RuntimeError::Unavailable(_))
    }
}

/// One runtime. Every call is idempotent and safe to repeat after a crash at any point.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;

    /// Prepares what outlives a start (home, volume, network) and the instance itself
    /// where the runtime separates creating from starting.
    async fn create(&self, spec: &Spec) -> Result<(), RuntimeError>;

    /// Starts the instance (creating it if needed). When one already runs for this
    /// workspace it is returned as it is: never a second copy.
    async fn start(&self, spec: &Spec) -> Result<Observed, RuntimeError>;

    /// Asks the instance to stop, killing it after `grace`. The home stays.
    async fn stop(&self, instance: InstanceRef, grace: Duration) -> Result<(), RuntimeError>;

    /// Replaces the agent's key of a running instance (a pool claim hands it to its new
    /// owner): the agent reads its key file before each request, so no restart is needed.
    async fn rekey(&self, instance: InstanceRef, key: &Secret) -> Result<(), RuntimeError>;

    /// Puts the contents of `from` (a clone the hub made) into the workspace's home, once
    /// created and before its first start; files keep their modes and become the
    /// workspace user's.
    async fn seed_home(&self, instance: InstanceRef, from: &Path) -> Result<(), RuntimeError>;

    /// Removes everything the workspace owned: instance, home, secrets.
    async fn destroy(&self, instance: InstanceRef) -> Result<(), RuntimeError>;

    /// `None` when no instance exists (its home may).
    async fn inspect(&self, instance: InstanceRef) -> Result<Option<Observed>, RuntimeError>;

    /// Every instance of this scope the runtime holds, for adoption and the orphan sweep.
    async fn list(&self) -> Result<Vec<Observed>, RuntimeError>;

    /// Told when an instance this runtime knows of exits, so the health checker looks at
    /// once instead of at its next pass (`None`: the runtime cannot tell; it is polled).
    fn exits(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }

    /// Whether the runtime answers, for `/health`.
    async fn probe(&self) -> Result<(), RuntimeError>;

    /// Which resource limits this runtime enforces, in words (e.g. "cgroup", "rlimits
    /// (memory as address space, processes; cpu not enforced)").
    fn limits(&self) -> String;
}

/// Writes the agent's key to `dir/agent-key`, atomically (a rename: a rotated key
/// replaces the old one at once). The directory is mounted into the workspace, so it is
/// 0711 and the file 0444: the workspace's user (uid 1000 in a container) opens the key
/// by name; on the host nobody else reaches it, the data directory above being 0700.
pub(crate) fn write_agent_key(
    dir: &std::path::Path,
    key: &Secret,
) -> Result<PathBuf, RuntimeError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |e: std::io::Error| RuntimeError::Failed(format!("cannot write the agent key: {e}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(io)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(io)?;
    let path = dir.join("agent-key");
    let tmp = dir.join("agent-key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(key.expose().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(path)
}

/// Copies the contents of `from` into `to` (dotfiles included, modes kept).
pub(crate) async fn copy_tree(from: &Path, to: &Path) -> Result<(), RuntimeError> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(from.join("."))
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| RuntimeError::Failed(format!("cannot run cp: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(RuntimeError::Failed(format!(
            "cannot fill the home: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
