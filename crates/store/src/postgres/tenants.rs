use super::PgStore;
use crate::StoreError;
use crate::tenants::{Tenant, TenantStore};
use async_trait::async_trait;
use coditect_proto::TenantId;
use tokio_postgres::Row;

fn tenant_from_row(row: &Row) -> Tenant {
    Tenant {
        id: TenantId::from_uuid(row.get(0)),
        name: row.get(1),
        created_at: row.get(2),
    }
}

#[async_trait]
impl TenantStore for PgStore {
    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("INSERT INTO tenants (tenant_id, name, created_at) VALUES ($1, $2, $3)")
            .await?;
        client
            .execute(
                &stmt,
                &[&tenant.id.as_uuid(), &tenant.name, &tenant.created_at],
            )
            .await?;
        Ok(())
    }

    async fn get_tenant(&self, id: TenantId) -> Result<Option<Tenant>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = $1")
            .await?;
        let row = client.query_opt(&stmt, &[&id.as_uuid()]).await?;
        Ok(row.as_ref().map(tenant_from_row))
    }

    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT tenant_id, name, created_at FROM tenants
                 WHERE $1::uuid IS NULL OR tenant_id > $1 ORDER BY tenant_id LIMIT $2",
            )
            .await?;
        let after = after.map(|a| a.as_uuid());
        let rows = client.query(&stmt, &[&after, &i64::from(limit)]).await?;
        Ok(rows.iter().map(tenant_from_row).collect())
    }
}
