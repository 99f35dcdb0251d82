use super::PgStore;
use super::rows::{PgRowExt, map_rows};
use crate::StoreError;
use crate::audit::{AuditQuery, AuditRecord, AuditStore};
use async_trait::async_trait;
use coditect_proto::{AuditId, TenantId};
use tokio_postgres::Row;
use tracing::Instrument;

const COLUMNS: &str = "tenant_id, audit_id, at, actor_type, actor_id, action, resource_type,
    resource_id, result, ip, user_agent, request_id, detail";

fn record_from_row(row: &Row) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: AuditId::from_uuid(row.col(1)?),
        at: row.col(2)?,
        actor_type: row.col(3)?,
        actor_id: row.col(4)?,
        action: row.col(5)?,
        resource_type: row.col(6)?,
        resource_id: row.col(7)?,
        result: row.col(8)?,
        ip: row.col(9)?,
        user_agent: row.col(10)?,
        request_id: row.col(11)?,
        detail: row.col(12)?,
    })
}

#[async_trait]
impl AuditStore for PgStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let span = crate::trace::call("postgresql", "append_audit", None);
        async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let stmt = tx
                .prepare(&format!(
                    "INSERT INTO audit_log ({COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ))
                .await?;
            for r in records {
                tx.execute(
                    &stmt,
                    &[
                        &r.tenant_id.as_uuid(),
                        &r.id.as_uuid(),
                        &r.at,
                        &r.actor_type,
                        &r.actor_id,
                        &r.action,
                        &r.resource_type,
                        &r.resource_id,
                        &r.result,
                        &r.ip,
                        &r.user_agent,
                        &r.request_id,
                        &r.detail,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM audit_log
                     WHERE tenant_id = $1
                       AND ($2::text IS NULL OR actor_id = $2)
                       AND ($3::text IS NULL OR action = $3)
                       AND ($4::timestamptz IS NULL OR at >= $4)
                       AND ($5::timestamptz IS NULL OR at < $5)
                       AND ($6::uuid IS NULL OR audit_id < $6)
                     ORDER BY audit_id DESC LIMIT $7"
                ),
                &[
                    &q.tenant_id.as_uuid(),
                    &q.actor_id,
                    &q.action,
                    &q.since,
                    &q.until,
                    &q.before.map(|b| b.as_uuid()),
                    &i64::from(q.limit),
                ],
            )
            .await?;
        map_rows(&rows, record_from_row)
    }
}
