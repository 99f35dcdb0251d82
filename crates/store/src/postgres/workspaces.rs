use super::PgStore;
use super::rows::{PgRowExt, map_rows};
use crate::StoreError;
use crate::workspaces::{Workspace, WorkspaceStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, UserId, WorkspaceId};
use tokio_postgres::Row;

const COLUMNS: &str = "tenant_id, workspace_id, name, owner_id, created_at";

fn workspace_from_row(row: &Row) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: WorkspaceId::from_uuid(row.col(1)?),
        name: row.col(2)?,
        owner_id: UserId::from_uuid(row.col(3)?),
        created_at: row.col(4)?,
    })
}

#[async_trait]
impl WorkspaceStore for PgStore {
    async fn create_workspace(&self, w: &Workspace) -> Result<(), StoreError> {
        self.execute(
            &format!("INSERT INTO workspaces ({COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
            &[
                &w.tenant_id.as_uuid(),
                &w.id.as_uuid(),
                &w.name,
                &w.owner_id.as_uuid(),
                &w.created_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn get_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<Workspace>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL"
            ),
            &[&tenant.as_uuid(), &id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(workspace_from_row)
        .transpose()
    }

    async fn list_workspaces(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
        after: Option<WorkspaceId>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM workspaces
                     WHERE tenant_id = $1 AND deleted_at IS NULL
                       AND ($2::uuid IS NULL OR owner_id = $2)
                       AND ($3::uuid IS NULL OR workspace_id > $3)
                     ORDER BY workspace_id LIMIT $4"
                ),
                &[
                    &tenant.as_uuid(),
                    &owner.map(|o| o.as_uuid()),
                    &after.map(|a| a.as_uuid()),
                    &i64::from(limit),
                ],
            )
            .await?;
        map_rows(&rows, workspace_from_row)
    }

    async fn delete_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE workspaces SET deleted_at = $3
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid(), &at],
            )
            .await?;
        Ok(changed > 0)
    }
}
