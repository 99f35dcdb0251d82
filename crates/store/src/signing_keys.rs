//! Public halves of the keys that sign access tokens, shared so that every replica can
//! verify every replica's tokens. Private keys never reach the store.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyRecord {
    /// Key id (the `kid` header of tokens it verifies).
    pub kid: String,
    /// JWS algorithm, e.g. `RS256`.
    pub alg: String,
    /// RSA modulus, big-endian.
    pub n: Vec<u8>,
    /// RSA public exponent, big-endian.
    pub e: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// After this no token it signed can still be valid: the key is dropped.
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// Publishes a key; publishing it again can only extend its `expires_at`.
    async fn publish_key(&self, key: &PublicKeyRecord) -> Result<(), StoreError>;

    /// Keys not expired at `now`, newest first.
    async fn list_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublicKeyRecord>, StoreError>;
}
