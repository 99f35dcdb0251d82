//! What the hub itself needs outside any request: bootstrap, background jobs, health,
//! start-up and shutdown.

use super::Gate;
use chrono::{DateTime, Utc};
use coditect_proto::ComponentHealth;
use coditect_store::{PgStore, SigningKeyStore, StorageMode, StoreError, Tenant, User};

pub struct System<'a> {
    pub(super) gate: &'a Gate,
}

impl<'a> System<'a> {
    pub(super) fn new(gate: &'a Gate) -> System<'a> {
        System { gate }
    }

    pub fn mode(&self) -> StorageMode {
        self.gate.store.mode()
    }

    pub fn shared(&self) -> Option<&'a PgStore> {
        self.gate.store.shared()
    }

    pub fn is_ready(&self) -> bool {
        self.gate.store.is_ready()
    }

    pub async fn probe(&self) -> Vec<ComponentHealth> {
        self.gate.store.probe().await
    }

    pub async fn close(&self) {
        self.gate.store.close().await;
    }

    pub fn signing_keys(&self) -> &'a dyn SigningKeyStore {
        self.gate.store.signing_keys()
    }

    pub async fn purge_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        ended_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.gate
            .store
            .sessions()
            .purge_sessions(now, idle_cutoff, ended_cutoff)
            .await
    }

    pub async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.gate
            .store
            .sessions()
            .count_live_sessions(now, idle_cutoff)
            .await
    }

    pub async fn replay_outbox(&self, max: u32) -> Result<u32, StoreError> {
        self.gate.store.replay_outbox(max).await
    }

    pub async fn outbox_status(&self) -> Result<coditect_store::OutboxStatus, StoreError> {
        self.gate.store.outbox_status().await
    }

    pub fn subscribe_appends(
        &self,
    ) -> tokio::sync::broadcast::Receiver<coditect_store::AppendEvent> {
        self.gate.store.subscribe_appends()
    }

    /// The log store itself, for the live tail's reads (it checks each subscriber's tenant
    /// and filter before anything reaches a socket).
    pub fn logs(&self) -> &'a dyn coditect_store::LogStore {
        self.gate.store.logs()
    }

    pub async fn count_users(&self) -> Result<u64, StoreError> {
        self.gate.store.users().count_users().await
    }

    /// The tenant called `name`, created if missing (safe when replicas race).
    pub async fn ensure_tenant(&self, name: &str) -> Result<Tenant, StoreError> {
        let tenants = self.gate.store.tenants();
        if let Some(t) = tenants.find_tenant_by_name(name).await? {
            return Ok(t);
        }
        let tenant = Tenant {
            id: coditect_proto::TenantId::new(),
            name: name.to_string(),
            created_at: self.gate.clock.now(),
        };
        match tenants.create_tenant(&tenant).await {
            Ok(()) => Ok(tenant),
            Err(StoreError::Conflict(_)) => tenants
                .find_tenant_by_name(name)
                .await?
                .ok_or_else(|| StoreError::Internal("tenant vanished after a conflict".into())),
            Err(e) => Err(e),
        }
    }

    pub async fn find_tenant(&self, name_or_id: &str) -> Result<Option<Tenant>, StoreError> {
        let tenants = self.gate.store.tenants();
        if let Ok(id) = name_or_id.parse()
            && let Some(t) = tenants.get_tenant(id).await?
        {
            return Ok(Some(t));
        }
        tenants.find_tenant_by_name(name_or_id).await
    }

    pub async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        self.gate.store.users().create_user(user).await
    }
}
