//! The reconciler: drives each workspace's observed status towards what is desired.
//!
//! Invariants:
//! - **One writer of status.** Only the holder of a workspace's lease (taken in the store:
//!   PostgreSQL `FOR UPDATE SKIP LOCKED`, the SQLite writer) acts on it or writes its
//!   status, so replicas sharing one PostgreSQL never act on one workspace at once. The
//!   agent's reports only record readiness and activity and make the workspace due.
//! - **Write, then act.** A launch records its new generation and instance token
//!   (`starting`) *before* it asks the runtime, so a hub killed at any point finds on
//!   restart a `starting` workspace whose instance it adopts by label (same generation), or
//!   relaunches (none, or an older one, which is stopped first): never two copies, never an
//!   orphan. Every runtime call is bounded by `workspace_runtime_timeout`; a lease outlives
//!   the longest step.
//! - **Running means the agent said ready**, not that a process was spawned.
//! - Every transition is a build (who asked, when, outcome, error), audited, and an entry
//!   in the workspace's own logs (component `orchestrator`).

use crate::authz::system_build;
use crate::config::WorkspacesConfig;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use coditect_proto::{Level, Secret};
use coditect_store::{Build, BuildStatus, Desired, Observation, Status, StoreError, Workspace};
use coditect_workspaces::template::TemplateSpec;
use coditect_workspaces::{
    AgentSetup, InstanceRef, Observed, Phase, Runtime, RuntimeError, RuntimeKind, Spec,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The agent socket's file name in its directory.
pub const AGENT_SOCKET: &str = "hub.sock";
/// Most workspaces one pass leases.
const BATCH: u32 = 16;
/// Longest pause between two passes when nothing wakes the reconciler.
const IDLE_PASS: Duration = Duration::from_secs(1);

/// The runtimes this hub drives, and how it drives them.
pub struct Orchestrator {
    runtimes: BTreeMap<&'static str, Arc<dyn Runtime>>,
    settings: WorkspacesConfig,
    /// The directory holding the agent socket (mounted into every workspace).
    socket_dir: PathBuf,
    /// This replica's name on leases.
    holder: String,
    wake: Notify,
}

impl Orchestrator {
    pub fn new(
        runtimes: Vec<Arc<dyn Runtime>>,
        settings: WorkspacesConfig,
        socket_dir: PathBuf,
    ) -> Orchestrator {
        // Stable across restarts of this hub (its data directory, which only one process
        // holds at a time, names it): a hub killed mid-step takes its own leases back at
        // once instead of waiting them out.
        let holder = {
            let dir = socket_dir
                .canonicalize()
                .unwrap_or_else(|_| socket_dir.clone());
            let digest = crate::logs::digest([
                settings.scope.as_str().as_bytes(),
                dir.as_os_str().as_encoded_bytes(),
            ]);
            format!("hub-{}", &digest[..16])
        };
        Orchestrator {
            runtimes: runtimes
                .into_iter()
                .map(|r| (r.kind().as_str(), r))
                .collect(),
            settings,
            socket_dir,
            holder,
            wake: Notify::new(),
        }
    }

    /// Makes the reconciler look now (a request, an agent's report).
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// This replica's name on leases.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn settings(&self) -> &WorkspacesConfig {
        &self.settings
    }

    pub fn runtimes(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        self.runtimes.values()
    }

    pub fn runtime(&self, kind: RuntimeKind) -> Option<&Arc<dyn Runtime>> {
        self.runtimes.get(kind.as_str())
    }

    /// One health component per runtime in use (`runtime:process`, `runtime:docker`); not
    /// critical: a runtime down stops workspaces from starting, not the hub. Docker is
    /// probed when it is the default runtime or its socket exists; Kubernetes whenever it is
    /// enabled.
    pub async fn probe(&self) -> Vec<coditect_proto::ComponentHealth> {
        let mut out = Vec::new();
        for runtime in self.runtimes.values() {
            let kind = runtime.kind();
            if kind == RuntimeKind::Docker
                && self.settings.runtime != RuntimeKind::Docker
                && !self.settings.docker_socket.exists()
            {
                continue;
            }
            let started = Instant::now();
            let probed = tokio::time::timeout(Duration::from_secs(2), runtime.probe()).await;
            let message = match probed {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some("not reachable".to_string()),
                Err(_) => Some("did not answer within 2 s".to_string()),
            };
            out.push(coditect_proto::ComponentHealth {
                name: format!("runtime:{}", kind.as_str()),
                healthy: message.is_none(),
                latency_ms: coditect_proto::duration_ms(started.elapsed()),
                critical: false,
                message,
            });
        }
        out
    }

    /// The template a stored workspace spec says (older rows hold `{}`: the built-in one).
    pub fn template_of(&self, ws: &Workspace) -> Result<TemplateSpec, String> {
        let mut value: serde_json::Value = serde_json::from_str(&ws.spec)
            .map_err(|e| format!("the workspace's stored spec is not JSON: {e}"))?;
        if let Some(map) = value.as_object_mut() {
            map.entry("runtime")
                .or_insert_with(|| json!(self.settings.runtime.as_str()));
        }
        serde_json::from_value(value).map_err(|e| format!("the workspace's stored spec: {e}"))
    }

    fn lease_for(&self) -> chrono::Duration {
        let longest = self.settings.runtime_timeout * 3 + self.settings.stop_grace;
        chrono::Duration::from_std(longest + Duration::from_secs(10))
            .unwrap_or(chrono::Duration::minutes(10))
    }

    /// Bounds one runtime call: a hang is a failure, never a stuck reconciler.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T, RuntimeError>>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(self.settings.runtime_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(RuntimeError::Unavailable(format!(
                "{what} did not answer within {}",
                humantime::format_duration(self.settings.runtime_timeout)
            ))),
        }
    }
}

/// The runtimes the configuration asks for. Refuses (so the hub does not start) when the
/// process runtime would have no sandbox and `--workspace-sandbox none` was not said.
pub fn from_config(
    config: &crate::config::Config,
) -> Result<Orchestrator, crate::server::StartError> {
    use coditect_workspaces::docker::{DockerConfig, DockerRuntime};
    use coditect_workspaces::kubernetes::{KubernetesConfig, KubernetesRuntime};
    use coditect_workspaces::process::{ProcessConfig, ProcessRuntime, Sandbox};
    let w = &config.workspaces;
    let root = config.data_dir.join("workspaces");
    let sandbox = if w.sandbox {
        match Sandbox::find_bubblewrap() {
            Some(path) => Sandbox::Bubblewrap(path),
            None => {
                return Err(config
                    .invalid(
                        "workspace_sandbox",
                        "bubblewrap",
                        "bubblewrap installed (Debian's package bubblewrap) for the process runtime, \
                         or --workspace-sandbox none to run workspaces without any isolation",
                    )
                    .into());
            }
        }
    } else {
        tracing::warn!(
            "workspaces run without a sandbox (--workspace-sandbox none): each sees this machine as the hub does"
        );
        Sandbox::None
    };
    let agent = w.agent.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("codi-monitor")))
            .unwrap_or_else(|| PathBuf::from("codi-monitor"))
    });
    let cgroups = match &w.cgroup {
        Some(dir) => Some(
            coditect_workspaces::cgroup::Cgroups::delegated(dir)
                .map_err(|e| config.invalid("workspace_cgroup", dir.display().to_string(), e))?,
        ),
        None => None,
    };
    let process = ProcessRuntime::new(ProcessConfig {
        root: root.clone(),
        scope: w.scope.clone(),
        sandbox,
        agent_binary: agent,
        cgroups,
    })
    .map_err(|e| config.invalid("workspace_sandbox", "bubblewrap", e.to_string()))?;
    let docker = DockerRuntime::new(DockerConfig {
        socket: w.docker_socket.clone(),
        scope: w.scope.clone(),
        default_image: w.image.clone(),
        root,
        timeout: w.runtime_timeout,
    });
    tracing::info!(process_limits = %process.limits(), "workspace runtimes ready");
    let mut runtimes: Vec<Arc<dyn Runtime>> = vec![Arc::new(process), Arc::new(docker)];
    // Kubernetes when asked for: as the built-in template's runtime, or by any of its
    // settings (a hub that never uses it does not look for a cluster every sweep).
    let k = &w.kube;
    if w.runtime == RuntimeKind::Kubernetes || k.kubeconfig.is_some() || k.hub_url.is_some() {
        let Some(hub_url) = k.hub_url.clone().or_else(|| config.public_url.clone()) else {
            return Err(config
                .invalid(
                    "workspace_kube_hub_url",
                    "",
                    "the URL at which workspace pods reach the hub (its Service), or public_url",
                )
                .into());
        };
        runtimes.push(Arc::new(KubernetesRuntime::new(KubernetesConfig {
            scope: w.scope.clone(),
            kubeconfig: k.kubeconfig.clone(),
            hub_url,
            default_image: w.image.clone(),
            namespace_prefix: k.namespace_prefix.clone(),
            home_size: k.home_size.clone(),
            storage_class: k.storage_class.clone(),
            timeout: w.runtime_timeout,
        })));
    }
    Ok(Orchestrator::new(
        runtimes,
        w.clone(),
        super::agent::socket_dir(&config.data_dir),
    ))
}

/// The background task: a pass whenever nudged, and at least every second.
pub async fn run(state: AppState) {
    let mut resumed = false;
    loop {
        if !resumed && state.gate().system().is_ready() {
            // What this hub held when it last stopped (a crash mid-step): due now.
            match state
                .gate()
                .system()
                .release_all(state.orchestrator().holder())
                .await
            {
                Ok(n) => {
                    resumed = true;
                    if n > 0 {
                        tracing::info!(
                            workspaces = n,
                            "resuming what this hub was doing when it stopped"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot resume this hub's leases yet"),
            }
        }
        if state.gate().system().is_ready() {
            let worked = pass(&state).await;
            if worked > 0 {
                continue;
            }
        }
        let orch = state.orchestrator();
        tokio::select! {
            () = orch.wake.notified() => {}
            () = tokio::time::sleep(IDLE_PASS) => {}
        }
    }
}

/// One pass: leases what is due and works on it, concurrently. Returns how many it leased
/// (public so tests can drive the reconciler step by step).
pub async fn pass(state: &AppState) -> usize {
    let orch = state.orchestrator();
    let now = state.gate().clock().now();
    let due = match state
        .gate()
        .system()
        .lease_due(&orch.holder, now, now + orch.lease_for(), BATCH)
        .await
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot lease workspaces");
            return 0;
        }
    };
    let leased = due.len();
    let mut work = tokio::task::JoinSet::new();
    for ws in due {
        let state = state.clone();
        work.spawn(async move { reconcile(&state, ws).await });
    }
    while work.join_next().await.is_some() {}
    leased
}

/// Acts once on a leased workspace, then gives the lease back.
pub async fn reconcile(state: &AppState, ws: Workspace) {
    let orch = state.orchestrator();
    metrics::counter!("workspace_reconcile_total").increment(1);
    let outcome = Step {
        state,
        ws: ws.clone(),
    }
    .run()
    .await;
    if let Err(e) = outcome {
        metrics::counter!("workspace_reconcile_errors_total", "kind" => e.kind()).increment(1);
        tracing::warn!(workspace = %ws.id, tenant = %ws.tenant_id, error = %e, "reconcile failed");
    }
    if let Err(e) = state.gate().system().release(&ws, &orch.holder).await {
        tracing::warn!(workspace = %ws.id, error = %e, "cannot release a workspace lease");
    }
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("the lease was lost to another replica")]
    LeaseLost,
}

impl StepError {
    fn kind(&self) -> &'static str {
        match self {
            StepError::Store(_) => "store",
            StepError::LeaseLost => "lease_lost",
        }
    }
}

/// One workspace's turn.
struct Step<'a> {
    state: &'a AppState,
    /// As last written by this step.
    ws: Workspace,
}

impl<'a> Step<'a> {
    fn orch(&self) -> &'a Orchestrator {
        self.state.orchestrator()
    }

    fn now(&self) -> DateTime<Utc> {
        self.state.gate().clock().now()
    }

    fn instance(&self) -> InstanceRef {
        InstanceRef {
            tenant: self.ws.tenant_id,
            workspace: self.ws.id,
        }
    }

    async fn run(&mut self) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        let template = match self.orch().template_of(&self.ws) {
            Ok(t) => t,
            Err(why) => return self.give_up(why).await,
        };
        let Some(runtime) = self.orch().runtime(template.runtime).cloned() else {
            let why = format!(
                "the {} runtime is not enabled on this hub",
                template.runtime.as_str()
            );
            return self.give_up(why).await;
        };
        match (l.desired, l.status) {
            (Desired::Deleted, _) => self.delete(runtime.as_ref()).await,
            (Desired::Stopped, _) | (Desired::Running, Status::Stopping) => {
                self.stop(runtime.as_ref()).await
            }
            (Desired::Running, Status::Starting) => {
                self.check_start(runtime.as_ref(), &template).await
            }
            (Desired::Running, Status::Running) => Ok(()),
            (Desired::Running, _) => self.launch(runtime.as_ref(), &template).await,
        }
    }

    /// Writes `o`; the lease must still be ours.
    async fn observe(&mut self, o: Observation) -> Result<(), StepError> {
        let orch = self.state.orchestrator();
        if !self
            .state
            .gate()
            .system()
            .observe(&self.ws, &orch.holder, &o)
            .await?
        {
            return Err(StepError::LeaseLost);
        }
        let l = &mut self.ws.lifecycle;
        l.status = o.status;
        l.status_reason = o.reason;
        l.status_at = Some(o.at);
        l.generation = o.generation;
        l.instance_token = o.instance_token;
        l.attempts = o.attempts;
        l.next_attempt_at = o.next_attempt_at;
        if o.reset_ready {
            l.ready_at = None;
        }
        Ok(())
    }

    fn observation(&self, status: Status, reason: Option<String>) -> Observation {
        let l = self.ws.lifecycle.clone();
        Observation {
            status,
            reason,
            generation: l.generation,
            instance_token: l.instance_token.clone(),
            attempts: l.attempts,
            next_attempt_at: None,
            reset_ready: false,
            at: self.now(),
        }
    }

    /// An entry in the workspace's logs; a failure to write it is logged, not fatal.
    async fn event(&self, level: Level, message: String, fields: serde_json::Value) {
        let system = self.state.gate().system();
        if let Err(e) = system
            .workspace_event(&self.ws, level, message, fields)
            .await
        {
            tracing::warn!(workspace = %self.ws.id, error = %e, "cannot write a workspace event");
        }
    }

    /// Closes the pending build, if any.
    async fn finish(&self, status: BuildStatus, error: Option<&str>) -> Result<(), StepError> {
        let system = self.state.gate().system();
        if let Some(build) = system.pending_build(&self.ws).await? {
            system.finish_build(&build, status, error).await?;
        }
        Ok(())
    }

    /// The build this act belongs to: the pending one a request made, else a new one the
    /// orchestrator starts itself (a relaunch after a failure).
    async fn build_for(&self, transition: &str, generation: u64) -> Result<Build, StepError> {
        let system = self.state.gate().system();
        if let Some(b) = system.pending_build(&self.ws).await? {
            return Ok(b);
        }
        let b = system_build(
            &self.ws,
            transition,
            self.ws.lifecycle.status_reason.clone(),
            generation,
            self.now(),
        );
        system.add_build(&b).await?;
        Ok(b)
    }

    /// The workspace cannot be acted on at all (its spec is unreadable, its runtime is
    /// not enabled): failed, looked at again later.
    async fn give_up(&mut self, why: String) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        if l.desired == Desired::Deleted {
            // Nothing of it can be running anywhere this hub knows: forget it.
            self.observe(self.observation(Status::Deleted, Some(why)))
                .await?;
            self.finish(BuildStatus::Succeeded, None).await?;
            self.state
                .gate()
                .system()
                .forget_workspace(&self.ws)
                .await?;
            return Ok(());
        }
        self.fail(why, false).await
    }

    /// Failed: the build fails, the workspace waits out a back-off and (when still
    /// desired running) is launched again.
    async fn fail(&mut self, why: String, transient: bool) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        let attempts = l.attempts.saturating_add(1);
        let cap = if transient { 30 } else { 300 };
        let backoff = Duration::from_millis(500)
            .saturating_mul(1u32 << attempts.min(12))
            .min(Duration::from_secs(cap));
        let mut o = self.observation(Status::Failed, Some(why.clone()));
        o.attempts = attempts;
        o.next_attempt_at = Some(self.now() + chrono_duration(backoff));
        self.observe(o).await?;
        self.finish(BuildStatus::Failed, Some(&why)).await?;
        self.event(
            Level::Error,
            format!("workspace failed: {why}"),
            json!({"status": "failed", "generation": l.generation, "attempts": attempts,
                   "retry_in_ms": backoff.as_millis() as u64}),
        )
        .await;
        Ok(())
    }

    /// A fresh launch: new generation, new token, new key, then the runtime.
    async fn launch(
        &mut self,
        runtime: &dyn Runtime,
        template: &TemplateSpec,
    ) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        let generation = l.generation + 1;
        let started = Instant::now();
        // Without a pending request this is the orchestrator's own relaunch of a workspace
        // that failed (or whose launch was lost): a `recover` build.
        let build = self.build_for("recover", generation).await?;
        let token = new_instance_token();
        let key = self
            .state
            .gate()
            .system()
            .mint_agent_key(&self.ws, generation)
            .await?;
        let mut o = self.observation(
            Status::Starting,
            Some(format!("launching generation {generation}")),
        );
        o.generation = generation;
        o.instance_token = Some(token.clone());
        o.reset_ready = true;
        o.next_attempt_at = Some(self.now() + chrono_duration(self.orch().settings.ready_timeout));
        self.observe(o).await?;
        self.event(
            Level::Info,
            format!("workspace starting (generation {generation})"),
            json!({"status": "starting", "generation": generation, "runtime": runtime.kind().as_str(),
                   "build_id": build.id.to_string()}),
        )
        .await;
        let spec = self.spec(template, generation, token, key);
        let orch = self.orch();
        // An instance of an older launch (the hub died between its start and its ready)
        // is stopped first: never two copies.
        let launched = async {
            if let Some(old) = orch
                .call("inspect", runtime.inspect(self.instance()))
                .await?
                && old.generation != generation
            {
                orch.call(
                    "stop",
                    runtime.stop(self.instance(), orch.settings.stop_grace),
                )
                .await?;
            }
            orch.call("create", runtime.create(&spec)).await?;
            if let Some(repo) = template.repository.as_ref().filter(|r| !r.cloned) {
                orch.call("clone", self.seed_from(runtime, template, repo))
                    .await?;
            }
            orch.call("start", runtime.start(&spec)).await
        }
        .await;
        match launched {
            Ok(observed) => {
                tracing::info!(workspace = %self.ws.id, generation, runtime_id = %observed.runtime_id,
                    spawn_ms = started.elapsed().as_millis() as u64, "workspace launched; waiting for its agent");
                Ok(())
            }
            Err(e) => self.fail(e.to_string(), e.is_transient()).await,
        }
    }

    /// The first start of a workspace made from a repository: the hub clones it on its
    /// side (the credential never enters the workspace), the runtime puts the clone into
    /// the home, and the spec records it (credential erased) so later starts leave the
    /// home alone.
    async fn seed_from(
        &self,
        runtime: &dyn Runtime,
        template: &TemplateSpec,
        repo: &coditect_workspaces::git::Repository,
    ) -> Result<(), coditect_workspaces::RuntimeError> {
        use coditect_workspaces::RuntimeError;
        let scratch = self
            .state
            .config()
            .data_dir
            .join("workspaces")
            .join(self.ws.id.to_string())
            .join("clone");
        let _ = std::fs::remove_dir_all(&scratch);
        if let Some(parent) = scratch.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                RuntimeError::Failed(format!("cannot make a scratch directory: {e}"))
            })?;
        }
        let started = Instant::now();
        let cloned = repo.clone_into(&scratch).await;
        let seeded = match cloned {
            Ok(()) => runtime.seed_home(self.instance(), &scratch).await,
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&scratch);
        seeded?;
        let mut done = template.clone();
        if let Some(r) = done.repository.as_mut() {
            r.cloned = true;
            r.credential = None;
        }
        let json = serde_json::to_string(&done)
            .map_err(|e| RuntimeError::Failed(format!("cannot write the spec: {e}")))?;
        let written = self
            .state
            .gate()
            .system()
            .set_spec(&self.ws, &self.orch().holder, &json)
            .await
            .map_err(|e| RuntimeError::Unavailable(format!("cannot record the clone: {e}")))?;
        if !written {
            return Err(RuntimeError::Unavailable(
                "lost the workspace's lease while cloning".into(),
            ));
        }
        self.event(
            Level::Info,
            format!("home cloned from {}", repo.url),
            json!({"repository": repo.url, "ref": repo.reference, "clone_ms": started.elapsed().as_millis() as u64}),
        )
        .await;
        Ok(())
    }

    /// `starting`: running once the agent of this launch said ready.
    async fn check_start(
        &mut self,
        runtime: &dyn Runtime,
        template: &TemplateSpec,
    ) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        let orch = self.orch();
        let observed = match orch.call("inspect", runtime.inspect(self.instance())).await {
            Ok(o) => o,
            Err(e) => return self.fail(e.to_string(), e.is_transient()).await,
        };
        match observed {
            // Never started (the hub died before the runtime call) or an older launch:
            // launch anew (a new key: the old one's secret was never kept).
            None => return self.launch(runtime, template).await,
            Some(o) if o.generation != l.generation => return self.launch(runtime, template).await,
            Some(Observed {
                phase: Phase::Exited { code, oom },
                ..
            }) => return self.fail(exit_reason(code, oom), false).await,
            Some(_) => {}
        }
        if l.ready_at.is_some() {
            let started = l.status_at.unwrap_or_else(|| self.now());
            let took = (self.now() - started).to_std().unwrap_or_default();
            let mut o = self.observation(Status::Running, None);
            o.attempts = 0;
            self.observe(o).await?;
            let system = self.state.gate().system();
            let transition = match system.pending_build(&self.ws).await? {
                Some(b) => {
                    let t = b.transition.clone();
                    system
                        .finish_build(&b, BuildStatus::Succeeded, None)
                        .await?;
                    t
                }
                None => "start".into(),
            };
            let source = "cold";
            metrics::histogram!("container_launch_time", "runtime" => runtime.kind().as_str(), "source" => source)
                .record(took.as_secs_f64());
            if transition == "recover" {
                metrics::histogram!("session_recovery_time", "runtime" => runtime.kind().as_str())
                    .record(took.as_secs_f64());
            }
            self.event(
                Level::Info,
                format!("workspace running (generation {})", l.generation),
                json!({"status": "running", "generation": l.generation, "launch_ms": took.as_millis() as u64,
                       "transition": transition}),
            )
            .await;
            return Ok(());
        }
        let since = l.status_at.unwrap_or_else(|| self.now());
        let waited = (self.now() - since).to_std().unwrap_or_default();
        if waited >= orch.settings.ready_timeout {
            let _ = orch
                .call("stop", runtime.stop(self.instance(), Duration::ZERO))
                .await;
            let why = format!(
                "its agent did not say ready within {}",
                humantime::format_duration(orch.settings.ready_timeout)
            );
            return self.fail(why, false).await;
        }
        // Still waiting: the agent's report makes it due again, else the deadline does.
        let mut o = self.observation(Status::Starting, l.status_reason.clone());
        o.at = since;
        o.next_attempt_at = Some(since + chrono_duration(orch.settings.ready_timeout));
        self.observe(o).await
    }

    /// Stops the instance; the home stays.
    async fn stop(&mut self, runtime: &dyn Runtime) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        let orch = self.orch();
        if l.status == Status::Stopped {
            return self.finish(BuildStatus::Succeeded, None).await;
        }
        if l.status != Status::Stopping {
            self.observe(self.observation(Status::Stopping, None))
                .await?;
            self.event(
                Level::Info,
                "workspace stopping".into(),
                json!({"status": "stopping", "generation": l.generation}),
            )
            .await;
        }
        if let Err(e) = orch
            .call(
                "stop",
                runtime.stop(self.instance(), orch.settings.stop_grace),
            )
            .await
        {
            let mut o = self.observation(Status::Stopping, Some(e.to_string()));
            o.attempts = l.attempts.saturating_add(1);
            o.next_attempt_at = Some(self.now() + chrono::Duration::seconds(5));
            return self.observe(o).await;
        }
        self.state
            .gate()
            .system()
            .revoke_agent_keys(&self.ws)
            .await?;
        let reason = l
            .status_reason
            .clone()
            .filter(|_| l.status == Status::Stopping);
        let mut o = self.observation(Status::Stopped, reason);
        o.instance_token = None;
        o.attempts = 0;
        self.observe(o).await?;
        let system = self.state.gate().system();
        match system.pending_build(&self.ws).await? {
            // A restart: stopped, now started again under the same build.
            Some(b) if b.transition == "restart" && l.desired == Desired::Stopped => {
                system.resume(&self.ws).await?;
                self.orch().nudge();
            }
            Some(b) => {
                system
                    .finish_build(&b, BuildStatus::Succeeded, None)
                    .await?
            }
            None => {}
        }
        self.event(
            Level::Info,
            "workspace stopped".into(),
            json!({"status": "stopped", "generation": l.generation}),
        )
        .await;
        Ok(())
    }

    /// Removes everything the workspace owned, then the workspace.
    async fn delete(&mut self, runtime: &dyn Runtime) -> Result<(), StepError> {
        let l = self.ws.lifecycle.clone();
        let orch = self.orch();
        if l.status != Status::Deleting {
            self.observe(self.observation(Status::Deleting, None))
                .await?;
            self.event(
                Level::Info,
                "workspace deleting".into(),
                json!({"status": "deleting", "generation": l.generation}),
            )
            .await;
        }
        if let Err(e) = orch.call("destroy", runtime.destroy(self.instance())).await {
            let mut o = self.observation(Status::Deleting, Some(e.to_string()));
            o.attempts = l.attempts.saturating_add(1);
            o.next_attempt_at = Some(self.now() + chrono::Duration::seconds(5));
            return self.observe(o).await;
        }
        let system = self.state.gate().system();
        system.revoke_agent_keys(&self.ws).await?;
        self.event(
            Level::Info,
            "workspace deleted".into(),
            json!({"status": "deleted", "generation": l.generation}),
        )
        .await;
        self.observe(self.observation(Status::Deleted, None))
            .await?;
        self.finish(BuildStatus::Succeeded, None).await?;
        system.forget_workspace(&self.ws).await?;
        Ok(())
    }

    /// What the runtime gets for this launch.
    fn spec(&self, t: &TemplateSpec, generation: u64, token: String, key: Secret) -> Spec {
        let settings = &self.orch().settings;
        let mut env = t.env.clone();
        if let Some(cmd) = &t.post_start_command {
            env.insert("CODITECT_POST_START_COMMAND".into(), cmd.clone());
        }
        if let Some(cmd) = &t.post_create_command {
            env.insert("CODITECT_POST_CREATE_COMMAND".into(), cmd.clone());
        }
        Spec {
            instance: self.instance(),
            generation,
            image: Some(t.image.clone().unwrap_or_else(|| settings.image.clone())),
            command: t.command.clone(),
            env,
            resources: t.resources.clone(),
            network: t.network,
            agent: AgentSetup {
                key,
                hub_socket_dir: self.orch().socket_dir.clone(),
                hub_socket_name: AGENT_SOCKET.into(),
                instance_token: token,
            },
        }
    }
}

pub(super) fn exit_reason(code: Option<i64>, oom: bool) -> String {
    match (oom, code) {
        (true, _) => "killed for using too much memory (oom)".into(),
        (false, Some(c)) => format!("its agent exited with code {c}"),
        (false, None) => "its agent was killed by a signal".into(),
    }
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// 128 random bits, hex: names one launch in the agent's reports.
fn new_instance_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::exit_reason;

    #[test]
    fn an_oom_kill_says_so_whatever_the_code() {
        assert_eq!(
            exit_reason(Some(137), true),
            "killed for using too much memory (oom)"
        );
        assert_eq!(
            exit_reason(None, true),
            "killed for using too much memory (oom)"
        );
        assert_eq!(exit_reason(Some(3), false), "its agent exited with code 3");
        assert_eq!(exit_reason(None, false), "its agent was killed by a signal");
    }
}
