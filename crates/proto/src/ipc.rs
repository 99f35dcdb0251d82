//! The monitor's local protocol (ADR-031), spoken by `codi2` and any other local client.
//!
//! A frame is a u32 little-endian length followed by that many bytes of MessagePack: one
//! [`Message`] `{id, timestamp, payload}`, structs as maps with named fields so the format
//! can grow (an unknown field is ignored, an unknown payload is answered with an error).
//! Frames over [`MAX_FRAME`] bytes are refused. Every request gets exactly one reply
//! whose `id` is the request's `id`.
//!
//! [`next_frame`] is a pure function over a byte buffer, so the same code serves the
//! daemon, the CLI and the fuzz test.

use crate::{ErrorCode, Level};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use uuid::Uuid;

/// Largest payload a frame may carry (the length prefix excluded).
pub const MAX_FRAME: usize = 1 << 20;

/// Bytes of the length prefix.
pub const PREFIX: usize = 4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub payload: Payload,
}

impl Message {
    /// A new request (fresh UUIDv7 id, now).
    pub fn request(payload: Payload) -> Message {
        Message {
            id: Uuid::now_v7(),
            timestamp: Utc::now(),
            payload,
        }
    }

    /// The reply to the request with id `to`.
    pub fn reply(to: Uuid, payload: Payload) -> Message {
        Message {
            id: to,
            timestamp: Utc::now(),
            payload,
        }
    }
}

/// One log entry sent to the monitor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub level: Level,
    pub component: String,
    pub message: String,
    /// A JSON object.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub session_id: Option<String>,
    /// When it happened; the monitor's clock when absent.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
    /// The entry's id (a UUIDv7), when the client chooses it: the monitor stores one entry
    /// per id, so a client that resends after a lost answer stores nothing twice. The
    /// monitor makes one when absent.
    #[serde(default)]
    pub id: Option<Uuid>,
}

/// A stored entry, as `QueryLogs` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredLog {
    /// The monitor's row id: increasing, a cursor for paging.
    pub seq: i64,
    /// The entry's id (UUIDv7), kept when it is synced to the hub.
    pub id: Uuid,
    pub timestamp: DateTime<Utc>,
    pub level: Level,
    pub component: String,
    pub message: String,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    #[serde(default)]
    pub session_id: Option<String>,
    pub synced: bool,
}

/// What `QueryLogs` asks for; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogFilter {
    /// This level and worse.
    #[serde(default)]
    pub min_level: Option<Level>,
    #[serde(default)]
    pub component: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub until: Option<DateTime<Utc>>,
    /// Only entries with a `seq` below this one (the next page of a newest-first query).
    #[serde(default)]
    pub before_seq: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckStatus {
    /// Done and durable.
    Accepted,
    /// Taken, to be done shortly (nothing that loses data is acknowledged this way).
    Queued,
    Rejected(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    /// `healthy`, `degraded` or `unhealthy`.
    pub status: String,
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WatchedPath {
    pub path: PathBuf,
    pub recursive: bool,
    /// Globs relative to `path`; a leading `!` excludes. None = every file.
    pub patterns: Vec<String>,
    /// `polling` or `native`.
    pub mode: WatchMode,
    /// The session whose person or agent the events under this path are attributed to
    /// (while that session is open).
    #[serde(default)]
    pub session_id: Option<String>,
}

/// How a path is watched: the kernel's events, or periodic scans for file systems that
/// have none (WSL2 mounts, network shares).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    #[default]
    Native,
    Polling,
}

impl WatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Native => "native",
            WatchMode::Polling => "polling",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Payload {
    // Requests.
    /// First frame on a TCP connection: the configured token.
    Hello {
        token: String,
    },
    LogEntry(LogEntry),
    /// Many entries in one frame and one transaction: the fast path.
    LogBatch {
        entries: Vec<LogEntry>,
    },
    StartMonitoring {
        path: PathBuf,
        recursive: bool,
        #[serde(default)]
        patterns: Vec<String>,
        /// Attribute events under `path` to this open session.
        #[serde(default)]
        session_id: Option<String>,
        #[serde(default)]
        mode: WatchMode,
    },
    StopMonitoring {
        path: PathBuf,
    },
    ListMonitoring,
    SessionStart {
        session_id: String,
        identity: String,
        #[serde(default)]
        agent_type: Option<String>,
    },
    SessionEnd {
        session_id: String,
    },
    QueryLogs {
        #[serde(default)]
        filter: LogFilter,
        limit: u32,
    },
    GetStatus,

    // Replies.
    Acknowledgment {
        request_id: Uuid,
        status: AckStatus,
        /// Entries stored by a `LogEntry` / `LogBatch`.
        #[serde(default)]
        stored: u32,
    },
    LogResults {
        entries: Vec<StoredLog>,
        /// Entries matching the filter, beyond this page too.
        total_count: u64,
    },
    Monitoring {
        paths: Vec<WatchedPath>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default)]
        details: Option<serde_json::Value>,
    },
    Status {
        components: Vec<ComponentStatus>,
        uptime_ms: u64,
        version: String,
    },
}

impl Payload {
    /// The variant's name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::Hello { .. } => "hello",
            Payload::LogEntry(_) => "log_entry",
            Payload::LogBatch { .. } => "log_batch",
            Payload::StartMonitoring { .. } => "start_monitoring",
            Payload::StopMonitoring { .. } => "stop_monitoring",
            Payload::ListMonitoring => "list_monitoring",
            Payload::SessionStart { .. } => "session_start",
            Payload::SessionEnd { .. } => "session_end",
            Payload::QueryLogs { .. } => "query_logs",
            Payload::GetStatus => "get_status",
            Payload::Acknowledgment { .. } => "acknowledgment",
            Payload::LogResults { .. } => "log_results",
            Payload::Monitoring { .. } => "monitoring",
            Payload::Error { .. } => "error",
            Payload::Status { .. } => "status",
        }
    }
}

/// A frame taken off a buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Message(Message),
    /// Whole, but not a message this side understands; `id` when it could be read, so the
    /// error reply can carry it. The connection stays usable.
    Undecodable {
        id: Option<Uuid>,
        reason: String,
    },
}

/// The length prefix announces more than [`MAX_FRAME`]: the stream cannot be trusted any
/// more, so the reader answers with an error and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    pub len: usize,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frame of {} bytes is over the limit of {MAX_FRAME}",
            self.len
        )
    }
}

impl std::error::Error for TooLarge {}

/// Takes the first whole frame off the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the frame and how many bytes it took. Never panics, whatever the bytes.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, TooLarge> {
    let Some(prefix) = buf.first_chunk::<PREFIX>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix) as usize;
    if len > MAX_FRAME {
        return Err(TooLarge { len });
    }
    let Some(body) = buf.get(PREFIX..PREFIX + len) else {
        return Ok(None);
    };
    let frame = match decode::<Message>(body) {
        Ok(message) => Frame::Message(message),
        Err(e) => Frame::Undecodable {
            id: decode::<IdOnly>(body).ok().map(|m| m.id),
            reason: match e {
                rmp_serde::decode::Error::DepthLimitExceeded => {
                    format!("the message is nested deeper than {MAX_FRAME_DEPTH} levels")
                }
                e => e.to_string(),
            },
        },
    };
    Ok(Some((frame, PREFIX + len)))
}

/// The deepest nesting a frame may hold: a message's own few levels and metadata up to
/// the hub's limit ([`crate::MAX_METADATA_DEPTH`]), with room to spare.
pub const MAX_FRAME_DEPTH: usize = 64;

/// Decodes with the nesting limit: decoding recurses once per level, so a frame nested
/// deeper than any message needs is refused before it can exhaust the reader's stack.
fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    de.set_max_depth(MAX_FRAME_DEPTH);
    T::deserialize(&mut de)
}

#[derive(Deserialize)]
struct IdOnly {
    id: Uuid,
}

/// Why a message could not be framed.
#[derive(Debug)]
pub enum EncodeError {
    TooLarge(TooLarge),
    Serialize(String),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::TooLarge(t) => t.fmt(f),
            EncodeError::Serialize(e) => write!(f, "cannot encode the message: {e}"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Appends `message` as one frame to `out`.
pub fn encode_frame(message: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0; PREFIX]);
    if let Err(e) = rmp_serde::encode::write_named(out, message) {
        out.truncate(start);
        return Err(EncodeError::Serialize(e.to_string()));
    }
    let len = out.len() - start - PREFIX;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(EncodeError::TooLarge(TooLarge { len }));
    }
    out[start..start + PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_nested_too_deep_are_refused_without_recursion() {
        // 100,000 nested one-element arrays, then a nil: a recursive decoder would need a
        // stack frame per level.
        let mut body = vec![0x91u8; 100_000];
        body.push(0xc0);
        let mut buf = (body.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(&body);
        assert!(matches!(
            decode::<serde_json::Value>(&body),
            Err(rmp_serde::decode::Error::DepthLimitExceeded)
        ));
        match next_frame(&buf) {
            Ok(Some((Frame::Undecodable { id: None, .. }, used))) => assert_eq!(used, buf.len()),
            other => panic!("{other:?}"),
        }
        // A message of ordinary depth decodes.
        let mut out = Vec::new();
        encode_frame(&Message::request(Payload::LogEntry(entry("m"))), &mut out).unwrap();
        assert!(matches!(next_frame(&out), Ok(Some((Frame::Message(_), _)))));
    }

    fn entry(message: &str) -> LogEntry {
        LogEntry {
            level: Level::Warn,
            component: "cli".into(),
            message: message.into(),
            metadata: Some(serde_json::json!({"file": "a.rs", "line": 3})),
            session_id: Some("s-1".into()),
            timestamp: None,
            id: None,
        }
    }

    fn frame(payload: Payload) -> (Message, Vec<u8>) {
        let m = Message::request(payload);
        let mut out = Vec::new();
        encode_frame(&m, &mut out).unwrap();
        (m, out)
    }

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let (a, mut bytes) = frame(Payload::LogEntry(entry("one")));
        let (b, more) = frame(Payload::QueryLogs {
            filter: LogFilter::default(),
            limit: 10,
        });
        bytes.extend_from_slice(&more);
        // Byte by byte, nothing until a frame is whole.
        for cut in 0..PREFIX + 3 {
            assert_eq!(next_frame(&bytes[..cut]).unwrap(), None);
        }
        let (first, used) = next_frame(&bytes).unwrap().unwrap();
        assert_eq!(first, Frame::Message(a));
        let (second, used2) = next_frame(&bytes[used..]).unwrap().unwrap();
        assert_eq!(second, Frame::Message(b));
        assert_eq!(used + used2, bytes.len());
    }

    #[test]
    fn fields_are_named_so_the_format_can_grow() {
        let (_, bytes) = frame(Payload::LogEntry(entry("x")));
        let body = &bytes[PREFIX..];
        for name in [
            "id",
            "timestamp",
            "payload",
            "LogEntry",
            "component",
            "message",
        ] {
            assert!(
                body.windows(name.len()).any(|w| w == name.as_bytes()),
                "{name} is named in the frame"
            );
        }
        // A newer client's extra field is ignored.
        #[derive(Serialize)]
        struct Newer<'a> {
            id: Uuid,
            timestamp: DateTime<Utc>,
            payload: &'a Payload,
            priority: u8,
        }
        let p = Payload::SessionEnd {
            session_id: "s".into(),
        };
        let newer = Newer {
            id: Uuid::now_v7(),
            timestamp: Utc::now(),
            payload: &p,
            priority: 9,
        };
        let body = rmp_serde::to_vec_named(&newer).unwrap();
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        match next_frame(&bytes).unwrap().unwrap().0 {
            Frame::Message(m) => assert_eq!(m.payload, p),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_unknown_payload_is_undecodable_but_keeps_its_id_and_the_framing() {
        #[derive(Serialize)]
        struct Future {
            id: Uuid,
            timestamp: DateTime<Utc>,
            payload: std::collections::BTreeMap<&'static str, u8>,
        }
        let id = Uuid::now_v7();
        let body = rmp_serde::to_vec_named(&Future {
            id,
            timestamp: Utc::now(),
            payload: [("Teleport", 1)].into(),
        })
        .unwrap();
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let (_, next) = frame(Payload::GetStatus);
        bytes.extend_from_slice(&next);
        let (f, used) = next_frame(&bytes).unwrap().unwrap();
        assert!(matches!(f, Frame::Undecodable { id: Some(i), .. } if i == id));
        let (f, _) = next_frame(&bytes[used..]).unwrap().unwrap();
        assert!(matches!(f, Frame::Message(m) if m.payload == Payload::GetStatus));
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let bytes = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(next_frame(&bytes), Err(TooLarge { len: MAX_FRAME + 1 }));
        let big = "x".repeat(MAX_FRAME);
        let m = Message::request(Payload::LogEntry(entry(&big)));
        let mut out = vec![7];
        assert!(matches!(
            encode_frame(&m, &mut out),
            Err(EncodeError::TooLarge(_))
        ));
        assert_eq!(out, vec![7], "nothing half-written");
    }

    /// A deterministic pseudo-random sequence, so a failure reproduces.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    /// The decoder over arbitrary bytes and over valid frames with bytes flipped, cut or
    /// spliced: it never panics, never claims more bytes than it was given, and a claimed
    /// frame is exactly its prefix plus length.
    #[test]
    fn the_decoder_survives_arbitrary_bytes() {
        let mut rng = Lcg(7);
        let (_, valid) = frame(Payload::LogBatch {
            entries: vec![entry("a"), entry("b")],
        });
        for round in 0..20_000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                let n = (rng.next() % 64) as usize;
                (0..n).map(|_| rng.next() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..=(rng.next() % 4) {
                    let i = (rng.next() as usize) % v.len();
                    v[i] = rng.next() as u8;
                }
                v.truncate(v.len() - (rng.next() as usize % 3));
                v
            };
            if round % 3 == 0 {
                // A plausible small length in front of random content.
                let n = bytes.len() as u32;
                bytes.splice(0..0, n.to_le_bytes());
            }
            let mut rest = &bytes[..];
            while let Ok(Some((_, used))) = next_frame(rest) {
                assert!(used >= PREFIX && used <= rest.len());
                rest = &rest[used..];
            }
        }
    }
}
