//! Access tokens: RS256 JWTs carrying `sub, tid, role, sid, iat, exp, iss, aud` and a `kid`.
//!
//! Verification pins the algorithm before anything else: a header that does not say
//! `RS256` (so `none`, any HS*, any other family) is refused without touching a key, which
//! also rules out key confusion (an HMAC "signed" with our public key). Then the `kid` must
//! name a published key, the signature must hold, `iss` and `aud` must match, and `exp`
//! is checked against the hub's clock (not the library's), so tests can move time.

use super::keys::KeyRing;
use chrono::{DateTime, Utc};
use coditect_proto::{Role, SessionId, TenantId, UserId};
use coditect_store::SigningKeyStore;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub tid: TenantId,
    pub role: Role,
    pub sid: SessionId,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// A unique id per token (RFC 7519 `jti`): what makes WebSocket tickets single-use.
    /// Tokens from versions before it have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<uuid::Uuid>,
}

/// Why a token was refused (for logs and metrics; clients only see `AUTH_REQUIRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Claims,
    Expired,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Algorithm => "bad_algorithm",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Signature => "bad_signature",
            Rejection::Claims => "bad_claims",
            Rejection::Expired => "expired",
        }
    }
}

pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub ttl: Duration,
    validation: Validation,
}

impl TokenSettings {
    pub fn new(issuer: String, audience: String, ttl: Duration) -> TokenSettings {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = vec![Algorithm::RS256];
        validation.validate_exp = false; // checked against the hub's clock below
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_issuer(&[issuer.as_str()]);
        validation.set_audience(&[audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        TokenSettings {
            issuer,
            audience,
            ttl,
            validation,
        }
    }
}

/// A signed access token and its claims.
pub fn issue(
    keys: &KeyRing,
    settings: &TokenSettings,
    user: UserId,
    tenant: TenantId,
    role: Role,
    session: SessionId,
    now: DateTime<Utc>,
) -> Result<(String, Claims), String> {
    let claims = Claims {
        sub: user,
        tid: tenant,
        role,
        sid: session,
        iat: now.timestamp(),
        exp: now.timestamp() + settings.ttl.as_secs() as i64,
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        jti: Some(uuid::Uuid::now_v7()),
    };
    let key = keys.signing();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    header.typ = Some("JWT".into());
    jsonwebtoken::encode(&header, &claims, &key.encoding)
        .map(|token| (token, claims))
        .map_err(|e| format!("cannot sign token: {e}"))
}

/// Checks a token completely (but not its session: that is the caller's next step).
pub async fn verify(
    keys: &KeyRing,
    store: &dyn SigningKeyStore,
    settings: &TokenSettings,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Claims, Rejection> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
    if header.alg != Algorithm::RS256 {
        return Err(Rejection::Algorithm);
    }
    let kid = header.kid.ok_or(Rejection::UnknownKey)?;
    let key = keys
        .verifying_or_reload(&kid, store)
        .await
        .ok_or(Rejection::UnknownKey)?;
    let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &settings.validation).map_err(
        |e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => Rejection::Signature,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => Rejection::Algorithm,
                K::InvalidIssuer | K::InvalidAudience | K::MissingRequiredClaim(_) | K::Json(_) => {
                    Rejection::Claims
                }
                _ => Rejection::Malformed,
            }
        },
    )?;
    let claims = data.claims;
    if now.timestamp() >= claims.exp {
        return Err(Rejection::Expired);
    }
    // Issued in the future (beyond a minute of skew): not ours to trust.
    if claims.iat > now.timestamp() + 60 {
        return Err(Rejection::Claims);
    }
    Ok(claims)
}
