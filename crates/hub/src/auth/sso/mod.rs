//! Single sign-on: OpenID Connect (any provider: authorization code + PKCE, discovery, the
//! ID token verified against the provider's keys, `state` and `nonce` checked) and GitHub
//! (OAuth, then its user and e-mail APIs). After the provider's callback the hub opens its
//! own session, so everything downstream is the same as after a password login.
//!
//! - `GET /api/v1/auth/sso`: the providers this hub offers
//! - `GET /api/v1/auth/sso/{provider}/start[?return_to=&state=&code_challenge=]` → 303 to
//!   the provider. `return_to` (a loopback URL, for command-line clients) makes the
//!   callback hand a one-time code to it instead of answering with tokens.
//! - `GET /api/v1/auth/sso/{provider}/callback?code&state` → tokens (JSON), or 303 to
//!   `return_to?code=…&state=…`
//! - `POST /api/v1/auth/sso/exchange {code, code_verifier}` → tokens, for that code
//!
//! Flow steps live in the store (`login_flows`, keyed by a hash of their one-time secret,
//! taken once): any replica can take the next step, and none can be replayed. Accounts
//! are matched by verified e-mail address only; a new address is given an account by the
//! configured rule (allowed domain, tenant, role) or refused.

mod github;
mod oidc;

use crate::authz::{AuditEvent, RequestMeta};
use crate::config::SsoConfig;
use crate::http::openapi::Routes;
use crate::http::{ApiError, Json, Path, Query};
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Duration;
use coditect_proto::{Email, ErrorCode, TenantId, UserId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use utoipa_axum::routes;

/// How long a login may take at the provider, and a client to redeem its code.
const AUTHORIZE_TTL: Duration = Duration::minutes(10);
const HANDOFF_TTL: Duration = Duration::minutes(2);

pub fn routes() -> Routes {
    Routes::new()
        .route(routes!(providers))
        .route(routes!(start))
        .route(routes!(callback))
        .route(routes!(exchange))
}

/// The external login of this hub: its providers and its rules.
pub struct Sso {
    config: SsoConfig,
    http: reqwest::Client,
    oidc: Option<oidc::Oidc>,
    github: Option<github::Github>,
}

impl Sso {
    pub fn new(config: SsoConfig) -> Result<Sso, String> {
        // Never follow a redirect from a provider's API (a token endpoint that redirects
        // is misconfigured or hostile), and never wait long on one.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("coditect-hub/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the SSO HTTP client: {e}"))?;
        let oidc = config.oidc.clone().map(oidc::Oidc::new);
        let github = config.github.clone().map(github::Github::new);
        Ok(Sso {
            config,
            http,
            oidc,
            github,
        })
    }

    fn redirect_uri(&self, provider: Provider) -> String {
        format!(
            "{}/api/v1/auth/sso/{provider}/callback",
            self.config.public_url
        )
    }
}

/// A way to log in other than a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// OpenID Connect.
    Oidc,
    Github,
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provider::Oidc => "oidc",
            Provider::Github => "github",
        })
    }
}

/// Who the provider says logged in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub email: String,
    pub email_verified: bool,
}

/// Why a login through a provider failed: each is a clear answer, and audited.
#[derive(Debug)]
pub enum Failure {
    /// The provider cannot be reached or answered garbage: 503.
    ProviderDown(String),
    /// The provider refused the code (expired, used, or not ours): 400.
    CodeRefused(String),
    /// The provider's ID token does not hold (signature, issuer, audience, expiry,
    /// nonce): 401.
    BadToken(String),
    /// The user declined, or the provider refused them: 403.
    Denied(String),
}

impl Failure {
    fn into_api(self) -> (ApiError, String) {
        match self {
            Failure::ProviderDown(why) => (
                ApiError::unavailable("the identity provider is unavailable; retry later", 5),
                why,
            ),
            Failure::CodeRefused(why) => (
                ApiError::bad_request(format!(
                    "the identity provider refused the login code ({why}); it may have \
                     expired or been used: start again"
                )),
                why,
            ),
            Failure::BadToken(why) => (
                ApiError::new(
                    ErrorCode::AuthRequired,
                    format!("the identity provider's ID token is not valid: {why}"),
                ),
                why,
            ),
            Failure::Denied(why) => (
                ApiError::new(
                    ErrorCode::AccessDenied,
                    format!("the identity provider did not log you in: {why}"),
                ),
                why,
            ),
        }
    }
}

/// The first step, kept until the callback.
#[derive(Serialize, Deserialize)]
struct Authorizing {
    provider: Provider,
    nonce: String,
    pkce_verifier: String,
    #[serde(default)]
    handoff: Option<Handoff>,
}

/// Where a command-line client waits, and how it proves it is the one that started.
#[derive(Serialize, Deserialize)]
struct Handoff {
    return_to: String,
    client_state: Option<String>,
    code_challenge: String,
}

/// The code handed to a command-line client, kept until it redeems it.
#[derive(Serialize, Deserialize)]
struct Redeemable {
    tenant_id: TenantId,
    user_id: UserId,
    provider: Provider,
    code_challenge: String,
}

fn flow_key(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A URL-safe random secret of 32 bytes.
fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// `BASE64URL(SHA-256(verifier))`, RFC 7636's S256.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// A loopback URL on this machine (RFC 8252 §7.3), the only place a code is handed to.
fn check_return_to(url: &str) -> Result<(), ApiError> {
    let refused = || {
        ApiError::bad_request(
            "return_to must be http://127.0.0.1:PORT/…, http://[::1]:PORT/… or http://localhost:PORT/…",
        )
    };
    let rest = url.strip_prefix("http://").ok_or_else(refused)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = authority.rsplit_once(':').ok_or_else(refused)?;
    let loopback = matches!(host, "127.0.0.1" | "[::1]" | "localhost");
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let clean = !url.contains(|c: char| c.is_whitespace() || c.is_control() || c == '#')
        && url.len() <= 512;
    if loopback && port_ok && clean {
        Ok(())
    } else {
        Err(refused())
    }
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn see_other(location: &str) -> Result<Response, ApiError> {
    let value = HeaderValue::from_str(location)
        .map_err(|_| ApiError::internal("a redirect location is not a header value"))?;
    let mut res = StatusCode::SEE_OTHER.into_response();
    res.headers_mut().insert(header::LOCATION, value);
    Ok(no_store(res))
}

fn sso(state: &AppState) -> Result<&Sso, ApiError> {
    state
        .auth()
        .sso
        .as_ref()
        .ok_or_else(|| ApiError::not_found("single sign-on is not configured on this hub"))
}

fn unknown(provider: Provider) -> ApiError {
    ApiError::not_found(format!("{provider} login is not configured on this hub"))
}

/// Records a failed external login and answers it.
async fn refuse(
    state: &AppState,
    meta: &RequestMeta,
    provider: Provider,
    who: Option<&str>,
    error: ApiError,
    why: &str,
) -> ApiError {
    let event = AuditEvent::anonymous(
        TenantId::NONE,
        who.map(str::to_string),
        "auth.sso_login",
        "session",
        None,
    )
    .failed(format!("{provider}: {why}"));
    state.gate().auditor().record(event, meta).await;
    metrics::counter!("auth_logins_total", "result" => "failure").increment(1);
    tracing::info!(%provider, reason = why, "external login refused");
    error
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProviderInfo {
    id: Provider,
    /// What to show on a button.
    name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct ProviderList {
    providers: Vec<ProviderInfo>,
}

/// The external logins this hub offers (none when single sign-on is not configured).
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso",
    tag = "auth",
    security(()),
    responses((status = 200, description = "The providers", body = ProviderList))
)]
async fn providers(State(state): State<AppState>) -> axum::Json<ProviderList> {
    let mut providers = Vec::new();
    if let Some(sso) = &state.auth().sso {
        if let Some(o) = &sso.oidc {
            providers.push(ProviderInfo {
                id: Provider::Oidc,
                name: o.display_name(),
            });
        }
        if sso.github.is_some() {
            providers.push(ProviderInfo {
                id: Provider::Github,
                name: "GitHub".into(),
            });
        }
    }
    axum::Json(ProviderList { providers })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct StartParams {
    /// A loopback URL (`http://127.0.0.1:PORT/…`) where a command-line client waits for a
    /// one-time code; absent: the callback answers with the tokens.
    #[param(max_length = 512)]
    return_to: Option<String>,
    /// The client's own state, handed back with the code.
    #[param(max_length = 512)]
    state: Option<crate::http::FilterText>,
    /// With `return_to`: BASE64URL(SHA-256(code_verifier)) of the client's PKCE verifier,
    /// which it must show to redeem the code.
    #[param(min_length = 43, max_length = 43, pattern = "^[A-Za-z0-9_-]{43}$")]
    code_challenge: Option<String>,
}

/// Starts a login at the provider: redirects the browser there.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/{provider}/start",
    tag = "auth",
    security(()),
    params(("provider" = Provider, Path, description = "Which provider"), StartParams),
    responses(
        (status = 303, description = "To the provider's login page"),
        (status = 404, description = "That provider is not configured"),
        (status = 503, description = "The provider cannot be reached"),
    )
)]
async fn start(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path(provider): Path<Provider>,
    Query(p): Query<StartParams>,
) -> Result<Response, ApiError> {
    let sso = sso(&state)?;
    let handoff = match (p.return_to, p.code_challenge) {
        (None, None) => None,
        (Some(return_to), Some(code_challenge)) => {
            check_return_to(&return_to)?;
            if code_challenge.len() != 43
                || !code_challenge
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ApiError::bad_request(
                    "code_challenge must be BASE64URL(SHA-256(code_verifier)): 43 characters",
                ));
            }
            let client_state = p.state.map(|s| s.into_inner());
            if client_state.as_ref().is_some_and(|s| s.len() > 512) {
                return Err(ApiError::bad_request("state is at most 512 bytes"));
            }
            Some(Handoff {
                return_to,
                client_state,
                code_challenge,
            })
        }
        _ => {
            return Err(ApiError::bad_request(
                "return_to and code_challenge go together",
            ));
        }
    };
    let secret = random_secret();
    let nonce = random_secret();
    let pkce_verifier = random_secret();
    let redirect_uri = sso.redirect_uri(provider);
    let location = match provider {
        Provider::Oidc => {
            let oidc = sso.oidc.as_ref().ok_or_else(|| unknown(provider))?;
            match oidc
                .authorize_url(&sso.http, &redirect_uri, &secret, &nonce, &pkce_verifier)
                .await
            {
                Ok(url) => url,
                Err(f) => {
                    let (error, why) = f.into_api();
                    return Err(refuse(&state, &meta, provider, None, error, &why).await);
                }
            }
        }
        Provider::Github => sso
            .github
            .as_ref()
            .ok_or_else(|| unknown(provider))?
            .authorize_url(&redirect_uri, &secret, &s256(&pkce_verifier)),
    };
    let step = Authorizing {
        provider,
        nonce,
        pkce_verifier,
        handoff,
    };
    let payload = serde_json::to_string(&step).map_err(ApiError::internal)?;
    let now = state.gate().clock().now();
    state
        .gate()
        .credentials()
        .put_login_flow(&flow_key(&secret), &payload, now + AUTHORIZE_TTL)
        .await?;
    // The login belongs to this browser: the callback must come back with this cookie
    // (RFC 6749 §10.12: no logging a victim in to an attacker's login, no one else
    // finishing a login this browser started).
    let mut res = see_other(&location)?;
    let secure = if sso.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{}=1; Path=/api/v1/auth/sso; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        browser_cookie(&secret),
        AUTHORIZE_TTL.num_seconds()
    );
    let cookie =
        HeaderValue::from_str(&cookie).map_err(|_| ApiError::internal("an unusable cookie"))?;
    res.headers_mut().append(header::SET_COOKIE, cookie);
    Ok(res)
}

/// The name of the cookie that binds a login to the browser that started it: derived from
/// the state, so one browser can have several logins under way.
fn browser_cookie(state: &str) -> String {
    let hash = Sha256::digest(format!("browser:{state}").as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("coditect_sso_{hex}")
}

fn has_cookie(headers: &axum::http::HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|c| c.trim().split_once('=').is_some_and(|(n, _)| n == name))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackParams {
    /// The provider's authorization code.
    #[param(max_length = 4096)]
    code: Option<String>,
    /// The state the hub sent.
    #[param(max_length = 512)]
    state: Option<String>,
    /// The provider's error, when it did not log the user in.
    #[param(max_length = 512)]
    error: Option<crate::http::FilterText>,
}

/// Where the provider sends the browser back: checks everything, then logs the user in.
#[utoipa::path(
    get,
    path = "/api/v1/auth/sso/{provider}/callback",
    tag = "auth",
    security(()),
    params(("provider" = Provider, Path, description = "Which provider"), CallbackParams),
    responses(
        (status = 200, description = "Logged in", body = super::TokenResponse),
        (status = 303, description = "To the command-line client's return_to, with a one-time code, or with `error` and `error_description` when the login failed"),
        (status = 400, description = "Unknown, used or expired state, a login started in another browser, or a code the provider refused"),
        (status = 401, description = "The provider's ID token is not valid for this hub"),
        (status = 403, description = "Refused: unverified e-mail address, domain not allowed, no account, account disabled, or the provider's own refusal"),
        (status = 404, description = "That provider is not configured"),
        (status = 503, description = "The provider cannot be reached"),
    )
)]
async fn callback(
    State(state): State<AppState>,
    meta: RequestMeta,
    headers: axum::http::HeaderMap,
    Path(provider): Path<Provider>,
    Query(p): Query<CallbackParams>,
) -> Result<Response, ApiError> {
    let sso = sso(&state)?;
    if provider == Provider::Oidc && sso.oidc.is_none()
        || provider == Provider::Github && sso.github.is_none()
    {
        return Err(unknown(provider));
    }
    let refused = |error: ApiError, why: String| {
        let state = state.clone();
        let meta = meta.clone();
        async move { refuse(&state, &meta, provider, None, error, &why).await }
    };
    let Some(secret) = p.state.filter(|s| !s.is_empty()) else {
        return Err(refused(ApiError::bad_request("state is missing"), "no state".into()).await);
    };
    if !has_cookie(&headers, &browser_cookie(&secret)) {
        // Checked before the state is taken: a stranger's request cannot spend it.
        return Err(refused(
            ApiError::bad_request(
                "this login was not started in this browser (or its cookie expired): start again",
            ),
            "browser mismatch".into(),
        )
        .await);
    }
    let now = state.gate().clock().now();
    let taken = state
        .gate()
        .credentials()
        .take_login_flow(&flow_key(&secret), now)
        .await?;
    let step: Authorizing = match taken.map(|t| serde_json::from_str(&t)) {
        Some(Ok(step)) => step,
        Some(Err(_)) | None => {
            return Err(refused(
                ApiError::bad_request(
                    "unknown, expired or already used login state: start the login again",
                ),
                "state mismatch".into(),
            )
            .await);
        }
    };
    // From here on a command-line client waits at its return_to: failures go there too,
    // so it can say why instead of waiting.
    let waiting = step.handoff;
    let result: Result<Response, ApiError> = async {
        if step.provider != provider {
            return Err(refused(
                ApiError::bad_request("this login was started with another provider"),
                "state of another provider".into(),
            )
            .await);
        }
        if let Some(error) = p.error {
            let why = format!("provider error {}", error.as_str());
            let (api, why) = Failure::Denied(why).into_api();
            return Err(refused(api, why).await);
        }
        let Some(code) = p.code.filter(|c| !c.is_empty()) else {
            return Err(refused(ApiError::bad_request("code is missing"), "no code".into()).await);
        };
        let redirect_uri = sso.redirect_uri(provider);
        let identity = match provider {
            Provider::Oidc => match &sso.oidc {
                Some(o) => {
                    o.identify(
                        &sso.http,
                        &redirect_uri,
                        &code,
                        &step.nonce,
                        &step.pkce_verifier,
                        now,
                    )
                    .await
                }
                None => return Err(unknown(provider)),
            },
            Provider::Github => match &sso.github {
                Some(g) => {
                    g.identify(&sso.http, &redirect_uri, &code, &step.pkce_verifier)
                        .await
                }
                None => return Err(unknown(provider)),
            },
        };
        let identity = match identity {
            Ok(identity) => identity,
            Err(f) => {
                let (api, why) = f.into_api();
                return Err(refused(api, why).await);
            }
        };
        let user = match account(&state, sso, provider, &identity, &meta).await {
            Ok(user) => user,
            Err((api, why)) => {
                return Err(
                    refuse(&state, &meta, provider, Some(&identity.email), api, &why).await,
                );
            }
        };
        match &waiting {
            None => Ok(no_store(
                super::open_session(
                    &state,
                    &user,
                    &meta,
                    None,
                    &provider.to_string(),
                    "auth.sso_login",
                )
                .await?,
            )),
            Some(handoff) => {
                let code = random_secret();
                let redeemable = Redeemable {
                    tenant_id: user.tenant_id,
                    user_id: user.id,
                    provider,
                    code_challenge: handoff.code_challenge.clone(),
                };
                let payload = serde_json::to_string(&redeemable).map_err(ApiError::internal)?;
                state
                    .gate()
                    .credentials()
                    .put_login_flow(&flow_key(&code), &payload, now + HANDOFF_TTL)
                    .await?;
                hand_back(handoff, &[("code", &code)])
            }
        }
    }
    .await;
    match (result, waiting) {
        (Err(error), Some(handoff)) => hand_back(
            &handoff,
            &[
                ("error", error.code().as_str()),
                ("error_description", error.message()),
            ],
        ),
        (result, _) => result,
    }
}

/// Sends the browser back to the command-line client waiting at `return_to` with `params`
/// (a code, or the error) and its own state.
fn hand_back(handoff: &Handoff, params: &[(&str, &str)]) -> Result<Response, ApiError> {
    let mut location = handoff.return_to.clone();
    let mut separator = if location.contains('?') { '&' } else { '?' };
    let state = handoff.client_state.as_deref().map(|s| ("state", s));
    for (name, value) in params.iter().copied().chain(state) {
        location.push(separator);
        location.push_str(name);
        location.push('=');
        location.push_str(&url_escape(value));
        separator = '&';
    }
    see_other(&location)
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The account an identity logs in as: the one with its verified address, else a new one
/// by the provisioning rule, else a refusal `(error, why)`.
async fn account(
    state: &AppState,
    sso: &Sso,
    provider: Provider,
    identity: &Identity,
    meta: &RequestMeta,
) -> Result<coditect_store::User, (ApiError, String)> {
    let denied = |message: String, why: &str| {
        (
            ApiError::new(ErrorCode::AccessDenied, message),
            why.to_string(),
        )
    };
    // Plain ASCII only: lower-casing must not fold a look-alike (a Kelvin sign for a K)
    // onto someone else's address.
    let email = Some(identity.email.as_str())
        .filter(|e| e.is_ascii())
        .and_then(|e| Email::parse(e).ok())
        .ok_or_else(|| {
            denied(
                "the provider gave no usable e-mail address".into(),
                "no e-mail",
            )
        })?;
    if !identity.email_verified {
        return Err(denied(
            format!("{email} is not verified at the identity provider: verify it there first"),
            "unverified e-mail",
        ));
    }
    let domain = email.as_str().rsplit('@').next().unwrap_or_default();
    let allowed = &sso.config.allowed_domains;
    if !allowed.is_empty() && !allowed.iter().any(|d| d == domain) {
        return Err(denied(
            format!("e-mail addresses at {domain} may not log in to this hub"),
            "domain not allowed",
        ));
    }
    let credentials = state.gate().credentials();
    let found = credentials
        .find_user(&email)
        .await
        .map_err(|e| (ApiError::from(e), "store".to_string()))?;
    match found {
        Some(user) if user.disabled => Err(denied(
            "this account is disabled".into(),
            "account disabled",
        )),
        Some(user) if user.platform_admin => Err(denied(
            "platform admins log in with their password, not through an identity provider".into(),
            "platform admin",
        )),
        Some(user) => Ok(user),
        None if sso.config.provision => match credentials
            .provision_user(
                &sso.config.tenant,
                email.clone(),
                sso.config.default_role,
                &provider.to_string(),
                meta,
            )
            .await
        {
            Ok(user) => Ok(user),
            // A first login of the same address at the same time (another tab, another
            // replica) made it: use that one.
            Err(coditect_store::StoreError::Conflict(_)) => credentials
                .find_user(&email)
                .await
                .map_err(|e| (ApiError::from(e), "store".to_string()))?
                .ok_or_else(|| {
                    (
                        ApiError::unavailable("retry the login", 1),
                        "race".to_string(),
                    )
                }),
            Err(e) => Err((ApiError::from(e), "store".to_string())),
        },
        None => Err(denied(
            format!(
                "there is no account for {email}, and this hub creates none on first login: ask an administrator"
            ),
            "no account",
        )),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "one-time code from return_to", "code_verifier": "the client's PKCE verifier"}))]
struct ExchangeRequest {
    /// The code the callback handed to `return_to`.
    #[schema(max_length = 256)]
    code: String,
    /// The verifier whose S256 challenge was given to `start`.
    #[schema(min_length = 43, max_length = 128)]
    code_verifier: String,
}

/// Redeems the one-time code a command-line client received at its `return_to`, with the
/// PKCE verifier of the challenge it started with: the session's tokens.
#[utoipa::path(
    post,
    path = "/api/v1/auth/sso/exchange",
    tag = "auth",
    security(()),
    request_body = ExchangeRequest,
    responses(
        (status = 200, description = "Logged in", body = super::TokenResponse),
        (status = 400, description = "Unknown, used or expired code, or the wrong verifier"),
        (status = 403, description = "The account was disabled meanwhile"),
    )
)]
async fn exchange(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(req): Json<ExchangeRequest>,
) -> Result<Response, ApiError> {
    let now = state.gate().clock().now();
    let credentials = state.gate().credentials();
    let taken = credentials
        .take_login_flow(&flow_key(&req.code), now)
        .await?;
    let refused = || ApiError::bad_request("unknown, expired or already used code");
    let redeemable: Redeemable = taken
        .and_then(|t| serde_json::from_str(&t).ok())
        .ok_or_else(refused)?;
    let provider = redeemable.provider;
    if s256(&req.code_verifier) != redeemable.code_challenge {
        let error = ApiError::bad_request("code_verifier does not match the code_challenge");
        return Err(refuse(&state, &meta, provider, None, error, "PKCE mismatch").await);
    }
    let user = credentials
        .get_user(redeemable.tenant_id, redeemable.user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(|| ApiError::new(ErrorCode::AccessDenied, "this account is disabled"))?;
    Ok(no_store(
        super::open_session(
            &state,
            &user,
            &meta,
            None,
            &provider.to_string(),
            "auth.sso_login",
        )
        .await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_receive_codes() {
        for ok in [
            "http://127.0.0.1:8123/callback",
            "http://[::1]:9/cb?x=1",
            "http://localhost:40000/",
        ] {
            assert!(check_return_to(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:8123/",
            "http://127.0.0.1/",
            "http://127.0.0.1:0/",
            "http://evil.example:80/",
            "http://127.0.0.1.evil.example:80/",
            "http://localhost:80@evil.example/",
            "http://127.0.0.1:8123/#frag",
            "javascript:alert(1)",
        ] {
            assert!(check_return_to(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s256_agrees_with_the_oauth2_crate() {
        use openidconnect::{PkceCodeChallenge, PkceCodeVerifier};
        for verifier in [
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gZWFOEjXk",
            &random_secret(),
        ] {
            let theirs = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
                verifier.into(),
            ));
            assert_eq!(s256(verifier), theirs.as_str());
        }
    }

    #[test]
    fn escaping_keeps_unreserved_characters_only() {
        assert_eq!(url_escape("a-b_c.d~e f&g=h"), "a-b_c.d~e%20f%26g%3Dh");
    }
}
