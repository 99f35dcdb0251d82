//! The authorization-wrapped store: every operation an authenticated request may ask for,
//! scoped to the principal's tenant and checked against [`rbac`] first.

use super::rbac::{self, Action, Resource, Scope};
use super::{AuditEvent, Gate, Principal, Via};
use crate::http::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use coditect_proto::{
    ApiKeyId, AuditId, BuildId, Email, ErrorCode, Role, SessionId, TemplateId, TenantId, UserId,
    WorkspaceId,
};
use coditect_store::logs::search::{Cursor, Found, LogQuery, search};
use coditect_store::{
    ApiKey, AuditQuery, AuditRecord, Build, BuildStatus, ChunkRef, Desired, EncodedChunk, Quota,
    Session, StatePut, StoreError, Stored, Template, Tenant, User, UserUpdate, Workspace,
};
use serde::Serialize;
use uuid::Uuid;

/// Activity of one workspace is written at most this often.
const ACTIVITY_GRAIN: chrono::Duration = chrono::Duration::seconds(30);

/// Most items one page may hold, and the default.
pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;

/// One page of a listing; pass `next_cursor` back as `cursor` for the next.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(cursor: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    cursor
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| Uuid::from_slice(&b).ok())
                .ok_or_else(|| ApiError::bad_request("invalid cursor"))
        })
        .transpose()
}

fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}"
        ))),
    }
}

/// Builds a page from `limit + 1` fetched items: the extra one only says there is more.
fn page<T>(mut items: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> Page<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next_cursor = more
        .then(|| items.last().map(|last| encode_cursor(id(last))))
        .flatten();
    Page { items, next_cursor }
}

/// What an operation is about, for the permission check.
#[derive(Default)]
struct Target {
    owner: Option<UserId>,
    /// The owner is a platform admin: only platform admins (or the owner) may act on it,
    /// so a tenant admin cannot lock out, demote or impersonate the operator.
    protected: bool,
    workspace: Option<WorkspaceId>,
    id: Option<String>,
}

/// What an idempotency key found (see [`Scoped::batch_receipt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// No batch under this key here yet.
    New,
    /// A retry: the first answer, as sent.
    Replay(String),
}

pub struct NewUser {
    /// Another tenant than the principal's: platform admins only.
    pub tenant: Option<TenantId>,
    pub email: Email,
    pub password_hash: Option<String>,
    pub role: Role,
    pub platform_admin: bool,
}

pub struct NewApiKey {
    /// Another user than the principal (e.g. a service account): needs tenant scope.
    pub owner: Option<UserId>,
    pub name: String,
    pub role: Role,
    pub workspace: Option<WorkspaceId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    pub id: ApiKeyId,
}

/// A workspace to create, its template resolved.
pub struct NewWorkspace {
    pub name: String,
    pub template_id: Option<TemplateId>,
    /// The template's spec as JSON.
    pub spec: String,
    pub cpu_millis: u32,
    pub memory_mb: u64,
    /// Start it at once (desired running, with a `start` build).
    pub start: bool,
    pub quota: Quota,
}

/// What a user may ask of a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start,
    Stop,
    Restart,
    Delete,
}

pub struct AuditFilter {
    pub tenant: Option<TenantId>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

pub struct Scoped<'a> {
    gate: &'a Gate,
    p: &'a Principal,
}

impl<'a> Scoped<'a> {
    pub(super) fn new(gate: &'a Gate, principal: &'a Principal) -> Scoped<'a> {
        Scoped { gate, p: principal }
    }

    pub fn principal(&self) -> &Principal {
        self.p
    }

    fn now(&self) -> DateTime<Utc> {
        self.gate.clock.now()
    }

    async fn audit(&self, event: AuditEvent) {
        self.gate.auditor().record(event, &self.p.meta).await;
    }

    /// Whether the principal may do `action` on `resource` for `target`, without auditing.
    fn allows(&self, resource: Resource, action: Action, target: &Target) -> bool {
        let scope = rbac::effective_scope(self.p.role, self.p.key_role, resource, action);
        let own = target.owner == Some(self.p.user_id);
        let in_scope = match scope {
            None => false,
            Some(Scope::Tenant) => true,
            Some(Scope::Own) => own,
        };
        let unprotected = !target.protected || own || self.p.platform_admin;
        // A key bound to a workspace does that workspace's work and nothing else.
        let in_workspace = match self.p.workspace {
            None => true,
            Some(only) => match resource {
                Resource::Workspace | Resource::Logs => target.workspace == Some(only),
                Resource::User | Resource::Session => action == Action::Read && own,
                _ => false,
            },
        };
        in_scope && unprotected && in_workspace
    }

    /// Checks a permission; a refusal is counted, audited and answered 403.
    async fn check(
        &self,
        resource: Resource,
        action: Action,
        target: Target,
    ) -> Result<(), ApiError> {
        if self.allows(resource, action, &target) {
            return Ok(());
        }
        self.deny(resource, action, target.id).await
    }

    async fn deny<T>(
        &self,
        resource: Resource,
        action: Action,
        id: Option<String>,
    ) -> Result<T, ApiError> {
        let message = format!(
            "not allowed to {} this {}",
            action.as_str(),
            resource.as_str()
        );
        self.deny_because(resource, action, id, message).await
    }

    /// [`Scoped::deny`] with a message saying why (counted and audited the same way).
    async fn deny_because<T>(
        &self,
        resource: Resource,
        action: Action,
        id: Option<String>,
        message: String,
    ) -> Result<T, ApiError> {
        metrics::counter!(
            "authz_denied_total",
            "resource" => resource.as_str(),
            "action" => action.as_str()
        )
        .increment(1);
        let what = format!("{}:{}", resource.as_str(), action.as_str());
        self.audit(AuditEvent::by(self.p, "access.denied", resource.as_str(), id).denied(what))
            .await;
        Err(ApiError::new(ErrorCode::AccessDenied, message))
    }

    /// A refusal to reach into another tenant: audited, and answered exactly like a tenant
    /// that does not exist.
    async fn hide_tenant<T>(
        &self,
        resource: Resource,
        action: Action,
        tenant: TenantId,
    ) -> Result<T, ApiError> {
        let what = format!(
            "{}:{} in another tenant",
            resource.as_str(),
            action.as_str()
        );
        self.audit(
            AuditEvent::by(self.p, "access.denied", "tenant", Some(tenant.to_string()))
                .denied(what),
        )
        .await;
        Err(ApiError::not_found("tenant not found"))
    }

    /// The principal's tenant: the only one this view reaches.
    pub fn tenant(&self) -> TenantId {
        self.p.tenant_id
    }

    /// Whether `owner` (someone else's object) is a platform admin; one read, only when
    /// the object is not the principal's own.
    async fn owner_is_platform_admin(&self, owner: UserId) -> Result<bool, ApiError> {
        if owner == self.p.user_id || self.p.platform_admin {
            return Ok(false);
        }
        let user = self
            .gate
            .store
            .users()
            .get_user(self.tenant(), owner)
            .await?;
        Ok(user.is_some_and(|u| u.platform_admin))
    }

    // ---- users -------------------------------------------------------------------------

    pub async fn me(&self) -> Result<User, ApiError> {
        self.get_user(self.p.user_id).await
    }

    pub async fn get_user(&self, id: UserId) -> Result<User, ApiError> {
        let user = self.fetch_user(id).await?;
        self.check(Resource::User, Action::Read, owned(id, &id))
            .await?;
        Ok(user)
    }

    async fn fetch_user(&self, id: UserId) -> Result<User, ApiError> {
        self.gate
            .store
            .users()
            .get_user(self.tenant(), id)
            .await?
            .ok_or_else(|| not_found(Resource::User))
    }

    pub async fn list_users(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<User>, ApiError> {
        self.check(Resource::User, Action::Read, Target::default())
            .await?;
        let limit = page_limit(limit)?;
        let after = decode_cursor(cursor)?.map(UserId::from_uuid);
        let users = self
            .gate
            .store
            .users()
            .list_users(self.tenant(), after, limit + 1)
            .await?;
        Ok(page(users, limit, |u| u.id.as_uuid()))
    }

    /// The permission part of [`Scoped::create_user`], to check before any costly work.
    pub async fn may_create_user(
        &self,
        tenant: Option<TenantId>,
        platform_admin: bool,
    ) -> Result<(), ApiError> {
        let tenant = tenant.unwrap_or(self.tenant());
        if tenant != self.tenant() {
            if !self.p.platform_admin {
                return self
                    .hide_tenant(Resource::User, Action::Create, tenant)
                    .await;
            }
        } else {
            self.check(Resource::User, Action::Create, Target::default())
                .await?;
        }
        if platform_admin && !self.p.platform_admin {
            return self.deny(Resource::User, Action::Create, None).await;
        }
        Ok(())
    }

    /// Audits a wrong current password on a password change.
    pub async fn record_failed_password_change(&self) {
        let me = Some(self.p.user_id.to_string());
        let event = AuditEvent::by(self.p, "user.password_change", "user", me);
        self.audit(event.failed("wrong current password")).await;
    }

    pub async fn create_user(&self, new: NewUser) -> Result<User, ApiError> {
        let tenant = new.tenant.unwrap_or(self.tenant());
        if tenant != self.tenant() {
            if !self.p.platform_admin {
                return self
                    .hide_tenant(Resource::User, Action::Create, tenant)
                    .await;
            }
            self.gate
                .store
                .tenants()
                .get_tenant(tenant)
                .await?
                .ok_or_else(|| ApiError::not_found("tenant not found"))?;
        } else {
            self.check(Resource::User, Action::Create, Target::default())
                .await?;
        }
        if new.platform_admin && !self.p.platform_admin {
            return self.deny(Resource::User, Action::Create, None).await;
        }
        let now = self.now();
        let user = User {
            tenant_id: tenant,
            id: UserId::new(),
            email: new.email,
            password_hash: new.password_hash,
            role: new.role,
            platform_admin: new.platform_admin,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.gate
            .store
            .users()
            .create_user(&user)
            .await
            .map_err(|e| conflict(e, "a user with this e-mail address already exists"))?;
        let mut event = AuditEvent::by(self.p, "user.create", "user", Some(user.id.to_string()));
        if tenant != self.tenant() {
            event = event.detail(format!("in tenant {tenant}"));
        }
        self.audit(event).await;
        Ok(user)
    }

    /// Role and disabled flag (administrators); disabling ends the user's sessions.
    /// Forgives the user's failed logins on every replica (administrators: user update).
    /// The user, whose address the caller's replica clears in memory at once.
    pub async fn clear_login_throttle(&self, id: UserId) -> Result<User, ApiError> {
        let user = self.fetch_user(id).await?;
        let target = Target {
            protected: user.platform_admin,
            ..owned(user.id, &id)
        };
        self.check(Resource::User, Action::Update, target).await?;
        self.gate
            .store
            .users()
            .reset_login_throttle(self.tenant(), id, self.now())
            .await?;
        self.audit(AuditEvent::by(
            self.p,
            "user.login_throttle_clear",
            "user",
            Some(id.to_string()),
        ))
        .await;
        Ok(user)
    }

    pub async fn update_user(
        &self,
        id: UserId,
        role: Option<Role>,
        disabled: Option<bool>,
    ) -> Result<User, ApiError> {
        let user = self.fetch_user(id).await?;
        let target = Target {
            protected: user.platform_admin,
            ..owned(user.id, &id)
        };
        self.check(Resource::User, Action::Update, target).await?;
        if id == self.p.user_id && (role.is_some_and(|r| r != user.role) || disabled == Some(true))
        {
            return Err(ApiError::bad_request(
                "you cannot change your own role or disable yourself",
            ));
        }
        let update = UserUpdate {
            role,
            disabled,
            password_hash: None,
        };
        let now = self.now();
        let updated = self
            .gate
            .store
            .users()
            .update_user(self.tenant(), id, &update, now)
            .await?
            .ok_or_else(|| not_found(Resource::User))?;
        if disabled == Some(true) {
            self.gate
                .store
                .sessions()
                .end_user_sessions(self.tenant(), id, None, "user_disabled", now)
                .await?;
        }
        self.gate.cache.forget_user(self.tenant(), id);
        let mut changes = Vec::new();
        if let Some(r) = role {
            changes.push(format!("role={r}"));
        }
        if let Some(d) = disabled {
            changes.push(format!("disabled={d}"));
        }
        self.audit(
            AuditEvent::by(self.p, "user.update", "user", Some(id.to_string()))
                .detail(changes.join(",")),
        )
        .await;
        Ok(updated)
    }

    /// Stores a new password hash for the principal (its current password was checked by
    /// the caller) and ends every other session of the user.
    pub async fn set_own_password(&self, hash: String) -> Result<(), ApiError> {
        let me = self.p.user_id;
        self.check(Resource::Password, Action::Update, owned(me, &me))
            .await?;
        let now = self.now();
        let update = UserUpdate {
            password_hash: Some(hash),
            ..UserUpdate::default()
        };
        self.gate
            .store
            .users()
            .update_user(self.tenant(), me, &update, now)
            .await?
            .ok_or_else(|| not_found(Resource::User))?;
        let keep = match self.p.via {
            Via::Session(s) => Some(s),
            Via::ApiKey(_) => None,
        };
        let ended = self
            .gate
            .store
            .sessions()
            .end_user_sessions(self.tenant(), me, keep, "password_changed", now)
            .await?;
        self.gate.cache.forget_user(self.tenant(), me);
        self.audit(
            AuditEvent::by(self.p, "user.password_change", "user", Some(me.to_string()))
                .detail(format!("ended {ended} other sessions")),
        )
        .await;
        Ok(())
    }

    // ---- sessions ----------------------------------------------------------------------

    pub async fn get_session(&self, id: SessionId) -> Result<Session, ApiError> {
        let session = self.fetch_session(id).await?;
        self.check(Resource::Session, Action::Read, owned(session.user_id, &id))
            .await?;
        Ok(session)
    }

    async fn fetch_session(&self, id: SessionId) -> Result<Session, ApiError> {
        self.gate
            .store
            .sessions()
            .get_session(self.tenant(), id)
            .await?
            .ok_or_else(|| not_found(Resource::Session))
    }

    /// Terminates a session (the owner's logout, or an administrator's).
    pub async fn end_session(&self, id: SessionId, reason: &str) -> Result<Session, ApiError> {
        let session = self.fetch_session(id).await?;
        let target = Target {
            protected: self.owner_is_platform_admin(session.user_id).await?,
            ..owned(session.user_id, &id)
        };
        self.check(Resource::Session, Action::Delete, target)
            .await?;
        let now = self.now();
        self.gate
            .store
            .sessions()
            .end_session(self.tenant(), id, reason, now)
            .await?;
        // Refused on this node at once; other replicas within the cache TTL.
        self.gate.cache.forget_session(self.tenant(), id);
        let action = if reason == "logout" {
            "auth.logout"
        } else {
            "session.terminate"
        };
        self.audit(AuditEvent::by(
            self.p,
            action,
            "session",
            Some(id.to_string()),
        ))
        .await;
        self.fetch_session(id).await
    }

    // ---- api keys ----------------------------------------------------------------------

    pub async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey, ApiError> {
        let owner = new.owner.unwrap_or(self.p.user_id);
        let owner_user = self.fetch_user(owner).await?;
        self.check(Resource::ApiKey, Action::Create, owned(owner, &new.id))
            .await?;
        // Keys mint no keys: a key's limits (workspace, expiry, role) cannot be escaped by
        // minting a broader one. Managing keys takes a logged-in user.
        if matches!(self.p.via, Via::ApiKey(_)) {
            return self
                .deny(Resource::ApiKey, Action::Create, Some(new.id.to_string()))
                .await;
        }
        // Keys for someone else are for service accounts only: an administrator must not be
        // able to act as another person (least of all a platform admin).
        if owner != self.p.user_id
            && (owner_user.role != Role::Service || owner_user.platform_admin)
        {
            return self
                .deny(Resource::ApiKey, Action::Create, Some(new.id.to_string()))
                .await;
        }
        // A key claims no more than its creator and its owner hold: a member's "admin" key
        // would be refused at every admin act, so it is refused here instead.
        if !rbac::covers(self.p.role, new.role) || !rbac::covers(owner_user.role, new.role) {
            let why = format!(
                "a key's role cannot exceed your role ({}) nor its owner's ({})",
                self.p.role, owner_user.role
            );
            return self
                .deny_because(
                    Resource::ApiKey,
                    Action::Create,
                    Some(new.id.to_string()),
                    why,
                )
                .await;
        }
        if owner_user.disabled {
            return Err(ApiError::bad_request("the owner of the key is disabled"));
        }
        if let Some(ws) = new.workspace {
            self.fetch_workspace(ws).await?;
        }
        let now = self.now();
        if new.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::bad_request("expires_at must be in the future"));
        }
        let key = ApiKey {
            tenant_id: self.tenant(),
            id: new.id,
            owner_id: owner,
            name: new.name,
            prefix: new.prefix,
            secret_hash: new.secret_hash,
            role: new.role,
            workspace_id: new.workspace,
            created_at: now,
            expires_at: new.expires_at,
            last_used_at: None,
            revoked_at: None,
        };
        self.gate.store.api_keys().create_api_key(&key).await?;
        self.audit(
            AuditEvent::by(
                self.p,
                "api_key.create",
                "api_key",
                Some(key.id.to_string()),
            )
            .detail(format!("role={} owner={owner}", key.role)),
        )
        .await;
        Ok(key)
    }

    /// Every key of the tenant (administrators) or the principal's own.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, ApiError> {
        let me = self.p.user_id;
        let owner = if self.allows(Resource::ApiKey, Action::Read, &Target::default()) {
            None
        } else {
            self.check(Resource::ApiKey, Action::Read, owned(me, &me))
                .await?;
            Some(me)
        };
        Ok(self
            .gate
            .store
            .api_keys()
            .list_api_keys(self.tenant(), owner)
            .await?)
    }

    pub async fn revoke_api_key(&self, id: ApiKeyId) -> Result<(), ApiError> {
        let key = self
            .gate
            .store
            .api_keys()
            .get_api_key(self.tenant(), id)
            .await?
            .ok_or_else(|| not_found(Resource::ApiKey))?;
        let target = Target {
            protected: self.owner_is_platform_admin(key.owner_id).await?,
            ..owned(key.owner_id, &id)
        };
        self.check(Resource::ApiKey, Action::Delete, target).await?;
        let now = self.now();
        self.gate
            .store
            .api_keys()
            .revoke_api_key(self.tenant(), id, now)
            .await?;
        self.gate.cache.forget_key(self.tenant(), id);
        self.audit(AuditEvent::by(
            self.p,
            "api_key.revoke",
            "api_key",
            Some(id.to_string()),
        ))
        .await;
        Ok(())
    }

    // ---- workspaces --------------------------------------------------------------------

    pub async fn create_workspace(&self, new: NewWorkspace) -> Result<Workspace, ApiError> {
        let id = WorkspaceId::new();
        let target = Target {
            owner: Some(self.p.user_id),
            protected: false,
            workspace: None,
            id: Some(id.to_string()),
        };
        self.check(Resource::Workspace, Action::Create, target)
            .await?;
        let mut workspace = Workspace {
            id,
            template_id: new.template_id,
            spec: new.spec,
            cpu_millis: new.cpu_millis,
            memory_mb: new.memory_mb,
            ..Workspace::new(self.tenant(), new.name, self.p.user_id, self.now())
        };
        let build = new.start.then(|| {
            workspace.lifecycle.desired = Desired::Running;
            self.build_of(&workspace, "start")
        });
        self.gate
            .store
            .workspaces()
            .create_workspace(&workspace, build.as_ref(), Some(&new.quota))
            .await
            .map_err(|e| conflict(e, "a workspace with this name already exists"))?;
        self.audit(
            AuditEvent::by(
                self.p,
                "workspace.create",
                "workspace",
                Some(id.to_string()),
            )
            .detail(format!("start={}", new.start)),
        )
        .await;
        Ok(workspace)
    }

    /// Claims a ready warm-pool instance of `template` for the principal, named `name`
    /// (the same permission as creating one, the same quota). `None`: the pool is empty.
    pub async fn claim_workspace(
        &self,
        template: TemplateId,
        name: String,
        quota: Quota,
    ) -> Result<Option<Workspace>, ApiError> {
        let target = Target {
            owner: Some(self.p.user_id),
            protected: false,
            workspace: None,
            id: Some(template.to_string()),
        };
        self.check(Resource::Workspace, Action::Create, target)
            .await?;
        let probe = Workspace::new(self.tenant(), name.clone(), self.p.user_id, self.now());
        let build = self.build_of(&probe, "claim");
        let claimed = self
            .gate
            .store
            .workspaces()
            .claim(
                self.tenant(),
                template,
                self.p.user_id,
                &name,
                &Build {
                    status: BuildStatus::Succeeded,
                    finished_at: Some(build.created_at),
                    ..build
                },
                Some(&quota),
            )
            .await
            .map_err(|e| conflict(e, "a workspace with this name already exists"))?;
        if let Some(ws) = &claimed {
            self.gate.workspaces.forget(self.tenant(), ws.id);
            self.audit(
                AuditEvent::by(
                    self.p,
                    "workspace.claim",
                    "workspace",
                    Some(ws.id.to_string()),
                )
                .detail(format!("template={template}")),
            )
            .await;
        }
        Ok(claimed)
    }

    /// A build asked for by this principal.
    fn build_of(&self, ws: &Workspace, transition: &str) -> Build {
        let (kind, id) = self.p.actor();
        Build {
            tenant_id: ws.tenant_id,
            workspace_id: ws.id,
            id: BuildId::new(),
            transition: transition.into(),
            initiator: format!("{kind}:{id}"),
            reason: None,
            status: BuildStatus::Pending,
            error: None,
            generation: ws.lifecycle.generation,
            created_at: self.now(),
            finished_at: None,
        }
    }

    /// Asks for a workspace to be started, stopped, restarted or deleted: records what is
    /// desired and the build; the reconciler acts. `transition` is `start`, `stop`,
    /// `restart` (stopped, then started again by the reconciler) or `delete`.
    pub async fn request_workspace(
        &self,
        id: WorkspaceId,
        transition: Transition,
        quota: Quota,
    ) -> Result<Workspace, ApiError> {
        let ws = self.fetch_workspace(id).await?;
        let (action, desired, name) = match transition {
            Transition::Start => (Action::Update, Desired::Running, "start"),
            Transition::Stop => (Action::Update, Desired::Stopped, "stop"),
            Transition::Restart => (Action::Update, Desired::Stopped, "restart"),
            Transition::Delete => (Action::Delete, Desired::Deleted, "delete"),
        };
        self.check(Resource::Workspace, action, workspace_target(&ws))
            .await?;
        let build = self.build_of(&ws, name);
        let updated = self
            .gate
            .store
            .workspaces()
            .request(self.tenant(), id, desired, Some(&build), Some(&quota))
            .await?;
        let Some(updated) = updated else {
            // Gone meanwhile (the orchestrator finished deleting it), or being deleted.
            self.gate.workspaces.forget(self.tenant(), id);
            self.fetch_workspace(id).await?;
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the workspace is being deleted: it takes no other request",
            ));
        };
        self.gate.workspaces.forget(self.tenant(), id);
        if transition == Transition::Start || transition == Transition::Restart {
            self.used_workspace(&updated).await;
        }
        let action = match transition {
            Transition::Start => "workspace.start",
            Transition::Stop => "workspace.stop",
            Transition::Restart => "workspace.restart",
            Transition::Delete => "workspace.delete",
        };
        self.audit(
            AuditEvent::by(self.p, action, "workspace", Some(id.to_string()))
                .detail(format!("build={}", build.id)),
        )
        .await;
        Ok(updated)
    }

    /// The workspace's builds, newest first.
    pub async fn list_builds(
        &self,
        id: WorkspaceId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Build>, ApiError> {
        let limit = page_limit(limit)?;
        self.get_workspace(id).await?;
        let before = decode_cursor(cursor)?.map(BuildId::from_uuid);
        let items = self
            .gate
            .store
            .workspaces()
            .list_builds(self.tenant(), id, before, limit + 1)
            .await?;
        Ok(page(items, limit, |b| b.id.as_uuid()))
    }

    /// The persisted browser state: its version and JSON.
    pub async fn workspace_state(
        &self,
        id: WorkspaceId,
    ) -> Result<(u64, Option<String>), ApiError> {
        let ws = self.get_workspace(id).await?;
        self.used_workspace(&ws).await;
        self.gate
            .store
            .workspaces()
            .get_state(self.tenant(), id)
            .await?
            .ok_or_else(|| not_found(Resource::Workspace))
    }

    /// Replaces the state if it is still at version `expected`; the new version.
    pub async fn put_workspace_state(
        &self,
        id: WorkspaceId,
        expected: Option<u64>,
        json: &str,
    ) -> Result<u64, ApiError> {
        let ws = self.fetch_workspace(id).await?;
        self.check(Resource::Workspace, Action::Update, workspace_target(&ws))
            .await?;
        self.used_workspace(&ws).await;
        match self
            .gate
            .store
            .workspaces()
            .put_state(self.tenant(), id, expected, json)
            .await?
        {
            StatePut::Stored(v) => Ok(v),
            StatePut::Stale(current) => Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                format!(
                    "the state changed since it was read (now version {current}): read it again and merge"
                ),
            )),
            StatePut::Missing => Err(not_found(Resource::Workspace)),
        }
    }

    /// The agent of a launch of `id` reports. Only a key bound to that very workspace may
    /// (the key the orchestrator minted for it); `token` names the launch.
    pub async fn agent_report(
        &self,
        id: WorkspaceId,
        token: &str,
        ready: bool,
        activity: Option<DateTime<Utc>>,
    ) -> Result<Workspace, ApiError> {
        let ws = self.fetch_workspace(id).await?;
        let own_agent = matches!(self.p.via, Via::ApiKey(_))
            && self.p.workspace == Some(id)
            && self.p.key_role == Some(Role::Service);
        if !own_agent {
            return self
                .deny_because(
                    Resource::Workspace,
                    Action::Update,
                    Some(id.to_string()),
                    "only the workspace's own agent (its workspace-bound service key) reports"
                        .into(),
                )
                .await;
        }
        self.check(Resource::Workspace, Action::Read, workspace_target(&ws))
            .await?;
        let now = self.now();
        let current = self
            .gate
            .store
            .workspaces()
            .agent_report(self.tenant(), id, token, ready, activity, now)
            .await?;
        if !current {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this launch of the workspace is over: its agent should exit",
            ));
        }
        Ok(ws)
    }

    async fn fetch_workspace(&self, id: WorkspaceId) -> Result<Workspace, ApiError> {
        match self
            .gate
            .store
            .workspaces()
            .get_workspace(self.tenant(), id)
            .await
        {
            Ok(Some(ws)) => {
                self.gate.workspaces.put(&ws);
                Ok(ws)
            }
            Ok(None) => Err(not_found(Resource::Workspace)),
            // Store down: what was known recently keeps ingestion going.
            Err(e) if e.is_transient() => self
                .gate
                .workspaces
                .get_stale(self.tenant(), id)
                .ok_or_else(|| e.into()),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_workspace(&self, id: WorkspaceId) -> Result<Workspace, ApiError> {
        let ws = self.fetch_workspace(id).await?;
        self.check(Resource::Workspace, Action::Read, workspace_target(&ws))
            .await?;
        Ok(ws)
    }

    /// Records use of a workspace by a person (an API call about it), for the idle stop;
    /// at most one write per workspace every [`ACTIVITY_GRAIN`]. An agent's key does not
    /// count (its reports carry the activity it saw).
    pub async fn used_workspace(&self, ws: &Workspace) {
        if matches!(self.p.via, Via::ApiKey(_)) && self.p.workspace == Some(ws.id) {
            return;
        }
        let now = self.now();
        let recent = ws
            .lifecycle
            .activity_at
            .is_some_and(|a| now - a < ACTIVITY_GRAIN);
        if recent {
            return;
        }
        if let Err(e) = self
            .gate
            .store
            .workspaces()
            .touch(ws.tenant_id, ws.id, now)
            .await
        {
            tracing::debug!(workspace = %ws.id, error = %e, "cannot record workspace activity");
        }
    }

    pub async fn list_workspaces(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Workspace>, ApiError> {
        let limit = page_limit(limit)?;
        if let Some(only) = self.p.workspace {
            // A key bound to one workspace lists just that one.
            let ws = self.get_workspace(only).await?;
            return Ok(Page {
                items: vec![ws],
                next_cursor: None,
            });
        }
        self.check(Resource::Workspace, Action::Read, Target::default())
            .await?;
        let after = decode_cursor(cursor)?.map(WorkspaceId::from_uuid);
        let items = self
            .gate
            .store
            .workspaces()
            .list_workspaces(self.tenant(), None, after, limit + 1)
            .await?;
        Ok(page(items, limit, |w| w.id.as_uuid()))
    }

    // ---- templates ---------------------------------------------------------------------

    fn template_target(id: TemplateId) -> Target {
        Target {
            id: Some(id.to_string()),
            ..Target::default()
        }
    }

    pub async fn create_template(&self, name: String, spec: String) -> Result<Template, ApiError> {
        let id = TemplateId::new();
        self.check(
            Resource::Template,
            Action::Create,
            Self::template_target(id),
        )
        .await?;
        let now = self.now();
        let template = Template {
            tenant_id: self.tenant(),
            id,
            name,
            spec,
            created_at: now,
            updated_at: now,
        };
        self.gate
            .store
            .workspaces()
            .create_template(&template)
            .await
            .map_err(|e| conflict(e, "a template with this name already exists"))?;
        self.audit(AuditEvent::by(
            self.p,
            "template.create",
            "template",
            Some(id.to_string()),
        ))
        .await;
        Ok(template)
    }

    pub async fn get_template(&self, id: TemplateId) -> Result<Template, ApiError> {
        self.check(Resource::Template, Action::Read, Self::template_target(id))
            .await?;
        self.gate
            .store
            .workspaces()
            .get_template(self.tenant(), id)
            .await?
            .ok_or_else(|| not_found(Resource::Template))
    }

    pub async fn list_templates(&self) -> Result<Vec<Template>, ApiError> {
        self.check(Resource::Template, Action::Read, Target::default())
            .await?;
        Ok(self
            .gate
            .store
            .workspaces()
            .list_templates(self.tenant())
            .await?)
    }

    pub async fn update_template(
        &self,
        id: TemplateId,
        name: String,
        spec: String,
    ) -> Result<Template, ApiError> {
        self.check(
            Resource::Template,
            Action::Update,
            Self::template_target(id),
        )
        .await?;
        let existing = self.get_template(id).await?;
        let updated = Template {
            name,
            spec,
            updated_at: self.now(),
            ..existing
        };
        let stored = self
            .gate
            .store
            .workspaces()
            .update_template(&updated)
            .await
            .map_err(|e| conflict(e, "a template with this name already exists"))?
            .ok_or_else(|| not_found(Resource::Template))?;
        self.audit(AuditEvent::by(
            self.p,
            "template.update",
            "template",
            Some(id.to_string()),
        ))
        .await;
        Ok(stored)
    }

    pub async fn delete_template(&self, id: TemplateId) -> Result<(), ApiError> {
        self.check(
            Resource::Template,
            Action::Delete,
            Self::template_target(id),
        )
        .await?;
        let gone = self
            .gate
            .store
            .workspaces()
            .delete_template(self.tenant(), id, self.now())
            .await?;
        if !gone {
            return Err(not_found(Resource::Template));
        }
        self.audit(AuditEvent::by(
            self.p,
            "template.delete",
            "template",
            Some(id.to_string()),
        ))
        .await;
        Ok(())
    }

    /// The tenant's default workspace, named [`DEFAULT_WORKSPACE`], for log entries that
    /// name none (a stock OpenTelemetry SDK or Loki shipper configured with only an
    /// endpoint and a credential): created on first use by anyone who may write logs in the
    /// tenant. Its id is derived from the tenant's, so replicas racing to create it agree.
    /// Once deleted it is not made again (its id stays reserved): entries must then name a
    /// workspace.
    pub async fn default_workspace(&self) -> Result<WorkspaceId, ApiError> {
        let id = default_workspace_id(self.tenant());
        // Known here: the caller's own check of the workspace (`may_write_logs`) reads the
        // store anyway, so it is not read twice on every request.
        if self
            .gate
            .workspaces
            .get_stale(self.tenant(), id)
            .is_some_and(|w| w.lifecycle.desired != Desired::Deleted)
        {
            return Ok(id);
        }
        match self.fetch_workspace(id).await {
            Ok(w) if w.lifecycle.desired == Desired::Deleted => return Err(no_default()),
            Ok(_) => return Ok(id),
            Err(e) if e.code() != coditect_proto::ErrorCode::NotFound => return Err(e),
            Err(_) => {}
        }
        let target = Target {
            owner: None,
            protected: false,
            workspace: None,
            id: Some(id.to_string()),
        };
        self.check(Resource::Logs, Action::Create, target).await?;
        let workspace = Workspace {
            id,
            ..Workspace::new(
                self.tenant(),
                DEFAULT_WORKSPACE.to_string(),
                self.p.user_id,
                self.now(),
            )
        };
        match self
            .gate
            .store
            .workspaces()
            .create_workspace(&workspace, None, None)
            .await
        {
            Ok(()) => {
                self.gate.workspaces.put(&workspace);
                self.audit(
                    AuditEvent::by(
                        self.p,
                        "workspace.create",
                        "workspace",
                        Some(id.to_string()),
                    )
                    .detail("the tenant's default workspace, made on first use"),
                )
                .await;
                Ok(id)
            }
            // Another request (or replica) made it first; or it was made and deleted.
            Err(StoreError::Conflict(_)) => match self.fetch_workspace(id).await {
                Ok(w) if w.lifecycle.desired != Desired::Deleted => Ok(id),
                _ => Err(no_default()),
            },
            Err(e) => Err(e.into()),
        }
    }

    // ---- logs --------------------------------------------------------------------------

    /// Checks that the principal may write logs into `workspace` (which must be one of its
    /// tenant's: otherwise "not found").
    pub async fn may_write_logs(&self, workspace: WorkspaceId) -> Result<(), ApiError> {
        let ws = self.fetch_workspace(workspace).await?;
        if ws.lifecycle.desired == Desired::Deleted {
            // Being deleted: it takes no more entries (as once it is gone).
            return Err(not_found(Resource::Workspace));
        }
        let target = Target {
            owner: Some(ws.owner_id),
            protected: false,
            workspace: Some(ws.id),
            id: Some(ws.id.to_string()),
        };
        self.check(Resource::Logs, Action::Create, target).await
    }

    /// Stores a chunk the caller encoded for this principal's tenant, after
    /// [`Scoped::may_write_logs`] for its workspace.
    pub async fn append_logs(&self, chunk: &EncodedChunk) -> Result<Stored, ApiError> {
        if chunk.tenant_id != self.tenant() {
            return Err(ApiError::internal(
                "a chunk for another tenant reached append_logs",
            ));
        }
        self.may_write_logs(chunk.workspace_id).await?;
        Ok(self.gate.store.append_logs(chunk).await?)
    }

    /// What an idempotency key means for a batch of this principal into `workspace` whose
    /// content digests to `fingerprint` (receipts last 24 hours):
    /// - a receipt in `workspace` for the same content: a retry, answered as the first time;
    /// - a receipt in `workspace` for other content, or one this same principal left in
    ///   another workspace: 409 `CONFLICT` (the key was reused for a different request);
    /// - nothing else: a new batch. Other principals' receipts in other workspaces never
    ///   matter, so nobody can replay, block or drop another workspace's batches.
    pub async fn batch_receipt(
        &self,
        workspace: WorkspaceId,
        batch_id: &str,
        fingerprint: &str,
    ) -> Result<Receipt, ApiError> {
        let since = self.now() - chrono::Duration::hours(24);
        let logs = self.gate.store.logs();
        let receipts = match logs.find_batch(self.tenant(), batch_id, since).await {
            Ok(found) => found,
            // Store down: proceed; entry ids derived from the batch id and its content keep
            // a retry from being stored twice when the outbox replays.
            Err(e) if e.is_transient() => return Ok(Receipt::New),
            Err(e) => return Err(e.into()),
        };
        let reused = || {
            ApiError::new(
                ErrorCode::Conflict,
                "idempotency key reused for a different request: send this batch under a new key",
            )
        };
        if let Some(r) = receipts.iter().find(|r| r.workspace_id == workspace) {
            // Receipts from before fingerprints existed match any content.
            return match r.fingerprint.as_deref() {
                Some(f) if f != fingerprint => Err(reused()),
                _ => Ok(Receipt::Replay(r.response.clone())),
            };
        }
        let me = self.actor_key();
        if receipts
            .iter()
            .any(|r| r.actor.as_deref() == Some(me.as_str()))
        {
            return Err(reused());
        }
        Ok(Receipt::New)
    }

    /// Who is acting, as batch receipts record it (`user:<id>`, `api_key:<id>`).
    pub fn actor_key(&self) -> String {
        let (kind, id) = self.p.actor();
        format!("{kind}:{id}")
    }

    /// Searches the principal's tenant; a key bound to a workspace searches only it.
    pub async fn search_logs(
        &self,
        mut query: LogQuery,
    ) -> Result<(Vec<Found>, Option<Cursor>), ApiError> {
        query.tenant_id = self.tenant();
        match (self.p.workspace, query.workspace_id) {
            (Some(only), None) => query.workspace_id = Some(only),
            (Some(only), Some(asked)) if asked != only => {
                return self
                    .deny(Resource::Logs, Action::Read, Some(asked.to_string()))
                    .await;
            }
            _ => {}
        }
        // A workspace that is not the tenant's is "not found", as for the tail.
        if let Some(w) = query.workspace_id {
            self.fetch_workspace(w).await?;
        }
        let target = Target {
            owner: None,
            protected: false,
            workspace: query.workspace_id,
            id: query.workspace_id.map(|w| w.to_string()),
        };
        self.check(Resource::Logs, Action::Read, target).await?;
        Ok(search(self.gate.store.logs(), &query).await?)
    }

    /// Checks that the principal may tail logs; returns the workspace the tail is limited
    /// to (a key bound to a workspace tails only it). `all_tenants` is for platform admins.
    pub async fn may_tail_logs(
        &self,
        asked: Option<WorkspaceId>,
        all_tenants: bool,
    ) -> Result<Option<WorkspaceId>, ApiError> {
        if all_tenants && (!self.p.platform_admin || self.p.workspace.is_some()) {
            return self
                .deny(Resource::Logs, Action::Read, Some("all tenants".into()))
                .await;
        }
        let workspace = match (self.p.workspace, asked) {
            (Some(only), Some(a)) if a != only => {
                return self
                    .deny(Resource::Logs, Action::Read, Some(a.to_string()))
                    .await;
            }
            (Some(only), _) => Some(only),
            (None, a) => a,
        };
        if let (Some(w), false) = (workspace, all_tenants) {
            self.fetch_workspace(w).await?;
        }
        let target = Target {
            owner: None,
            protected: false,
            workspace,
            id: workspace.map(|w| w.to_string()),
        };
        self.check(Resource::Logs, Action::Read, target).await?;
        Ok(workspace)
    }

    /// The newest chunk seq of the principal's tenant (0 when none): where a fresh tail
    /// starts.
    pub async fn last_log_seq(&self) -> Result<i64, ApiError> {
        Ok(self.gate.store.logs().last_seq(self.tenant()).await?)
    }

    /// Up to `limit` chunks of the principal's tenant after `after`, with their bodies
    /// (a tail resuming), after [`Scoped::may_tail_logs`]; the caller filters entries.
    /// Also returns the last seq looked at (`None`: nothing after `after` yet).
    pub async fn log_chunks_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<(ChunkRef, Vec<u8>)>, Option<i64>), ApiError> {
        let logs = self.gate.store.logs();
        let chunks = logs.chunks_after(self.tenant(), after, limit).await?;
        let reached = chunks.last().map(|c| c.seq);
        let visible: Vec<ChunkRef> = chunks
            .into_iter()
            .filter(|c| self.p.workspace.is_none_or(|w| w == c.workspace_id))
            .collect();
        if visible.is_empty() {
            return Ok((Vec::new(), reached));
        }
        let seqs: Vec<i64> = visible.iter().map(|c| c.seq).collect();
        let mut bodies = logs.chunk_data(self.tenant(), &seqs).await?;
        let found = visible
            .into_iter()
            .filter_map(|c| {
                let at = bodies.iter().position(|(s, _)| *s == c.seq)?;
                Some((c, bodies.swap_remove(at).1))
            })
            .collect();
        Ok((found, reached))
    }

    /// One entry by id (404 when it is not the tenant's or not visible to a bound key).
    pub async fn get_log(&self, id: uuid::Uuid) -> Result<Found, ApiError> {
        let logs = self.gate.store.logs();
        let missing = || ApiError::not_found("log entry not found");
        let (seq, pos) = logs
            .locate_entry(self.tenant(), id)
            .await?
            .ok_or_else(missing)?;
        let chunk = logs
            .chunks_after(self.tenant(), seq - 1, 1)
            .await?
            .into_iter()
            .find(|c| c.seq == seq)
            .ok_or_else(missing)?;
        let target = Target {
            owner: None,
            protected: false,
            workspace: Some(chunk.workspace_id),
            id: Some(id.to_string()),
        };
        if !self.allows(Resource::Logs, Action::Read, &target) {
            return Err(missing());
        }
        let data = logs.chunk_data(self.tenant(), &[seq]).await?;
        let (_, body) = data.into_iter().next().ok_or_else(missing)?;
        let record = coditect_store::logs::decode(&body)?
            .into_iter()
            .nth(pos as usize)
            .filter(|r| r.id == id)
            .ok_or_else(missing)?;
        Ok(Found {
            seq,
            pos,
            workspace_id: chunk.workspace_id,
            record,
        })
    }

    // ---- audit -------------------------------------------------------------------------

    pub async fn list_audit(&self, filter: AuditFilter) -> Result<Page<AuditRecord>, ApiError> {
        let tenant = filter.tenant.unwrap_or(self.tenant());
        if tenant != self.tenant() && !self.p.platform_admin {
            return self
                .hide_tenant(Resource::Audit, Action::Read, tenant)
                .await;
        }
        if tenant == self.tenant() {
            self.check(Resource::Audit, Action::Read, Target::default())
                .await?;
        }
        let limit = page_limit(filter.limit)?;
        let query = AuditQuery {
            tenant_id: tenant,
            actor_id: filter.actor_id,
            action: filter.action,
            since: filter.since,
            until: filter.until,
            before: decode_cursor(filter.cursor.as_deref())?.map(AuditId::from_uuid),
            limit: limit + 1,
        };
        let records = self.gate.store.audit().list_audit(&query).await?;
        Ok(page(records, limit, |r| r.id.as_uuid()))
    }

    // ---- tenants (platform) ------------------------------------------------------------

    pub async fn create_tenant(&self, name: String) -> Result<Tenant, ApiError> {
        if !self.p.platform_admin {
            return self.deny_platform("tenant.create").await;
        }
        let tenant = Tenant {
            id: TenantId::new(),
            name,
            created_at: self.now(),
        };
        self.gate
            .store
            .tenants()
            .create_tenant(&tenant)
            .await
            .map_err(|e| conflict(e, "a tenant with this name already exists"))?;
        self.audit(AuditEvent::by(
            self.p,
            "tenant.create",
            "tenant",
            Some(tenant.id.to_string()),
        ))
        .await;
        Ok(tenant)
    }

    pub async fn list_tenants(
        &self,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Tenant>, ApiError> {
        if !self.p.platform_admin {
            return self.deny_platform("tenant.list").await;
        }
        let limit = page_limit(limit)?;
        let after = decode_cursor(cursor)?.map(TenantId::from_uuid);
        let items = self
            .gate
            .store
            .tenants()
            .list_tenants(after, limit + 1)
            .await?;
        Ok(page(items, limit, |t| t.id.as_uuid()))
    }

    /// One's own tenant, or any tenant for platform admins.
    pub async fn get_tenant(&self, id: TenantId) -> Result<Tenant, ApiError> {
        if id != self.tenant() && !self.p.platform_admin {
            return Err(ApiError::not_found("tenant not found"));
        }
        self.gate
            .store
            .tenants()
            .get_tenant(id)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant not found"))
    }

    /// For platform-wide reads (admin health, metrics).
    pub async fn require_platform_admin(&self, what: &'static str) -> Result<(), ApiError> {
        if self.p.platform_admin {
            Ok(())
        } else {
            self.deny_platform(what).await
        }
    }

    async fn deny_platform<T>(&self, what: &'static str) -> Result<T, ApiError> {
        metrics::counter!("authz_denied_total", "resource" => "tenant", "action" => what)
            .increment(1);
        self.audit(AuditEvent::by(self.p, "access.denied", "tenant", None).denied(what))
            .await;
        Err(ApiError::new(
            ErrorCode::AccessDenied,
            "only platform administrators may do this",
        ))
    }
}

fn owned(owner: UserId, id: &dyn std::fmt::Display) -> Target {
    Target {
        owner: Some(owner),
        protected: false,
        workspace: None,
        id: Some(id.to_string()),
    }
}

/// The name of the workspace that takes a tenant's entries that name none.
pub const DEFAULT_WORKSPACE: &str = "default";

/// The id of a tenant's default workspace: the same on every replica, never another
/// tenant's (a UUIDv8 from SHA-256 of the tenant id).
pub fn default_workspace_id(tenant: TenantId) -> WorkspaceId {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(b"coditect default workspace\0")
        .chain_update(tenant.as_uuid().as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    WorkspaceId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

fn workspace_target(ws: &Workspace) -> Target {
    Target {
        owner: Some(ws.owner_id),
        protected: false,
        workspace: Some(ws.id),
        id: Some(ws.id.to_string()),
    }
}

/// Entries naming no workspace, in a tenant whose default one cannot be.
fn no_default() -> ApiError {
    ApiError::new(
        ErrorCode::BadRequest,
        format!(
            "no workspace named and the tenant has no default one (a workspace \
             named {DEFAULT_WORKSPACE:?} exists, or the default was deleted): \
             send X-Coditect-Workspace-Id, set coditect.workspace.id, or use an \
             API key bound to a workspace"
        ),
    )
}

fn not_found(resource: Resource) -> ApiError {
    ApiError::not_found(format!("{} not found", resource.as_str().replace('_', " ")))
}

fn conflict(err: StoreError, message: &str) -> ApiError {
    match err {
        StoreError::Conflict(_) => ApiError::new(ErrorCode::Conflict, message),
        other => other.into(),
    }
}
