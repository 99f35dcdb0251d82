//! The process runtime: a workspace is a process tree on the hub's own machine, in a
//! bubblewrap sandbox (Debian's `bubblewrap`) unless `Sandbox::None` is asked for
//! explicitly.
//!
//! Layout under the root (`data_dir/workspaces`): `<workspace>/home` (the persistent
//! home, mode 0700, the only writable place the sandbox sees besides its own `/tmp`),
//! `<workspace>/secrets/agent-key` (mounted read-only at [`inside::KEY_FILE`]) and
//! `<workspace>/agent.log` (what the sandbox printed, for failure reasons).
//!
//! The sandbox: its own user (uid 1000 inside, mapped to the hub's), mount, PID, IPC and
//! UTS namespaces, optionally its own empty network namespace; `/usr` and `/etc`
//! read-only with the password and sudo files masked; a fresh `/proc`, `/dev`, `/tmp`; no
//! other path of the host (not the hub's data, not another workspace's home).
//!
//! Labels: the sandbox's outer process carries `CODITECT_RUNTIME_*` environment variables
//! (scope, tenant, workspace, generation), which is how [`ProcessRuntime::list`] finds
//! every sandbox of this scope after a hub restart: nothing is remembered only in memory.
//! Sandboxes outlive the hub (they are not killed when it dies) and are adopted by the
//! next one.
//!
//! Limits: in a delegated cgroup v2 subtree (`ProcessConfig::cgroups`, see
//! [`crate::cgroup`]) memory (no swap), pids and CPU per workspace; without one, rlimits
//! set by `prlimit` (util-linux) on the sandbox: memory as address space, processes; CPU is
//! not enforced.

use crate::procfs;
use crate::{
    HubAddress, InstanceRef, Observed, Phase, Runtime, RuntimeError, RuntimeKind, Scope, Spec,
    agent_env, inside,
};
use async_trait::async_trait;
use coditect_proto::{TenantId, WorkspaceId};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Command;

const ENV_SCOPE: &str = "CODITECT_RUNTIME_SCOPE";
const ENV_TENANT: &str = "CODITECT_RUNTIME_TENANT";
const ENV_WORKSPACE: &str = "CODITECT_RUNTIME_WORKSPACE";
const ENV_GENERATION: &str = "CODITECT_RUNTIME_GENERATION";

/// `PATH` of the sandbox's outer process (and, with `/opt/coditect/bin`, of the inside).
const HOST_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Where the agent binary is inside the sandbox.
const AGENT_INSIDE: &str = "/opt/coditect/bin/codi-monitor";
/// Files of `/etc` the sandbox must not read (it is uid 0 outside when the hub is root).
const MASKED: [&str; 6] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/sudoers",
    "/etc/security/opasswd",
];
const MASKED_DIRS: [&str; 3] = ["/etc/ssh", "/etc/sudoers.d", "/etc/ssl/private"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// bubblewrap at this path.
    Bubblewrap(PathBuf),
    /// No isolation at all: the agent runs as a plain child of the hub. Only when asked.
    None,
}

impl Sandbox {
    /// bubblewrap from `PATH`, if installed.
    pub fn find_bubblewrap() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("bwrap"))
            .find(|p| p.is_file())
    }
}

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// `data_dir/workspaces`.
    pub root: PathBuf,
    pub scope: Scope,
    pub sandbox: Sandbox,
    /// The `codi-monitor` binary on the host, mounted read-only into every sandbox.
    pub agent_binary: PathBuf,
    /// A delegated cgroup v2 subtree for the limits; `None`: rlimits.
    pub cgroups: Option<crate::cgroup::Cgroups>,
}

/// Exit codes of the sandboxes this process started, by workspace and generation.
type Exits = Arc<Mutex<HashMap<WorkspaceId, (u64, Option<i64>)>>>;

pub struct ProcessRuntime {
    config: ProcessConfig,
    exits: Exits,
    /// Told whenever a sandbox this runtime started exits.
    exited: Arc<tokio::sync::Notify>,
}

impl ProcessRuntime {
    pub fn new(config: ProcessConfig) -> Result<ProcessRuntime, RuntimeError> {
        if let Sandbox::Bubblewrap(bwrap) = &config.sandbox
            && !bwrap.is_file()
        {
            return Err(RuntimeError::Unavailable(format!(
                "bubblewrap is not at {}: install Debian's bubblewrap, or run without a sandbox only by choice (--workspace-sandbox none)",
                bwrap.display()
            )));
        }
        std::fs::create_dir_all(&config.root).map_err(|e| {
            RuntimeError::Failed(format!("cannot create {}: {e}", config.root.display()))
        })?;
        Ok(ProcessRuntime {
            config,
            exits: Arc::default(),
            exited: Arc::default(),
        })
    }

    fn dir(&self, workspace: WorkspaceId) -> PathBuf {
        self.config.root.join(workspace.to_string())
    }

    /// The persistent home of a workspace on the host.
    pub fn home(&self, workspace: WorkspaceId) -> PathBuf {
        self.dir(workspace).join("home")
    }

    /// What the sandbox printed (the agent's own log goes to the hub).
    pub fn output_log(&self, workspace: WorkspaceId) -> PathBuf {
        self.dir(workspace).join("agent.log")
    }

    /// The outer process of every sandbox of this scope.
    fn find(&self) -> Vec<(i32, Observed)> {
        let mut found = Vec::new();
        let mut labelled: HashMap<i32, (TenantId, WorkspaceId, u64)> = HashMap::new();
        for pid in procfs::pids() {
            let Some(env) = procfs::environ(pid) else {
                continue;
            };
            if env.get(ENV_SCOPE).map(String::as_str) != Some(self.config.scope.as_str()) {
                continue;
            }
            let parsed = (|| {
                let tenant: TenantId = env.get(ENV_TENANT)?.parse().ok()?;
                let workspace: WorkspaceId = env.get(ENV_WORKSPACE)?.parse().ok()?;
                let generation: u64 = env.get(ENV_GENERATION)?.parse().ok()?;
                Some((tenant, workspace, generation))
            })();
            if let Some(labels) = parsed
                && procfs::alive(pid)
            {
                labelled.insert(pid, labels);
            }
        }
        // Without a sandbox the agent's children inherit the labels: the topmost counts.
        for (pid, (tenant, workspace, generation)) in &labelled {
            let parent = procfs::stat(*pid).map(|s| s.ppid);
            if parent.is_some_and(|p| labelled.get(&p).is_some_and(|l| l.1 == *workspace)) {
                continue;
            }
            found.push((
                *pid,
                Observed {
                    instance: InstanceRef {
                        tenant: *tenant,
                        workspace: *workspace,
                    },
                    generation: *generation,
                    phase: Phase::Running,
                    runtime_id: pid.to_string(),
                },
            ));
        }
        found
    }

    fn find_one(&self, workspace: WorkspaceId) -> Option<(i32, Observed)> {
        self.find()
            .into_iter()
            .find(|(_, o)| o.instance.workspace == workspace)
    }

    fn write_key(&self, spec: &Spec) -> Result<PathBuf, RuntimeError> {
        let dir = self.dir(spec.instance.workspace).join("secrets");
        crate::write_agent_key(&dir, &spec.agent.key)
    }

    fn command(&self, spec: &Spec, key_file: &Path, cgroup: Option<&Path>) -> Command {
        let home = self.home(spec.instance.workspace);
        let socket_host = spec.agent.hub_socket_dir.join(&spec.agent.hub_socket_name);
        let mut argv: Vec<String> = Vec::new();
        if let Some(dir) = cgroup {
            argv.extend(crate::cgroup::enter_argv(dir));
        } else {
            let limits = rlimit_args(spec);
            if !limits.is_empty() {
                argv.push("prlimit".into());
                argv.extend(limits);
                argv.push("--".into());
            }
        }
        // The outer process's environment: the labels, and (without a sandbox) the agent's.
        let mut env = vec![("PATH".to_string(), HOST_PATH.to_string())];
        match &self.config.sandbox {
            Sandbox::Bubblewrap(bwrap) => {
                let socket = format!("{}/{}", inside::HUB_DIR, spec.agent.hub_socket_name);
                argv.push(bwrap.display().to_string());
                argv.extend(bwrap_args(spec, &home, key_file, &self.config.agent_binary));
                let mut inner = agent_env(
                    spec,
                    HubAddress::Socket(&socket),
                    inside::KEY_FILE,
                    inside::HOME,
                );
                inner.push(("PATH".into(), format!("{HOST_PATH}:/opt/coditect/bin")));
                argv.push("--clearenv".into());
                for (k, v) in inner {
                    argv.extend(["--setenv".into(), k, v]);
                }
                argv.extend(["--".into(), AGENT_INSIDE.into(), "agent".into()]);
            }
            Sandbox::None => {
                argv.push(self.config.agent_binary.display().to_string());
                argv.push("agent".into());
                env.extend(agent_env(
                    spec,
                    HubAddress::Socket(&socket_host.display().to_string()),
                    &key_file.display().to_string(),
                    &home.display().to_string(),
                ));
            }
        }
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .envs(env)
            .env(ENV_SCOPE, self.config.scope.as_str())
            .env(ENV_TENANT, spec.instance.tenant.to_string())
            .env(ENV_WORKSPACE, spec.instance.workspace.to_string())
            .env(ENV_GENERATION, spec.generation.to_string())
            .current_dir(&home)
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C to the hub does not reach it.
            .process_group(0)
            .kill_on_drop(false);
        cmd
    }
}

/// Signals the sandbox to stop, kills it after `grace`, and waits until it is gone.
fn terminate(pid: i32, sandboxed: bool, grace: Duration) {
    // Inside bubblewrap, the namespace's init is the outer process's child; every
    // process of that namespace but the init (which ignores SIGTERM) is asked first.
    let init = sandboxed
        .then(|| procfs::children(pid).first().copied())
        .flatten();
    // Never the hub's own namespace: a child that is not a sandbox's init (a sandbox
    // already gone, a pid reused) would make "everything in its namespace" the host.
    let own = procfs::pid_namespace(std::process::id() as i32);
    let ns = init
        .and_then(procfs::pid_namespace)
        .filter(|ns| own.as_ref() != Some(ns));
    match (&ns, init) {
        (Some(ns), Some(init)) => {
            for p in procfs::in_namespace(ns) {
                if p != init {
                    let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
                }
            }
        }
        _ => {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    while procfs::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if procfs::alive(pid) {
        if let Some(init) = init {
            // Killing a PID namespace's init kills everything in it.
            let _ = kill(Pid::from_raw(init), Signal::SIGKILL);
        }
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while procfs::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn failed(what: &str, e: std::io::Error) -> RuntimeError {
    RuntimeError::Failed(format!("cannot {what}: {e}"))
}

fn rlimit_args(spec: &Spec) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(mb) = spec.resources.memory_mb {
        args.push(format!("--as={}", mb.saturating_mul(1 << 20)));
    }
    if let Some(pids) = spec.resources.pids {
        args.push(format!("--nproc={pids}"));
    }
    args
}

fn bwrap_args(spec: &Spec, home: &Path, key_file: &Path, agent: &Path) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    let uid = inside::UID.to_string();
    push(&["--unshare-user", "--uid", &uid, "--gid", &uid]);
    push(&[
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
    ]);
    if !spec.network {
        push(&["--unshare-net"]);
    }
    let short = spec.instance.workspace.to_string();
    let hostname = format!("ws-{}", &short[short.len().saturating_sub(8)..]);
    push(&["--hostname", &hostname, "--new-session"]);
    push(&["--ro-bind", "/usr", "/usr"]);
    for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let path = Path::new(top);
        match std::fs::read_link(path) {
            Ok(target) => push(&["--symlink", &target.display().to_string(), top]),
            Err(_) if path.is_dir() => push(&["--ro-bind", top, top]),
            Err(_) => {}
        }
    }
    push(&["--ro-bind", "/etc", "/etc"]);
    for file in MASKED {
        if Path::new(file).exists() {
            push(&["--ro-bind", "/dev/null", file]);
        }
    }
    for dir in MASKED_DIRS {
        if Path::new(dir).is_dir() {
            push(&["--tmpfs", dir]);
        }
    }
    push(&["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]);
    push(&["--dir", "/var", "--tmpfs", "/var/tmp", "--dir", "/run"]);
    let socket_dir = spec.agent.hub_socket_dir.display().to_string();
    push(&["--ro-bind", &socket_dir, inside::HUB_DIR]);
    // The directory, not the file: a key rotated by an atomic rename (a pool claim) is
    // seen inside.
    push(&[
        "--ro-bind",
        &key_file.parent().unwrap_or(key_file).display().to_string(),
        inside::SECRETS_DIR,
    ]);
    push(&["--ro-bind", &agent.display().to_string(), AGENT_INSIDE]);
    push(&["--bind", &home.display().to_string(), inside::HOME]);
    push(&["--chdir", inside::HOME]);
    a
}

#[async_trait]
impl Runtime for ProcessRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    async fn create(&self, spec: &Spec) -> Result<(), RuntimeError> {
        use std::os::unix::fs::DirBuilderExt;
        let home = self.home(spec.instance.workspace);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&home)
            .map_err(|e| failed("create the workspace home", e))
    }

    async fn start(&self, spec: &Spec) -> Result<Observed, RuntimeError> {
        if let Some((_, running)) = self.find_one(spec.instance.workspace) {
            return Ok(running);
        }
        if !self.config.agent_binary.is_file() {
            return Err(RuntimeError::Invalid(format!(
                "the workspace agent is not at {} (build codi-monitor, or set --workspace-agent)",
                self.config.agent_binary.display()
            )));
        }
        self.create(spec).await?;
        let key_file = self.write_key(spec)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.output_log(spec.instance.workspace))
            .map_err(|e| failed("open the workspace output log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| failed("open the workspace output log", e))?;
        let cgroup = match &self.config.cgroups {
            Some(c) => Some(c.prepare(&self.config.scope, spec)?),
            None => None,
        };
        let mut child = self
            .command(spec, &key_file, cgroup.as_deref())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| RuntimeError::Failed(format!("cannot start the sandbox: {e}")))?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| RuntimeError::Failed("the sandbox exited at once".into()))?;
        let (exits, exited) = (self.exits.clone(), self.exited.clone());
        let (workspace, generation) = (spec.instance.workspace, spec.generation);
        if let Ok(mut e) = exits.lock() {
            e.remove(&workspace);
        }
        tokio::spawn(async move {
            let code = child
                .wait()
                .await
                .ok()
                .and_then(|s| s.code())
                .map(i64::from);
            if let Ok(mut e) = exits.lock() {
                e.insert(workspace, (generation, code));
            }
            exited.notify_one();
        });
        Ok(Observed {
            instance: spec.instance,
            generation: spec.generation,
            phase: Phase::Running,
            runtime_id: pid.to_string(),
        })
    }

    fn exits(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.exited.clone())
    }

    async fn stop(&self, instance: InstanceRef, grace: Duration) -> Result<(), RuntimeError> {
        let Some((pid, _)) = self.find_one(instance.workspace) else {
            return Ok(());
        };
        let sandboxed = matches!(self.config.sandbox, Sandbox::Bubblewrap(_));
        tokio::task::spawn_blocking(move || terminate(pid, sandboxed, grace))
            .await
            .map_err(|e| RuntimeError::Failed(format!("stopping the sandbox: {e}")))
    }

    async fn rekey(
        &self,
        instance: InstanceRef,
        key: &coditect_proto::Secret,
    ) -> Result<(), RuntimeError> {
        let dir = self.dir(instance.workspace).join("secrets");
        crate::write_agent_key(&dir, key).map(|_| ())
    }

    async fn seed_home(
        &self,
        instance: InstanceRef,
        from: &std::path::Path,
    ) -> Result<(), RuntimeError> {
        let home = self.home(instance.workspace);
        std::fs::create_dir_all(&home).map_err(|e| {
            RuntimeError::Failed(format!("cannot make the home {}: {e}", home.display()))
        })?;
        crate::copy_tree(from, &home).await
    }

    async fn destroy(&self, instance: InstanceRef) -> Result<(), RuntimeError> {
        self.stop(instance, Duration::from_secs(2)).await?;
        if let Ok(mut e) = self.exits.lock() {
            e.remove(&instance.workspace);
        }
        if let Some(c) = &self.config.cgroups {
            c.remove(&self.config.scope, &instance.workspace.to_string());
        }
        match std::fs::remove_dir_all(self.dir(instance.workspace)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed("remove the workspace directory", e)),
        }
    }

    async fn inspect(&self, instance: InstanceRef) -> Result<Option<Observed>, RuntimeError> {
        if let Some((_, running)) = self.find_one(instance.workspace) {
            return Ok(Some(running));
        }
        let exited = self
            .exits
            .lock()
            .ok()
            .and_then(|e| e.get(&instance.workspace).copied());
        Ok(exited.map(|(generation, code)| Observed {
            instance,
            generation,
            phase: Phase::Exited { code, oom: false },
            runtime_id: String::new(),
        }))
    }

    async fn list(&self) -> Result<Vec<Observed>, RuntimeError> {
        Ok(self.find().into_iter().map(|(_, o)| o).collect())
    }

    async fn probe(&self) -> Result<(), RuntimeError> {
        if let Sandbox::Bubblewrap(bwrap) = &self.config.sandbox
            && !bwrap.is_file()
        {
            return Err(RuntimeError::Unavailable(format!(
                "bubblewrap is gone from {}",
                bwrap.display()
            )));
        }
        if !self.config.agent_binary.is_file() {
            return Err(RuntimeError::Unavailable(format!(
                "the workspace agent is gone from {}",
                self.config.agent_binary.display()
            )));
        }
        Ok(())
    }

    fn limits(&self) -> String {
        if let Some(c) = &self.config.cgroups {
            return c.describe();
        }
        "rlimits (memory as address space, processes; cpu not enforced: no delegated cgroup v2)"
            .into()
    }
}
