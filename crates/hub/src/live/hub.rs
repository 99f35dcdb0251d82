//! The tail hub: hears of every stored chunk (from this node's writes in embedded mode,
//! from PostgreSQL `LISTEN` in shared mode), reads each chunk once, serializes each entry
//! once, and hands the entries to the subscribers whose tenant and filter they match.
//!
//! Chunks are dispatched per tenant in `seq` order without gaps: an event further ahead
//! than expected first pulls the chunks in between from the store. A subscriber's queue is
//! bounded; when it is full the entry is counted as dropped for that subscriber only, so a
//! slow client never slows ingestion or other clients.

use super::filter::Filter;
use crate::state::AppState;
use coditect_proto::TenantId;
use coditect_store::logs::{ChunkRef, LogRecord, decode};
use coditect_store::{AppendEvent, LogStore};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

/// One entry on its way to subscribers: serialized once, shared by all.
#[derive(Debug)]
pub struct TailEntry {
    pub tenant: TenantId,
    pub seq: i64,
    pub pos: u32,
    pub workspace_id: coditect_proto::WorkspaceId,
    pub record: LogRecord,
    /// `{"type":"log","data":{…}}`, ready to send.
    pub frame: Arc<str>,
    /// When the hub learned of the chunk (for delivery latency).
    pub heard_at: Instant,
}

/// The registry's data stays consistent whatever panicked while holding the lock (every
/// change under it is a single step), so a poisoned lock is taken over, never fatal: one
/// bad moment must not stop every tail for good.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A subscriber as the hub sees it.
pub struct Subscriber {
    pub id: u64,
    /// `None`: every tenant (platform admins only).
    pub tenant: Option<TenantId>,
    pub filter: Filter,
    pub queue: mpsc::Sender<Arc<TailEntry>>,
    /// Entries this subscriber missed because its queue was full; the connection reports
    /// and resets it.
    pub dropped: Arc<AtomicU64>,
}

#[derive(Default)]
struct Registry {
    by_tenant: HashMap<TenantId, Vec<Subscriber>>,
    everywhere: Vec<Subscriber>,
    /// Last seq dispatched per tenant (only tracked while the tenant has subscribers, or
    /// while all-tenant subscribers exist).
    dispatched: HashMap<TenantId, i64>,
    next_id: u64,
}

#[derive(Clone, Default)]
pub struct TailHub {
    registry: Arc<Mutex<Registry>>,
    connections: Arc<Mutex<HashMap<TenantId, usize>>>,
}

/// Unregisters its subscriber when the connection ends.
pub struct Subscription {
    hub: TailHub,
    id: u64,
    tenant: Option<TenantId>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        {
            let mut r = lock(&self.hub.registry);
            let r = &mut *r;
            match self.tenant {
                Some(t) => {
                    if let Some(list) = r.by_tenant.get_mut(&t) {
                        list.retain(|s| s.id != self.id);
                        if list.is_empty() {
                            r.by_tenant.remove(&t);
                        }
                    }
                }
                None => r.everywhere.retain(|s| s.id != self.id),
            }
            // Nobody listening: forget where dispatch stood, so the next subscriber starts
            // from the present instead of replaying what nobody was waiting for.
            if r.everywhere.is_empty() {
                let by_tenant = &r.by_tenant;
                r.dispatched.retain(|t, _| by_tenant.contains_key(t));
            }
        }
    }
}

/// Counts a tenant's open tail connections; released on drop.
pub struct ConnectionSlot {
    hub: TailHub,
    tenant: TenantId,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.hub.connections).get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
        metrics::gauge!("websocket_connections_active").decrement(1.0);
    }
}

impl TailHub {
    /// A connection slot for `tenant`, unless it already has `max` open.
    pub fn connect(&self, tenant: TenantId, max: usize) -> Option<ConnectionSlot> {
        let mut c = lock(&self.connections);
        let n = c.entry(tenant).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        metrics::gauge!("websocket_connections_active").increment(1.0);
        Some(ConnectionSlot {
            hub: self.clone(),
            tenant,
        })
    }

    /// Registers a subscriber; entries flow into `queue` until the subscription drops.
    pub fn subscribe(
        &self,
        tenant: Option<TenantId>,
        filter: Filter,
        queue: mpsc::Sender<Arc<TailEntry>>,
        dropped: Arc<AtomicU64>,
    ) -> Subscription {
        let mut r = lock(&self.registry);
        r.next_id += 1;
        let id = r.next_id;
        let sub = Subscriber {
            id,
            tenant,
            filter,
            queue,
            dropped,
        };
        match tenant {
            Some(t) => r.by_tenant.entry(t).or_default().push(sub),
            None => r.everywhere.push(sub),
        }
        Subscription {
            hub: self.clone(),
            id,
            tenant,
        }
    }

    /// Tells the hub a subscriber of `tenant` has everything up to `seq` (read after it
    /// subscribed): dispatch for the tenant continues from there at the latest, even if
    /// append events are lost meanwhile.
    pub fn seen_up_to(&self, tenant: TenantId, seq: i64) {
        lock(&self.registry).dispatched.entry(tenant).or_insert(seq);
    }

    fn wants(&self, tenant: TenantId) -> bool {
        let r = lock(&self.registry);
        !r.everywhere.is_empty() || r.by_tenant.contains_key(&tenant)
    }

    fn dispatched(&self, tenant: TenantId) -> Option<i64> {
        lock(&self.registry).dispatched.get(&tenant).copied()
    }

    /// Hands a decoded chunk to matching subscribers (never blocks on any of them).
    fn dispatch(&self, entries: &[Arc<TailEntry>], tenant: TenantId, seq: i64) {
        let mut r = lock(&self.registry);
        r.dispatched.insert(tenant, seq);
        let Registry {
            by_tenant,
            everywhere,
            ..
        } = &*r;
        let subscribers = by_tenant
            .get(&tenant)
            .into_iter()
            .flatten()
            .chain(everywhere.iter());
        for sub in subscribers {
            let mut missed = 0u64;
            for e in entries
                .iter()
                .filter(|e| sub.filter.matches(e.workspace_id, &e.record))
            {
                if sub.queue.try_send(e.clone()).is_err() {
                    missed += 1;
                }
            }
            if missed > 0 {
                sub.dropped.fetch_add(missed, Ordering::Relaxed);
                metrics::counter!("log_tail_dropped_total").increment(missed);
            }
        }
    }
}

/// A `log` frame, serialized straight from the view (stored metadata is copied as text,
/// whatever its depth).
#[derive(serde::Serialize)]
struct LogFrame {
    r#type: &'static str,
    cursor: String,
    data: crate::logs::LogView,
}

/// Serializes the entries of one chunk for the tail. An entry that cannot be serialized
/// is logged, counted (`log_tail_skipped_total`) and left out; the others go on.
pub fn tail_entries(
    chunk: &ChunkRef,
    records: Vec<LogRecord>,
    heard_at: Instant,
) -> Vec<Arc<TailEntry>> {
    records
        .into_iter()
        .enumerate()
        .filter(|(pos, _)| !chunk.skip.contains(&(*pos as u32)))
        .filter_map(|(pos, record)| {
            let pos = pos as u32;
            let frame = LogFrame {
                r#type: "log",
                cursor: super::TailCursor { seq: chunk.seq, pos }.encode(),
                data: crate::logs::LogView::from(coditect_store::logs::search::Found {
                    seq: chunk.seq,
                    pos,
                    workspace_id: chunk.workspace_id,
                    record: record.clone(),
                }),
            };
            let frame = match serde_json::to_string(&frame) {
                Ok(f) => f,
                Err(e) => {
                    metrics::counter!("log_tail_skipped_total", "reason" => "unserializable").increment(1);
                    tracing::error!(tenant = %chunk.tenant_id, seq = chunk.seq, pos, error = %e, "tail entry cannot be serialized, skipped");
                    return None;
                }
            };
            Some(Arc::new(TailEntry {
                tenant: chunk.tenant_id,
                seq: chunk.seq,
                pos,
                workspace_id: chunk.workspace_id,
                record,
                frame: Arc::from(frame),
                heard_at,
            }))
        })
        .collect()
}

/// The task that feeds the hub from the store's append events.
pub async fn run(state: AppState) {
    let hub = state.tail().clone();
    let system = state.gate().system();
    let mut events = system.subscribe_appends();
    // A (re)started task first catches every waiting tenant up: events may have passed
    // while it was not listening.
    let mut pending = Some(AppendEvent::Resync);
    loop {
        let next = match pending.take() {
            Some(e) => Ok(e),
            None => events.recv().await,
        };
        let event = match next {
            Ok(e) => e,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "tail fell behind the append events, resyncing");
                AppendEvent::Resync
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let heard_at = Instant::now();
        match event {
            AppendEvent::Appended { tenant, seq } => {
                if hub.wants(tenant) {
                    catch_up(&hub, system.logs(), tenant, seq, heard_at).await;
                }
            }
            AppendEvent::Resync => {
                // Every tenant somebody waits for has a dispatch position (see
                // `seen_up_to`): continue each from there.
                let tenants: Vec<TenantId> =
                    lock(&hub.registry).dispatched.keys().copied().collect();
                for tenant in tenants {
                    if hub.wants(tenant) {
                        catch_up(&hub, system.logs(), tenant, i64::MAX, heard_at).await;
                    }
                }
            }
        }
    }
}

/// Dispatches every chunk of `tenant` after the last dispatched one, up to `upto`.
async fn catch_up(
    hub: &TailHub,
    logs: &dyn LogStore,
    tenant: TenantId,
    upto: i64,
    heard_at: Instant,
) {
    let Some(mut last) = hub.dispatched(tenant).or(Some(upto - 1)) else {
        return;
    };
    if upto <= last {
        return;
    }
    loop {
        let chunks = match logs.chunks_after(tenant, last, 32).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "tail cannot read new chunks");
                return;
            }
        };
        if chunks.is_empty() {
            return;
        }
        let seqs: Vec<i64> = chunks.iter().map(|c| c.seq).collect();
        let bodies = match logs.chunk_data(tenant, &seqs).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%tenant, error = %e, "tail cannot read chunk bodies");
                return;
            }
        };
        for chunk in &chunks {
            last = chunk.seq;
            let Some((_, data)) = bodies.iter().find(|(s, _)| *s == chunk.seq) else {
                continue;
            };
            match decode(data) {
                Ok(records) => {
                    hub.dispatch(&tail_entries(chunk, records, heard_at), tenant, chunk.seq)
                }
                Err(e) => {
                    metrics::counter!("log_tail_skipped_total", "reason" => "undecodable")
                        .increment(1);
                    tracing::error!(%tenant, seq = chunk.seq, error = %e, "undecodable chunk skipped by the tail")
                }
            }
        }
        if last >= upto {
            return;
        }
    }
}
