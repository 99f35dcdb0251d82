use super::{RowExt, SqliteStore, blob, collect, to_micros};
use crate::StoreError;
use crate::workspaces::{Workspace, WorkspaceStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, UserId, WorkspaceId};
use rusqlite::{OptionalExtension, Row, params};

const COLUMNS: &str = "tenant_id, workspace_id, name, owner_id, created_at";

fn workspace_from_row(row: &Row<'_>) -> Result<Workspace, StoreError> {
    Ok(Workspace {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: WorkspaceId::from_uuid(row.uuid(1)?),
        name: row.get(2)?,
        owner_id: UserId::from_uuid(row.uuid(3)?),
        created_at: row.instant(4)?,
    })
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let w = workspace.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO workspaces ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"
            ))?
            .execute(params![
                blob(w.tenant_id.as_uuid()),
                blob(w.id.as_uuid()),
                w.name,
                blob(w.owner_id.as_uuid()),
                to_micros(w.created_at),
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<Workspace>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL"
            ))?
            .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
                Ok(workspace_from_row(r))
            })
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_workspaces(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
        after: Option<WorkspaceId>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let after = after
            .map(|a| blob(a.as_uuid()).to_vec())
            .unwrap_or_default();
        let owner = owner.map(|o| blob(o.as_uuid()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE tenant_id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR owner_id = ?2)
                   AND workspace_id > ?3
                 ORDER BY workspace_id LIMIT ?4"
            ))?;
            collect(
                stmt.query(params![blob(tenant.as_uuid()), owner, after, limit])?,
                workspace_from_row,
            )
        })
        .await
    }

    async fn delete_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE workspaces SET deleted_at = ?3
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    to_micros(at)
                ])?;
            Ok(changed > 0)
        })
        .await
    }
}
