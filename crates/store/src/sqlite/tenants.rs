use super::{RowExt, SqliteStore, blob, collect, to_micros};
use crate::StoreError;
use crate::tenants::{Tenant, TenantStore};
use async_trait::async_trait;
use coditect_proto::TenantId;
use rusqlite::{OptionalExtension, Row, params};

const COLUMNS: &str = "tenant_id, name, created_at";

fn tenant_from_row(row: &Row<'_>) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: TenantId::from_uuid(row.uuid(0)?),
        name: row.get(1)?,
        created_at: row.instant(2)?,
    })
}

#[async_trait]
impl TenantStore for SqliteStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let t = tenant.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO tenants (tenant_id, name, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![
                blob(t.id.as_uuid()),
                t.name,
                to_micros(t.created_at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tenants WHERE tenant_id = ?1"
            ))?
            .query_row(params![blob(id.as_uuid())], |row| Ok(tenant_from_row(row)))
            .optional()?
            .transpose()
        })
        .await
    }

    async fn find_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let name = name.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM tenants WHERE name = ?1"))?
                .query_row(params![name], |row| Ok(tenant_from_row(row)))
                .optional()?
                .transpose()
        })
        .await
    }

    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError> {
        let after = after
            .map(|a| blob(a.as_uuid()).to_vec())
            .unwrap_or_default();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM tenants WHERE tenant_id > ?1 ORDER BY tenant_id LIMIT ?2"
            ))?;
            collect(stmt.query(params![after, limit])?, tenant_from_row)
        })
        .await
    }
}
