use super::{RowExt, SqliteStore, blob, collect, to_micros};
use crate::StoreError;
use crate::audit::{AuditQuery, AuditRecord, AuditStore};
use async_trait::async_trait;
use coditect_proto::{AuditId, TenantId};
use rusqlite::{Row, params};

const COLUMNS: &str = "tenant_id, audit_id, at, actor_type, actor_id, action, resource_type,
    resource_id, result, ip, user_agent, request_id, detail";

fn record_from_row(row: &Row<'_>) -> Result<AuditRecord, StoreError> {
    Ok(AuditRecord {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: AuditId::from_uuid(row.uuid(1)?),
        at: row.instant(2)?,
        actor_type: row.get(3)?,
        actor_id: row.get(4)?,
        action: row.get(5)?,
        resource_type: row.get(6)?,
        resource_id: row.get(7)?,
        result: row.get(8)?,
        ip: row.get(9)?,
        user_agent: row.get(10)?,
        request_id: row.get(11)?,
        detail: row.get(12)?,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let records = records.to_vec();
        self.write(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "INSERT INTO audit_log ({COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))?;
            for r in records {
                stmt.execute(params![
                    blob(r.tenant_id.as_uuid()),
                    blob(r.id.as_uuid()),
                    to_micros(r.at),
                    r.actor_type,
                    r.actor_id,
                    r.action,
                    r.resource_type,
                    r.resource_id,
                    r.result,
                    r.ip,
                    r.user_agent,
                    r.request_id,
                    r.detail,
                ])?;
            }
            Ok(())
        })
        .await
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let q = query.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM audit_log
                 WHERE tenant_id = ?1
                   AND (?2 IS NULL OR actor_id = ?2)
                   AND (?3 IS NULL OR action = ?3)
                   AND (?4 IS NULL OR at >= ?4)
                   AND (?5 IS NULL OR at < ?5)
                   AND (?6 IS NULL OR audit_id < ?6)
                 ORDER BY audit_id DESC LIMIT ?7"
            ))?;
            let rows = stmt.query(params![
                blob(q.tenant_id.as_uuid()),
                q.actor_id,
                q.action,
                q.since.map(to_micros),
                q.until.map(to_micros),
                q.before.map(|b| blob(b.as_uuid())),
                q.limit,
            ])?;
            collect(rows, record_from_row)
        })
        .await
    }
}
