//! The log pipeline: ingestion (native JSON, OTLP/HTTP and Loki push through the same
//! path), search, and the views they answer with.
//!
//! - `POST /api/logs/batch` `{entries:[{timestamp, level, component, message, metadata?, id?,
//!   session_id?}], workspace_id, client_version, batch_id?}` → 202 `{processed, rejected,
//!   storage, batch_id}` once the accepted entries are durable
//! - `GET /api/logs?workspace_id&level&min_level&component&session_id&since&until&q&limit&order&cursor`
//! - `GET /api/logs/{id}`
//! - `POST /v1/logs`: OpenTelemetry OTLP/HTTP (see [`otlp`])
//! - `POST /loki/api/v1/push`: Loki push (see [`loki`])
//!
//! Every protocol ends in [`ingest`]: authorize the workspace, rate-limit the tenant,
//! validate entry by entry (a bad entry is reported, the rest stored), encode one chunk per
//! ≤ 1000 entries, make it durable, answer.

pub mod entry;
pub mod limit;
pub mod loki;
pub mod otlp;
pub mod push;

use crate::authz::{Principal, Receipt, Scoped};
use crate::http::openapi::Routes;
use crate::http::{ApiError, FilterText, Path, Query, check_instant, from_object};
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use coditect_proto::{ErrorCode, Level, SessionId, TenantId, WorkspaceId};
use coditect_store::logs::BatchReceipt;
use coditect_store::logs::search::{Cursor, Found, LevelFilter, LogQuery};
use coditect_store::{EncodedChunk, Order, Stored};
use entry::{Candidate, IdSource};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::io::Read;
use std::time::Instant;
use utoipa_axum::routes;

/// Most entries one native batch may carry.
pub const MAX_BATCH: usize = 1000;

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(batch))
        .route(routes!(search_logs))
        .route(routes!(get_log))
        .route(routes!(otlp::export))
        .route(routes!(loki::push))
}

/// An entry refused, and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Rejected {
    pub index: usize,
    pub reason: String,
}

/// The outcome of one ingestion request.
#[derive(Debug)]
pub struct Accepted {
    pub processed: usize,
    pub rejected: Vec<Rejected>,
    /// Where the entries are durable; `None` when there was nothing to store.
    pub stored: Option<Stored>,
    pub batch_id: String,
}

/// The body of a request, read only now (after admission, so that requests waiting for a
/// slot hold no body), decompressed when it says `Content-Encoding: gzip`, never larger
/// than `limit` bytes (413 otherwise).
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over the limit of {limit} bytes"),
        )
    };
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if over_length_limit(&e) {
            too_large()
        } else {
            ApiError::bad_request("the request body could not be read")
        }
    })?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("identity") => Ok(body),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
            flate2::read::GzDecoder::new(&body[..])
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| ApiError::bad_request("malformed gzip body"))?;
            if out.len() > limit {
                return Err(too_large());
            }
            Ok(Bytes::from(out))
        }
        Some(other) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("unsupported Content-Encoding {other}: use gzip or none"),
        )),
    }
}

fn over_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// A batch's idempotency key and a digest of its content (see
/// [`crate::authz::Scoped::batch_receipt`]).
#[derive(Debug, Clone)]
pub struct BatchKey {
    pub id: String,
    pub fingerprint: String,
}

/// One workspace's entries of an ingestion request.
pub struct Part<'a> {
    pub workspace: WorkspaceId,
    pub candidates: Vec<Result<Candidate<'a>, String>>,
    pub key: Option<BatchKey>,
}

/// What became of one part.
#[derive(Debug)]
pub enum Outcome {
    Stored(Accepted),
    /// A retry of a batch stored before: its first answer (JSON), nothing stored again.
    Replayed(String),
}

/// The common path of every protocol (see the module docs). The request is judged whole
/// before anything is stored: every workspace authorized, every idempotency key checked,
/// the tenant's rate taken for all its entries; an error there stores nothing. Only a
/// store failure can stop it part-way, and that error is retryable (503): parts already
/// stored left receipts, so the retry stores just the rest.
pub async fn ingest(
    state: &AppState,
    principal: &Principal,
    parts: Vec<Part<'_>>,
    protocol: &'static str,
) -> Result<Vec<Outcome>, ApiError> {
    let started = Instant::now();
    let scoped = state.gate().scoped(principal);
    for part in &parts {
        scoped.may_write_logs(part.workspace).await?;
    }
    let mut replays = Vec::with_capacity(parts.len());
    for part in &parts {
        replays.push(match &part.key {
            Some(k) => match scoped
                .batch_receipt(part.workspace, &k.id, &k.fingerprint)
                .await?
            {
                Receipt::Replay(first) => Some(first),
                Receipt::New => None,
            },
            None => None,
        });
    }
    let logs = state.logs();
    let entries: usize = parts
        .iter()
        .zip(&replays)
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| p.candidates.len())
        .sum();
    if let Err(wait) = logs.rate.take(principal.tenant_id, entries as u64) {
        metrics::counter!("log_ingestion_throttled_total", "protocol" => protocol).increment(1);
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "this tenant is over its ingestion rate; retry later",
        )
        .retry_after(wait.as_secs().max(1)));
    }
    let now = state.gate().clock().now();
    let actor = scoped.actor_key();
    let mut outcomes = Vec::with_capacity(parts.len());
    let mut processed = 0;
    for (part, replay) in parts.into_iter().zip(replays) {
        let outcome = match replay {
            Some(first) => Outcome::Replayed(first),
            None => Outcome::Stored(store_part(&scoped, state, part, now, &actor, protocol).await?),
        };
        if let Outcome::Stored(a) = &outcome {
            processed += a.processed;
        }
        outcomes.push(outcome);
    }
    metrics::counter!("log_ingestion_total", "protocol" => protocol).increment(processed as u64);
    metrics::histogram!("log_ingestion_duration_seconds", "protocol" => protocol)
        .record(started.elapsed().as_secs_f64());
    Ok(outcomes)
}

/// Validates one part's entries and stores those that pass, one chunk per ≤ 1000, the
/// receipt riding with the last.
async fn store_part(
    scoped: &Scoped<'_>,
    state: &AppState,
    part: Part<'_>,
    now: DateTime<Utc>,
    actor: &str,
    protocol: &'static str,
) -> Result<Accepted, ApiError> {
    let tenant = scoped.tenant();
    let ids = match &part.key {
        Some(k) => IdSource::Batch {
            tenant,
            workspace: part.workspace,
            key: k,
        },
        None => IdSource::Fresh,
    };
    let limits = &state.logs().limits;
    let mut records = Vec::with_capacity(part.candidates.len());
    let mut rejected = Vec::new();
    for (index, candidate) in part.candidates.into_iter().enumerate() {
        match candidate.and_then(|c| entry::validate(c, index, &ids, limits, now)) {
            Ok(r) => records.push(r),
            Err(reason) => {
                metrics::counter!("log_entries_rejected_total", "protocol" => protocol)
                    .increment(1);
                rejected.push(Rejected { index, reason });
            }
        }
    }
    let (batch_id, fingerprint) = match part.key {
        Some(k) => (k.id, Some(k.fingerprint)),
        None => (uuid::Uuid::now_v7().to_string(), None),
    };
    if records.is_empty() {
        return Ok(Accepted {
            processed: 0,
            rejected,
            stored: None,
            batch_id,
        });
    }
    let processed = records.len();
    let receipt = serde_json::json!({
        "processed": processed,
        "rejected": rejected,
        "batch_id": batch_id,
    })
    .to_string();
    let mut stored = None;
    let chunks = records.chunks(MAX_BATCH).count();
    for (i, records) in records.chunks(MAX_BATCH).enumerate() {
        // The receipt rides with the last chunk: present only once everything is stored.
        let batch = (i + 1 == chunks).then(|| BatchReceipt {
            batch_id: batch_id.clone(),
            response: receipt.clone(),
            actor: Some(actor.to_string()),
            fingerprint: fingerprint.clone(),
        });
        let chunk = EncodedChunk::encode(tenant, part.workspace, now, records, batch)?;
        let outcome = scoped.append_logs(&chunk).await.inspect_err(|_| {
            metrics::counter!("log_ingestion_failed_total", "protocol" => protocol).increment(1);
        })?;
        stored = Some(match stored {
            // Report the weakest durability of the parts.
            Some(prev) if rank(prev) < rank(outcome) => prev,
            _ => outcome,
        });
    }
    Ok(Accepted {
        processed,
        rejected,
        stored,
        batch_id,
    })
}

/// 128 bits of SHA-256 over a sequence of byte strings, each length-prefixed so that no
/// two sequences share a digest by shifting bytes between items.
pub fn digest_bytes<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> [u8; 16] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for item in items {
        ctx.update(&(item.len() as u64).to_le_bytes());
        ctx.update(item);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.finish().as_ref()[..16]);
    out
}

/// [`digest_bytes`] as 32 hex digits.
pub fn digest<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> String {
    hex(&digest_bytes(items))
}

fn rank(s: Stored) -> u8 {
    use coditect_store::Durability as D;
    match s.durability {
        D::Local | D::Dual => 2,
        D::LocalOnly | D::CloudOnly => 1,
    }
}

/// A batch of entries for one workspace. Entries are checked one by one: a bad one is
/// reported in `rejected` and the others are stored.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({
    "workspace_id": "0193a5e2-7c1f-7000-8000-000000000000",
    "entries": [{"level": "info", "component": "api", "message": "request handled"}],
}))]
struct BatchIn<'a> {
    #[serde(borrow)]
    #[schema(value_type = Vec<entry::EntryIn>, min_items = 1, max_items = 1000)]
    entries: Vec<&'a RawValue>,
    workspace_id: WorkspaceId,
    /// The sender's version, for the log.
    #[serde(borrow)]
    #[allow(dead_code)] // informational; kept in the schema
    #[schema(value_type = Option<String>)]
    client_version: Option<std::borrow::Cow<'a, str>>,
    /// Idempotency key (or the `Idempotency-Key` header): the same batch sent again is
    /// answered with the first answer and stored once. 1 to 128 printable ASCII characters.
    #[schema(min_length = 1, max_length = 128)]
    batch_id: Option<String>,
}

/// The answer to a stored batch: everything in it not listed in `rejected` is durable.
#[derive(Serialize, utoipa::ToSchema)]
struct BatchAnswer<'a> {
    /// Entries stored.
    processed: usize,
    rejected: &'a [Rejected],
    /// Where the entries are durable: `local` (the embedded store), `dual` (the shared one,
    /// and searchable), `local_only` or `cloud_only`.
    #[schema(example = "dual")]
    storage: &'static str,
    batch_id: &'a str,
}

fn check_batch_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "batch_id must be 1 to 128 printable ASCII characters",
        ))
    }
}

/// Stores a batch of entries (the native protocol of codi-monitor). Answered once every
/// accepted entry is durable.
#[utoipa::path(
    post,
    path = "/api/logs/batch",
    tag = "logs",
    request_body(content = BatchIn, content_type = "application/json",
        description = "May be gzip-compressed (`Content-Encoding: gzip`)"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Idempotency key, when the body has no batch_id")),
    responses(
        (status = 202, description = "Stored (or, with header `idempotent-replayed: true`, stored before)", body = BatchAnswer),
        (status = 400, description = "Malformed, or every entry was rejected"),
        (status = 403, description = "The caller may not write to this workspace"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 409, description = "The idempotency key was used for other content"),
        (status = 413, description = "Over the body limit or over 1000 entries"),
        (status = 415, description = "An unsupported Content-Encoding"),
    )
)]
async fn batch(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let _slot = state.logs().admit().await?;
    let body = read_body(&headers, body, state.config().body_limit).await?;
    let parsed: BatchIn<'_> = from_object("JSON", &body)?;
    if parsed.entries.len() > MAX_BATCH {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "{} entries: at most {MAX_BATCH} per batch",
                parsed.entries.len()
            ),
        ));
    }
    if parsed.entries.is_empty() {
        return Err(ApiError::bad_request("entries is empty"));
    }
    let header_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(str::to_string))
        .transpose()
        .map_err(|_| ApiError::bad_request("Idempotency-Key must be printable ASCII"))?;
    let key = parsed.batch_id.clone().or(header_key).map(|id| BatchKey {
        id,
        // What makes two requests the same batch: the workspace (a key column of the
        // receipt) and the entries as sent; not client_version nor where the key came from.
        fingerprint: digest(parsed.entries.iter().map(|e| e.get().as_bytes())),
    });
    if let Some(k) = &key {
        check_batch_id(&k.id)?;
    }
    let part = Part {
        workspace: parsed.workspace_id,
        candidates: parsed
            .entries
            .iter()
            .map(|raw| entry::parse_native(raw))
            .collect(),
        key,
    };
    let outcome = ingest(&state, &principal, vec![part], "native")
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("ingestion answered for no part"))?;
    let accepted = match outcome {
        Outcome::Replayed(first) => return Ok(replayed_answer(&state, &first)),
        Outcome::Stored(accepted) => accepted,
    };
    let Some(stored) = accepted.stored else {
        let first = accepted
            .rejected
            .first()
            .map(|r| r.reason.as_str())
            .unwrap_or("no entries");
        return Err(ApiError::bad_request(format!(
            "every entry was rejected ({} of them), the first because: {first}",
            accepted.rejected.len()
        )));
    };
    let body = BatchAnswer {
        processed: accepted.processed,
        rejected: &accepted.rejected,
        storage: stored.durability.as_str(),
        batch_id: &accepted.batch_id,
    };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// The stored first answer to a batch. Its receipt was found in the searchable store, so
/// that is where the batch is durable now: `local` (embedded) or `dual` (shared).
fn replayed_answer(state: &AppState, first: &str) -> Response {
    let mut body: serde_json::Value = serde_json::from_str(first).unwrap_or_default();
    let storage = match state.gate().system().mode() {
        coditect_store::StorageMode::Embedded => "local",
        coditect_store::StorageMode::Shared => "dual",
    };
    if let Some(obj) = body.as_object_mut() {
        obj.insert("storage".into(), storage.into());
    }
    (
        StatusCode::ACCEPTED,
        [("idempotent-replayed", "true")],
        axum::Json(body),
    )
        .into_response()
}

/// An entry as the API shows it. `metadata` is the stored JSON text, written out as it
/// is: serialize views directly (never into a `serde_json::Value`, which refuses
/// deeply nested data).
#[derive(Serialize, utoipa::ToSchema)]
pub struct LogView {
    pub id: uuid::Uuid,
    /// RFC 3339, always with microseconds, in UTC: sorts as text too.
    pub timestamp: String,
    pub level: Level,
    pub component: String,
    pub message: String,
    /// The structured fields sent with the entry, as sent.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Box<RawValue>>,
    pub session_id: Option<SessionId>,
    pub workspace_id: WorkspaceId,
    /// 32 hex digits.
    pub trace_id: Option<String>,
    /// 16 hex digits.
    pub span_id: Option<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl From<Found> for LogView {
    fn from(f: Found) -> Self {
        let r = f.record;
        LogView {
            id: r.id,
            timestamp: r
                .timestamp()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            level: r.level,
            component: r.component,
            message: r.message,
            metadata: r.metadata.and_then(|m| RawValue::from_string(m).ok()),
            session_id: r.session_id,
            workspace_id: f.workspace_id,
            trace_id: r.trace_id.map(|t| hex(&t)),
            span_id: r.span_id.map(|s| hex(&s)),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SearchParams {
    /// Only this workspace's entries (default: every workspace the caller may read).
    workspace_id: Option<WorkspaceId>,
    /// Only this level (not with `min_level`).
    level: Option<Level>,
    /// This level and worse (not with `level`).
    min_level: Option<Level>,
    /// Only this component.
    component: Option<FilterText>,
    /// Only this session's entries.
    session_id: Option<SessionId>,
    /// From this instant (RFC 3339, years 1970 to 9999).
    since: Option<DateTime<Utc>>,
    /// Until this instant (RFC 3339, years 1970 to 9999; not before `since`).
    until: Option<DateTime<Utc>>,
    /// Words the message must contain (any case), at most 16 of at most 256 bytes.
    q: Option<FilterText>,
    /// Entries per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Newest first (`desc`, the default) or oldest first.
    #[param(inline)]
    order: Option<SortOrder>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum SortOrder {
    Asc,
    Desc,
}

/// `level` (exactly) or `min_level` (and worse), as search and tail take them.
pub fn level_filter(
    level: Option<Level>,
    min_level: Option<Level>,
) -> Result<LevelFilter, ApiError> {
    match (level, min_level) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("give level or min_level, not both")),
        (Some(l), None) => Ok(LevelFilter::Exact(l)),
        (None, Some(l)) => Ok(LevelFilter::AtLeast(l)),
        (None, None) => Ok(LevelFilter::Any),
    }
}

/// Searches the entries of the caller's tenant, newest first by default.
#[utoipa::path(
    get,
    path = "/api/logs",
    tag = "logs",
    params(SearchParams),
    responses(
        (status = 200, description = "A page of entries", body = LogPage),
        (status = 403, description = "The caller may not read this workspace's logs"),
        (status = 404, description = "No such workspace in the caller's tenant"),
    )
)]
async fn search_logs(
    State(state): State<AppState>,
    principal: Principal,
    Query(p): Query<SearchParams>,
) -> Result<axum::Json<LogPage>, ApiError> {
    let level = level_filter(p.level, p.min_level)?;
    let limit = match p.limit.unwrap_or(100) {
        n @ 1..=1000 => n,
        _ => return Err(ApiError::bad_request("limit must be between 1 and 1000")),
    };
    let order = match p.order {
        None | Some(SortOrder::Desc) => Order::Desc,
        Some(SortOrder::Asc) => Order::Asc,
    };
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| Cursor::decode(c).ok_or_else(|| ApiError::bad_request("invalid cursor")))
        .transpose()?;
    let since = check_instant("since", p.since)?;
    let until = check_instant("until", p.until)?;
    if let (Some(s), Some(u)) = (since, until)
        && s > u
    {
        return Err(ApiError::bad_request("since must not be after until"));
    }
    let terms: Vec<String> =
        p.q.as_ref()
            .map(FilterText::as_str)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
    if terms.len() > 16 || terms.iter().any(|t| t.len() > 256) {
        return Err(ApiError::bad_request(
            "q takes at most 16 terms of at most 256 bytes",
        ));
    }
    let query = LogQuery {
        tenant_id: TenantId::NONE,
        workspace_id: p.workspace_id,
        level,
        component: p.component.map(FilterText::into_inner),
        session_id: p.session_id,
        since: since.map(|t| t.timestamp_micros()),
        until: until.map(|t| t.timestamp_micros()),
        terms,
        order,
        limit,
        cursor,
    };
    let (found, next) = state.gate().scoped(&principal).search_logs(query).await?;
    Ok(axum::Json(LogPage {
        items: found.into_iter().map(LogView::from).collect(),
        next_cursor: next.map(|c| c.encode()),
    }))
}

/// A page of search results. Serialized straight from the views (never through
/// `serde_json::Value`), so stored metadata is copied as text whatever its depth.
#[derive(Serialize, utoipa::ToSchema)]
struct LogPage {
    items: Vec<LogView>,
    next_cursor: Option<String>,
}

/// One entry of the caller's tenant.
#[utoipa::path(
    get,
    path = "/api/logs/{id}",
    tag = "logs",
    params(("id" = uuid::Uuid, Path, description = "The entry")),
    responses(
        (status = 200, description = "The entry", body = LogView),
        (status = 403, description = "The caller may not read this workspace's logs"),
        (status = 404, description = "No such entry in the caller's tenant"),
    )
)]
async fn get_log(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<uuid::Uuid>,
) -> Result<axum::Json<LogView>, ApiError> {
    let found = state.gate().scoped(&principal).get_log(id).await?;
    Ok(axum::Json(found.into()))
}
