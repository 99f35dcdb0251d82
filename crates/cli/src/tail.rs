//! `codi2 tail`: the hub's live tail (`GET /ws/logs`), printed as entries come.
//!
//! The hub gives every entry a cursor (its chunk's per-tenant seq and its position) and
//! resumes a tail "just after" a cursor from its store, then live, deduplicated by cursor.
//! So after a dropped connection `codi2` reconnects (with backoff) from the last cursor it
//! printed, or from the position the hub reported on connecting when nothing came yet:
//! no entry twice, none missed. The same when the hub says it dropped entries for this
//! client (its queue overflowed): reconnecting from the last printed cursor fetches them
//! from the store.
//!
//! Authentication is `Authorization: Bearer` with the API key or access token (the
//! hub's tickets and bearer subprotocol exist for browsers, which cannot set headers); a
//! refused access token is refreshed with the refresh token and the tail goes on.

use crate::args::TailArgs;
use crate::exit::{CliError, Exit, Result};
use crate::hub::{self, Hub};
use crate::output::Out;
use coditect_monitor::config::Config;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The hub pings every 20 s: this long without a frame means the connection is dead.
const SILENCE: Duration = Duration::from_secs(65);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const SUBPROTOCOL: &str = "coditect.v1";

/// Why a connection attempt failed.
enum ConnectError {
    /// The hub is not reachable (or the connection broke during the handshake).
    Unreachable(String),
    /// The hub answered the upgrade with an error status.
    Refused(StatusCode, String),
}

/// How a connection ended.
enum Ended {
    /// Lost: reconnect after a pause.
    Lost(String),
    /// The hub dropped entries for this client: reconnect at once to fetch them.
    Dropped(u64),
}

pub async fn tail(args: TailArgs, config: &Config, out: Out) -> Result<()> {
    let mut hub = Hub::resolve(args.hub.hub.as_deref(), config, out)?;
    let params = hub::filter_params(
        args.workspace.as_deref(),
        &args.filters,
        args.query.as_deref(),
    );
    let mut resume: Option<String> = None;
    let mut backoff = BACKOFF_FIRST;
    let mut connected_once = false;
    let mut refreshed = false;
    let mut outage: Option<String> = None;
    loop {
        let mut query = params.clone();
        if let Some(c) = &resume {
            query.push(("cursor", c.clone()));
        }
        match connect(&hub, &query).await {
            Ok(ws) => {
                refreshed = false;
                backoff = BACKOFF_FIRST;
                if connected_once {
                    out.warn("reconnected; resuming after the last entry seen");
                } else {
                    out.note(&format!("tailing {} (ctrl-c to stop)", hub.base));
                }
                connected_once = true;
                outage = None;
                match follow(ws, &mut resume, out).await? {
                    Ended::Dropped(n) => {
                        // Back after a short pause (the backlog comes from the hub's
                        // store): a reader slower than the stream must not make a storm of
                        // reconnects.
                        out.warn(&format!(
                            "the hub skipped {n} entries for this client (it fell behind); fetching them again"
                        ));
                    }
                    Ended::Lost(why) => {
                        out.warn(&format!(
                            "lost the connection to the hub ({why}); reconnecting"
                        ));
                        outage = Some(why);
                    }
                }
            }
            Err(ConnectError::Refused(StatusCode::UNAUTHORIZED, message)) => {
                if hub.can_refresh() && !refreshed {
                    match hub.refresh().await {
                        Ok(()) => {
                            refreshed = true;
                            continue;
                        }
                        // The hub went away between the refusal and the refresh: an
                        // outage like any other once the tail has run.
                        Err(e) if e.exit == Exit::HubUnreachable && connected_once => {
                            if outage.as_deref() != Some(e.message.as_str()) {
                                out.warn(&format!("{}; retrying", e.message));
                                outage = Some(e.message);
                            }
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(BACKOFF_MAX);
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                return Err(CliError::credentials(format!(
                    "the hub at {} refused the credential ({message}); log in again with `codi2 login --hub {}`",
                    hub.base, hub.base
                )));
            }
            Err(ConnectError::Refused(status, message))
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() =>
            {
                if !connected_once {
                    return Err(CliError::failure(format!(
                        "the hub at {} cannot take a tail now: {message}",
                        hub.base
                    )));
                }
                if outage.as_deref() != Some(message.as_str()) {
                    out.warn(&format!("the hub is busy ({message}); retrying"));
                    outage = Some(message);
                }
            }
            Err(ConnectError::Refused(status, message)) => {
                return Err(CliError::new(
                    hub::exit_for(status),
                    format!("the hub at {} refused the tail: {message}", hub.base),
                ));
            }
            Err(ConnectError::Unreachable(why)) => {
                if !connected_once {
                    return Err(CliError::new(
                        Exit::HubUnreachable,
                        format!("cannot reach the hub at {}: {why}", hub.base),
                    ));
                }
                if outage.as_deref() != Some(why.as_str()) {
                    out.warn(&format!("cannot reach the hub ({why}); retrying"));
                    outage = Some(why);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Frames and messages from the hub are bounded (one entry is at most ~80 KiB; a batch of
/// them far less than this): a peer cannot make the client buffer without end.
fn ws_limits() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(hub: &Hub, query: &[(&str, String)]) -> std::result::Result<Socket, ConnectError> {
    let mut url = hub
        .url("/ws/logs", query)
        .map_err(|e| ConnectError::Unreachable(e.message))?;
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme)
        .map_err(|()| ConnectError::Unreachable("cannot make a WebSocket URL".into()))?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    let bearer =
        HeaderValue::from_str(&format!("Bearer {}", hub.credential.bearer())).map_err(|_| {
            ConnectError::Refused(StatusCode::UNAUTHORIZED, "malformed credential".into())
        })?;
    request.headers_mut().insert(header::AUTHORIZATION, bearer);
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    let attempt = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::connect_async_with_config(request, Some(ws_limits()), false),
    )
    .await
    .map_err(|_| ConnectError::Unreachable("timed out".into()))?;
    match attempt {
        Ok((ws, _)) => Ok(ws),
        Err(WsError::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("HTTP {}", status.as_u16()));
            Err(ConnectError::Refused(status, message))
        }
        Err(WsError::Io(e)) => Err(ConnectError::Unreachable(e.to_string())),
        Err(e) => Err(ConnectError::Unreachable(e.to_string())),
    }
}

/// Prints entries until the connection ends; `resume` follows what was printed.
async fn follow(mut ws: Socket, resume: &mut Option<String>, out: Out) -> Result<Ended> {
    loop {
        let frame = match tokio::time::timeout(SILENCE, ws.next()).await {
            Err(_) => return Ok(Ended::Lost("no word from the hub for a minute".into())),
            Ok(None) => return Ok(Ended::Lost("closed".into())),
            Ok(Some(Err(e))) => return Ok(Ended::Lost(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(reason) => {
                let why = reason
                    .map(|r| r.reason.to_string())
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "closed by the hub".into());
                return Ok(Ended::Lost(why));
            }
            // Pings are answered by the library on the next read.
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            // Where the hub stands on connecting: the resume point until an entry comes.
            Some("connected") if resume.is_none() => {
                *resume = v["cursor"].as_str().map(str::to_string);
            }
            Some("log") => {
                if out.json {
                    out.json_line(&v["data"])?;
                } else {
                    out.line(&hub::entry_line(&v["data"]))?;
                }
                if let Some(c) = v["cursor"].as_str() {
                    *resume = Some(c.to_string());
                }
            }
            Some("dropped") => {
                let n = v["count"].as_u64().unwrap_or(0);
                let _ = ws.close(None).await;
                return Ok(Ended::Dropped(n));
            }
            _ => {}
        }
    }
}
