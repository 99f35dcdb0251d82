//! Opaque credentials: refresh tokens (`cdr_…`) and API keys (`cdk_…`).
//!
//! Layout: `<prefix>_` + base64url(secret 32 B ‖ tenant 16 B ‖ id 16 B). The tenant and the
//! id let the hub find the record without a global lookup; the secret is 256 random bits.
//! Only SHA-256 of the whole token is stored, and compared in constant time. The first
//! characters after the prefix come from the secret, so they tell keys apart in listings.

use aws_lc_rs::{constant_time, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coditect_proto::TenantId;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    RefreshToken,
    ApiKey,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::RefreshToken => "cdr_",
            Kind::ApiKey => "cdk_",
        }
    }
}

/// A freshly minted credential: show `token` once, store `hash`.
pub struct Minted {
    pub token: String,
    pub hash: Vec<u8>,
}

/// What a presented credential claims to be; check `hash` against the stored one.
#[derive(Debug, PartialEq, Eq)]
pub struct Presented {
    pub tenant: TenantId,
    pub id: Uuid,
    pub hash: Vec<u8>,
}

pub fn mint(kind: Kind, tenant: TenantId, id: Uuid) -> Minted {
    let secret: [u8; 32] = rand::random();
    let mut raw = Vec::with_capacity(64);
    raw.extend_from_slice(&secret);
    raw.extend_from_slice(tenant.as_uuid().as_bytes());
    raw.extend_from_slice(id.as_bytes());
    let token = format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(raw));
    let hash = hash(&token);
    Minted { token, hash }
}

/// Parses a presented token of `kind`; `None` if it cannot be one.
pub fn parse(kind: Kind, token: &str) -> Option<Presented> {
    let body = token.strip_prefix(kind.prefix())?;
    if body.len() != 86 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(body).ok()?;
    let tenant = Uuid::from_slice(raw.get(32..48)?).ok()?;
    let id = Uuid::from_slice(raw.get(48..64)?).ok()?;
    Some(Presented {
        tenant: TenantId::from_uuid(tenant),
        id,
        hash: hash(token),
    })
}

/// Whether `token` looks like an API key (decides how a bearer credential is checked).
pub fn is_api_key(token: &str) -> bool {
    token.starts_with(Kind::ApiKey.prefix())
}

/// The part of an API key shown in listings: prefix and 8 characters of the secret.
pub fn display_prefix(token: &str) -> String {
    token.chars().take(12).collect()
}

pub fn hash(token: &str) -> Vec<u8> {
    digest::digest(&digest::SHA256, token.as_bytes())
        .as_ref()
        .to_vec()
}

pub fn same_hash(a: &[u8], b: &[u8]) -> bool {
    constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_and_only_as_their_kind() {
        let tenant = TenantId::new();
        let id = Uuid::now_v7();
        let m = mint(Kind::ApiKey, tenant, id);
        assert!(m.token.starts_with("cdk_") && is_api_key(&m.token));
        let p = parse(Kind::ApiKey, &m.token).unwrap();
        assert_eq!((p.tenant, p.id), (tenant, id));
        assert!(same_hash(&p.hash, &m.hash));
        assert_eq!(parse(Kind::RefreshToken, &m.token), None);
        assert_eq!(display_prefix(&m.token).len(), 12);
        let other = mint(Kind::ApiKey, tenant, id);
        assert_ne!(display_prefix(&m.token), display_prefix(&other.token));
    }

    #[test]
    fn garbage_never_parses() {
        for bad in [
            "",
            "cdk_",
            "cdk_short",
            "Bearer x",
            &format!("cdk_{}", "!".repeat(86)),
        ] {
            assert_eq!(parse(Kind::ApiKey, bad), None, "{bad}");
        }
        let m = mint(Kind::RefreshToken, TenantId::new(), Uuid::now_v7());
        let last = if m.token.ends_with('A') { "B" } else { "A" };
        let tampered = format!("{}{last}", &m.token[..m.token.len() - 1]);
        assert_ne!(tampered, m.token);
        if let Some(p) = parse(Kind::RefreshToken, &tampered) {
            assert!(!same_hash(&p.hash, &m.hash));
        }
    }
}
