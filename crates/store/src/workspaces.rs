//! The workspace registry: named development workspaces that logs and sessions refer to.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, UserId, WorkspaceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub tenant_id: TenantId,
    pub id: WorkspaceId,
    pub name: String,
    pub owner_id: UserId,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    /// `Conflict` if the tenant already has a workspace with that name.
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError>;

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

    /// Marks the workspace deleted (its id stays reserved for the records that name it);
    /// false if there was none.
    async fn delete_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}
