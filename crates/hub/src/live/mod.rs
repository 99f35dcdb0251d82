//! Live tail over WebSocket: `GET /ws/logs`.
//!
//! Authentication, in order: `Authorization: Bearer …` (access token or API key); a
//! `ticket` query parameter from `POST /api/v1/ws-tickets` (a 30-second token for this
//! purpose only, so a browser never puts a real token in a URL); or the subprotocol
//! `bearer.<token>` offered beside `coditect.v1` (browsers can set subprotocols, not
//! headers).
//!
//! Query parameters: `workspace_id`, `level` / `min_level`, `component`, `session_id`, `q`
//! (case-insensitive contains), `cursor` (resume after the entry with this cursor), and
//! `all_tenants=true` (platform admins only; no resume).
//!
//! Frames: first `{"type":"connected","client_id","tenant_id","workspace_id","cursor"}`, then
//! `{"type":"log","cursor","data":{…}}` per entry, `{"type":"dropped","count":N}` when this
//! client's queue overflowed (it keeps going). The server pings every 20 s and closes a
//! connection that has not answered for 60 s.

pub mod filter;
pub mod hub;

use crate::authz::{Principal, RequestMeta, Scoped, Via};
use crate::http::openapi::Routes;
use crate::http::{ApiError, FilterText, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coditect_proto::{ErrorCode, Level, SessionId, TenantId, WorkspaceId};
use coditect_store::logs::decode;
use filter::Filter;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use utoipa_axum::routes;

const PING_EVERY: Duration = Duration::from_secs(20);
const DEAD_AFTER: Duration = Duration::from_secs(60);
const SUBPROTOCOL: &str = "coditect.v1";

pub fn routes() -> Routes {
    Routes::new().route(routes!(tail)).route(routes!(ticket))
}

/// Where a tail stands: just after this entry (tenant-scoped chunk seq and position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TailCursor {
    pub seq: i64,
    pub pos: u32,
}

impl TailCursor {
    pub fn encode(&self) -> String {
        let mut raw = [0u8; 12];
        raw[..8].copy_from_slice(&self.seq.to_be_bytes());
        raw[8..].copy_from_slice(&self.pos.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub fn decode(text: &str) -> Option<TailCursor> {
        let raw: [u8; 12] = URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()?;
        Some(TailCursor {
            seq: i64::from_be_bytes(raw[..8].try_into().ok()?),
            pos: u32::from_be_bytes(raw[8..].try_into().ok()?),
        })
    }
}

/// A one-time WebSocket ticket.
#[derive(Serialize, utoipa::ToSchema)]
struct Ticket {
    /// Pass as `?ticket=` to `GET /ws/logs`; good for one upgrade.
    ticket: String,
    /// Seconds it is valid for.
    expires_in: i64,
}

/// Mints a WebSocket ticket for the caller's session (browsers cannot set headers on a
/// WebSocket).
#[utoipa::path(
    post,
    path = "/api/v1/ws-tickets",
    tag = "live",
    responses(
        (status = 200, description = "A ticket", body = Ticket),
        (status = 400, description = "API keys authenticate the WebSocket with a header instead"),
    )
)]
async fn ticket(State(state): State<AppState>, principal: Principal) -> Result<Response, ApiError> {
    let Via::Session(session) = principal.via else {
        return Err(ApiError::bad_request(
            "tickets are for browser sessions; API keys authenticate the WebSocket with a header",
        ));
    };
    let auth = state.auth();
    let now = state.gate().clock().now();
    let (ticket, claims) = crate::auth::tokens::issue(
        &auth.keys,
        &auth.tickets,
        principal.user_id,
        principal.tenant_id,
        principal.role,
        session,
        now,
    )
    .map_err(ApiError::internal)?;
    let body = Ticket {
        ticket,
        expires_in: claims.exp - claims.iat,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct TailParams {
    /// A ticket from `POST /api/v1/ws-tickets`, instead of a header (or of the
    /// `bearer.<token>` subprotocol).
    ticket: Option<String>,
    /// Only this workspace's entries.
    workspace_id: Option<WorkspaceId>,
    /// Only this level (not with `min_level`).
    level: Option<Level>,
    /// This level and worse (not with `level`).
    min_level: Option<Level>,
    /// Only this component.
    component: Option<FilterText>,
    /// Only this session's entries.
    session_id: Option<SessionId>,
    /// Text the message must contain (any case).
    q: Option<FilterText>,
    /// Resume after this entry (the `cursor` of the last one received).
    cursor: Option<String>,
    /// Every tenant's entries (platform admins; cannot resume).
    all_tenants: Option<bool>,
}

/// The bearer token offered as a subprotocol, if any.
fn subprotocol_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix("bearer.").map(str::to_string))
}

async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    meta: RequestMeta,
    ticket: Option<&str>,
) -> Result<Principal, ApiError> {
    if let Some(ticket) = ticket {
        return crate::auth::principal::authenticate_ticket(state, ticket, meta).await;
    }
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(token) = subprotocol_token(headers)
    {
        let mut synthetic = HeaderMap::new();
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| ApiError::new(ErrorCode::AuthRequired, "malformed subprotocol token"))?;
        synthetic.insert(header::AUTHORIZATION, value);
        return crate::auth::principal::authenticate(state, &synthetic, meta).await;
    }
    crate::auth::principal::authenticate(state, headers, meta).await
}

/// The live tail: a WebSocket (subprotocol `coditect.v1`) carrying each new entry that
/// matches, as JSON text messages, after the backlog since `cursor`.
#[utoipa::path(
    get,
    path = "/ws/logs",
    tag = "live",
    params(TailParams),
    responses(
        (status = 101, description = "Switching to the WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade, or a malformed parameter"),
        (status = 403, description = "The caller may not read these logs"),
        (status = 404, description = "No such workspace in the caller's tenant"),
        (status = 429, description = "Too many tails for this tenant; see Retry-After"),
    )
)]
async fn tail(
    State(state): State<AppState>,
    headers: HeaderMap,
    meta: RequestMeta,
    Query(p): Query<TailParams>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers, meta, p.ticket.as_deref()).await?;
    let level = crate::logs::level_filter(p.level, p.min_level)?;
    let all_tenants = p.all_tenants.unwrap_or(false);
    let scoped = state.gate().scoped(&principal);
    let workspace = scoped.may_tail_logs(p.workspace_id, all_tenants).await?;
    let cursor = match (p.cursor.as_deref(), all_tenants) {
        (None, _) => None,
        (Some(_), true) => return Err(ApiError::bad_request("an all-tenant tail cannot resume")),
        (Some(c), false) => {
            Some(TailCursor::decode(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?)
        }
    };
    let filter = Filter {
        workspace,
        level,
        component: p.component.map(FilterText::into_inner),
        session: p.session_id,
        contains: p
            .q
            .map(|q| q.as_str().to_lowercase())
            .filter(|q| !q.is_empty()),
    };
    let tenant = (!all_tenants).then_some(principal.tenant_id);
    let slot = state
        .tail()
        .connect(principal.tenant_id, state.config().logs.tail_max_per_tenant)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::RateLimited,
                "too many tail connections for this tenant",
            )
            .retry_after(5)
        })?;
    let offered_ours = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == SUBPROTOCOL));
    let upgrade = if offered_ours {
        upgrade.protocols([SUBPROTOCOL])
    } else {
        upgrade
    };
    // Small socket buffers: an idle tail costs a few KiB, not the library's 128 KiB
    // default read buffer (clients only send pongs and closes).
    Ok(upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(64 * 1024)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            session(socket, state, principal, tenant, filter, cursor).await;
        }))
}

async fn send(socket: &mut WebSocket, text: impl Into<Utf8Bytes>) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// Tells the client how many entries it missed since the last report, if any; false when
/// the socket is gone.
async fn report_dropped(socket: &mut WebSocket, dropped: &AtomicU64) -> bool {
    let missed = dropped.swap(0, Ordering::Relaxed);
    if missed == 0 {
        return true;
    }
    let note = serde_json::json!({"type": "dropped", "count": missed});
    send(socket, note.to_string()).await
}

async fn session(
    mut socket: WebSocket,
    state: AppState,
    principal: Principal,
    tenant: Option<TenantId>,
    filter: Filter,
    cursor: Option<TailCursor>,
) {
    let scoped = state.gate().scoped(&principal);
    let client_id = uuid::Uuid::now_v7();
    let (queue_tx, mut queue) = mpsc::channel(state.config().logs.tail_queue);
    let dropped = Arc::new(AtomicU64::new(0));
    // Subscribe first, then read the store: nothing falls between the two.
    let _subscription = state
        .tail()
        .subscribe(tenant, filter.clone(), queue_tx, dropped.clone());
    let mut last = match (tenant, cursor) {
        (Some(_), None) => match scoped.last_log_seq().await {
            Ok(seq) => Some(TailCursor { seq, pos: u32::MAX }),
            Err(e) => {
                let reason = format!("{}: {}", e.code().as_str(), e.message());
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1011,
                        reason: reason.into(),
                    })))
                    .await;
                return;
            }
        },
        (_, c) => c,
    };
    let connected = serde_json::json!({
        "type": "connected",
        "client_id": client_id,
        "tenant_id": tenant,
        "workspace_id": filter.workspace,
        "cursor": last.map(|c| c.encode()),
    });
    if !send(&mut socket, connected.to_string()).await {
        return;
    }
    if let (Some(_), Some(mut from)) = (tenant, cursor) {
        // Live entries queue meanwhile; any dropped for a full queue are stored, so another
        // pass from where the last one stopped sends them (a few passes at most).
        for _ in 0..8 {
            match backlog(&mut socket, &scoped, &filter, from).await {
                Some(reached) => from = reached,
                None => return,
            }
            if dropped.load(Ordering::Relaxed) == 0 {
                break;
            }
            dropped.store(0, Ordering::Relaxed);
        }
        last = Some(from);
    }
    if let (Some(t), Some(at)) = (tenant, last) {
        state.tail().seen_up_to(t, at.seq);
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut heard = Instant::now();
    let mut stopping = state.stopping();
    loop {
        tokio::select! {
            entry = queue.recv() => {
                let Some(entry) = entry else { break };
                let at = TailCursor { seq: entry.seq, pos: entry.pos };
                if tenant.is_some() && last.is_some_and(|l| at <= l) {
                    continue; // already sent from the backlog
                }
                if !report_dropped(&mut socket, &dropped).await
                    || !send(&mut socket, &*entry.frame).await
                {
                    break;
                }
                metrics::histogram!("log_tail_delivery_seconds").record(entry.heard_at.elapsed().as_secs_f64());
                last = Some(at);
                // Caught up: entries dropped since (possibly the newest ones) are reported
                // now, not only when another entry comes.
                if queue.is_empty() && !report_dropped(&mut socket, &dropped).await {
                    break;
                }
            }
            message = socket.recv() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > DEAD_AFTER {
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "no pong".into() }))).await;
                    break;
                }
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                break;
            }
        }
    }
}

/// Sends the stored entries after `from`; returns where it stopped, `None` if the socket
/// went away or the store failed (the client reconnects with its cursor).
async fn backlog(
    socket: &mut WebSocket,
    scoped: &Scoped<'_>,
    filter: &Filter,
    from: TailCursor,
) -> Option<TailCursor> {
    let mut last = from;
    let mut after = from.seq - 1;
    loop {
        let (chunks, reached) = scoped.log_chunks_after(after, 16).await.ok()?;
        let Some(reached) = reached else {
            return Some(last);
        };
        for (chunk, data) in chunks {
            let records = match decode(&data) {
                Ok(r) => r,
                Err(e) => {
                    metrics::counter!("log_tail_skipped_total", "reason" => "undecodable")
                        .increment(1);
                    tracing::error!(seq = chunk.seq, error = %e, "undecodable chunk skipped by the tail");
                    continue;
                }
            };
            for entry in hub::tail_entries(&chunk, records, Instant::now()) {
                let at = TailCursor {
                    seq: entry.seq,
                    pos: entry.pos,
                };
                if at <= last || !filter.matches(entry.workspace_id, &entry.record) {
                    continue;
                }
                if !send(socket, &*entry.frame).await {
                    return None;
                }
                last = at;
            }
        }
        // Past these chunks even where the filter sent nothing.
        after = reached;
        last = last.max(TailCursor {
            seq: reached,
            pos: u32::MAX,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = TailCursor { seq: 42, pos: 7 };
        assert_eq!(TailCursor::decode(&c.encode()), Some(c));
        assert_eq!(TailCursor::decode("x"), None);
    }

    #[test]
    fn the_bearer_subprotocol_is_found() {
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("coditect.v1, bearer.abc.def"),
        );
        assert_eq!(subprotocol_token(&h).as_deref(), Some("abc.def"));
    }
}
