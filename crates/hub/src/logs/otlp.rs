//! OpenTelemetry OTLP/HTTP logs: `POST /v1/logs`, protobuf (`application/x-protobuf`) or
//! JSON (`application/json`), optionally gzip-compressed.
//!
//! Mapping: severity number (or, when unset, severity text) → level; body → message (a
//! non-string body as JSON); record attributes → metadata, with the resource's other
//! attributes under `otel.resource`, the scope under `otel.scope`; resource `service.name`
//! → component (`unknown_service` without one); `session.id` → session; trace and span ids
//! kept. The workspace comes from the resource attribute `coditect.workspace.id`, the
//! `X-Coditect-Workspace-Id` header or the key's binding (see [`super::push`]).
//!
//! Answers as the OTLP/HTTP spec says: 200 with an `ExportLogsServiceResponse` in the
//! request's encoding, with `partialSuccess` when some records were rejected; 400 when the
//! body cannot be decoded or every record was rejected; 413, 415; 429 and 503 with
//! `Retry-After` (retryable). Error bodies are a `google.rpc.Status` in the request's
//! encoding; in JSON it also carries the hub's error envelope.

use super::entry::{Candidate, level_from_text};
use super::push::{self, Groups};
use crate::authz::Principal;
use crate::http::{ApiError, from_object};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use coditect_proto::{ErrorCode, ErrorEnvelope, Level, SessionId, WorkspaceId};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpRecord;
use prost::Message;
use serde_json::{Map, Value};
use std::borrow::Cow;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The encoding of a request, and so of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Encoding, ApiError> {
        let ct = super::push::media_type(headers);
        match ct.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "Content-Type must be application/x-protobuf or application/json",
            )),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

/// `google.rpc.Status`, the body of OTLP error answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Status {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// The gRPC status code matching ours (what `google.rpc.Status.code` carries).
fn grpc_code(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::BadRequest | ErrorCode::UnsupportedMediaType => 3, // INVALID_ARGUMENT
        ErrorCode::PayloadTooLarge | ErrorCode::HeadersTooLarge => 11, // OUT_OF_RANGE
        ErrorCode::NotFound => 5,
        ErrorCode::AccessDenied => 7,
        ErrorCode::AuthRequired => 16,
        ErrorCode::RateLimited | ErrorCode::QuotaExceeded => 8, // RESOURCE_EXHAUSTED
        ErrorCode::Unavailable => 14,
        ErrorCode::Conflict | ErrorCode::PreconditionFailed => 10, // ABORTED
        ErrorCode::MethodNotAllowed => 12,
        ErrorCode::InternalError => 13,
    }
}

/// An error in the encoding the client speaks (status, `Retry-After` kept).
fn error(e: ApiError, encoding: Encoding) -> Response {
    let code = e.code();
    let message = e.message().to_string();
    let mut res = e.into_response();
    let body = match encoding {
        Encoding::Protobuf => Status {
            code: grpc_code(code),
            message: format!("{code}: {message}"),
        }
        .encode_to_vec(),
        Encoding::Json => {
            let mut body =
                serde_json::to_value(ErrorEnvelope::new(code, message.clone())).unwrap_or_default();
            if let Some(obj) = body.as_object_mut() {
                obj.insert("code".into(), grpc_code(code).into());
                obj.insert("message".into(), message.into());
            }
            body.to_string().into_bytes()
        }
    };
    *res.body_mut() = Body::from(body);
    res.extensions_mut()
        .insert(crate::http::middleware::ProtocolEncoded);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encoding.content_type()),
    );
    res
}

/// OpenTelemetry's OTLP/HTTP logs export, for any OpenTelemetry SDK or Collector.
/// Errors are answered in the request's encoding: the envelope (plus `code` and `message`
/// of `google.rpc.Status`) in JSON, a `google.rpc.Status` in protobuf.
#[utoipa::path(
    post,
    path = "/v1/logs",
    tag = "logs",
    extensions(("x-coditect-errors" = json!("in-request-encoding"))),
    request_body(
        description = "An ExportLogsServiceRequest; optionally gzip-compressed",
        content(
            (Object = "application/json", example = json!({"resourceLogs": [{
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
                "scopeLogs": [{"logRecords": [{"severityText": "INFO", "body": {"stringValue": "request handled"}}]}],
            }]})),
            (crate::http::openapi::Binary = "application/x-protobuf"),
        ),
    ),
    params(
        ("X-Scope-OrgID" = Option<String>, Header, description = "The tenant, which must be the credential's (id or name)"),
        ("X-Coditect-Workspace-Id" = Option<WorkspaceId>, Header, description = "The workspace of resources that name none (default: the tenant's default workspace)"),
    ),
    responses(
        (status = 200, description = "Stored; `partialSuccess` counts records rejected",
            content((Object = "application/json"), (crate::http::openapi::Binary = "application/x-protobuf"))),
        (status = 400, description = "Malformed, or every record was rejected"),
        (status = 401, description = "No credential, or one that is not valid"),
        (status = 403, description = "The caller may not write to this workspace or tenant"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 413, description = "Over the body limit"),
        (status = 415, description = "Neither JSON nor protobuf, or an unsupported Content-Encoding"),
        (status = 429, description = "Over the tenant's ingestion rate; see Retry-After"),
        (status = 503, description = "Unavailable for now; safe to retry"),
    )
)]
pub async fn export(
    State(state): State<AppState>,
    principal: Result<Principal, ApiError>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let encoding = match Encoding::of(&headers) {
        Ok(e) => e,
        Err(e) => return error(e, Encoding::Json),
    };
    match handle(&state, principal, &headers, body, encoding).await {
        Ok(res) => res,
        Err(e) => error(e, encoding),
    }
}

async fn handle(
    state: &AppState,
    principal: Result<Principal, ApiError>,
    headers: &HeaderMap,
    body: Body,
    encoding: Encoding,
) -> Result<Response, ApiError> {
    let principal = principal?;
    push::check_org(state, &principal, headers).await?;
    let _slot = state.logs().admit().await?;
    let body = super::read_body(headers, body, state.config().body_limit).await?;
    let request = match encoding {
        Encoding::Protobuf => ExportLogsServiceRequest::decode(&body[..])
            .map_err(|e| ApiError::bad_request(format!("malformed OTLP protobuf: {e}")))?,
        Encoding::Json => parse_json(&body)?,
    };
    let fallback = push::default_workspace(state, &principal, headers).await?;
    let mut groups = Groups::default();
    for rl in &request.resource_logs {
        let attrs = rl.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service = str_attr(attrs, "service.name").unwrap_or("unknown_service");
        let workspace = push::pick_workspace(str_attr(attrs, "coditect.workspace.id"), &fallback);
        let resource = object(
            attrs
                .iter()
                .filter(|kv| kv.key != "service.name" && kv.key != "coditect.workspace.id"),
        );
        for sl in &rl.scope_logs {
            let scope = sl.scope.as_ref().filter(|s| !s.name.is_empty()).map(|s| {
                if s.version.is_empty() {
                    s.name.clone()
                } else {
                    format!("{}@{}", s.name, s.version)
                }
            });
            for record in &sl.log_records {
                let context = Context {
                    service,
                    resource: &resource,
                    scope: scope.as_deref(),
                };
                groups.push(&workspace, candidate(record, &context))?;
            }
        }
    }
    if groups.is_empty() {
        return Ok(answer(encoding, 0, None));
    }
    let hash = push::body_hash(&body);
    let totals = push::ingest_groups(state, &principal, groups, &hash, "otlp").await?;
    if totals.processed == 0 {
        return Err(ApiError::bad_request(format!(
            "every log record was rejected ({}), the first because: {}",
            totals.rejected,
            totals.first_reason.unwrap_or_default()
        )));
    }
    Ok(answer(
        encoding,
        totals.rejected,
        totals.first_reason.as_deref(),
    ))
}

/// OTLP JSON; as in proto3 JSON, an absent `resourceLogs` means none.
fn parse_json(body: &[u8]) -> Result<ExportLogsServiceRequest, ApiError> {
    from_object("OTLP JSON", body).or_else(|e| {
        match serde_json::from_slice::<Map<String, Value>>(body) {
            Ok(obj) if !obj.contains_key("resourceLogs") => Ok(ExportLogsServiceRequest::default()),
            _ => Err(e),
        }
    })
}

fn answer(encoding: Encoding, rejected: usize, reason: Option<&str>) -> Response {
    let partial = (rejected > 0).then(|| ExportLogsPartialSuccess {
        rejected_log_records: rejected as i64,
        error_message: format!(
            "{rejected} log records rejected, the first because: {}",
            reason.unwrap_or_default()
        ),
    });
    let body = match encoding {
        Encoding::Protobuf => ExportLogsServiceResponse {
            partial_success: partial,
        }
        .encode_to_vec(),
        // Proto3 JSON: int64 as a string, absent message omitted.
        Encoding::Json => match partial {
            Some(p) => serde_json::json!({"partialSuccess": {
                "rejectedLogRecords": p.rejected_log_records.to_string(),
                "errorMessage": p.error_message,
            }}),
            None => serde_json::json!({}),
        }
        .to_string()
        .into_bytes(),
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

struct Context<'a, 'c> {
    service: &'a str,
    resource: &'c Map<String, Value>,
    scope: Option<&'c str>,
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        }
    })
}

fn object<'a>(attrs: impl Iterator<Item = &'a KeyValue>) -> Map<String, Value> {
    attrs
        .map(|kv| (kv.key.clone(), json_of(kv.value.as_ref())))
        .collect()
}

/// An OTLP value as JSON (bytes as base64).
fn json_of(v: Option<&AnyValue>) -> Value {
    use any_value::Value as V;
    match v.and_then(|v| v.value.as_ref()) {
        None => Value::Null,
        Some(V::StringValue(s)) => Value::String(s.clone()),
        Some(V::BoolValue(b)) => Value::Bool(*b),
        Some(V::IntValue(i)) => Value::from(*i),
        Some(V::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(V::ArrayValue(a)) => Value::Array(a.values.iter().map(|v| json_of(Some(v))).collect()),
        Some(V::KvlistValue(kv)) => Value::Object(object(kv.values.iter())),
        Some(V::BytesValue(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        #[allow(unreachable_patterns)] // newer protocol versions add kinds
        Some(_) => Value::Null,
    }
}

/// The level of a severity number (1–24), or of its text when the number is unset.
pub fn level_of(number: i32, text: &str) -> Level {
    match number {
        1..=4 => Level::Trace,
        5..=8 => Level::Debug,
        9..=12 => Level::Info,
        13..=16 => Level::Warn,
        17..=20 => Level::Error,
        21..=24 => Level::Fatal,
        _ => level_from_text(text).unwrap_or(Level::Info),
    }
}

fn candidate<'a>(r: &'a OtlpRecord, cx: &Context<'a, '_>) -> Result<Candidate<'a>, String> {
    let nanos = if r.time_unix_nano > 0 {
        r.time_unix_nano
    } else {
        r.observed_time_unix_nano
    };
    let ts = match nanos {
        0 => None,
        n => Some(i64::try_from(n / 1000).map_err(|_| "timestamp is out of range".to_string())?),
    };
    let message: Cow<'a, str> = match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => Cow::Borrowed(s.as_str()),
        None => Cow::Borrowed(""),
        Some(_) => Cow::Owned(json_of(r.body.as_ref()).to_string()),
    };
    let mut metadata = object(r.attributes.iter());
    if !cx.resource.is_empty() {
        metadata.insert("otel.resource".into(), Value::Object(cx.resource.clone()));
    }
    if let Some(scope) = cx.scope {
        metadata.insert("otel.scope".into(), scope.into());
    }
    if !r.event_name.is_empty() {
        metadata.insert("otel.event_name".into(), r.event_name.as_str().into());
    }
    if !r.severity_text.is_empty() {
        metadata.insert("otel.severity_text".into(), r.severity_text.as_str().into());
    }
    let session_id =
        str_attr(&r.attributes, "session.id").and_then(|s| s.parse::<SessionId>().ok());
    let trace_id = match r.trace_id.len() {
        0 => None,
        16 => <[u8; 16]>::try_from(&r.trace_id[..])
            .ok()
            .filter(|t| t != &[0; 16]),
        n => return Err(format!("trace_id has {n} bytes, not 16")),
    };
    let span_id = match r.span_id.len() {
        0 => None,
        8 => <[u8; 8]>::try_from(&r.span_id[..])
            .ok()
            .filter(|s| s != &[0; 8]),
        n => return Err(format!("span_id has {n} bytes, not 8")),
    };
    Ok(Candidate {
        ts,
        level: level_of(r.severity_number, &r.severity_text),
        component: Cow::Borrowed(cx.service),
        message,
        metadata: (!metadata.is_empty()).then(|| Cow::Owned(Value::Object(metadata).to_string())),
        id: None,
        session_id,
        trace_id,
        span_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_map_to_levels() {
        assert_eq!(level_of(1, ""), Level::Trace);
        assert_eq!(level_of(9, "WARN"), Level::Info, "the number wins");
        assert_eq!(level_of(13, ""), Level::Warn);
        assert_eq!(level_of(17, ""), Level::Error);
        assert_eq!(level_of(24, ""), Level::Fatal);
        assert_eq!(level_of(0, "Warning"), Level::Warn);
        assert_eq!(level_of(0, ""), Level::Info);
        assert_eq!(level_of(99, "nonsense"), Level::Info);
    }

    #[test]
    fn values_become_json() {
        let v = AnyValue {
            value: Some(any_value::Value::DoubleValue(f64::NAN)),
        };
        assert_eq!(json_of(Some(&v)), Value::Null);
        let v = AnyValue {
            value: Some(any_value::Value::BytesValue(vec![1, 2])),
        };
        assert_eq!(json_of(Some(&v)), Value::String("AQI=".into()));
    }
}
