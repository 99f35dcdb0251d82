//! The workspace registry: named development workspaces that logs and sessions refer to.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{BuildId, TemplateId, TenantId, UserId, WorkspaceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub tenant_id: TenantId,
    pub id: WorkspaceId,
    pub name: String,
    pub owner_id: UserId,
    pub created_at: DateTime<Utc>,
    /// The template it was made from; `None`: the built-in default.
    pub template_id: Option<TemplateId>,
    /// What to run, resolved from the template when the workspace was created (JSON the
    /// orchestrator reads; the store keeps it opaque).
    pub spec: String,
    /// What it counts against its tenant's quotas.
    pub cpu_millis: u32,
    pub memory_mb: u64,
    /// A warm-pool instance of its template, waiting (owned by the pool account) to be
    /// claimed.
    pub pooled: bool,
    pub lifecycle: Lifecycle,
}

impl Workspace {
    /// A new, stopped workspace of the built-in template.
    pub fn new(
        tenant_id: TenantId,
        name: String,
        owner_id: UserId,
        created_at: DateTime<Utc>,
    ) -> Workspace {
        Workspace {
            tenant_id,
            id: WorkspaceId::new(),
            name,
            owner_id,
            created_at,
            template_id: None,
            spec: "{}".into(),
            cpu_millis: 0,
            memory_mb: 0,
            pooled: false,
            lifecycle: Lifecycle::default(),
        }
    }
}

/// What users asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Desired {
    Running,
    Stopped,
    Deleted,
}

/// What the reconciler last saw (the states users of Coder know).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    Deleting,
    Deleted,
}

macro_rules! text_enum {
    ($ty:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),*
                }
            }

            pub fn parse(raw: &str) -> Option<$ty> {
                match raw {
                    $($text => Some($ty::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

text_enum!(Desired { Running => "running", Stopped => "stopped", Deleted => "deleted" });
text_enum!(Status {
    Pending => "pending",
    Starting => "starting",
    Running => "running",
    Stopping => "stopping",
    Stopped => "stopped",
    Failed => "failed",
    Deleting => "deleting",
    Deleted => "deleted",
});

impl Status {
    /// A status the reconciler is in the middle of.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            Status::Pending | Status::Starting | Status::Stopping | Status::Deleting
        )
    }

    /// Whether this status is where `desired` wants it.
    pub fn satisfies(self, desired: Desired) -> bool {
        matches!(
            (desired, self),
            (Desired::Running, Status::Running)
                | (Desired::Stopped, Status::Stopped)
                | (Desired::Deleted, Status::Deleted)
        )
    }
}

/// The orchestration side of a workspace: desired next to observed, and what the agent said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub desired: Desired,
    pub status: Status,
    /// Why it is in this status (a failure's error, "idle for 30m", ...).
    pub status_reason: Option<String>,
    pub status_at: Option<DateTime<Utc>>,
    /// Bumped by every launch; runtime objects carry it as a label.
    pub generation: u64,
    /// Identifies the current launch in the agent's reports.
    pub instance_token: Option<String>,
    /// Failed attempts in a row (for the back-off).
    pub attempts: u32,
    /// When the reconciler should look again (`None`: now).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When the agent of the current launch said it was ready.
    pub ready_at: Option<DateTime<Utc>>,
    /// The agent's last report.
    pub seen_at: Option<DateTime<Utc>>,
    /// The last sign of use (agent-reported or API).
    pub activity_at: Option<DateTime<Utc>>,
    /// Version of the persisted browser state (0: none yet).
    pub state_version: u64,
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle {
            desired: Desired::Stopped,
            status: Status::Stopped,
            status_reason: None,
            status_at: None,
            generation: 0,
            instance_token: None,
            attempts: 0,
            next_attempt_at: None,
            ready_at: None,
            seen_at: None,
            activity_at: None,
            state_version: 0,
        }
    }
}

impl Lifecycle {
    /// Whether the reconciler has something to do here (the rule both engines' scans
    /// encode in SQL; see `workspaces_due`).
    pub fn needs_work(&self) -> bool {
        !self.status.satisfies(self.desired) || self.status.is_transitional()
    }
}

/// What the reconciler writes after acting, under its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub status: Status,
    pub reason: Option<String>,
    pub generation: u64,
    pub instance_token: Option<String>,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Clears `ready_at` (a new launch must say ready again).
    pub reset_ready: bool,
    pub at: DateTime<Utc>,
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub tenant_id: TenantId,
    pub workspace_id: WorkspaceId,
    pub id: BuildId,
    /// `start`, `stop`, `restart`, `delete`, `recover`, `idle-stop`...
    pub transition: String,
    /// Who or what asked: `user:<id>`, `key:<id>`, `system:reconciler`...
    pub initiator: String,
    pub reason: Option<String>,
    pub status: BuildStatus,
    pub error: Option<String>,
    /// The launch it concerns (for a start: the new one).
    pub generation: u64,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildStatus {
    Pending,
    Succeeded,
    Failed,
    /// Overtaken by a later request before it finished.
    Superseded,
}

text_enum!(BuildStatus {
    Pending => "pending",
    Succeeded => "succeeded",
    Failed => "failed",
    Superseded => "superseded",
});

/// A workspace template of a tenant: what its workspaces run (the spec is JSON the
/// orchestrator reads, checked when written; the store keeps it opaque).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub tenant_id: TenantId,
    pub id: TemplateId,
    pub name: String,
    pub spec: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What one tenant may hold; 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub workspaces: u32,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

/// What a tenant holds now: its workspaces, and what those desired running ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub workspaces: u64,
    pub cpu_millis: u64,
    pub memory_mb: u64,
}

impl Quota {
    /// Whether `usage` plus `adding` (a new workspace: `new`; one more running: its CPU
    /// and memory) stays within the quota; the refusal names the limit.
    pub fn admits(
        &self,
        usage: Usage,
        new: bool,
        cpu_millis: u64,
        memory_mb: u64,
    ) -> Result<(), StoreError> {
        let over = |what: &str, used: u64, adding: u64, limit: u64| {
            StoreError::QuotaExceeded(format!(
                "the tenant's {what} quota is {limit}: {used} in use, this needs {adding} more"
            ))
        };
        if new && self.workspaces > 0 && usage.workspaces + 1 > u64::from(self.workspaces) {
            return Err(over(
                "workspace",
                usage.workspaces,
                1,
                u64::from(self.workspaces),
            ));
        }
        if self.cpu_millis > 0 && cpu_millis > 0 && usage.cpu_millis + cpu_millis > self.cpu_millis
        {
            return Err(over(
                "cpu_millis",
                usage.cpu_millis,
                cpu_millis,
                self.cpu_millis,
            ));
        }
        if self.memory_mb > 0 && memory_mb > 0 && usage.memory_mb + memory_mb > self.memory_mb {
            return Err(over(
                "memory_mb",
                usage.memory_mb,
                memory_mb,
                self.memory_mb,
            ));
        }
        Ok(())
    }
}

/// What became of a state write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatePut {
    /// Written; its new version.
    Stored(u64),
    /// Someone wrote first: the current version.
    Stale(u64),
    /// No such workspace.
    Missing,
}

#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    /// `Conflict` if the tenant already has a workspace with that name; `QuotaExceeded`
    /// if `quota` is given and the tenant would go over it (checked and written in one
    /// transaction that holds the tenant's row: race-free across replicas). `build`, the
    /// first transition (a start), is recorded with it.
    async fn create_workspace(
        &self,
        workspace: &Workspace,
        build: Option<&Build>,
        quota: Option<&Quota>,
    ) -> Result<(), StoreError>;

    /// A deleted workspace is not found.
    async fn get_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<Workspace>, StoreError>;

    /// Up to `limit` workspaces ordered by id after `after`, of one owner when given.
    async fn list_workspaces(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
        after: Option<WorkspaceId>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError>;

    /// Records what is desired and the build that asks for it, together; pending builds
    /// of the workspace are superseded (with no `build`, the pending one stays: a
    /// restart's second half). `None` if there is no such workspace, or it is
    /// being deleted and `desired` is not [`Desired::Deleted`] (a delete is final).
    /// Asking for `running` with `quota` checks the tenant's CPU and memory the same
    /// race-free way as [`WorkspaceStore::create_workspace`].
    async fn request(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        desired: Desired,
        build: Option<&Build>,
        quota: Option<&Quota>,
    ) -> Result<Option<Workspace>, StoreError>;

    /// Leases to `holder` until `until` up to `limit` workspaces that need the reconciler
    /// ([`Lifecycle::needs_work`]), are leased by no one else and are due at `now`. On
    /// PostgreSQL rows another replica is locking are skipped, never waited for.
    async fn lease_due(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError>;

    /// Leases one workspace (due or not) when no one else holds it: the health checker and
    /// the agent's nudges act through this. `None` if it is held or gone.
    async fn lease(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Workspace>, StoreError>;

    /// Writes what the reconciler saw, if `holder` still holds the lease; false if not.
    async fn observe(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        observation: &Observation,
    ) -> Result<bool, StoreError>;

    /// Replaces the workspace's spec (the orchestrator's own bookkeeping in it, e.g. a
    /// repository cloned and its credential erased), if `holder` still holds the lease;
    /// false if not.
    async fn set_spec(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        spec: &str,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back (no-op if `holder` does not hold it).
    async fn release(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
    ) -> Result<(), StoreError>;

    /// Records a build the orchestrator starts itself (a recovery, an idle stop) without
    /// changing what is desired; pending builds of the workspace are superseded.
    async fn add_build(&self, build: &Build) -> Result<(), StoreError>;

    /// Gives back every lease `holder` holds and makes those workspaces due now: a hub
    /// restarted after `kill -9` (holders are stable per hub) resumes what it was doing
    /// at once instead of waiting its old leases out. How many there were.
    async fn release_all(&self, holder: &str) -> Result<u64, StoreError>;

    /// Closes a pending build.
    async fn finish_build(
        &self,
        tenant: TenantId,
        workspace: WorkspaceId,
        build: BuildId,
        status: BuildStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Builds of one workspace, newest first, older than `before` when given.
    async fn list_builds(
        &self,
        tenant: TenantId,
        workspace: WorkspaceId,
        before: Option<BuildId>,
        limit: u32,
    ) -> Result<Vec<Build>, StoreError>;

    /// The agent of the launch `token` reports: `ready`, and its last activity. Makes a
    /// starting workspace due at once. False when `token` is not the current launch's.
    async fn agent_report(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        token: &str,
        ready: bool,
        activity: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Up to `limit` workspaces of every tenant in `status`, ordered by (tenant, id) after
    /// `after`: the health checker's and the sweep's view.
    async fn list_in_status(
        &self,
        status: Status,
        after: Option<(TenantId, WorkspaceId)>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError>;

    /// The persisted browser state: its version (0: never written) and JSON text. `None`
    /// if there is no such workspace.
    async fn get_state(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<(u64, Option<String>)>, StoreError>;

    /// Replaces the state if its version is still `expected` (`None`: whatever it is).
    async fn put_state(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        expected: Option<u64>,
        json: &str,
    ) -> Result<StatePut, StoreError>;

    /// A sign of use of the workspace at `at` (API calls about it; activity never goes
    /// back).
    async fn touch(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Claims a ready instance of `template`'s warm pool for `owner`, renamed `name`, in
    /// one statement (PostgreSQL `FOR UPDATE SKIP LOCKED`: concurrent claims never wait
    /// for or take the same one), checking `quota` and recording `build` with it. `None`
    /// when the pool has no ready instance (a miss).
    async fn claim(
        &self,
        tenant: TenantId,
        template: TemplateId,
        owner: UserId,
        name: &str,
        build: &Build,
        quota: Option<&Quota>,
    ) -> Result<Option<Workspace>, StoreError>;

    /// A template's pool: its instances, and how many of them are ready to be claimed.
    async fn pool_counts(
        &self,
        tenant: TenantId,
        template: TemplateId,
    ) -> Result<(u64, u64), StoreError>;

    /// `Conflict` if the tenant has a live template of that name.
    async fn create_template(&self, template: &Template) -> Result<(), StoreError>;

    /// A deleted template is not found.
    async fn get_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
    ) -> Result<Option<Template>, StoreError>;

    async fn list_templates(&self, tenant: TenantId) -> Result<Vec<Template>, StoreError>;

    /// Every live template of every tenant (the pool's refill looks for pool sizes).
    async fn list_all_templates(&self) -> Result<Vec<Template>, StoreError>;

    /// Replaces name and spec; `None` if there is none; `Conflict` on a taken name.
    async fn update_template(&self, template: &Template) -> Result<Option<Template>, StoreError>;

    /// False if there was none. Workspaces made from it keep the spec they were made with.
    async fn delete_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Marks the workspace deleted (its id stays reserved for the records that name it);
    /// false if there was none.
    async fn delete_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}

/// Reads a stored enum's text; anything else is a store error naming it.
pub(crate) fn stored<T>(raw: &str, parse: fn(&str) -> Option<T>) -> Result<T, StoreError> {
    parse(raw).ok_or_else(|| StoreError::Internal(format!("unexpected value {raw:?} in store")))
}

/// SQL both engines share word for word, so the two cannot drift apart.
pub(crate) mod sql {
    pub const COLUMNS: &str = "tenant_id, workspace_id, name, owner_id, created_at, template_id,
        spec, cpu_millis, memory_mb, desired, status, status_reason, status_at, generation,
        instance_token, attempts, next_attempt_at, ready_at, seen_at, activity_at, state_version,
        pooled";

    /// The reconciler's condition: [`super::Lifecycle::needs_work`] in SQL (and the
    /// `workspaces_due` index's predicate).
    pub const NEEDS_WORK: &str = "deleted_at IS NULL
        AND (desired <> status OR status IN ('pending', 'starting', 'stopping', 'deleting'))";

    /// A tenant's [`super::Usage`], besides one workspace (`$2`/`?2`, may match none).
    pub const USAGE: &str = "SELECT COUNT(*),
        CAST(COALESCE(SUM(CASE WHEN desired = 'running' AND workspace_id <> {ws}
            THEN cpu_millis ELSE 0 END), 0) AS BIGINT),
        CAST(COALESCE(SUM(CASE WHEN desired = 'running' AND workspace_id <> {ws}
            THEN memory_mb ELSE 0 END), 0) AS BIGINT)
        FROM workspaces WHERE tenant_id = {tenant} AND deleted_at IS NULL AND pooled = FALSE";

    /// The pool instance a claim takes: the oldest ready one of the template (`$1`/`?1`
    /// tenant, `$2`/`?2` template).
    pub const CLAIMABLE: &str =
        "tenant_id = {tenant} AND template_id = {template} AND pooled = TRUE
        AND deleted_at IS NULL AND desired = 'running' AND status = 'running'
        AND ready_at IS NOT NULL";

    pub const TEMPLATE_COLUMNS: &str = "tenant_id, template_id, name, spec, created_at, updated_at";

    pub const BUILD_COLUMNS: &str = "tenant_id, workspace_id, build_id, transition, initiator,
        reason, status, error, generation, created_at, finished_at";

    /// A count as both engines store it (signed 64 bits).
    pub fn big(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }
}
