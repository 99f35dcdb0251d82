//! OpenID Connect, with the `openidconnect` crate: discovery (cached, re-read when the
//! provider's keys change), the authorization request with PKCE (S256) and a nonce, the
//! code exchange, and the ID token's verification (signature against the provider's JWKS,
//! issuer, audience, expiry, nonce).

use super::{Failure, Identity};
use crate::config::OidcProviderConfig;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long discovered metadata (and its keys) is trusted before being read again.
const METADATA_TTL: Duration = Duration::from_secs(300);
/// Largest answer read from a provider.
const MAX_ANSWER: usize = 1 << 20;

pub struct Oidc {
    config: OidcProviderConfig,
    metadata: Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// The hub's client as `openidconnect` wants it (a named type: its futures are `Send`).
struct Http<'a>(&'a reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for Http<'_> {
    type Error = HttpError;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<openidconnect::HttpResponse, HttpError>>
                + Send
                + 'c,
        >,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request))
    }
}

/// One request to the provider through the hub's client (no redirects, bounded answer).
async fn send(
    client: &reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = request.into_parts();
    let mut res = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(format!("{}: {e}", parts.uri)))?;
    let mut answer = openidconnect::http::Response::builder().status(res.status());
    for (name, value) in res.headers() {
        answer = answer.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = res
        .chunk()
        .await
        .map_err(|e| HttpError(format!("reading the answer: {e}")))?
    {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(HttpError("the answer is over 1 MiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    answer
        .body(body)
        .map_err(|e| HttpError(format!("the answer: {e}")))
}

impl Oidc {
    pub fn new(config: OidcProviderConfig) -> Oidc {
        Oidc {
            config,
            metadata: Mutex::new(None),
        }
    }

    /// The issuer's host, for a button.
    pub fn display_name(&self) -> String {
        let rest = self
            .config
            .issuer
            .split_once("://")
            .map_or(self.config.issuer.as_str(), |(_, r)| r);
        rest.split('/').next().unwrap_or(rest).to_string()
    }

    /// The provider's metadata and keys: cached, or read now (`fresh`: read now anyway).
    async fn metadata(
        &self,
        http: &reqwest::Client,
        fresh: bool,
    ) -> Result<CoreProviderMetadata, Failure> {
        if !fresh {
            let cached = self.metadata.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, m)) = cached.as_ref()
                && at.elapsed() < METADATA_TTL
            {
                return Ok(m.clone());
            }
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone())
            .map_err(|e| Failure::ProviderDown(format!("issuer URL: {e}")))?;
        let m = CoreProviderMetadata::discover_async(issuer, &Http(http))
            .await
            .map_err(|e| Failure::ProviderDown(format!("discovery: {}", chain(&e))))?;
        *self.metadata.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), m.clone()));
        Ok(m)
    }

    fn client(
        &self,
        metadata: CoreProviderMetadata,
        redirect_uri: &str,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        Failure,
    > {
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| Failure::ProviderDown(format!("redirect URL: {e}")))?;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().to_string(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// Where to send the browser.
    pub async fn authorize_url(
        &self,
        http: &reqwest::Client,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        pkce_verifier: &str,
    ) -> Result<String, Failure> {
        let client = self.client(self.metadata(http, false).await?, redirect_uri)?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            pkce_verifier.to_string(),
        ));
        let (state, nonce) = (state.to_string(), nonce.to_string());
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scope(Scope::new("email".into()))
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok(url.to_string())
    }

    /// Redeems the code and verifies the ID token it brings (its expiry against `now`, the
    /// hub's clock): who logged in.
    pub async fn identify(
        &self,
        http: &reqwest::Client,
        redirect_uri: &str,
        code: &str,
        nonce: &str,
        pkce_verifier: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Identity, Failure> {
        let client = self.client(self.metadata(http, false).await?, redirect_uri)?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| Failure::ProviderDown(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&Http(http))
            .await
            .map_err(|e| match e {
                RequestTokenError::ServerResponse(r) => {
                    Failure::CodeRefused(r.error().as_ref().to_string())
                }
                other => Failure::ProviderDown(format!("token endpoint: {}", chain(&other))),
            })?;
        let _ = token.access_token();
        let id_token = token
            .id_token()
            .ok_or_else(|| Failure::BadToken("the provider sent no ID token".into()))?;
        let nonce = Nonce::new(nonce.to_string());
        let claims = match id_token.claims(&client.id_token_verifier().set_time_fn(|| now), &nonce)
        {
            Ok(claims) => claims.clone(),
            Err(first) => {
                // The provider may have rotated its keys since they were read: once more
                // with fresh ones, then the first answer stands.
                let bad = || Failure::BadToken(first.to_string());
                let metadata = self.metadata(http, true).await.map_err(|_| bad())?;
                let fresh = self.client(metadata, redirect_uri).map_err(|_| bad())?;
                id_token
                    .claims(&fresh.id_token_verifier().set_time_fn(|| now), &nonce)
                    .map_err(|_| bad())?
                    .clone()
            }
        };
        Ok(Identity {
            email: claims
                .email()
                .map(|e| e.as_str().to_string())
                .unwrap_or_default(),
            email_verified: claims.email_verified().unwrap_or(false),
        })
    }
}

/// An error and its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
