//! Authentication: login, token refresh, logout, the JWKS, and turning a request's
//! credential into a [`Principal`](crate::authz::Principal).
//!
//! - `POST /api/v1/auth/login` `{email, password}` → access + refresh token and a session
//! - `POST /api/v1/auth/refresh` `{refresh_token}` → a new pair (the old refresh token is
//!   spent; presenting it again terminates the session)
//! - `POST /api/v1/auth/logout` → ends the caller's session
//! - `GET /.well-known/jwks.json` → the public keys that verify access tokens

pub mod bootstrap;
pub mod keys;
pub mod password;
pub mod principal;
pub mod secrets;
pub mod sso;
pub mod throttle;
pub mod tokens;

use crate::authz::{AuditEvent, Principal, RequestMeta, Via};
use crate::config::AuthConfig;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use coditect_proto::{
    Email, ErrorCode, Role, SessionId, SessionStatus, TenantId, UserId, WorkspaceId,
};
use coditect_store::{RefreshOutcome, Session, User};
use keys::KeyRing;
use password::Passwords;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use throttle::{Subject, Throttle, Verdict};
use tokens::TokenSettings;
use utoipa_axum::routes;

/// Everything authentication needs besides the store.
pub struct Auth {
    pub keys: KeyRing,
    pub tokens: TokenSettings,
    /// WebSocket tickets: 30 seconds, audience `<audience>:ws`.
    pub tickets: TokenSettings,
    pub passwords: Passwords,
    pub throttle: Throttle,
    pub idle_timeout: Duration,
    pub session_lifetime: Duration,
    pub max_failures: u32,
    /// External login, when configured.
    pub sso: Option<sso::Sso>,
}

impl Auth {
    pub fn new(config: &AuthConfig, keys: KeyRing) -> Auth {
        Auth {
            keys,
            tokens: TokenSettings::new(
                config.issuer.clone(),
                config.audience.clone(),
                config.access_ttl,
            ),
            tickets: TokenSettings::new(
                config.issuer.clone(),
                format!("{}:ws", config.audience),
                Duration::from_secs(30),
            ),
            passwords: Passwords::new(config.argon2_memory_kib, config.argon2_iterations),
            throttle: Throttle::new(config.login_window),
            idle_timeout: config.session_idle_timeout,
            session_lifetime: config.session_lifetime,
            max_failures: config.login_max_failures,
            sso: None,
        }
    }

    /// Sessions last used before this instant are idle-expired.
    pub fn idle_cutoff(&self, now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
        now - chrono::Duration::from_std(self.idle_timeout).unwrap_or(chrono::Duration::MAX)
    }
}

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(login))
        .route(routes!(refresh))
        .route(routes!(logout))
        .route(routes!(jwks))
        .merge(sso::routes())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "dev@example.com", "password": "correct horse battery staple"}))]
struct LoginRequest {
    email: Email,
    password: String,
    /// The workspace this session is for (one of the user's tenant).
    workspace_id: Option<WorkspaceId>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"refresh_token": "cdr_…"}))]
struct RefreshRequest {
    refresh_token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserSummary {
    pub id: UserId,
    pub email: Email,
    pub tenant_id: TenantId,
    pub role: Role,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TokenResponse {
    /// A JWT (RS256) to send as `Authorization: Bearer …`.
    access_token: String,
    /// Spent by `POST /api/v1/auth/refresh`; presenting it twice ends the session.
    refresh_token: String,
    #[schema(example = "Bearer")]
    token_type: &'static str,
    /// Seconds the access token is valid for.
    expires_in: u64,
    session_id: SessionId,
    user: UserSummary,
    /// The workspace this session is for: the one the login named, or the user's
    /// workspace of a template that starts on login (claimed or started now).
    workspace_id: Option<WorkspaceId>,
    /// Where the browser reaches it (`{public_url}/w/{workspace_id}/`); the same across
    /// relaunches after a crash.
    workspace_url: Option<String>,
}

const BAD_LOGIN: &str = "invalid email or password";

/// Logs in with an e-mail address and password: a new session, an access token and a
/// refresh token. Failures are throttled per account and address.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "auth",
    security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = TokenResponse),
        (status = 401, description = "Invalid e-mail address or password (the same answer for both)"),
        (status = 429, description = "Too many failed attempts; see Retry-After"),
    )
)]
async fn login(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    let auth = state.auth();
    let gate = state.gate();
    let subject = Subject::new(req.email.as_str(), meta.ip.as_deref(), auth.max_failures);
    let attempt = AuditEvent::anonymous(
        TenantId::NONE,
        Some(req.email.to_string()),
        "auth.login",
        "session",
        None,
    );
    let user = gate.credentials().find_user(&req.email).await?;
    let now = gate.clock().now();
    let mut verdict = auth.throttle.attempt(&subject, now);
    if verdict != Verdict::Go
        && let Some(u) = &user
        && let Some(since) = auth.throttle.counting_since(&subject)
        && let Some(reset) = gate.credentials().login_reset_at(u.tenant_id, u.id).await?
        && reset >= since
    {
        // An administrator cleared this account (perhaps on another replica) after these
        // failures were counted.
        auth.throttle.clear(req.email.as_str());
        verdict = auth.throttle.attempt(&subject, now);
    }
    match verdict {
        Verdict::Go => {}
        Verdict::Slow(pause) => {
            metrics::counter!("auth_logins_total", "result" => "slowed").increment(1);
            tokio::time::sleep(pause).await;
        }
        Verdict::Refuse(wait) => {
            metrics::counter!("auth_logins_total", "result" => "throttled").increment(1);
            gate.auditor()
                .record(attempt.failed("throttled"), &meta)
                .await;
            return Err(ApiError::new(
                ErrorCode::RateLimited,
                "too many failed logins from this address; retry later",
            )
            .retry_after(wait.as_secs().max(1)));
        }
    }

    // Always verify (against a decoy when there is no usable hash): the same time and the
    // same answer whether or not the account exists.
    let hash = user.as_ref().and_then(|u| u.password_hash.clone());
    let password_ok = auth
        .passwords
        .verify(req.password.clone(), hash)
        .await
        .map_err(|_| busy())?;
    let user = match user {
        Some(u) if password_ok && !u.disabled => u,
        other => {
            metrics::counter!("auth_logins_total", "result" => "failure").increment(1);
            let event = match &other {
                Some(u) => attempt
                    .as_user(u.tenant_id, u.id.to_string())
                    .failed(if u.disabled {
                        "account disabled"
                    } else {
                        "wrong password"
                    }),
                None => attempt.failed("unknown account"),
            };
            gate.auditor().record(event, &meta).await;
            return Err(ApiError::new(ErrorCode::AuthRequired, BAD_LOGIN));
        }
    };
    auth.throttle.succeeded(&subject);
    if let Some(ws) = req.workspace_id {
        let known = gate
            .credentials()
            .workspace_exists(user.tenant_id, ws)
            .await?;
        if !known {
            return Err(ApiError::bad_request(
                "workspace_id names no workspace of your tenant",
            ));
        }
    }
    if user
        .password_hash
        .as_deref()
        .is_some_and(|h| auth.passwords.is_outdated(h))
    {
        upgrade_hash(&state, &user, req.password);
    }

    open_session(
        &state,
        &user,
        &meta,
        req.workspace_id,
        "password",
        "auth.login",
    )
    .await
}

/// Opens a session for `user` (who has just proved who they are by `method`), audits it
/// as `action`, and answers with its tokens: the end of every way of logging in.
pub async fn open_session(
    state: &AppState,
    user: &User,
    meta: &RequestMeta,
    workspace_id: Option<WorkspaceId>,
    method: &str,
    action: &'static str,
) -> Result<Response, ApiError> {
    let auth = state.auth();
    let gate = state.gate();
    let workspace_id = match workspace_id {
        Some(w) => Some(w),
        None => crate::workspaces::sessions::on_login(state, user).await,
    };
    let now = gate.clock().now();
    let session = Session {
        tenant_id: user.tenant_id,
        id: SessionId::new(),
        user_id: user.id,
        status: SessionStatus::Active,
        created_at: now,
        last_access_at: now,
        expires_at: now
            + chrono::Duration::from_std(auth.session_lifetime).unwrap_or(chrono::Duration::MAX),
        ended_at: None,
        end_reason: None,
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
        workspace_id,
        login_method: method.to_string(),
    };
    let refresh = secrets::mint(
        secrets::Kind::RefreshToken,
        user.tenant_id,
        session.id.as_uuid(),
    );
    gate.credentials()
        .start_session(&session, &refresh.hash)
        .await?;
    let response = token_response(state, user, session.id, refresh.token, session.workspace_id)?;
    metrics::counter!("auth_logins_total", "result" => "success").increment(1);
    gate.auditor()
        .record(
            AuditEvent::anonymous(
                user.tenant_id,
                Some(user.id.to_string()),
                action,
                "session",
                Some(session.id.to_string()),
            )
            .as_user(user.tenant_id, user.id.to_string()),
            meta,
        )
        .await;
    Ok(response)
}

/// Answer when every hashing slot stays busy: retryable, not the client's fault.
pub fn busy() -> ApiError {
    ApiError::unavailable("too many password checks at once; retry shortly", 1)
}

/// Re-hashes a password stored with older (cheaper) parameters, in the background.
fn upgrade_hash(state: &AppState, user: &User, password: String) {
    let state = state.clone();
    let (tenant, id) = (user.tenant_id, user.id);
    tokio::spawn(async move {
        let result = match state.auth().passwords.hash(password).await {
            Ok(hash) => state
                .gate()
                .credentials()
                .set_password_hash(tenant, id, hash)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::info!(user = %id, "password re-hashed with the current parameters"),
            Err(e) => tracing::warn!(user = %id, error = %e, "cannot re-hash a password"),
        }
    });
}

fn token_response(
    state: &AppState,
    user: &User,
    session: SessionId,
    refresh_token: String,
    workspace_id: Option<WorkspaceId>,
) -> Result<Response, ApiError> {
    let auth = state.auth();
    let now = state.gate().clock().now();
    let (access_token, _) = tokens::issue(
        &auth.keys,
        &auth.tokens,
        user.id,
        user.tenant_id,
        user.role,
        session,
        now,
    )
    .map_err(ApiError::internal)?;
    let body = TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: auth.tokens.ttl.as_secs(),
        session_id: session,
        user: UserSummary {
            id: user.id,
            email: user.email.clone(),
            tenant_id: user.tenant_id,
            role: user.role,
        },
        workspace_id,
        workspace_url: workspace_id.map(|w| crate::workspaces::sessions::workspace_url(state, w)),
    };
    // Tokens must never sit in a shared cache.
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response())
}

/// Trades a refresh token for a new pair; the old one is spent.
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "auth",
    security(()),
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new token pair", body = TokenResponse),
        (status = 401, description = "Invalid, expired or already spent refresh token"),
    )
)]
async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(req): Json<RefreshRequest>,
) -> Result<Response, ApiError> {
    let refused = || ApiError::new(ErrorCode::AuthRequired, "invalid or expired refresh token");
    let Some(presented) = secrets::parse(secrets::Kind::RefreshToken, &req.refresh_token) else {
        metrics::counter!("auth_refreshes_total", "result" => "invalid").increment(1);
        return Err(refused());
    };
    let gate = state.gate();
    let auth = state.auth();
    let now = gate.clock().now();
    let session_id = SessionId::from_uuid(presented.id);
    let next = secrets::mint(secrets::Kind::RefreshToken, presented.tenant, presented.id);
    let outcome = gate
        .credentials()
        .rotate_refresh(
            presented.tenant,
            session_id,
            &presented.hash,
            &next.hash,
            now,
            auth.idle_cutoff(now),
        )
        .await?;
    match outcome {
        RefreshOutcome::Rotated(session) => {
            let user = gate
                .credentials()
                .get_user(session.tenant_id, session.user_id)
                .await?
                .filter(|u| !u.disabled)
                .ok_or_else(refused)?;
            metrics::counter!("auth_refreshes_total", "result" => "success").increment(1);
            gate.auditor()
                .record(
                    AuditEvent::anonymous(
                        session.tenant_id,
                        None,
                        "auth.refresh",
                        "session",
                        Some(session.id.to_string()),
                    )
                    .as_user(user.tenant_id, user.id.to_string()),
                    &meta,
                )
                .await;
            token_response(&state, &user, session.id, next.token, session.workspace_id)
        }
        RefreshOutcome::Reused(session) => {
            metrics::counter!("auth_refreshes_total", "result" => "reused").increment(1);
            tracing::warn!(session_id = %session.id, "refresh token reused, session terminated");
            gate.auditor()
                .record(
                    AuditEvent::anonymous(
                        session.tenant_id,
                        None,
                        "auth.refresh_reuse",
                        "session",
                        Some(session.id.to_string()),
                    )
                    .as_user(session.tenant_id, session.user_id.to_string())
                    .failed("refresh token presented twice: session terminated"),
                    &meta,
                )
                .await;
            Err(refused())
        }
        RefreshOutcome::Rejected => {
            metrics::counter!("auth_refreshes_total", "result" => "rejected").increment(1);
            Err(refused())
        }
    }
}

/// Ends the caller's session (its tokens stop working at once).
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "auth",
    responses(
        (status = 204, description = "Logged out"),
        (status = 400, description = "An API key has no session to log out of"),
    )
)]
async fn logout(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<StatusCode, ApiError> {
    let Via::Session(session) = principal.via else {
        return Err(ApiError::bad_request(
            "API keys have no session to log out of",
        ));
    };
    state
        .gate()
        .scoped(&principal)
        .end_session(session, "logout")
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The public keys that verify access tokens.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "auth",
    security(()),
    responses((status = 200, description = "The JWK Set", body = keys::Jwks))
)]
async fn jwks(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(state.auth().keys.jwks()),
    )
        .into_response()
}
