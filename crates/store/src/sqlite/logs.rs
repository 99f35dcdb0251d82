//! Logs on SQLite: chunks, the id index, batch receipts, and the shared-mode outbox.

use super::{SqliteStore, blob, collect, from_micros, to_micros, uuid_from_blob};
use crate::StoreError;
use crate::logs::columns::{
    components_from_text, components_to_text, sessions_from_blob, sessions_to_blob, skip_from_blob,
    skip_to_blob,
};
use crate::logs::{
    Appended, ChunkRef, ChunkScan, ChunkSummary, EncodedChunk, LogStore, Order, StoredReceipt,
    decode,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, WorkspaceId};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

/// One row of the outbox.
#[derive(Debug)]
pub struct OutboxRow {
    pub seq: i64,
    pub chunk: Result<EncodedChunk, StoreError>,
    /// Failed deliveries so far.
    pub failures: u32,
}

/// The tenant's small key, created on first use.
fn tenant_key(c: &Connection, tenant: TenantId) -> Result<i64, StoreError> {
    let id = blob(tenant.as_uuid());
    if let Some(key) = c
        .prepare_cached("SELECT tenant_key FROM log_tenants WHERE tenant_id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?
    {
        return Ok(key);
    }
    c.prepare_cached("INSERT INTO log_tenants (tenant_id) VALUES (?1)")?
        .execute(params![id])?;
    Ok(c.last_insert_rowid())
}

/// `WHERE tenant_key = (this)` for reads (no key yet = no logs).
const TENANT: &str = "(SELECT tenant_key FROM log_tenants WHERE tenant_id = ?1)";

const REF_COLUMNS: &str =
    "seq, workspace_id, min_ts, max_ts, count, levels, components, sessions, skip";

fn chunk_ref(tenant: TenantId, row: &Row<'_>) -> Result<ChunkRef, StoreError> {
    Ok(ChunkRef {
        tenant_id: tenant,
        seq: row.get(0)?,
        workspace_id: WorkspaceId::from_uuid(uuid_from_blob(&row.get::<_, Vec<u8>>(1)?)?),
        summary: ChunkSummary {
            min_ts: row.get(2)?,
            max_ts: row.get(3)?,
            count: row.get(4)?,
            levels: row.get(5)?,
            components: components_from_text(row.get(6)?),
            sessions: sessions_from_blob(row.get(7)?),
        },
        skip: skip_from_blob(row.get(8)?),
    })
}

fn append(c: &Connection, chunk: &EncodedChunk) -> Result<Appended, StoreError> {
    let tk = tenant_key(c, chunk.tenant_id)?;
    if let Some(seq) = c
        .prepare_cached("SELECT seq FROM log_chunks WHERE tenant_key = ?1 AND chunk_id = ?2")?
        .query_row(params![tk, blob(chunk.chunk_id)], |r| r.get::<_, i64>(0))
        .optional()?
    {
        return Ok(Appended {
            seq,
            duplicates: 0,
            replayed: true,
        });
    }
    c.prepare_cached("INSERT INTO log_chunk_bodies (data, bloom) VALUES (?1, x'')")?
        .execute(params![chunk.data])?;
    let seq = c.last_insert_rowid();
    c.prepare_cached("INSERT INTO log_chunk_blooms (seq, bloom) VALUES (?1, ?2)")?
        .execute(params![seq, chunk.bloom])?;
    let mut skip = Vec::new();
    {
        let mut ids = c.prepare_cached(
            "INSERT INTO log_ids (tenant_key, id, seq, pos) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
        )?;
        for (pos, id) in chunk.ids.iter().enumerate() {
            if ids.execute(params![tk, blob(*id), seq, pos as i64])? == 0 {
                skip.push(pos as u32);
            }
        }
    }
    let m = &chunk.meta;
    c.prepare_cached(
        "INSERT INTO log_chunks (tenant_key, seq, chunk_id, workspace_id, min_ts, max_ts, count,
            levels, components, sessions, skip, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        tk,
        seq,
        blob(chunk.chunk_id),
        blob(chunk.workspace_id.as_uuid()),
        m.min_ts,
        m.max_ts,
        m.count,
        m.levels,
        components_to_text(&m.components),
        sessions_to_blob(&m.sessions),
        skip_to_blob(&skip),
        to_micros(chunk.received_at),
    ])?;
    if let Some(batch) = &chunk.batch {
        c.prepare_cached(
            "INSERT INTO log_receipts (tenant_key, batch_id, workspace_id, actor, fingerprint,
                response, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            tk,
            batch.batch_id,
            blob(chunk.workspace_id.as_uuid()),
            batch.actor,
            batch.fingerprint,
            batch.response,
            to_micros(chunk.received_at)
        ])?;
    }
    Ok(Appended {
        seq,
        duplicates: skip.len() as u32,
        replayed: false,
    })
}

#[async_trait]
impl LogStore for SqliteStore {
    async fn append_chunk(&self, chunk: &EncodedChunk) -> Result<Appended, StoreError> {
        let chunk = chunk.clone();
        self.write(move |c| append(c, &chunk)).await
    }

    async fn find_batch(
        &self,
        tenant: TenantId,
        batch_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let batch_id = batch_id.to_string();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT workspace_id, actor, fingerprint, response FROM log_receipts
                 WHERE tenant_key = {TENANT} AND batch_id = ?2 AND created_at >= ?3"
            ))?;
            collect(
                stmt.query(params![blob(tenant.as_uuid()), batch_id, to_micros(since)])?,
                |r| {
                    Ok(StoredReceipt {
                        workspace_id: WorkspaceId::from_uuid(uuid_from_blob(
                            &r.get::<_, Vec<u8>>(0)?,
                        )?),
                        actor: r.get(1)?,
                        fingerprint: r.get(2)?,
                        response: r.get(3)?,
                    })
                },
            )
        })
        .await
    }

    async fn scan_chunks(&self, scan: &ChunkScan) -> Result<Vec<ChunkRef>, StoreError> {
        let s = scan.clone();
        self.read(move |c| {
            let (time, dir, cmp) = match s.order {
                Order::Desc => ("max_ts", "DESC", "<"),
                Order::Asc => ("min_ts", "ASC", ">"),
            };
            let sql = format!(
                "SELECT {REF_COLUMNS} FROM log_chunks
                 WHERE tenant_key = {TENANT}
                   AND (?2 IS NULL OR workspace_id = ?2)
                   AND (?3 IS NULL OR max_ts >= ?3)
                   AND (?4 IS NULL OR min_ts < ?4)
                   AND (?5 IS NULL OR ({time}, seq) {cmp} (?5, ?6))
                 ORDER BY {time} {dir}, seq {dir} LIMIT ?7"
            );
            let (after_ts, after_seq) = s.after.unzip();
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query(params![
                blob(s.tenant_id.as_uuid()),
                s.workspace_id.map(|w| blob(w.as_uuid())),
                s.since,
                s.until,
                after_ts,
                after_seq,
                s.limit,
            ])?;
            collect(rows, |r| chunk_ref(s.tenant_id, r))
        })
        .await
    }

    async fn chunks_after(
        &self,
        tenant: TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {REF_COLUMNS} FROM log_chunks
                 WHERE tenant_key = {TENANT} AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?;
            let rows = stmt.query(params![blob(tenant.as_uuid()), after, limit])?;
            collect(rows, |r| chunk_ref(tenant, r))
        })
        .await
    }

    async fn last_seq(&self, tenant: TenantId) -> Result<i64, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT coalesce(max(seq), 0) FROM log_chunks WHERE tenant_key = {TENANT}"
            ))?
            .query_row(params![blob(tenant.as_uuid())], |r| r.get(0))?)
        })
        .await
    }

    async fn chunk_data(
        &self,
        tenant: TenantId,
        seqs: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.bodies(tenant, seqs, "log_chunk_bodies", "data").await
    }

    async fn chunk_blooms(
        &self,
        tenant: TenantId,
        seqs: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.bodies(tenant, seqs, "log_chunk_blooms", "bloom").await
    }

    async fn locate_entry(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<(i64, u32)>, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT seq, pos FROM log_ids WHERE tenant_key = {TENANT} AND id = ?2"
            ))?
            .query_row(params![blob(tenant.as_uuid()), blob(id)], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, u32>(1)?))
            })
            .optional()?)
        })
        .await
    }

    async fn delete_before(
        &self,
        tenant: TenantId,
        cutoff: i64,
        max_chunks: u32,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            let Some(tk) = c
                .prepare_cached("SELECT tenant_key FROM log_tenants WHERE tenant_id = ?1")?
                .query_row(params![blob(tenant.as_uuid())], |r| r.get::<_, i64>(0))
                .optional()?
            else {
                return Ok(0);
            };
            let doomed: Vec<(i64, Vec<u8>)> = {
                let mut stmt = c.prepare_cached(
                    "SELECT c.seq, b.data FROM log_chunks c JOIN log_chunk_bodies b ON b.seq = c.seq
                     WHERE c.tenant_key = ?1 AND c.max_ts < ?2 ORDER BY c.max_ts LIMIT ?3",
                )?;
                let rows = stmt.query(params![tk, cutoff, max_chunks])?;
                collect(rows, |r| Ok((r.get(0)?, r.get(1)?)))?
            };
            for (seq, data) in &doomed {
                // The ids to drop are in the chunk itself: no extra index on the hot path.
                let records = decode(data).unwrap_or_default();
                let mut ids = c.prepare_cached(
                    "DELETE FROM log_ids WHERE tenant_key = ?1 AND id = ?2 AND seq = ?3",
                )?;
                for r in records {
                    ids.execute(params![tk, blob(r.id), seq])?;
                }
                c.prepare_cached("DELETE FROM log_chunks WHERE tenant_key = ?1 AND seq = ?2")?
                    .execute(params![tk, seq])?;
                c.prepare_cached("DELETE FROM log_chunk_bodies WHERE seq = ?1")?
                    .execute(params![seq])?;
                c.prepare_cached("DELETE FROM log_chunk_blooms WHERE seq = ?1")?
                    .execute(params![seq])?;
            }
            Ok(doomed.len() as u64)
        })
        .await
    }

    async fn forget_batches(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM log_receipts WHERE (tenant_key, batch_id, workspace_id) IN
                     (SELECT tenant_key, batch_id, workspace_id FROM log_receipts
                      WHERE created_at < ?1 LIMIT 10000)",
                )?
                .execute(params![to_micros(before)])?;
            // Receipts of versions before log_receipts (see migration 0005).
            let old = c
                .prepare_cached(
                    "DELETE FROM log_batches WHERE (tenant_key, batch_id) IN
                     (SELECT tenant_key, batch_id FROM log_batches WHERE created_at < ?1 LIMIT 10000)",
                )?
                .execute(params![to_micros(before)])?;
            Ok((n + old) as u64)
        })
        .await
    }

    async fn log_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT tenant_id FROM log_tenants")?;
            collect(stmt.query([])?, |r| {
                Ok(TenantId::from_uuid(uuid_from_blob(
                    &r.get::<_, Vec<u8>>(0)?,
                )?))
            })
        })
        .await
    }
}

impl SqliteStore {
    async fn bodies(
        &self,
        tenant: TenantId,
        seqs: &[i64],
        table: &'static str,
        column: &'static str,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let seqs = seqs.to_vec();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT b.{column} FROM log_chunks c JOIN {table} b ON b.seq = c.seq
                 WHERE c.tenant_key = {TENANT} AND c.seq = ?2"
            ))?;
            let mut out = Vec::with_capacity(seqs.len());
            for seq in seqs {
                if let Some(body) = stmt
                    .query_row(params![blob(tenant.as_uuid()), seq], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })
                    .optional()?
                {
                    out.push((seq, body));
                }
            }
            Ok(out)
        })
        .await
    }

    /// Shared mode: keeps an accepted chunk until the shared store has it.
    pub async fn outbox_push(&self, chunk: &EncodedChunk) -> Result<i64, StoreError> {
        let bytes = chunk.to_bytes()?;
        let tenant = chunk.tenant_id;
        let at = to_micros(chunk.received_at);
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO log_outbox (tenant_id, chunk, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![blob(tenant.as_uuid()), bytes, at])?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// The oldest outbox entries, in order; a row that does not decode is returned as
    /// its error (for [`SqliteStore::outbox_set_aside`]), never failing the others.
    pub async fn outbox_peek(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, chunk, failures FROM log_outbox ORDER BY seq LIMIT ?1",
            )?;
            collect(stmt.query(params![limit])?, |r| {
                Ok(OutboxRow {
                    seq: r.get(0)?,
                    chunk: EncodedChunk::from_bytes(&r.get::<_, Vec<u8>>(1)?),
                    failures: r.get(2)?,
                })
            })
        })
        .await
    }

    /// Counts a failed delivery of an outbox row; the failures so far.
    pub async fn outbox_failed(&self, seq: i64) -> Result<u32, StoreError> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE log_outbox SET failures = failures + 1 WHERE seq = ?1 RETURNING failures",
            )?
            .query_row(params![seq], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
        })
        .await
    }

    /// Moves an outbox row that cannot be delivered to `log_outbox_set_aside`, with the
    /// reason, so the rows behind it go on.
    pub async fn outbox_set_aside(&self, seq: i64, reason: String) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO log_outbox_set_aside
                    (seq, tenant_id, chunk, created_at, reason, set_aside_at)
                 SELECT seq, tenant_id, chunk, created_at, ?2, ?3 FROM log_outbox WHERE seq = ?1",
            )?
            .execute(params![seq, reason, to_micros(crate::now())])?;
            c.prepare_cached("DELETE FROM log_outbox WHERE seq = ?1")?
                .execute(params![seq])?;
            Ok(())
        })
        .await
    }

    /// Outbox rows set aside so far.
    pub async fn outbox_set_aside_count(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT count(*) FROM log_outbox_set_aside")?
                .query_row([], |r| r.get(0))?;
            Ok(n as u64)
        })
        .await
    }

    pub async fn outbox_remove(&self, seq: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached("DELETE FROM log_outbox WHERE seq = ?1")?
                .execute(params![seq])?;
            Ok(())
        })
        .await
    }

    /// Entries waiting in the outbox and the age of the oldest.
    pub async fn outbox_depth(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        self.read(|c| {
            let (n, oldest): (i64, Option<i64>) = c
                .prepare_cached("SELECT count(*), min(created_at) FROM log_outbox")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok((n as u64, oldest.map(from_micros).transpose()?))
        })
        .await
    }
}
