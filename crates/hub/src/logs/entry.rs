//! Turning what clients send into stored records: one entry at a time, so a bad entry is
//! rejected alone (with its reason) and the rest of the batch is stored.

use chrono::{DateTime, Utc};
use coditect_proto::{Level, SessionId, TenantId, WorkspaceId};
use coditect_store::LogRecord;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::time::Duration;
use uuid::Uuid;

/// Per-entry limits.
#[derive(Debug, Clone)]
pub struct EntryLimits {
    pub max_message: usize,
    pub max_metadata: usize,
    pub max_component: usize,
    /// Timestamps older than this before now are refused.
    pub max_past: Duration,
    /// Timestamps further than this after now are refused (clock skew).
    pub max_future: Duration,
}

impl Default for EntryLimits {
    fn default() -> Self {
        EntryLimits {
            max_message: 64 * 1024,
            max_metadata: 16 * 1024,
            max_component: 256,
            max_past: Duration::from_secs(7 * 86_400),
            max_future: Duration::from_secs(3600),
        }
    }
}

/// One native entry, borrowed from the request body.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct EntryIn<'a> {
    /// RFC 3339 (default: when the hub received it); at most 7 days old, 1 hour ahead.
    #[serde(borrow)]
    #[schema(value_type = Option<String>, format = DateTime)]
    timestamp: Option<Cow<'a, str>>,
    /// A level name in any case (`warning`, `err`, `critical` … are understood too).
    #[serde(borrow)]
    #[schema(value_type = String, example = "info")]
    level: Cow<'a, str>,
    /// Where the entry comes from (at most 256 bytes).
    #[serde(borrow)]
    #[schema(value_type = String)]
    component: Cow<'a, str>,
    #[serde(borrow)]
    #[schema(value_type = String)]
    message: Cow<'a, str>,
    /// Structured fields: an object of at most 16 KiB and 32 levels.
    #[serde(borrow)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<&'a RawValue>,
    /// The entry's id, for deduplication (default: derived from the batch key or minted).
    #[serde(borrow)]
    #[schema(value_type = Option<String>, format = Uuid)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>, format = Uuid)]
    session_id: Option<Cow<'a, str>>,
    /// W3C trace id: 32 hex digits.
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    trace_id: Option<Cow<'a, str>>,
    /// W3C span id: 16 hex digits.
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    span_id: Option<Cow<'a, str>>,
}

/// What every protocol produces before validation.
#[derive(Debug, Clone, Default)]
pub struct Candidate<'a> {
    /// Microseconds since the epoch; `None` = now.
    pub ts: Option<i64>,
    pub level: Level,
    pub component: Cow<'a, str>,
    pub message: Cow<'a, str>,
    /// A JSON object as text (already checked to be one by the protocol, or checked here).
    pub metadata: Option<Cow<'a, str>>,
    pub id: Option<Uuid>,
    pub session_id: Option<SessionId>,
    pub trace_id: Option<[u8; 16]>,
    pub span_id: Option<[u8; 8]>,
}

/// Parses one native entry; `Err(reason)` rejects just this entry.
pub fn parse_native(raw: &RawValue) -> Result<Candidate<'_>, String> {
    let e: EntryIn<'_> =
        serde_json::from_str(raw.get()).map_err(|e| format!("malformed entry: {e}"))?;
    let ts = match e.timestamp.as_deref() {
        None => None,
        Some(t) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| format!("timestamp {t:?} is not RFC 3339"))?
                .with_timezone(&Utc)
                .timestamp_micros(),
        ),
    };
    let level = e.level.parse::<Level>()?;
    let id =
        e.id.as_deref()
            .map(|s| {
                Uuid::parse_str(s)
                    .ok()
                    .filter(|u| u.get_version_num() == 7)
                    .ok_or_else(|| format!("id {s:?} is not a UUIDv7"))
            })
            .transpose()?;
    let session_id = e
        .session_id
        .as_deref()
        .map(|s| {
            s.parse::<SessionId>()
                .map_err(|_| format!("session_id {s:?} is not a UUID"))
        })
        .transpose()?;
    Ok(Candidate {
        ts,
        level,
        component: e.component,
        message: e.message,
        metadata: e.metadata.map(|m| Cow::Borrowed(m.get())),
        id,
        session_id,
        trace_id: e.trace_id.as_deref().map(hex_id::<16>).transpose()?,
        span_id: e.span_id.as_deref().map(hex_id::<8>).transpose()?,
    })
}

/// A level as other systems spell it (`Information`, `WARNING`, `err`, `critical`, `5`
/// for syslog's notice…); `None` when it names none.
pub fn level_from_text(text: &str) -> Option<Level> {
    let t = text.trim().to_ascii_lowercase();
    let level = match t.as_str() {
        "trace" | "trc" | "verbose" => Level::Trace,
        "debug" | "dbg" | "7" => Level::Debug,
        "info" | "information" | "informational" | "inf" | "notice" | "5" | "6" => Level::Info,
        "warn" | "warning" | "wrn" | "4" => Level::Warn,
        "error" | "err" | "eror" | "3" => Level::Error,
        "fatal" | "critical" | "crit" | "alert" | "emerg" | "emergency" | "panic" | "0" | "1"
        | "2" => Level::Fatal,
        _ => return None,
    };
    Some(level)
}

/// A lower- or upper-case hex id of exactly `N` bytes.
pub fn hex_id<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let bad = || format!("{s:?} is not {} hex digits", N * 2);
    if s.len() != N * 2 {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte =
            u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Where ids come from when an entry has none.
pub enum IdSource<'a> {
    /// Fresh UUIDv7s.
    Fresh,
    /// UUIDv7s derived from the batch (its workspace, key and content) and the entry's
    /// position, so a retried batch produces the same ids and is stored once, while the
    /// same key in another workspace or over other content can never produce them.
    Batch {
        tenant: TenantId,
        workspace: WorkspaceId,
        key: &'a super::BatchKey,
    },
}

/// Validates a candidate against the limits; `Err(reason)` rejects it.
pub fn validate(
    c: Candidate<'_>,
    index: usize,
    ids: &IdSource<'_>,
    limits: &EntryLimits,
    now: DateTime<Utc>,
) -> Result<LogRecord, String> {
    let now_us = now.timestamp_micros();
    let ts = c.ts.unwrap_or(now_us);
    let past = i64::try_from(limits.max_past.as_micros()).unwrap_or(i64::MAX);
    let future = i64::try_from(limits.max_future.as_micros()).unwrap_or(i64::MAX);
    if ts < now_us.saturating_sub(past) {
        return Err(format!(
            "timestamp is more than {} in the past",
            humantime::format_duration(limits.max_past)
        ));
    }
    if ts > now_us.saturating_add(future) {
        return Err(format!(
            "timestamp is more than {} in the future",
            humantime::format_duration(limits.max_future)
        ));
    }
    if c.message.len() > limits.max_message {
        return Err(format!("message is over {} bytes", limits.max_message));
    }
    if c.component.is_empty() || c.component.len() > limits.max_component {
        return Err(format!(
            "component must be 1 to {} bytes",
            limits.max_component
        ));
    }
    if c.component.chars().any(char::is_control) {
        // Components are listed one per line in chunk summaries, and PostgreSQL text
        // cannot hold NUL.
        return Err("component must not contain control characters".into());
    }
    if let Some(m) = &c.metadata {
        coditect_proto::check_metadata(m, limits.max_metadata)?;
    }
    let id = match (c.id, ids) {
        (Some(id), _) => id,
        (None, IdSource::Fresh) => Uuid::now_v7(),
        (
            None,
            IdSource::Batch {
                tenant,
                workspace,
                key,
            },
        ) => derived_id(*tenant, *workspace, key, index, ts),
    };
    Ok(LogRecord {
        id,
        ts,
        level: c.level,
        component: c.component.into_owned(),
        message: c.message.into_owned(),
        metadata: c.metadata.map(|m| m.trim().to_string()),
        session_id: c.session_id,
        trace_id: c.trace_id,
        span_id: c.span_id,
    })
}

/// A UUIDv7 whose time is the entry's and whose random bits hash (tenant, workspace,
/// batch key, batch content, index).
fn derived_id(
    tenant: TenantId,
    workspace: WorkspaceId,
    key: &super::BatchKey,
    index: usize,
    ts_us: i64,
) -> Uuid {
    let digest = super::digest_bytes([
        &tenant.as_uuid().as_bytes()[..],
        workspace.as_uuid().as_bytes(),
        key.id.as_bytes(),
        key.fingerprint.as_bytes(),
        &(index as u64).to_le_bytes(),
    ]);
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(ts_us.max(0) / 1000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).unwrap()
    }

    #[test]
    fn native_entries_parse_and_validate() {
        let now = Utc::now();
        let r = raw(&format!(
            r#"{{"timestamp":"{}","level":"WARN","component":"api","message":"slow","metadata":{{"ms":900}},"extra":true}}"#,
            now.to_rfc3339()
        ));
        let c = parse_native(&r).unwrap();
        let rec = validate(c, 0, &IdSource::Fresh, &EntryLimits::default(), now).unwrap();
        assert_eq!(rec.level, Level::Warn);
        assert_eq!(rec.metadata.as_deref(), Some(r#"{"ms":900}"#));
        assert_eq!(rec.id.get_version_num(), 7);
        assert_eq!(rec.ts, now.timestamp_micros());
    }

    #[test]
    fn each_problem_names_itself() {
        let now = Utc::now();
        let limits = EntryLimits::default();
        let check = |json: &str| {
            parse_native(&raw(json)).and_then(|c| validate(c, 0, &IdSource::Fresh, &limits, now))
        };
        let cases = [
            (
                r#"{"level":"loud","component":"a","message":"m"}"#,
                "unknown level",
            ),
            (
                r#"{"level":7,"component":"a","message":"m"}"#,
                "malformed entry",
            ),
            (
                r#"{"timestamp":"yesterday","level":"info","component":"a","message":"m"}"#,
                "RFC 3339",
            ),
            (
                r#"{"timestamp":"2001-01-01T00:00:00Z","level":"info","component":"a","message":"m"}"#,
                "in the past",
            ),
            (
                r#"{"timestamp":"2999-01-01T00:00:00Z","level":"info","component":"a","message":"m"}"#,
                "in the future",
            ),
            (
                r#"{"level":"info","component":"a","message":"m","metadata":[1]}"#,
                "JSON object",
            ),
            (
                r#"{"level":"info","component":"","message":"m"}"#,
                "component",
            ),
            (
                r#"{"level":"info","component":"a\u0000b","message":"m"}"#,
                "control characters",
            ),
            (
                r#"{"level":"info","component":"a\nb","message":"m"}"#,
                "control characters",
            ),
            (
                r#"{"level":"info","component":"a","message":"m","id":"not-a-uuid"}"#,
                "UUIDv7",
            ),
            (
                r#"{"level":"info","component":"a","message":"m","id":"4b6f3b52-3c1e-4b8e-9f0a-2b7c6d5e4f3a"}"#,
                "UUIDv7",
            ),
            (
                r#"{"level":"info","component":"a","message":"m","trace_id":"xyz"}"#,
                "hex",
            ),
        ];
        for (json, reason) in cases {
            let err = check(json).unwrap_err();
            assert!(err.contains(reason), "{json}: {err}");
        }
        let big = format!(
            r#"{{"level":"info","component":"a","message":"{}"}}"#,
            "x".repeat(64 * 1024 + 1)
        );
        assert!(check(&big).unwrap_err().contains("message is over"));
        let meta = format!(
            r#"{{"level":"info","component":"a","message":"m","metadata":{{"k":"{}"}}}}"#,
            "x".repeat(16 * 1024)
        );
        assert!(check(&meta).unwrap_err().contains("metadata is over"));
        let deep = format!(
            r#"{{"level":"info","component":"a","message":"m","metadata":{}1{}}}"#,
            "{\"a\":".repeat(129),
            "}".repeat(129)
        );
        assert!(check(&deep).unwrap_err().contains("nested more than 32"));
    }

    #[test]
    fn batch_ids_make_retries_produce_the_same_ids() {
        let tenant = TenantId::new();
        let key = super::super::BatchKey {
            id: "b-7".into(),
            fingerprint: "f".into(),
        };
        let workspace = WorkspaceId::new();
        let ids = IdSource::Batch {
            tenant,
            workspace,
            key: &key,
        };
        let now = Utc::now();
        let c = || Candidate {
            level: Level::Info,
            component: "a".into(),
            message: "m".into(),
            ts: Some(now.timestamp_micros()),
            ..Candidate::default()
        };
        let limits = EntryLimits::default();
        let a = validate(c(), 3, &ids, &limits, now).unwrap().id;
        let b = validate(c(), 3, &ids, &limits, now).unwrap().id;
        let other = validate(c(), 4, &ids, &limits, now).unwrap().id;
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.get_version_num(), 7);
        // The same key in another workspace, or over other content, never collides.
        let elsewhere = IdSource::Batch {
            tenant,
            workspace: WorkspaceId::new(),
            key: &key,
        };
        assert_ne!(validate(c(), 3, &elsewhere, &limits, now).unwrap().id, a);
        let other_key = super::super::BatchKey {
            id: "b-7".into(),
            fingerprint: "g".into(),
        };
        let other_content = IdSource::Batch {
            tenant,
            workspace,
            key: &other_key,
        };
        assert_ne!(
            validate(c(), 3, &other_content, &limits, now).unwrap().id,
            a
        );
    }

    #[test]
    fn foreign_level_spellings() {
        assert_eq!(level_from_text("Information"), Some(Level::Info));
        assert_eq!(level_from_text(" WARNING "), Some(Level::Warn));
        assert_eq!(level_from_text("crit"), Some(Level::Fatal));
        assert_eq!(level_from_text("3"), Some(Level::Error));
        assert_eq!(level_from_text("loud"), None);
    }

    #[test]
    fn hex_ids() {
        assert_eq!(hex_id::<2>("0aFF"), Ok([0x0a, 0xff]));
        assert!(hex_id::<2>("0aF").is_err());
        assert!(hex_id::<2>("zzzz").is_err());
        assert!(hex_id::<2>("é1").is_err());
    }
}
