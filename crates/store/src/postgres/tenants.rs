use super::PgStore;
use super::rows::{PgRowExt, map_rows};
use crate::StoreError;
use crate::tenants::{Tenant, TenantStore};
use async_trait::async_trait;
use coditect_proto::TenantId;
use tokio_postgres::Row;

const COLUMNS: &str = "tenant_id, name, created_at";

fn tenant_from_row(row: &Row) -> Result<Tenant, StoreError> {
    Ok(Tenant {
        id: TenantId::from_uuid(row.col(0)?),
        name: row.col(1)?,
        created_at: row.col(2)?,
    })
}

#[async_trait]
impl TenantStore for PgStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO tenants (tenant_id, name, created_at) VALUES ($1, $2, $3)",
            &[&tenant.id.as_uuid(), &tenant.name, &tenant.created_at],
        )
        .await
        .map(|_| ())
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        self.query_opt(
            &format!("SELECT {COLUMNS} FROM tenants WHERE tenant_id = $1"),
            &[&id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(tenant_from_row)
        .transpose()
    }

    async fn find_tenant_by_name(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        self.query_opt(
            &format!("SELECT {COLUMNS} FROM tenants WHERE name = $1"),
            &[&name],
        )
        .await?
        .as_ref()
        .map(tenant_from_row)
        .transpose()
    }

    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError> {
        let after = after.map(|a| a.as_uuid());
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM tenants
                     WHERE $1::uuid IS NULL OR tenant_id > $1 ORDER BY tenant_id LIMIT $2"
                ),
                &[&after, &i64::from(limit)],
            )
            .await?;
        map_rows(&rows, tenant_from_row)
    }
}
