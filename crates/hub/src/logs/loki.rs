//! Loki push: `POST /loki/api/v1/push`, JSON (`application/json`, optionally gzip) or
//! protobuf compressed with snappy (`application/x-protobuf`, what Promtail, Grafana
//! Alloy and the Docker driver send). Answers 204 once every entry is durable.
//!
//! Mapping per stream: the label `service_name` (else `component`, `app`, `job`,
//! `service`) → component (`unknown_service` without one); `level` (else
//! `detected_level`, `severity`, `lvl`; in labels or structured metadata) → level, `info`
//! when absent or unrecognised; the line → message; labels and structured metadata →
//! metadata; `trace_id`, `span_id`, `session_id` in structured metadata → kept as such.
//! The workspace: label `coditect_workspace_id`, else as in [`super::push`].
//!
//! Like Loki, entries that are refused (too old, too long…) do not stop the others: those
//! are stored, and the answer is 400 naming the first refusal (a retry stores nothing
//! twice).

use super::entry::{Candidate, hex_id, level_from_text};
use super::push::{self, Groups};
use crate::authz::Principal;
use crate::http::{ApiError, from_object};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use coditect_proto::{ErrorCode, Level, WorkspaceId};
use prost::Message;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The Loki push protobuf (`logproto.PushRequest`).
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<Stream>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Stream {
        /// Prometheus-style: `{job="api", level="info"}`.
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<Entry>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPair>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

/// Loki's JSON push body.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"streams": [{
    "stream": {"service_name": "api", "level": "info"},
    "values": [["1733000000000000000", "request handled"]],
}]}))]
struct PushJson {
    streams: Vec<StreamJson>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct StreamJson {
    /// The stream's labels: `service_name` (or `component`, `app`, `job`, `service`) names
    /// the component, `level` (or `detected_level`, `severity`, `lvl`) the level,
    /// `coditect_workspace_id` the workspace; the others become metadata.
    #[serde(default)]
    stream: BTreeMap<String, String>,
    /// `[unix nanoseconds as a string, line]` or `[nanoseconds, line, {structured metadata}]`.
    #[schema(value_type = Vec<Vec<Value>>)]
    values: Vec<ValueJson>,
}

/// `[ "<unix nanoseconds>", "<line>" ]` or with a third element, structured metadata.
#[derive(Deserialize)]
#[serde(untagged)]
enum ValueJson {
    Plain(String, String),
    WithMetadata(String, String, BTreeMap<String, String>),
}

/// One entry, whatever the encoding.
struct Line<'a> {
    nanos: Result<i64, String>,
    line: &'a str,
    metadata: Vec<(&'a str, &'a str)>,
}

const COMPONENT_LABELS: [&str; 5] = ["service_name", "component", "app", "job", "service"];
const LEVEL_LABELS: [&str; 4] = ["level", "detected_level", "severity", "lvl"];
const WORKSPACE_LABEL: &str = "coditect_workspace_id";

/// Loki's push API, for Promtail, Grafana Alloy, Vector, Fluent Bit and Loki clients.
#[utoipa::path(
    post,
    path = "/loki/api/v1/push",
    tag = "logs",
    request_body(
        description = "JSON, or snappy-compressed protobuf (`application/x-protobuf`); optionally gzip on top",
        content(
            (PushJson = "application/json"),
            (crate::http::openapi::Binary = "application/x-protobuf"),
        ),
    ),
    params(
        ("X-Scope-OrgID" = Option<String>, Header, description = "The tenant, which must be the credential's (id or name)"),
        ("X-Coditect-Workspace-Id" = Option<WorkspaceId>, Header, description = "The workspace of streams that name none (default: the tenant's default workspace)"),
    ),
    responses(
        (status = 204, description = "Stored"),
        (status = 400, description = "Malformed, or some entries were rejected (the others are stored)"),
        (status = 403, description = "The caller may not write to this workspace or tenant"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 413, description = "Over the body limit"),
        (status = 415, description = "Neither JSON nor protobuf, or an unsupported Content-Encoding"),
    )
)]
pub async fn push(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    push::check_org(&state, &principal, &headers).await?;
    let _slot = state.logs().admit().await?;
    let limit = state.config().body_limit;
    let body = super::read_body(&headers, body, limit).await?;
    let fallback = push::default_workspace(&state, &principal, &headers).await?;
    let ct = push::media_type(&headers);
    // The decoded request owns the strings the candidates borrow.
    let decoded;
    let json;
    let mut groups = Groups::default();
    match ct.as_str() {
        "application/x-protobuf" | "application/protobuf" => {
            let raw = snappy(&body, limit)?;
            decoded = proto::PushRequest::decode(&raw[..])
                .map_err(|e| ApiError::bad_request(format!("malformed Loki protobuf: {e}")))?;
            for s in &decoded.streams {
                let labels = parse_labels(&s.labels)
                    .map_err(|e| ApiError::bad_request(format!("stream labels: {e}")))?;
                let lines = s.entries.iter().map(|e| Line {
                    nanos: e
                        .timestamp
                        .as_ref()
                        .map(|t| {
                            t.seconds
                                .checked_mul(1_000_000_000)
                                .and_then(|n| n.checked_add(i64::from(t.nanos)))
                                .ok_or_else(|| "timestamp is out of range".to_string())
                        })
                        .unwrap_or(Ok(0)),
                    line: &e.line,
                    metadata: e
                        .structured_metadata
                        .iter()
                        .map(|p| (p.name.as_str(), p.value.as_str()))
                        .collect(),
                });
                add_stream(&mut groups, &labels, lines, &fallback)?;
            }
        }
        "application/json" | "" => {
            json = from_object::<PushJson>("Loki JSON", &body)?;
            for s in &json.streams {
                let labels: Vec<(&str, &str)> = s
                    .stream
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                let lines = s.values.iter().map(|v| {
                    let (ts, line, meta) = match v {
                        ValueJson::Plain(ts, line) => (ts, line, None),
                        ValueJson::WithMetadata(ts, line, m) => (ts, line, Some(m)),
                    };
                    Line {
                        nanos: ts
                            .parse::<i64>()
                            .map_err(|_| format!("timestamp {ts:?} is not unix nanoseconds")),
                        line,
                        metadata: meta
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| (k.as_str(), v.as_str()))
                            .collect(),
                    }
                });
                add_stream(&mut groups, &labels, lines, &fallback)?;
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/x-protobuf (snappy) or application/json",
            ));
        }
    }
    if groups.is_empty() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let hash = push::body_hash(&body);
    let totals = push::ingest_groups(&state, &principal, groups, &hash, "loki").await?;
    match totals.first_reason {
        None => Ok(StatusCode::NO_CONTENT),
        Some(reason) => Err(ApiError::bad_request(format!(
            "{} of {} entries rejected (the others are stored), the first because: {reason}",
            totals.rejected,
            totals.rejected + totals.processed
        ))),
    }
}

/// A snappy block, decompressed within `limit` bytes.
fn snappy(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|_| ApiError::bad_request("the protobuf body is not snappy-compressed"))?;
    if len > limit {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over the limit of {limit} bytes"),
        ));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|_| ApiError::bad_request("malformed snappy body"))
}

fn find<'a>(pairs: &[(&'a str, &'a str)], names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| *v))
}

fn add_stream<'a>(
    groups: &mut Groups<'a>,
    labels: &[(&'a str, &'a str)],
    lines: impl Iterator<Item = Line<'a>>,
    fallback: &Result<coditect_proto::WorkspaceId, String>,
) -> Result<(), ApiError> {
    let workspace = push::pick_workspace(find(labels, &[WORKSPACE_LABEL]), fallback);
    let component = find(labels, &COMPONENT_LABELS).unwrap_or("unknown_service");
    for line in lines {
        groups.push(&workspace, candidate(labels, component, line))?;
    }
    Ok(())
}

fn candidate<'a>(
    labels: &[(&'a str, &'a str)],
    component: &'a str,
    line: Line<'a>,
) -> Result<Candidate<'a>, String> {
    let nanos = line.nanos?;
    let level = find(&line.metadata, &LEVEL_LABELS)
        .or_else(|| find(labels, &LEVEL_LABELS))
        .and_then(level_from_text)
        .unwrap_or(Level::Info);
    let trace_id = find(&line.metadata, &["trace_id", "traceID", "traceId"])
        .map(hex_id::<16>)
        .transpose()?;
    let span_id = find(&line.metadata, &["span_id", "spanID", "spanId"])
        .map(hex_id::<8>)
        .transpose()?;
    let session_id = find(&line.metadata, &["session_id"]).and_then(|s| s.parse().ok());
    let metadata: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .chain(line.metadata.iter())
        .filter(|(k, _)| *k != WORKSPACE_LABEL)
        .map(|(k, v)| ((*k).to_string(), (*v).into()))
        .collect();
    Ok(Candidate {
        ts: (nanos != 0).then_some(nanos / 1000),
        level,
        component: Cow::Borrowed(component),
        message: Cow::Borrowed(line.line),
        metadata: (!metadata.is_empty())
            .then(|| Cow::Owned(serde_json::Value::Object(metadata).to_string())),
        id: None,
        session_id,
        trace_id,
        span_id,
    })
}

/// Parses a Prometheus label set, `{name="value", …}` (values with `\"`, `\\`, `\n`).
pub fn parse_labels(text: &str) -> Result<Vec<(&str, &str)>, String> {
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(|| format!("{text:?} is not a {{name=\"value\"}} label set"))?;
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or_else(|| format!("label without a value in {text:?}"))?;
        let name = name.trim();
        let valid = name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if name.is_empty() || !valid {
            return Err(format!("{name:?} is not a label name"));
        }
        let after = after
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of {name} is not quoted"))?;
        // The closing quote is the first one not escaped.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let end = end.ok_or_else(|| format!("the value of {name} is not closed"))?;
        // Escapes stay as sent: label values are metadata, not reinterpreted.
        out.push((name, &after[..end]));
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_parse() {
        assert_eq!(
            parse_labels(r#"{job="api", level="warn",x_1="a \"b\" c"}"#).unwrap(),
            vec![("job", "api"), ("level", "warn"), ("x_1", r#"a \"b\" c"#)]
        );
        assert_eq!(parse_labels("{}").unwrap(), vec![]);
        for bad in [
            r#"job="api""#,
            r#"{job=api}"#,
            r#"{1a="x"}"#,
            r#"{job="x}"#,
            "{job}",
        ] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }
}
