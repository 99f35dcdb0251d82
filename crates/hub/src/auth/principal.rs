//! Authenticating a request: `Authorization: Bearer <access token | API key>`,
//! `X-API-Key: <API key>` or `Authorization: Basic` with the token as password (for log
//! shippers that only speak Basic) → a [`Principal`], or 401 `AUTH_REQUIRED`.
//!
//! An access token must verify (see [`super::tokens`]) and its session must still be live:
//! active, within its lifetime, used within the idle timeout, its user enabled. An API key
//! must match its stored hash, be neither revoked nor expired, and belong to an enabled
//! user. The principal's role is the user's current role from the store (cached for
//! `auth_session_cache_ttl`), not the one the token was issued with.

use super::{secrets, tokens};
use crate::authz::{Principal, RequestMeta, Via};
use crate::http::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine;
use coditect_proto::{ApiKeyId, ErrorCode};
use std::borrow::Cow;

fn refused(message: &'static str) -> ApiError {
    ApiError::new(ErrorCode::AuthRequired, message)
}

fn count(result: &'static str) {
    metrics::counter!("auth_token_validations_total", "result" => result).increment(1);
}

/// The credential a request carries, if any.
fn credential(headers: &HeaderMap) -> Result<Option<Cow<'_, str>>, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| refused("malformed Authorization header"))?;
        if let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            return Ok(Some(Cow::Borrowed(token.trim())));
        }
        // Basic with the token as password: what log shippers that only know Basic send.
        if let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok())
                .ok_or_else(|| refused("malformed Basic credentials"))?;
            let (_, password) = decoded
                .split_once(':')
                .ok_or_else(|| refused("malformed Basic credentials"))?;
            return Ok(Some(Cow::Owned(password.trim().to_string())));
        }
        return Err(refused("Authorization must be `Bearer <token>`"));
    }
    match headers.get("x-api-key") {
        Some(value) => value
            .to_str()
            .map(|v| Some(Cow::Borrowed(v.trim())))
            .map_err(|_| refused("malformed X-API-Key header")),
        None => Ok(None),
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Ok(meta) = RequestMeta::from_request_parts(parts, state).await;
        authenticate(state, &parts.headers, meta).await
    }
}

/// The whole check a request's credential goes through (also used by the benchmarks).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    meta: RequestMeta,
) -> Result<Principal, ApiError> {
    let Some(token) = credential(headers)? else {
        count("missing");
        return Err(refused("authentication required"));
    };
    if secrets::is_api_key(&token) {
        api_key_principal(state, &token, meta).await
    } else {
        token_principal(state, &state.auth().tokens, &token, meta).await
    }
}

/// A WebSocket ticket (see `POST /api/v1/ws-tickets`): a short-lived token with its own
/// audience, so it is accepted nowhere else; its session must still be live; and it is
/// single-use: the first upgrade that presents it spends it in the store (atomically,
/// whichever replica it reaches), every later one is refused.
pub async fn authenticate_ticket(
    state: &AppState,
    ticket: &str,
    meta: RequestMeta,
) -> Result<Principal, ApiError> {
    let (principal, claims) = token_claims(state, &state.auth().tickets, ticket, meta).await?;
    let Some(jti) = claims.jti else {
        count("ticket_without_id");
        return Err(refused("invalid or expired access token"));
    };
    let expires = chrono::DateTime::from_timestamp(claims.exp, 0).unwrap_or_default();
    if !state
        .gate()
        .credentials()
        .spend_ticket(claims.tid, jti, expires)
        .await?
    {
        count("ticket_reused");
        return Err(refused("this ticket was used already; fetch a new one"));
    }
    Ok(principal)
}

async fn token_principal(
    state: &AppState,
    settings: &tokens::TokenSettings,
    token: &str,
    meta: RequestMeta,
) -> Result<Principal, ApiError> {
    Ok(token_claims(state, settings, token, meta).await?.0)
}

async fn token_claims(
    state: &AppState,
    settings: &tokens::TokenSettings,
    token: &str,
    meta: RequestMeta,
) -> Result<(Principal, tokens::Claims), ApiError> {
    let auth = state.auth();
    let gate = state.gate();
    let now = gate.clock().now();
    let claims = tokens::verify(
        &auth.keys,
        gate.credentials().signing_keys(),
        settings,
        token,
        now,
    )
    .await
    .map_err(|why| {
        count(why.as_str());
        refused("invalid or expired access token")
    })?;
    let resolved = gate
        .credentials()
        .resolve_session(claims.tid, claims.sid)
        .await?
        .filter(|r| r.credential.user_id == claims.sub);
    let Some(resolved) = resolved else {
        count("unknown_session");
        return Err(refused("invalid or expired access token"));
    };
    if !resolved.credential.is_live(now, auth.idle_cutoff(now)) {
        count("session_ended");
        return Err(refused("the session has ended; log in again"));
    }
    if resolved.user.disabled {
        count("user_disabled");
        return Err(refused("the account is disabled"));
    }
    count("valid");
    gate.credentials().session_used(&resolved.credential, now);
    let principal = Principal {
        tenant_id: claims.tid,
        user_id: claims.sub,
        role: resolved.user.role,
        key_role: None,
        platform_admin: resolved.user.platform_admin,
        via: Via::Session(claims.sid),
        workspace: None,
        meta,
    };
    Ok((principal, claims))
}

async fn api_key_principal(
    state: &AppState,
    token: &str,
    meta: RequestMeta,
) -> Result<Principal, ApiError> {
    let invalid = || {
        count("invalid_api_key");
        refused("invalid, revoked or expired API key")
    };
    let presented = secrets::parse(secrets::Kind::ApiKey, token).ok_or_else(invalid)?;
    let gate = state.gate();
    let now = gate.clock().now();
    let id = ApiKeyId::from_uuid(presented.id);
    let resolved = gate
        .credentials()
        .resolve_api_key(presented.tenant, id)
        .await?
        .ok_or_else(invalid)?;
    let key = &resolved.credential;
    if !secrets::same_hash(&presented.hash, &key.secret_hash)
        || !key.is_usable(now)
        || resolved.user.disabled
    {
        return Err(invalid());
    }
    count("valid_api_key");
    gate.credentials().api_key_used(key, now);
    Ok(Principal {
        tenant_id: key.tenant_id,
        user_id: key.owner_id,
        role: resolved.user.role,
        key_role: Some(key.role),
        platform_admin: resolved.user.platform_admin && key.role == coditect_proto::Role::Admin,
        via: Via::ApiKey(id),
        workspace: key.workspace_id,
        meta,
    })
}
