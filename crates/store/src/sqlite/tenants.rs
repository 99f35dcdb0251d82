use super::{SqliteStore, from_micros, to_micros, uuid_from_blob};
use crate::StoreError;
use crate::tenants::{Tenant, TenantStore};
use async_trait::async_trait;
use coditect_proto::TenantId;
use rusqlite::{OptionalExtension, Row, params};

fn tenant_from_row(row: &Row<'_>) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: TenantId::from_uuid(uuid_from_blob(&row.get::<_, Vec<u8>>(0)?)?),
        name: row.get(1)?,
        created_at: from_micros(row.get(2)?)?,
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
                t.id.as_uuid().as_bytes().as_slice(),
                t.name,
                to_micros(t.created_at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = ?1",
            )?
            .query_row(params![id.as_uuid().as_bytes().as_slice()], |row| {
                Ok(tenant_from_row(row))
            })
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
            .map(|a| a.as_uuid().as_bytes().to_vec())
            .unwrap_or_default();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id > ?1 ORDER BY tenant_id LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![after, limit])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(tenant_from_row(row)?);
            }
            Ok(out)
        })
        .await
    }
}
