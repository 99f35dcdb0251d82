//! The middleware every request passes, outermost first:
//!
//! 1. [`request_context`]: request id (accepted from `X-Request-Id` when well-formed, else
//!    minted), a tracing span carrying it, the access log line, and the request metrics
//!    labelled by the matched route template (never the raw path).
//! 2. [`error_envelope`]: turns any error response that is not already JSON (from axum or
//!    a library layer) into the error envelope.
//! 3. panic catcher (tower-http) answering 500 via [`panic_response`].
//! 4. [`guard`]: the request timeout and the body-size precheck on `Content-Length`.

use super::error::{ApiError, code_of};
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use coditect_proto::ErrorCode;
use http_body_util::BodyExt;
use std::any::Any;
use std::time::Instant;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";

/// The id of the request being handled, for handlers that want to return or log it.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn request_context(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = incoming_request_id(req.headers()).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    // ERROR level: the span (and so the request id) exists whatever the log filter, so
    // even a warn-only log keeps the id on its lines. Exported as an OpenTelemetry server
    // span (named by the route template) when traces are on.
    let span = if crate::telemetry::traces::exporting() {
        tracing::error_span!(
            "request",
            request_id = %id,
            method,
            route = %route,
            trace_id = tracing::field::Empty,
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            http.route = %route,
            url.path = %req.uri().path(),
            http.response.status_code = tracing::field::Empty,
        )
    } else {
        tracing::error_span!(
            "request",
            request_id = %id,
            method,
            route = %route,
            trace_id = tracing::field::Empty,
        )
    };
    if let Some(trace_id) = crate::telemetry::traces::continue_trace(&span, req.headers()) {
        span.record("trace_id", trace_id);
    }

    let in_flight = InFlight::enter();
    let mut res = next.run(req).instrument(span.clone()).await;
    drop(in_flight);

    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    let status = res.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = started.elapsed();
    let labels = [
        ("method", method.to_string()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());

    let latency_ms = coditect_proto::duration_ms(elapsed);
    let _entered = span.enter();
    if is_probe(&route) && status != 500 {
        // Probes run every few seconds; their 503s are answers, not failures.
        tracing::debug!(status, latency_ms, "request handled");
    } else if status >= 500 {
        tracing::warn!(status, latency_ms, "request failed");
    } else {
        tracing::info!(status, latency_ms, "request handled");
    }
    res
}

/// Keeps `http_requests_in_flight` right even when a request future is dropped.
struct InFlight;

impl InFlight {
    fn enter() -> InFlight {
        metrics::gauge!("http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("http_requests_in_flight").decrement(1.0);
    }
}

fn is_probe(route: &str) -> bool {
    matches!(
        route,
        "/health" | "/ready" | "/metrics" | "/api/admin/health" | "/api/admin/metrics"
    )
}

/// A bounded set of label values: unknown methods would grow the metric without limit.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A client-supplied request id is kept only if it is short and plain (it ends up in logs).
fn incoming_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(REQUEST_ID)?.to_str().ok()?;
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    (!value.is_empty() && value.len() <= 128 && value.chars().all(plain)).then(|| value.to_owned())
}

/// Marks an error response already encoded as its protocol requires (an OTLP
/// `google.rpc.Status` in protobuf): [`error_envelope`] leaves it alone.
#[derive(Debug, Clone, Copy)]
pub struct ProtocolEncoded;

/// Error responses that are not JSON yet become envelopes. 4xx texts from our libraries
/// describe the client's mistake and are kept as the message; 5xx texts are not shown.
pub async fn error_envelope(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error())
        || is_json(res.headers())
        || res.extensions().get::<ProtocolEncoded>().is_some()
    {
        return res;
    }
    let (parts, body) = res.into_parts();
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let message = if status.is_client_error() {
        match http_body_util::Limited::new(body, 1024).collect().await {
            Ok(collected) => {
                let text = String::from_utf8_lossy(&collected.to_bytes())
                    .trim()
                    .to_string();
                if text.is_empty() { reason } else { text }
            }
            Err(_) => reason,
        }
    } else {
        tracing::error!(status = status.as_u16(), "error response without envelope");
        reason
    };
    let mut envelope = ApiError::new(code_of(status), message).into_response();
    *envelope.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            envelope.headers_mut().insert(name.clone(), value.clone());
        }
    }
    envelope
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Answers a handler panic: logged with its message (inside the request span), 500 to
/// the client.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = message, "handler panicked, answered 500");
    ApiError::new(ErrorCode::InternalError, "an internal error occurred").into_response()
}

/// Request timeout, and a cheap early 413 when the declared body is over the limit.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let config = state.config();
    let headers = req.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if headers.len() > super::conn::MAX_HEADERS || header_bytes > super::conn::MAX_HEADER_BYTES {
        return ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "at most {} headers of at most {} bytes in all",
                super::conn::MAX_HEADERS,
                super::conn::MAX_HEADER_BYTES
            ),
        )
        .into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.body_limit as u64) {
        return ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "request body is over the limit of {} bytes",
                config.body_limit
            ),
        )
        .into_response();
    }
    let timeout = config.request_timeout;
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => {
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "request timed out");
            ApiError::unavailable(
                format!(
                    "request timed out after {}",
                    humantime::format_duration(timeout)
                ),
                1,
            )
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_short_request_ids_are_kept() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        assert_eq!(incoming_request_id(&h).as_deref(), Some("abc-123_x.y:z"));
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(incoming_request_id(&h), None);
        h.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(incoming_request_id(&h), None);
        h.insert(REQUEST_ID, HeaderValue::from_static(""));
        assert_eq!(incoming_request_id(&h), None);
    }

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }
}
