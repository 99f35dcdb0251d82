//! Tenants: the root of the keyspace. Identity (issue 3) grows users, roles and sessions
//! under them.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::TenantId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

impl Tenant {
    /// A new tenant with a fresh id, created now (at the stores' microsecond precision).
    pub fn new(name: impl Into<String>) -> Tenant {
        Tenant {
            id: TenantId::new(),
            name: name.into(),
            created_at: crate::now(),
        }
    }
}

#[async_trait]
pub trait TenantStore: Send + Sync {
    /// Stores a new tenant. `Conflict` if its id or name is already taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError>;

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError>;

    async fn find_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError>;

    /// Up to `limit` tenants ordered by id, starting after `after` (keyset pagination).
    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError>;
}
