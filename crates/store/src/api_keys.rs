//! API keys: long-lived credentials for service accounts and users. Only a hash of the
//! secret is stored.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{ApiKeyId, Role, TenantId, UserId, WorkspaceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub tenant_id: TenantId,
    pub id: ApiKeyId,
    /// The user the key acts for (a service account or a person).
    pub owner_id: UserId,
    pub name: String,
    /// The recognisable start of the key, shown in listings.
    pub prefix: String,
    pub secret_hash: Vec<u8>,
    /// The role the key acts with (never above its owner's).
    pub role: Role,
    /// When set, the key may only touch this workspace.
    pub workspace_id: Option<WorkspaceId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError>;

    async fn get_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKey>, StoreError>;

    /// Keys of `tenant` (of one owner when given), newest first.
    async fn list_api_keys(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
    ) -> Result<Vec<ApiKey>, StoreError>;

    /// False if there is no such key or it was already revoked.
    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    async fn touch_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}
