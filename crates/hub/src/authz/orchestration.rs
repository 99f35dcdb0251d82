//! What the orchestrator may do outside any request (through [`System`]): lease the
//! workspaces that need it, write what it saw, record builds, mint and revoke the agents'
//! keys, and write a workspace's history into its own logs.

use super::{AuditEvent, RequestMeta, System};
use crate::auth::secrets;
use chrono::{DateTime, Utc};
use coditect_proto::{
    ApiKeyId, BuildId, Email, Level, Role, Secret, TemplateId, TenantId, UserId, WorkspaceId,
};
use coditect_store::logs::{EncodedChunk, LogRecord};
use coditect_store::{
    ApiKey, Build, BuildStatus, Desired, Observation, Quota, Status, StoreError, Template, User,
    Workspace, WorkspaceStore,
};

/// Names of the keys minted for workspace agents start with this (they are listed with
/// the tenant's other keys, and revoked by the orchestrator only).
pub const AGENT_KEY_NAME: &str = "workspace-agent";

impl<'a> System<'a> {
    fn workspaces(&self) -> &'a dyn WorkspaceStore {
        self.gate.store.workspaces()
    }

    pub async fn lease_due(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        self.workspaces().lease_due(holder, now, until, limit).await
    }

    pub async fn lease(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Workspace>, StoreError> {
        self.workspaces()
            .lease(tenant, id, holder, now, until)
            .await
    }

    pub async fn observe(
        &self,
        ws: &Workspace,
        holder: &str,
        observation: &Observation,
    ) -> Result<bool, StoreError> {
        let written = self
            .workspaces()
            .observe(ws.tenant_id, ws.id, holder, observation)
            .await?;
        if written {
            self.gate.workspaces.forget(ws.tenant_id, ws.id);
        }
        Ok(written)
    }

    /// The orchestrator's own bookkeeping in a workspace's spec (a repository cloned, its
    /// credential erased), under its lease.
    pub async fn set_spec(
        &self,
        ws: &Workspace,
        holder: &str,
        spec: &str,
    ) -> Result<bool, StoreError> {
        let written = self
            .workspaces()
            .set_spec(ws.tenant_id, ws.id, holder, spec)
            .await?;
        if written {
            self.gate.workspaces.forget(ws.tenant_id, ws.id);
        }
        Ok(written)
    }

    pub async fn release_all(&self, holder: &str) -> Result<u64, StoreError> {
        self.workspaces().release_all(holder).await
    }

    pub async fn release(&self, ws: &Workspace, holder: &str) -> Result<(), StoreError> {
        self.workspaces().release(ws.tenant_id, ws.id, holder).await
    }

    pub async fn get_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<Workspace>, StoreError> {
        self.workspaces().get_workspace(tenant, id).await
    }

    pub async fn list_in_status(
        &self,
        status: Status,
        after: Option<(TenantId, WorkspaceId)>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        self.workspaces().list_in_status(status, after, limit).await
    }

    /// The workspace's newest build if it is still pending.
    pub async fn pending_build(&self, ws: &Workspace) -> Result<Option<Build>, StoreError> {
        let newest = self
            .workspaces()
            .list_builds(ws.tenant_id, ws.id, None, 1)
            .await?;
        Ok(newest
            .into_iter()
            .next()
            .filter(|b| b.status == BuildStatus::Pending))
    }

    /// Records a transition the orchestrator starts itself (a recovery, an idle stop),
    /// without touching what is desired.
    pub async fn add_build(&self, build: &Build) -> Result<(), StoreError> {
        self.workspaces().add_build(build).await?;
        self.audit_build(build, "started").await;
        Ok(())
    }

    pub async fn finish_build(
        &self,
        build: &Build,
        status: BuildStatus,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = self.gate.clock.now();
        self.workspaces()
            .finish_build(
                build.tenant_id,
                build.workspace_id,
                build.id,
                status,
                error,
                now,
            )
            .await?;
        self.audit_build(build, status.as_str()).await;
        Ok(())
    }

    async fn audit_build(&self, build: &Build, outcome: &str) {
        let mut event = AuditEvent::system(
            build.tenant_id,
            "workspace.build",
            "workspace",
            Some(build.workspace_id.to_string()),
        )
        .detail(format!(
            "build={} transition={} generation={} outcome={outcome}",
            build.id, build.transition, build.generation
        ));
        if outcome == BuildStatus::Failed.as_str() {
            event = event.failed(format!(
                "build={} transition={} generation={} outcome=failed",
                build.id, build.transition, build.generation
            ));
        }
        self.gate
            .auditor()
            .record(event, &RequestMeta::default())
            .await;
    }

    /// Asks for `desired` on the orchestrator's own account (an idle stop), with `build`.
    pub async fn request(
        &self,
        ws: &Workspace,
        desired: Desired,
        build: &Build,
    ) -> Result<bool, StoreError> {
        let done = self
            .workspaces()
            .request(ws.tenant_id, ws.id, desired, Some(build), None)
            .await?
            .is_some();
        if done {
            self.audit_build(build, "started").await;
        }
        Ok(done)
    }

    /// Every live template of every tenant.
    pub async fn all_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.workspaces().list_all_templates().await
    }

    /// A template's pool: (instances, ready to be claimed).
    pub async fn pool_counts(&self, t: &Template) -> Result<(u64, u64), StoreError> {
        self.workspaces().pool_counts(t.tenant_id, t.id).await
    }

    /// A new warm-pool instance (desired running, with its `start` build).
    pub async fn create_pooled(&self, ws: &Workspace, build: &Build) -> Result<(), StoreError> {
        self.workspaces()
            .create_workspace(ws, Some(build), None)
            .await?;
        self.audit_build(build, "started").await;
        Ok(())
    }

    /// Takes one ready instance out of `template`'s pool and asks for its deletion (a pool
    /// that shrank, a template that went): a claim by the pool account itself, so no
    /// user's concurrent claim can get an instance that is being removed. `None`: no
    /// ready instance (one still starting is taken on a later pass).
    pub async fn drain_one(
        &self,
        tenant: TenantId,
        template: TemplateId,
        why: &str,
    ) -> Result<Option<Workspace>, StoreError> {
        let owner = self.pool_account(tenant).await?;
        let now = self.gate.clock().now();
        // The claim fills in the instance's id and generation.
        let placeholder = Workspace::new(tenant, String::new(), owner, now);
        let build = system_build(&placeholder, "delete", Some(why.to_string()), 0, now);
        let id = WorkspaceId::new().as_uuid().simple().to_string();
        let name = format!("pool-removed-{}", &id[id.len() - 12..]);
        let store = self.workspaces();
        let Some(ws) = store
            .claim(tenant, template, owner, &name, &build, None)
            .await?
        else {
            return Ok(None);
        };
        // No build of its own: the claim's `delete` build is the pending one.
        store
            .request(tenant, ws.id, Desired::Deleted, None, None)
            .await?;
        self.gate.workspaces.forget(tenant, ws.id);
        let build = Build {
            workspace_id: ws.id,
            generation: ws.lifecycle.generation,
            ..build
        };
        self.audit_build(&build, "started").await;
        Ok(Some(ws))
    }

    /// The tenant's pool account: the service user that owns unclaimed pool instances
    /// (and so their agents' keys), made on first use; safe when replicas race.
    pub async fn pool_account(&self, tenant: TenantId) -> Result<UserId, StoreError> {
        let users = self.gate.store.users();
        let email = Email::parse(&format!("workspace-pool+{tenant}@pool.coditect.invalid"))
            .map_err(StoreError::Internal)?;
        if let Some(u) = users.find_user_by_email(&email).await? {
            return Ok(u.id);
        }
        let now = self.gate.clock.now();
        let user = User {
            tenant_id: tenant,
            id: UserId::new(),
            email: email.clone(),
            password_hash: None,
            role: Role::Service,
            platform_admin: false,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        match users.create_user(&user).await {
            Ok(()) => Ok(user.id),
            Err(StoreError::Conflict(_)) => users
                .find_user_by_email(&email)
                .await?
                .map(|u| u.id)
                .ok_or_else(|| StoreError::Internal("the pool account vanished".into())),
            Err(e) => Err(e),
        }
    }

    /// The workspace a login of `user` lands in, when the tenant has a template that says
    /// `start_on_login` (the first by name): the user's workspace of it — claimed from its
    /// warm pool or made when they have none — asked to run; and whether it was claimed
    /// (its agent then needs its new owner's key). `None` without such a
    /// template; a failure (a quota, the store) is logged and the login goes on without.
    pub async fn home_workspace(
        &self,
        user: &User,
        quota: &Quota,
        start_on_login: impl Fn(&Template) -> bool,
    ) -> Option<(Workspace, bool)> {
        let outcome = async {
            let store = self.workspaces();
            let Some(t) = store
                .list_templates(user.tenant_id)
                .await?
                .into_iter()
                .find(|t| start_on_login(t))
            else {
                return Ok(None);
            };
            let now = self.gate.clock.now();
            let initiator = format!("user:{}", user.id);
            let build = |ws: &Workspace, transition: &str| Build {
                initiator: initiator.clone(),
                ..super::system_build(
                    ws,
                    transition,
                    Some("login".into()),
                    ws.lifecycle.generation,
                    now,
                )
            };
            let mine = store
                .list_workspaces(user.tenant_id, Some(user.id), None, 1000)
                .await?
                .into_iter()
                .find(|w| w.template_id == Some(t.id) && w.lifecycle.desired != Desired::Deleted);
            if let Some(ws) = mine {
                if ws.lifecycle.desired == Desired::Running {
                    return Ok(Some((ws, false)));
                }
                return store
                    .request(
                        ws.tenant_id,
                        ws.id,
                        Desired::Running,
                        Some(&build(&ws, "start")),
                        Some(quota),
                    )
                    .await
                    .map(|w| w.map(|w| (w, false)));
            }
            // Names are unique in a tenant: the template's, with whose it is.
            let local: String = user
                .email
                .as_str()
                .split('@')
                .next()
                .unwrap_or_default()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let name: String = format!("{}-{local}", t.name).chars().take(64).collect();
            let probe = Workspace::new(user.tenant_id, name.clone(), user.id, now);
            let claim = Build {
                status: BuildStatus::Succeeded,
                finished_at: Some(now),
                ..build(&probe, "claim")
            };
            if let Some(ws) = store
                .claim(user.tenant_id, t.id, user.id, &name, &claim, Some(quota))
                .await?
            {
                return Ok(Some((ws, true)));
            }
            let spec: serde_json::Value = serde_json::from_str(&t.spec)
                .map_err(|e| StoreError::Internal(format!("template {}: {e}", t.id)))?;
            let resources = &spec["resources"];
            let mut ws = Workspace {
                template_id: Some(t.id),
                spec: t.spec.clone(),
                cpu_millis: resources["cpu_millis"]
                    .as_u64()
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(0),
                memory_mb: resources["memory_mb"].as_u64().unwrap_or(0),
                ..probe
            };
            ws.lifecycle.desired = Desired::Running;
            store
                .create_workspace(&ws, Some(&build(&ws, "start")), Some(quota))
                .await?;
            Ok::<_, StoreError>(Some((ws, false)))
        }
        .await;
        match outcome {
            Ok(ws) => ws,
            Err(e) => {
                tracing::warn!(user = %user.id, error = %e, "no workspace for this login");
                None
            }
        }
    }

    /// The second half of a restart: running is desired again, the restart's build stays
    /// pending until the new launch is running.
    pub async fn resume(&self, ws: &Workspace) -> Result<(), StoreError> {
        self.workspaces()
            .request(ws.tenant_id, ws.id, Desired::Running, None, None)
            .await
            .map(|_| ())
    }

    /// Marks the workspace deleted for good (after its runtime objects are gone).
    pub async fn forget_workspace(&self, ws: &Workspace) -> Result<(), StoreError> {
        let now = self.gate.clock.now();
        self.workspaces()
            .delete_workspace(ws.tenant_id, ws.id, now)
            .await?;
        self.gate.workspaces.forget(ws.tenant_id, ws.id);
        Ok(())
    }

    /// A new key for the agent of this launch of `ws`: owned by the workspace's owner
    /// (so it can never do more than they can), role `service`, bound to the workspace.
    /// Every earlier agent key of the workspace is revoked first: one live key per
    /// workspace, and none left behind by a launch that crashed half-way.
    pub async fn mint_agent_key(
        &self,
        ws: &Workspace,
        generation: u64,
    ) -> Result<Secret, StoreError> {
        self.revoke_agent_keys(ws).await?;
        let id = ApiKeyId::new();
        let minted = secrets::mint(secrets::Kind::ApiKey, ws.tenant_id, id.as_uuid());
        let key = ApiKey {
            tenant_id: ws.tenant_id,
            id,
            owner_id: ws.owner_id,
            name: format!("{AGENT_KEY_NAME} {} generation {generation}", ws.id),
            prefix: secrets::display_prefix(&minted.token),
            secret_hash: minted.hash,
            role: Role::Service,
            workspace_id: Some(ws.id),
            created_at: self.gate.clock.now(),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        self.gate.store.api_keys().create_api_key(&key).await?;
        self.gate
            .auditor()
            .record(
                AuditEvent::system(
                    ws.tenant_id,
                    "api_key.create",
                    "api_key",
                    Some(id.to_string()),
                )
                .detail(format!(
                    "workspace agent key workspace={} generation={generation}",
                    ws.id
                )),
                &RequestMeta::default(),
            )
            .await;
        Ok(Secret::new(minted.token))
    }

    /// Revokes every live agent key of `ws`.
    pub async fn revoke_agent_keys(&self, ws: &Workspace) -> Result<(), StoreError> {
        let keys = self.gate.store.api_keys();
        let now = self.gate.clock.now();
        for key in keys.list_api_keys(ws.tenant_id, None).await? {
            let agent = key.workspace_id == Some(ws.id)
                && key.revoked_at.is_none()
                && key.name.starts_with(AGENT_KEY_NAME);
            if agent {
                keys.revoke_api_key(ws.tenant_id, key.id, now).await?;
                self.gate.cache.forget_key(ws.tenant_id, key.id);
            }
        }
        Ok(())
    }

    /// Writes one entry into the workspace's own logs (component `orchestrator`), so that
    /// search and the live tail show its history. `fields` is a JSON object.
    pub async fn workspace_event(
        &self,
        ws: &Workspace,
        level: Level,
        message: String,
        fields: serde_json::Value,
    ) -> Result<(), StoreError> {
        let now = self.gate.clock.now();
        let record = LogRecord {
            id: uuid::Uuid::now_v7(),
            ts: now.timestamp_micros(),
            level,
            component: "orchestrator".into(),
            message,
            metadata: Some(fields.to_string()),
            session_id: None,
            trace_id: None,
            span_id: None,
        };
        let chunk = EncodedChunk::encode(ws.tenant_id, ws.id, now, &[record], None)?;
        self.gate.store.append_logs(&chunk).await.map(|_| ())
    }
}

/// A new build by the orchestrator itself.
pub fn system_build(
    ws: &Workspace,
    transition: &str,
    reason: Option<String>,
    generation: u64,
    at: DateTime<Utc>,
) -> Build {
    Build {
        tenant_id: ws.tenant_id,
        workspace_id: ws.id,
        id: BuildId::new(),
        transition: transition.into(),
        initiator: "system:orchestrator".into(),
        reason,
        status: BuildStatus::Pending,
        error: None,
        generation,
        created_at: at,
        finished_at: None,
    }
}
