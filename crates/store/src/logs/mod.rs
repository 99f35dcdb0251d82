//! Logs: append-only chunks of entries, an id index, batch receipts, and the search that
//! runs over them (the same on every engine).

pub mod chunk;
pub(crate) mod columns;
pub mod search;

pub use chunk::{BatchReceipt, ChunkSummary, EncodedChunk, LogRecord, decode};
pub use search::{Cursor, Found, LevelFilter, LogQuery, search};

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{TenantId, WorkspaceId};
use uuid::Uuid;

/// A batch receipt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReceipt {
    pub workspace_id: WorkspaceId,
    /// `None` for receipts from before receipts recorded it.
    pub actor: Option<String>,
    /// `None` for receipts from before receipts recorded it.
    pub fingerprint: Option<String>,
    /// The first answer, as sent (JSON).
    pub response: String,
}

/// A stored chunk's metadata (no body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRef {
    pub tenant_id: TenantId,
    /// Per-tenant position in commit order: tail cursors count in it.
    pub seq: i64,
    pub workspace_id: WorkspaceId,
    pub summary: ChunkSummary,
    /// Positions that repeat an entry stored earlier (same id): never returned.
    pub skip: Vec<u32>,
}

/// What appending did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    /// Entries already stored under the same id (kept out of results).
    pub duplicates: u32,
    /// The whole chunk had been appended before (a replay): nothing changed.
    pub replayed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first.
    #[default]
    Desc,
    Asc,
}

/// A page of chunk metadata in time order: by `max_ts` descending (newest first) or by
/// `min_ts` ascending; `after` is the (time, seq) of the last chunk of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkScan {
    pub tenant_id: TenantId,
    pub workspace_id: Option<WorkspaceId>,
    /// Chunks that may hold entries at or after this instant (µs).
    pub since: Option<i64>,
    /// Chunks that may hold entries before this instant (µs).
    pub until: Option<i64>,
    pub order: Order,
    pub after: Option<(i64, i64)>,
    pub limit: u32,
}

#[async_trait]
pub trait LogStore: Send + Sync {
    /// Appends a chunk, its ids and its batch receipt atomically. Idempotent by
    /// `chunk_id`; entries whose id is already stored are recorded as skipped.
    async fn append_chunk(&self, chunk: &EncodedChunk) -> Result<Appended, StoreError>;

    /// The receipts stored under `batch_id` after `since`, in any workspace of the tenant
    /// (at most one per workspace).
    async fn find_batch(
        &self,
        tenant: TenantId,
        batch_id: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<StoredReceipt>, StoreError>;

    async fn scan_chunks(&self, scan: &ChunkScan) -> Result<Vec<ChunkRef>, StoreError>;

    /// Chunks with `seq > after`, in seq order (for live tail resume).
    async fn chunks_after(
        &self,
        tenant: TenantId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChunkRef>, StoreError>;

    /// The newest seq of the tenant (0 when it has none).
    async fn last_seq(&self, tenant: TenantId) -> Result<i64, StoreError>;

    /// `(seq, data)` of the given chunks (those that still exist).
    async fn chunk_data(
        &self,
        tenant: TenantId,
        seqs: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;

    /// `(seq, bloom)` of the given chunks.
    async fn chunk_blooms(
        &self,
        tenant: TenantId,
        seqs: &[i64],
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError>;

    /// Where the entry with this id is stored: `(seq, position)`.
    async fn locate_entry(
        &self,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<(i64, u32)>, StoreError>;

    /// Deletes up to `max_chunks` of the tenant's chunks whose newest entry is older than
    /// `cutoff` (µs), with their ids; how many chunks went.
    async fn delete_before(
        &self,
        tenant: TenantId,
        cutoff: i64,
        max_chunks: u32,
    ) -> Result<u64, StoreError>;

    /// Deletes batch receipts older than `before`.
    async fn forget_batches(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Tenants that have logs.
    async fn log_tenants(&self) -> Result<Vec<TenantId>, StoreError>;
}

/// News of stored chunks, for live tails: in embedded mode sent by the node that stored
/// the chunk; in shared mode relayed from PostgreSQL `LISTEN`, so every replica hears of
/// every replica's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendEvent {
    Appended {
        tenant: TenantId,
        seq: i64,
    },
    /// Notifications may have been missed (the listener reconnected): read from the store
    /// what came after the last seq you saw.
    Resync,
}

/// Where an accepted chunk is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Embedded mode: in the node's SQLite.
    Local,
    /// Shared mode: in the local outbox and in PostgreSQL.
    Dual,
    /// Shared mode: in the local outbox only; replayed to PostgreSQL when it is back.
    LocalOnly,
    /// Shared mode: the local write failed (e.g. disk full); in PostgreSQL only.
    CloudOnly,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Dual => "dual",
            Durability::LocalOnly => "local_only",
            Durability::CloudOnly => "cloud_only",
        }
    }
}

/// What storing a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub durability: Durability,
    /// Present when the chunk reached the searchable store.
    pub appended: Option<Appended>,
}
