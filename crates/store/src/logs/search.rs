//! Search over chunks, identical on every engine: page through chunk metadata in time
//! order, skip chunks whose summary (levels, components, sessions) or Bloom filter rules
//! them out, decode the rest, filter entries exactly, and stop as soon as no remaining
//! chunk can hold an entry that beats the ones already found.

use super::chunk::{Bloom, LogRecord, RecordRef, Unpacked};
use super::{ChunkRef, ChunkScan, LogStore, Order};
use crate::StoreError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coditect_proto::{Level, SessionId, TenantId, WorkspaceId};
use uuid::Uuid;

/// Chunks whose metadata is read per round trip.
const SCAN_PAGE: u32 = 128;
/// At most this many chunks' bodies are fetched per round trip. How many are fetched is
/// guessed from the matches per chunk seen so far, so that a query needing 1000 entries
/// decodes about as many chunks as it takes to find them.
const MAX_BODY_GROUP: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LevelFilter {
    #[default]
    Any,
    Exact(Level),
    /// This level and more severe ones.
    AtLeast(Level),
}

impl LevelFilter {
    fn mask(self) -> u8 {
        match self {
            LevelFilter::Any => 0xff,
            LevelFilter::Exact(l) => l.bit(),
            LevelFilter::AtLeast(l) => Level::ALL
                .iter()
                .filter(|x| **x >= l)
                .fold(0, |m, x| m | x.bit()),
        }
    }

    pub fn matches(self, level: Level) -> bool {
        match self {
            LevelFilter::Any => true,
            LevelFilter::Exact(l) => level == l,
            LevelFilter::AtLeast(l) => level >= l,
        }
    }
}

/// A position in (timestamp, id) order: where the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: i64,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients.
    pub fn encode(&self) -> String {
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&self.ts.to_be_bytes());
        raw[8..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(text: &str) -> Option<Cursor> {
        let raw = URL_SAFE_NO_PAD.decode(text).ok()?;
        let raw: [u8; 24] = raw.try_into().ok()?;
        Some(Cursor {
            ts: i64::from_be_bytes(raw[..8].try_into().ok()?),
            id: Uuid::from_slice(&raw[8..]).ok()?,
        })
    }

    fn of(r: &LogRecord) -> Cursor {
        Cursor { ts: r.ts, id: r.id }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub tenant_id: TenantId,
    pub workspace_id: Option<WorkspaceId>,
    pub level: LevelFilter,
    pub component: Option<String>,
    pub session_id: Option<SessionId>,
    /// Entries at or after (µs).
    pub since: Option<i64>,
    /// Entries before (µs).
    pub until: Option<i64>,
    /// Every term must occur in the message (case-insensitive substring).
    pub terms: Vec<String>,
    pub order: Order,
    pub limit: u32,
    pub cursor: Option<Cursor>,
}

/// An entry found, with where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub seq: i64,
    pub pos: u32,
    pub workspace_id: WorkspaceId,
    pub record: LogRecord,
}

impl LogQuery {
    /// Whether `a` comes before `b` in the query's order.
    fn key_beats(&self, a: (i64, Uuid), b: (i64, Uuid)) -> bool {
        match self.order {
            Order::Desc => a > b,
            Order::Asc => a < b,
        }
    }

    fn wants(&self, r: &RecordRef<'_>) -> bool {
        if !self.level.matches(r.level)
            || self.since.is_some_and(|s| r.ts < s)
            || self.until.is_some_and(|u| r.ts >= u)
            || self.component.as_deref().is_some_and(|c| c != r.component)
            || self.session_id.is_some_and(|s| Some(s) != r.session_id)
        {
            return false;
        }
        // Only what comes after the cursor in the query's order.
        if let Some(c) = self.cursor
            && !self.key_beats((c.ts, c.id), (r.ts, r.id))
        {
            return false;
        }
        if self.terms.is_empty() {
            return true;
        }
        if r.message.is_ascii() {
            // The common case, without lowering a copy: terms are lower case already.
            let hay = r.message.as_bytes();
            return self.terms.iter().all(|t| {
                hay.windows(t.len())
                    .any(|w| w.eq_ignore_ascii_case(t.as_bytes()))
            });
        }
        let text = r.message.to_lowercase();
        self.terms.iter().all(|t| text.contains(t.as_str()))
    }

    /// Whether a chunk (next in scan order) can still hold an entry better than `worst`.
    fn may_beat(&self, chunk: &ChunkRef, worst: (i64, Uuid)) -> bool {
        match self.order {
            Order::Desc => chunk.summary.max_ts >= worst.0,
            Order::Asc => chunk.summary.min_ts <= worst.0,
        }
    }
}

/// Runs `query`; returns up to `limit` entries in its order and the cursor of the next page
/// (when the page is full).
pub async fn search(
    store: &dyn LogStore,
    query: &LogQuery,
) -> Result<(Vec<Found>, Option<Cursor>), StoreError> {
    let mut q = query.clone();
    q.terms = q
        .terms
        .iter()
        .map(|t| t.to_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    let limit = q.limit.max(1) as usize;
    // The cursor narrows the time window the chunks must overlap.
    let (mut since, mut until) = (q.since, q.until);
    if let Some(c) = q.cursor {
        match q.order {
            Order::Desc => until = Some(until.map_or(c.ts + 1, |u| u.min(c.ts + 1))),
            Order::Asc => since = Some(since.map_or(c.ts, |s| s.max(c.ts))),
        }
    }
    let mask = q.level.mask();
    let mut found: Vec<Found> = Vec::new();
    let mut seen = Seen::default();
    let mut after = None;
    'pages: loop {
        let page = store
            .scan_chunks(&ChunkScan {
                tenant_id: q.tenant_id,
                workspace_id: q.workspace_id,
                since,
                until,
                order: q.order,
                after,
                limit: SCAN_PAGE,
            })
            .await?;
        let full_page = page.len() == SCAN_PAGE as usize;
        after = page.last().map(|c| match q.order {
            Order::Desc => (c.summary.max_ts, c.seq),
            Order::Asc => (c.summary.min_ts, c.seq),
        });
        let mut group: Vec<ChunkRef> = Vec::new();
        for chunk in page {
            if found.len() >= limit {
                let worst = found.last().map(|f| (f.record.ts, f.record.id));
                if worst.is_some_and(|w| !q.may_beat(&chunk, w)) {
                    read_group(store, &q, &mut group, &mut found, &mut seen).await?;
                    break 'pages;
                }
            }
            if chunk
                .summary
                .may_match(mask, q.component.as_deref(), q.session_id)
            {
                group.push(chunk);
            }
            if group.len() >= seen.group_size(found.len(), limit) {
                read_group(store, &q, &mut group, &mut found, &mut seen).await?;
            }
        }
        read_group(store, &q, &mut group, &mut found, &mut seen).await?;
        if !full_page {
            break;
        }
    }
    let next = (found.len() >= limit)
        .then(|| found.last().map(|f| Cursor::of(&f.record)))
        .flatten();
    Ok((found, next))
}

/// Reports a chunk that cannot be decoded (logged, counted in
/// `log_chunks_undecodable_total`); readers skip it and go on.
pub fn undecodable(tenant: coditect_proto::TenantId, seq: i64, error: &StoreError) {
    metrics::counter!("log_chunks_undecodable_total").increment(1);
    tracing::error!(%tenant, seq, %error, "undecodable log chunk skipped");
}

/// Candidate chunks read so far and the entries they matched: the basis for how many to
/// fetch next.
#[derive(Default)]
struct Seen {
    chunks: usize,
    matches: usize,
}

impl Seen {
    fn group_size(&self, found: usize, limit: usize) -> usize {
        if self.chunks == 0 {
            return 1;
        }
        if found >= limit {
            // Full: only chunks overlapping the worst entry found are still read.
            return 4;
        }
        if self.matches == 0 {
            // Nothing yet: a rare match, read in large groups.
            return MAX_BODY_GROUP;
        }
        let need = (limit - found) * self.chunks;
        need.div_ceil(self.matches).clamp(1, MAX_BODY_GROUP)
    }
}

/// Reads (Bloom-pruned) bodies of `group`, adds matching entries to `found`, keeps `found`
/// sorted and at most `q.limit` long.
async fn read_group(
    store: &dyn LogStore,
    q: &LogQuery,
    group: &mut Vec<ChunkRef>,
    found: &mut Vec<Found>,
    seen: &mut Seen,
) -> Result<(), StoreError> {
    if group.is_empty() {
        return Ok(());
    }
    let limit = q.limit.max(1) as usize;
    seen.chunks += group.len();
    let prunable: Vec<&String> = q.terms.iter().filter(|t| t.len() >= 3).collect();
    if !prunable.is_empty() {
        let seqs: Vec<i64> = group.iter().map(|c| c.seq).collect();
        let blooms = store.chunk_blooms(q.tenant_id, &seqs).await?;
        group.retain(|c| {
            blooms
                .iter()
                .find(|(s, _)| *s == c.seq)
                .and_then(|(_, b)| Bloom::from_bytes(b))
                .is_none_or(|bloom| prunable.iter().all(|t| bloom.may_contain(t)))
        });
    }
    let seqs: Vec<i64> = group.iter().map(|c| c.seq).collect();
    // `found` is sorted here; once it is full, only entries that beat its worst are worth
    // copying.
    let worst = (found.len() >= limit)
        .then(|| found.last().map(|f| (f.record.ts, f.record.id)))
        .flatten();
    for (seq, data) in store.chunk_data(q.tenant_id, &seqs).await? {
        let Some(chunk) = group.iter().find(|c| c.seq == seq) else {
            continue;
        };
        // One damaged chunk must not fail every search that reaches it: it is reported
        // and passed over.
        let unpacked = match Unpacked::open(&data) {
            Ok(u) => u,
            Err(e) => {
                undecodable(q.tenant_id, seq, &e);
                continue;
            }
        };
        let records = match unpacked.records() {
            Ok(records) => records,
            Err(e) => {
                undecodable(q.tenant_id, seq, &e);
                continue;
            }
        };
        for (pos, record) in records.iter().enumerate() {
            let pos = pos as u32;
            if chunk.skip.contains(&pos)
                || worst.is_some_and(|w| !q.key_beats((record.ts, record.id), w))
                || !q.wants(record)
            {
                continue;
            }
            seen.matches += 1;
            found.push(Found {
                seq,
                pos,
                workspace_id: chunk.workspace_id,
                record: record.to_record(),
            });
        }
    }
    group.clear();
    found.sort_by(|a, b| {
        let (ka, kb) = ((a.record.ts, a.record.id), (b.record.ts, b.record.id));
        match q.order {
            Order::Desc => kb.cmp(&ka),
            Order::Asc => ka.cmp(&kb),
        }
    });
    found.truncate(limit);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor {
            ts: -5,
            id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("nope"), None);
        assert_eq!(Cursor::decode(""), None);
    }

    #[test]
    fn level_filters() {
        assert!(LevelFilter::AtLeast(Level::Warn).matches(Level::Fatal));
        assert!(!LevelFilter::AtLeast(Level::Warn).matches(Level::Info));
        assert_eq!(
            LevelFilter::AtLeast(Level::Error).mask(),
            Level::Error.bit() | Level::Fatal.bit()
        );
        assert!(LevelFilter::Exact(Level::Info).matches(Level::Info));
        assert!(!LevelFilter::Exact(Level::Info).matches(Level::Warn));
    }
}
