//! Authorization: the one layer between handlers and the store.
//!
//! [`Gate`] is the only holder of the raw [`Store`]. Handlers never see it; they get
//! - [`Scoped`] (`gate.scoped(&principal)`): every operation an authenticated request may
//!   ask for, each scoped to the principal's tenant and checked against the RBAC table
//!   ([`rbac`]) before it touches data. Objects of another tenant are simply not found
//!   (404, no existence leak); a forbidden act in one's own tenant is 403 `ACCESS_DENIED`
//!   and is written to the audit trail.
//! - [`Credentials`] (`gate.credentials()`): the few lookups authentication itself needs
//!   before there is a principal (find a user by e-mail, start or rotate a session, resolve
//!   a token's session or an API key, through a short-lived cache).
//! - [`System`] (`gate.system()`): background jobs, bootstrap, health and shutdown.
//!
//! So a handler cannot issue an unscoped query by mistake: it has nothing to issue it on.

mod audit;
mod credentials;
mod orchestration;
pub mod rbac;
mod scoped;
mod system;

pub use audit::{AuditEvent, Auditor, RequestMeta};
pub use credentials::{Credentials, Resolved};
pub use orchestration::{AGENT_KEY_NAME, system_build};
pub use scoped::{
    AuditFilter, MAX_PAGE, NewApiKey, NewUser, NewWorkspace, Page, Receipt, Scoped, Transition,
};
pub use system::System;

use crate::clock::Clock;
use coditect_proto::{ApiKeyId, Role, SessionId, TenantId, UserId, WorkspaceId};
use coditect_store::Store;
use credentials::CredentialCache;
use std::sync::Arc;
use std::time::Duration;

/// Who is making a request, as established by authentication.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant_id: TenantId,
    pub user_id: UserId,
    /// The user's current role (read from the store, not trusted from the token).
    pub role: Role,
    /// For API keys: the key's own role; the principal acts with the intersection.
    pub key_role: Option<Role>,
    pub platform_admin: bool,
    pub via: Via,
    /// For API keys restricted to one workspace.
    pub workspace: Option<WorkspaceId>,
    pub meta: RequestMeta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Session(SessionId),
    ApiKey(ApiKeyId),
}

impl Principal {
    /// `(actor_type, actor_id)` for the audit trail.
    pub fn actor(&self) -> (&'static str, String) {
        match self.via {
            Via::Session(_) => ("user", self.user_id.to_string()),
            Via::ApiKey(id) => ("api_key", id.to_string()),
        }
    }
}

/// Owns the store; hands out scoped views of it. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    store: Store,
    clock: Clock,
    cache: Arc<CredentialCache>,
    /// Workspaces seen recently, to keep ingestion going while the store is down.
    workspaces: Arc<WorkspaceCache>,
}

/// The last known state of workspaces, consulted only when the store is unreachable.
#[derive(Default)]
struct WorkspaceCache {
    map: std::sync::Mutex<
        std::collections::HashMap<
            (TenantId, WorkspaceId),
            (coditect_store::Workspace, std::time::Instant),
        >,
    >,
}

impl WorkspaceCache {
    const MAX: usize = 100_000;

    fn put(&self, ws: &coditect_store::Workspace) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= Self::MAX {
                map.clear();
            }
            map.insert(
                (ws.tenant_id, ws.id),
                (ws.clone(), std::time::Instant::now()),
            );
        }
    }

    fn get_stale(&self, tenant: TenantId, id: WorkspaceId) -> Option<coditect_store::Workspace> {
        let map = self.map.lock().ok()?;
        map.get(&(tenant, id))
            .filter(|(_, at)| at.elapsed() < credentials::MAX_STALE)
            .map(|(ws, _)| ws.clone())
    }

    fn forget(&self, tenant: TenantId, id: WorkspaceId) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&(tenant, id));
        }
    }
}

impl Gate {
    pub fn new(store: Store, clock: Clock, cache_ttl: Duration) -> Gate {
        Gate {
            store,
            clock,
            cache: Arc::new(CredentialCache::new(cache_ttl)),
            workspaces: Arc::new(WorkspaceCache::default()),
        }
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn scoped<'a>(&'a self, principal: &'a Principal) -> Scoped<'a> {
        Scoped::new(self, principal)
    }

    pub fn credentials(&self) -> Credentials<'_> {
        Credentials::new(self)
    }

    pub fn system(&self) -> System<'_> {
        System::new(self)
    }

    pub fn auditor(&self) -> Auditor<'_> {
        Auditor::new(&self.store, &self.clock)
    }
}
