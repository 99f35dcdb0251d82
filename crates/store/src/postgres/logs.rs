//! Logs on PostgreSQL: chunks (bodies TOASTed out of line), the id index, batch
//! receipts. A per-tenant sequence row, locked until commit, makes chunk `seq` follow
//! commit order, so a tail that resumes after seq N never misses a chunk that commits late.
//! Each append notifies `coditect_logs` with `tenant:seq` (delivered on commit) for the
//! live tail of every replica.

use super::PgStore;
use super::rows::{PgRowExt, map_rows};
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
use std::collections::HashSet;
use tokio_postgres::Row;
use tracing::Instrument;
use uuid::Uuid;

/// The channel live tails listen on.
pub const LOG_CHANNEL: &str = "coditect_logs";

const REF_COLUMNS: &str =
    "seq, workspace_id, min_ts, max_ts, count, levels, components, sessions, skip";

fn chunk_ref(tenant: TenantId, row: &Row) -> Result<ChunkRef, StoreError> {
    Ok(ChunkRef {
        tenant_id: tenant,
        seq: row.col(0)?,
        workspace_id: WorkspaceId::from_uuid(row.col(1)?),
        summary: ChunkSummary {
            min_ts: row.col(2)?,
            max_ts: row.col(3)?,
            count: row.col::<i32>(4)? as u32,
            levels: row.col::<i16>(5)? as u8,
            components: components_from_text(row.col(6)?),
            sessions: sessions_from_blob(row.col(7)?),
        },
        skip: skip_from_blob(row.col(8)?),
    })
}

impl PgStore {
    /// One blob column of some chunks of a tenant, by seq.
    async fn chunk_column(
        &self,
        tenant: TenantId,
        seqs: &[i64],
        column: &'static str,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT seq, {column} FROM log_chunks WHERE tenant_id = $1 AND seq = ANY($2)"
                ),
                &[&tenant.as_uuid(), &seqs],
            )
            .await?;
        map_rows(&rows, |r| Ok((r.col(0)?, r.col(1)?)))
    }
}

/// The seq of an already stored chunk.
async fn chunk_seq(
    tx: &tokio_postgres::Transaction<'_>,
    tenant: Uuid,
    chunk_id: Uuid,
) -> Result<Option<i64>, StoreError> {
    tx.query_opt(
        "SELECT seq FROM log_chunks WHERE tenant_id = $1 AND chunk_id = $2",
        &[&tenant, &chunk_id],
    )
    .await?
    .map(|r| r.col(0))
    .transpose()
}

#[async_trait]
impl LogStore for PgStore {
    async fn append_chunk(&self, chunk: &EncodedChunk) -> Result<Appended, StoreError> {
        let span = crate::trace::call("postgresql", "append_chunk", None);
        async {
            let tenant = chunk.tenant_id.as_uuid();
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // A replay of a chunk that is already stored (the outbox after a lost answer) stops
            // here without touching the id index.
            if let Some(seq) = chunk_seq(&tx, tenant, chunk.chunk_id).await? {
                return Ok(Appended {
                    seq,
                    duplicates: 0,
                    replayed: true,
                });
            }
            // The id index first, outside the tenant's seq lock: it is most of the work and
            // needs no order. Ids go in sorted so that two appends sharing ids wait for each
            // other instead of deadlocking; a conflicting id of an append still in flight
            // waits for its outcome.
            let positions: Vec<i32> = (0..chunk.ids.len() as i32).collect();
            let inserted: HashSet<i32> = tx
                .query(
                    "INSERT INTO log_ids (tenant_id, id, chunk_id, pos)
                     SELECT $1, u.id, $2, u.pos FROM unnest($3::uuid[], $4::int[]) AS u(id, pos)
                     ORDER BY u.id
                     ON CONFLICT DO NOTHING RETURNING pos",
                    &[&tenant, &chunk.chunk_id, &chunk.ids, &positions],
                )
                .await?
                .iter()
                .map(|r| r.col::<i32>(0))
                .collect::<Result<_, _>>()?;
            // Taking the next seq locks the tenant's row until commit, so appends of one tenant
            // commit in seq order (what tail cursors rely on). Under the lock, a replay that
            // raced the original is seen for sure; rolling back gives the seq back.
            let seq: i64 = tx
                .query_one(
                    "INSERT INTO log_seqs (tenant_id, last_seq) VALUES ($1, 1)
                     ON CONFLICT (tenant_id) DO UPDATE SET last_seq = log_seqs.last_seq + 1
                     RETURNING last_seq",
                    &[&tenant],
                )
                .await?
                .col(0)?;
            if let Some(seq) = chunk_seq(&tx, tenant, chunk.chunk_id).await? {
                return Ok(Appended {
                    seq,
                    duplicates: 0,
                    replayed: true,
                });
            }
            let skip: Vec<u32> = positions
                .iter()
                .filter(|p| !inserted.contains(p))
                .map(|p| *p as u32)
                .collect();
            let m = &chunk.meta;
            tx.execute(
                "INSERT INTO log_chunks (tenant_id, seq, chunk_id, workspace_id, min_ts, max_ts, count,
                    levels, components, sessions, skip, received_at, data, bloom)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &[
                    &tenant,
                    &seq,
                    &chunk.chunk_id,
                    &chunk.workspace_id.as_uuid(),
                    &m.min_ts,
                    &m.max_ts,
                    &(m.count as i32),
                    &i16::from(m.levels),
                    &components_to_text(&m.components),
                    &sessions_to_blob(&m.sessions),
                    &skip_to_blob(&skip),
                    &chunk.received_at,
                    &chunk.data,
                    &chunk.bloom,
                ],
            )
            .await?;
            if let Some(batch) = &chunk.batch {
                tx.execute(
                    "INSERT INTO log_receipts (tenant_id, batch_id, workspace_id, actor, fingerprint,
                        response, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT DO NOTHING",
                    &[
                        &tenant,
                        &batch.batch_id,
                        &chunk.workspace_id.as_uuid(),
                        &batch.actor,
                        &batch.fingerprint,
                        &batch.response,
                        &chunk.received_at,
                    ],
                )
                .await?;
            }
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&LOG_CHANNEL, &format!("{tenant}:{seq}")],
            )
            .await?;
            tx.commit().await?;
            Ok(Appended {
                seq,
                duplicates: skip.len() as u32,
                replayed: false,
            })
        }
        .instrument(span)
        .await
    }

    async fn find_batch(
        &self,
        tenant: TenantId,
        batch_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReceipt>, StoreError> {
        let rows = self
            .query(
                "SELECT workspace_id, actor, fingerprint, response FROM log_receipts
                 WHERE tenant_id = $1 AND batch_id = $2 AND created_at >= $3",
                &[&tenant.as_uuid(), &batch_id, &since],
            )
            .await?;
        map_rows(&rows, |r| {
            Ok(StoredReceipt {
                workspace_id: WorkspaceId::from_uuid(r.col(0)?),
                actor: r.col(1)?,
                fingerprint: r.col(2)?,
                response: r.col(3)?,
            })
        })
    }

    async fn scan_chunks(&self, s: &ChunkScan) -> Result<Vec<ChunkRef>, StoreError> {
        let (time, dir, cmp) = match s.order {
            Order::Desc => ("max_ts", "DESC", "<"),
            Order::Asc => ("min_ts", "ASC", ">"),
        };
        let (after_ts, after_seq) = s.after.unzip();
        let rows = self
            .query(
                &format!(
                    "SELECT {REF_COLUMNS} FROM log_chunks
                     WHERE tenant_id = $1
                       AND ($2::uuid IS NULL OR workspace_id = $2)
                       AND ($3::bigint IS NULL OR max_ts >= $3)
                       AND ($4::bigint IS NULL OR min_ts < $4)
                       AND ($5::bigint IS NULL OR ({time}, seq) {cmp} ($5, $6::bigint))
                     ORDER BY {time} {dir}, seq {dir} LIMIT $7"
                ),
                &[
                    &s.tenant_id.as_uuid(),
                    &s.workspace_id.map(|w| w.as_uuid()),
                    &s.since,
                    &s.until,
                    &after_ts,
                    &after_seq,
                    &i64::from(s.limit),
                ],
            )
            .await?;
        map_rows(&rows, |r| chunk_ref(s.tenant_id, r))
    }

    async fn chunks_after(
        &self,
        tenant: TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChunkRef>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {REF_COLUMNS} FROM log_chunks
                     WHERE tenant_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
                ),
                &[&tenant.as_uuid(), &after, &i64::from(limit)],
            )
            .await?;
        map_rows(&rows, |r| chunk_ref(tenant, r))
    }

    async fn last_seq(&self, tenant: TenantId) -> Result<i64, StoreError> {
        let rows = self
            .query(
                "SELECT coalesce(max(seq), 0) FROM log_chunks WHERE tenant_id = $1",
                &[&tenant.as_uuid()],
            )
            .await?;
        Ok(rows.first().map(|r| r.col(0)).transpose()?.unwrap_or(0))
    }

    async fn chunk_data(
        &self,
        tenant: TenantId,
        seqs: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.chunk_column(tenant, seqs, "data").await
    }

    async fn chunk_blooms(
        &self,
        tenant: TenantId,
        seqs: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        self.chunk_column(tenant, seqs, "bloom").await
    }

    async fn locate_entry(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<(i64, u32)>, StoreError> {
        self.query_opt(
            "SELECT c.seq, i.pos FROM log_ids i
             JOIN log_chunks c ON c.tenant_id = i.tenant_id AND c.chunk_id = i.chunk_id
             WHERE i.tenant_id = $1 AND i.id = $2",
            &[&tenant.as_uuid(), &id],
        )
        .await?
        .map(|r| Ok((r.col(0)?, r.col::<i32>(1)? as u32)))
        .transpose()
    }

    async fn delete_before(
        &self,
        tenant: TenantId,
        cutoff: i64,
        max_chunks: u32,
    ) -> Result<u64, StoreError> {
        let span = crate::trace::call("postgresql", "delete_before", None);
        async {
            let t = tenant.as_uuid();
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let doomed = tx
                .query(
                    "SELECT seq, chunk_id, data FROM log_chunks WHERE tenant_id = $1 AND max_ts < $2
                     ORDER BY max_ts LIMIT $3",
                    &[&t, &cutoff, &i64::from(max_chunks)],
                )
                .await?;
            for row in &doomed {
                let seq: i64 = row.col(0)?;
                let chunk_id: Uuid = row.col(1)?;
                let data: Vec<u8> = row.col(2)?;
                let ids: Vec<Uuid> = decode(&data)
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.id)
                    .collect();
                tx.execute(
                    "DELETE FROM log_ids WHERE tenant_id = $1 AND id = ANY($2) AND chunk_id = $3",
                    &[&t, &ids, &chunk_id],
                )
                .await?;
                tx.execute(
                    "DELETE FROM log_chunks WHERE tenant_id = $1 AND seq = $2",
                    &[&t, &seq],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(doomed.len() as u64)
        }
        .instrument(span)
        .await
    }

    async fn forget_batches(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        // log_batches: receipts of versions before log_receipts (see migration 0005).
        let mut deleted = 0;
        for table in ["log_receipts", "log_batches"] {
            deleted += self
                .execute(
                    &format!(
                        "DELETE FROM {table} WHERE ctid IN
                         (SELECT ctid FROM {table} WHERE created_at < $1 LIMIT 10000)"
                    ),
                    &[&before],
                )
                .await?;
        }
        Ok(deleted)
    }

    async fn log_tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let rows = self.query("SELECT tenant_id FROM log_seqs", &[]).await?;
        map_rows(&rows, |r| Ok(TenantId::from_uuid(r.col(0)?)))
    }
}
