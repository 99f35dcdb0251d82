//! Chunks: the unit in which log entries are stored.
//!
//! One accepted batch for one workspace becomes one chunk: its entries, encoded once
//! (MessagePack, LZ4-compressed, a version byte first), with the metadata that lets a query
//! skip it without decoding: time range, the set of levels, the distinct components and
//! sessions (when few), and a Bloom filter of the trigrams of every message (the text
//! index). Storing a chunk is one row plus one small id row per entry, which is what makes
//! ingestion cheap; a query prunes by metadata first and decodes only the chunks that can
//! match.

use crate::StoreError;
use chrono::{DateTime, Utc};
use coditect_proto::{Level, SessionId, TenantId, WorkspaceId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Chunk format version written as the first byte of `data`.
const FORMAT: u8 = 1;
/// At most this many distinct components (or sessions) are listed; beyond, the chunk says
/// "many" and cannot be pruned by them.
const MAX_LISTED: usize = 64;

/// One log entry as stored and returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// UUIDv7: time-ordered, so the id index grows at its end.
    pub id: Uuid,
    /// Microseconds since the epoch (UTC).
    pub ts: i64,
    pub level: Level,
    pub component: String,
    pub message: String,
    /// A JSON object, as text.
    pub metadata: Option<String>,
    pub session_id: Option<SessionId>,
    /// OpenTelemetry trace context, when the entry came with one.
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
}

impl LogRecord {
    pub fn timestamp(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.ts).unwrap_or_default()
    }
}

/// What a retried batch gets back instead of being stored again. Stored with the batch's
/// last chunk, keyed by (tenant, workspace, `batch_id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReceipt {
    pub batch_id: String,
    /// The first answer, as sent (JSON).
    pub response: String,
    /// Who stored the batch (`user:<id>`, `api_key:<id>`). Absent in chunks queued by
    /// versions before receipts had it (the outbox may still hold some).
    #[serde(default)]
    pub actor: Option<String>,
    /// A digest of what was sent, so that a key reused for other content is told apart
    /// from a retry. Absent as `actor` is.
    #[serde(default)]
    pub fingerprint: Option<String>,
}

/// Everything the store needs to append one chunk; built (and compressed) by the caller,
/// off the store's writer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodedChunk {
    pub tenant_id: TenantId,
    pub workspace_id: WorkspaceId,
    /// Makes appending idempotent (a replayed chunk is stored once).
    pub chunk_id: Uuid,
    pub received_at: DateTime<Utc>,
    pub meta: ChunkSummary,
    /// Entry ids in position order.
    pub ids: Vec<Uuid>,
    pub bloom: Vec<u8>,
    pub data: Vec<u8>,
    pub batch: Option<BatchReceipt>,
}

/// What a chunk holds, for pruning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSummary {
    pub min_ts: i64,
    pub max_ts: i64,
    pub count: u32,
    /// Bit `n` set when an entry of level `n` is present.
    pub levels: u8,
    /// Distinct components, sorted, when at most [`MAX_LISTED`]; `None` = many.
    pub components: Option<Vec<String>>,
    /// Distinct session ids, sorted, when at most [`MAX_LISTED`]; `None` = many.
    pub sessions: Option<Vec<SessionId>>,
}

impl EncodedChunk {
    /// Encodes `records` (at least one) as a chunk.
    pub fn encode(
        tenant_id: TenantId,
        workspace_id: WorkspaceId,
        received_at: DateTime<Utc>,
        records: &[LogRecord],
        batch: Option<BatchReceipt>,
    ) -> Result<EncodedChunk, StoreError> {
        if records.is_empty() {
            return Err(StoreError::Internal(
                "a chunk needs at least one entry".into(),
            ));
        }
        let mut min_ts = i64::MAX;
        let mut max_ts = i64::MIN;
        let mut levels = 0u8;
        let mut components: Vec<&str> = Vec::new();
        let mut sessions: Vec<SessionId> = Vec::new();
        let mut bloom = Bloom::for_entries(records.len());
        for r in records {
            min_ts = min_ts.min(r.ts);
            max_ts = max_ts.max(r.ts);
            levels |= r.level.bit();
            if components.len() <= MAX_LISTED && !components.contains(&r.component.as_str()) {
                components.push(&r.component);
            }
            if let Some(s) = r.session_id
                && sessions.len() <= MAX_LISTED
                && !sessions.contains(&s)
            {
                sessions.push(s);
            }
            bloom.add_text(&r.message);
        }
        let listed = |n: usize| n <= MAX_LISTED;
        let components = listed(components.len()).then(|| {
            let mut c: Vec<String> = components.into_iter().map(str::to_string).collect();
            c.sort();
            c
        });
        let sessions = listed(sessions.len()).then(|| {
            sessions.sort();
            sessions
        });
        let packed = rmp_serde::to_vec(records)
            .map_err(|e| StoreError::Internal(format!("cannot encode a chunk: {e}")))?;
        let mut data = Vec::with_capacity(packed.len() / 3 + 8);
        data.push(FORMAT);
        data.extend_from_slice(&lz4_flex::compress_prepend_size(&packed));
        Ok(EncodedChunk {
            tenant_id,
            workspace_id,
            chunk_id: Uuid::now_v7(),
            received_at,
            meta: ChunkSummary {
                min_ts,
                max_ts,
                count: records.len() as u32,
                levels,
                components,
                sessions,
            },
            ids: records.iter().map(|r| r.id).collect(),
            bloom: bloom.into_bytes(),
            data,
            batch,
        })
    }

    /// The chunk as bytes (for the outbox, which carries it to the shared store later).
    pub fn to_bytes(&self) -> Result<Vec<u8>, StoreError> {
        rmp_serde::to_vec(self)
            .map_err(|e| StoreError::Internal(format!("cannot encode a chunk: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<EncodedChunk, StoreError> {
        rmp_serde::from_slice(bytes)
            .map_err(|e| StoreError::Internal(format!("malformed outbox chunk: {e}")))
    }
}

/// Decodes a chunk's `data` back into its entries.
pub fn decode(data: &[u8]) -> Result<Vec<LogRecord>, StoreError> {
    let unpacked = Unpacked::open(data)?;
    Ok(unpacked
        .records()?
        .iter()
        .map(RecordRef::to_record)
        .collect())
}

/// A chunk's decompressed entries, to be read as [`RecordRef`]s without copying them.
pub struct Unpacked(Vec<u8>);

impl Unpacked {
    pub fn open(data: &[u8]) -> Result<Unpacked, StoreError> {
        let (&version, rest) = data
            .split_first()
            .ok_or_else(|| malformed("empty".into()))?;
        if version != FORMAT {
            return Err(malformed(format!("unknown format {version}")));
        }
        let packed =
            lz4_flex::decompress_size_prepended(rest).map_err(|e| malformed(e.to_string()))?;
        Ok(Unpacked(packed))
    }

    /// The entries, their strings borrowed from the chunk.
    pub fn records(&self) -> Result<Vec<RecordRef<'_>>, StoreError> {
        rmp_serde::from_slice(&self.0).map_err(|e| malformed(e.to_string()))
    }
}

fn malformed(why: String) -> StoreError {
    StoreError::Internal(format!("malformed chunk: {why}"))
}

/// A stored entry borrowed from an [`Unpacked`] chunk: searches filter these and copy only
/// what they return. Same fields, in the same order, as [`LogRecord`].
#[derive(Debug, Deserialize)]
pub struct RecordRef<'a> {
    pub id: Uuid,
    pub ts: i64,
    pub level: Level,
    pub component: &'a str,
    pub message: &'a str,
    #[serde(borrow)]
    pub metadata: Option<&'a str>,
    pub session_id: Option<SessionId>,
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
}

impl RecordRef<'_> {
    pub fn to_record(&self) -> LogRecord {
        LogRecord {
            id: self.id,
            ts: self.ts,
            level: self.level,
            component: self.component.to_string(),
            message: self.message.to_string(),
            metadata: self.metadata.map(str::to_string),
            session_id: self.session_id,
            trace_id: self.trace_id,
            span_id: self.span_id,
        }
    }
}

impl ChunkSummary {
    /// Whether some entry of the chunk might satisfy these level, component and session
    /// conditions (never a false "no").
    pub fn may_match(
        &self,
        level_mask: u8,
        component: Option<&str>,
        session: Option<SessionId>,
    ) -> bool {
        if self.levels & level_mask == 0 {
            return false;
        }
        if let (Some(c), Some(listed)) = (component, &self.components)
            && listed.binary_search_by(|x| x.as_str().cmp(c)).is_err()
        {
            return false;
        }
        if let (Some(s), Some(listed)) = (session, &self.sessions)
            && listed.binary_search(&s).is_err()
        {
            return false;
        }
        true
    }
}

/// A Bloom filter over the lower-cased byte trigrams of messages: a chunk whose filter
/// lacks any trigram of a search term cannot contain the term.
///
/// Stored as a version byte (2: multiplicative hash) and the bit words; filters written
/// before the version byte existed (a bare multiple of 8 bytes: FNV-1a) still read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom {
    bits: Vec<u64>,
    hash: TrigramHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrigramHash {
    /// FNV-1a over the three bytes (the first format).
    Fnv,
    /// One 64-bit multiply of the packed trigram (format 2: cheaper on the ingest path).
    Mix,
}

/// Hash functions per trigram.
const K: u32 = 3;
const BLOOM_V2: u8 = 2;

impl Bloom {
    /// About 64 bits per entry (a message has ~100 trigrams, most repeated across a chunk),
    /// between 512 bits and 64 Kibit, a power of two.
    pub fn for_entries(n: usize) -> Bloom {
        let bits = (n.saturating_mul(64))
            .clamp(512, 65_536)
            .next_power_of_two();
        Bloom {
            bits: vec![0; bits / 64],
            hash: TrigramHash::Mix,
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Bloom> {
        let (hash, words) = match bytes.len() % 8 {
            0 => (TrigramHash::Fnv, bytes),
            1 if bytes.first() == Some(&BLOOM_V2) => (TrigramHash::Mix, &bytes[1..]),
            _ => return None,
        };
        if words.is_empty() || !(words.len() / 8).is_power_of_two() {
            return None;
        }
        let bits = words
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect();
        Some(Bloom { bits, hash })
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + self.bits.len() * 8);
        if self.hash == TrigramHash::Mix {
            out.push(BLOOM_V2);
        }
        out.extend(self.bits.iter().flat_map(|w| w.to_le_bytes()));
        out
    }

    fn positions(&self, trigram: [u8; 3]) -> [usize; K as usize] {
        let h = match self.hash {
            TrigramHash::Fnv => {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in trigram {
                    h ^= u64::from(b);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
                h
            }
            TrigramHash::Mix => mix(u64::from(trigram[0])
                | u64::from(trigram[1]) << 8
                | u64::from(trigram[2]) << 16),
        };
        self.spread(h)
    }

    /// The K bit positions of a hash (double hashing on its two halves).
    fn spread(&self, h: u64) -> [usize; K as usize] {
        let (h1, h2) = (h as u32, (h >> 32) as u32 | 1);
        let mask = self.bits.len() * 64 - 1;
        std::array::from_fn(|i| (h1.wrapping_add((i as u32).wrapping_mul(h2)) as usize) & mask)
    }

    pub fn add_text(&mut self, text: &str) {
        if self.hash == TrigramHash::Fnv {
            for t in trigrams(text) {
                for p in self.positions(t) {
                    self.bits[p / 64] |= 1 << (p % 64);
                }
            }
            return;
        }
        // The ingest hot path: a rolling window of three lower-cased bytes, packed as
        // `positions` packs them.
        let bytes = text.as_bytes();
        let [a, b, rest @ ..] = bytes else { return };
        let mut window =
            u64::from(a.to_ascii_lowercase()) << 8 | u64::from(b.to_ascii_lowercase()) << 16;
        for c in rest {
            window = window >> 8 | u64::from(c.to_ascii_lowercase()) << 16;
            for p in self.spread(mix(window)) {
                self.bits[p / 64] |= 1 << (p % 64);
            }
        }
    }

    /// False only if `term` (at least 3 bytes) certainly occurs in no message.
    pub fn may_contain(&self, term: &str) -> bool {
        trigrams(term).all(|t| {
            self.positions(t)
                .iter()
                .all(|&p| self.bits[p / 64] & (1 << (p % 64)) != 0)
        })
    }
}

/// The format-2 trigram hash: one multiply of the packed bytes.
fn mix(packed: u64) -> u64 {
    let h = (packed ^ 0x5bd1_e995).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^ (h >> 29)
}

/// Byte trigrams of the ASCII-lower-cased text.
fn trigrams(text: &str) -> impl Iterator<Item = [u8; 3]> + '_ {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(2)).map(move |i| {
        [
            bytes[i].to_ascii_lowercase(),
            bytes[i + 1].to_ascii_lowercase(),
            bytes[i + 2].to_ascii_lowercase(),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: i64, level: Level, component: &str, message: &str) -> LogRecord {
        LogRecord {
            id: Uuid::now_v7(),
            ts: 1_700_000_000_000_000 + i,
            level,
            component: component.into(),
            message: message.into(),
            metadata: Some(r#"{"line":1}"#.into()),
            session_id: None,
            trace_id: Some([7; 16]),
            span_id: None,
        }
    }

    #[test]
    fn chunks_round_trip_and_summarize() {
        let records = vec![
            record(5, Level::Info, "api", "GET /users took 12ms"),
            record(1, Level::Error, "db", "Connection RESET by peer"),
            record(9, Level::Info, "api", "GET /health"),
        ];
        let chunk = EncodedChunk::encode(
            TenantId::new(),
            WorkspaceId::new(),
            Utc::now(),
            &records,
            None,
        )
        .unwrap();
        assert_eq!(decode(&chunk.data).unwrap(), records);
        let m = &chunk.meta;
        assert_eq!(
            (m.min_ts, m.max_ts, m.count),
            (records[1].ts, records[2].ts, 3)
        );
        assert_eq!(m.levels, Level::Info.bit() | Level::Error.bit());
        assert_eq!(
            m.components.as_deref(),
            Some(&["api".to_string(), "db".to_string()][..])
        );
        assert_eq!(chunk.ids, records.iter().map(|r| r.id).collect::<Vec<_>>());
        let back = EncodedChunk::from_bytes(&chunk.to_bytes().unwrap()).unwrap();
        assert_eq!(back, chunk);
    }

    #[test]
    fn summaries_prune_without_false_negatives() {
        let records = vec![record(1, Level::Warn, "api", "x")];
        let m = EncodedChunk::encode(
            TenantId::new(),
            WorkspaceId::new(),
            Utc::now(),
            &records,
            None,
        )
        .unwrap()
        .meta;
        assert!(m.may_match(Level::Warn.bit(), Some("api"), None));
        assert!(!m.may_match(Level::Error.bit(), None, None));
        assert!(!m.may_match(0xff, Some("db"), None));
        assert!(
            !m.may_match(0xff, None, Some(SessionId::new())),
            "no sessions listed"
        );
    }

    #[test]
    fn the_bloom_finds_every_substring_of_three_or_more_bytes() {
        let mut b = Bloom::for_entries(1);
        b.add_text("Connection RESET by peer");
        for term in ["connection", "reset", "RESET BY", "peer", "ion re", "set"] {
            assert!(b.may_contain(term), "{term}");
        }
        let misses = ["timeout", "refused", "zzz", "qwerty"]
            .iter()
            .filter(|t| b.may_contain(t))
            .count();
        assert!(misses <= 1, "a few false positives at most");
        let round = Bloom::from_bytes(&b.clone().into_bytes()).unwrap();
        assert_eq!(round, b);
        assert!(Bloom::from_bytes(&[1, 2, 3]).is_none());
        assert!(Bloom::from_bytes(&[3; 65]).is_none(), "unknown version");
        // A filter from before the version byte (FNV-1a) still answers.
        let mut old = Bloom {
            bits: vec![0; 8],
            hash: TrigramHash::Fnv,
        };
        old.add_text("Connection reset");
        let old = Bloom::from_bytes(&old.into_bytes()).unwrap();
        assert_eq!(old.hash, TrigramHash::Fnv);
        assert!(old.may_contain("reset"));
        // The rolling window of the hot path sets exactly the bits `may_contain` checks.
        let mut new = Bloom::for_entries(1);
        new.add_text("Disk FULL on /var");
        for term in ["disk", "full on", "/var", "k f"] {
            assert!(new.may_contain(term), "{term}");
        }
        assert!(!new.may_contain("quota"));
        assert!(!old.may_contain("timeout"));
    }

    #[test]
    fn garbage_never_decodes() {
        for bad in [&b""[..], &[9, 1, 2], &[FORMAT, 0xff, 0xff, 0xff, 0x7f, 1]] {
            assert!(decode(bad).is_err());
        }
    }
}
