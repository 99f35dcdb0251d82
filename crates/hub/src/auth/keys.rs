//! The keys that sign and verify access tokens.
//!
//! Each node signs with its own RSA-2048 key, kept as a PKCS#8 PEM file (mode 0600) in
//! `data_dir/keys` and never shared; its public half is published to the store, so every
//! replica verifies every replica's tokens. A key signs for `auth_key_rotation`, then a new
//! one takes over; a published key is dropped once no token it signed can still be valid
//! (`expires_at` = creation + rotation + access-token lifetime + margin). With
//! `auth_signing_key_file` the node signs with that key instead and never rotates it.
//!
//! Key ids are RFC 7638 JWK thumbprints.

use crate::clock::Clock;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use coditect_store::{PublicKeyRecord, SigningKeyStore, StoreError};
use jsonwebtoken::{DecodingKey, EncodingKey};
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub const ALG: &str = "RS256";
/// Extra life of a published key beyond the last token it can have signed (clock skew).
const MARGIN: Duration = Duration::from_secs(300);
/// One unknown `kid` triggers a reload from the store at most this often…
const UNKNOWN_KID_RELOAD: Duration = Duration::from_secs(1);
/// …and all unknown kids together at most this many times a second, so junk tokens can
/// neither hammer the store nor starve a genuinely new key of its reload.
const RELOADS_PER_SECOND: u32 = 20;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("cannot generate a signing key")]
    Generate,
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub dir: PathBuf,
    pub fixed_file: Option<PathBuf>,
    pub rotation: Duration,
    pub access_ttl: Duration,
}

/// The key this node signs with.
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub created_at: DateTime<Utc>,
    public: PublicKeyRecord,
}

/// A key tokens may be verified with.
pub struct VerifyingKey {
    pub kid: String,
    pub decoding: DecodingKey,
    n: Vec<u8>,
    e: Vec<u8>,
    created_at: DateTime<Utc>,
}

pub struct KeyRing {
    config: KeyConfig,
    clock: Clock,
    signing: RwLock<Arc<SigningKey>>,
    verifying: RwLock<Arc<HashMap<String, Arc<VerifyingKey>>>>,
    reloads: tokio::sync::Mutex<ReloadLimiter>,
}

#[derive(Default)]
struct ReloadLimiter {
    per_kid: HashMap<String, Instant>,
    second: Option<Instant>,
    in_second: u32,
}

impl ReloadLimiter {
    /// Whether an unknown `kid` may trigger a reload now (and records that it did).
    fn allow(&mut self, kid: &str) -> bool {
        let now = Instant::now();
        if self
            .per_kid
            .get(kid)
            .is_some_and(|t| now.duration_since(*t) < UNKNOWN_KID_RELOAD)
        {
            return false;
        }
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            self.second = Some(now);
            self.in_second = 0;
            self.per_kid
                .retain(|_, t| now.duration_since(*t) < UNKNOWN_KID_RELOAD);
        }
        if self.in_second >= RELOADS_PER_SECOND {
            return false;
        }
        self.in_second += 1;
        self.per_kid.insert(kid.to_string(), now);
        true
    }
}

/// A private key read from disk (or just generated).
struct LocalKey {
    pem: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
    kid: String,
    created_at: DateTime<Utc>,
    path: PathBuf,
}

impl KeyRing {
    /// Loads (or creates) this node's signing key. Until [`KeyRing::refresh`] has
    /// published it and loaded the other replicas' keys, only this node's own tokens verify.
    pub async fn open(config: KeyConfig, clock: Clock) -> Result<KeyRing, KeyError> {
        let signing = current_signing_key(&config, &clock).await?;
        let own = HashMap::from([(
            signing.kid.clone(),
            Arc::new(verifying_from(&signing.public)),
        )]);
        Ok(KeyRing {
            signing: RwLock::new(Arc::new(signing)),
            verifying: RwLock::new(Arc::new(own)),
            reloads: tokio::sync::Mutex::new(ReloadLimiter::default()),
            config,
            clock,
        })
    }

    pub fn signing(&self) -> Arc<SigningKey> {
        self.signing
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn verifying_set(&self) -> Arc<HashMap<String, Arc<VerifyingKey>>> {
        self.verifying
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The key for `kid`, if it is known and still published.
    pub fn verifying(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.verifying_set().get(kid).cloned()
    }

    /// Like [`KeyRing::verifying`], but an unknown `kid` (a key another replica has just
    /// published) reloads the set from the store (rate-limited, see [`ReloadLimiter`]).
    pub async fn verifying_or_reload(
        &self,
        kid: &str,
        store: &dyn SigningKeyStore,
    ) -> Option<Arc<VerifyingKey>> {
        if let Some(key) = self.verifying(kid) {
            return Some(key);
        }
        if !self.reloads.lock().await.allow(kid) {
            return self.verifying(kid);
        }
        if let Err(e) = self.reload(store).await {
            tracing::warn!(error = %e, "cannot reload verification keys");
        }
        self.verifying(kid)
    }

    /// Periodic upkeep: picks up keys rotated by `coditect-hub admin rotate-key`, rotates
    /// when the signing key is due, republishes, reloads, deletes expired key files.
    pub async fn refresh(&self, store: &dyn SigningKeyStore) -> Result<(), KeyError> {
        let current = current_signing_key(&self.config, &self.clock).await?;
        if current.kid != self.signing().kid {
            tracing::info!(kid = %current.kid, "signing key changed");
            self.set_signing(current);
        }
        self.publish_and_reload(store).await
    }

    /// Starts signing with a new key now (old keys keep verifying until they expire).
    pub async fn rotate(&self, store: &dyn SigningKeyStore) -> Result<String, KeyError> {
        if self.config.fixed_file.is_some() {
            return Err(KeyError::File {
                path: self.config.fixed_file.clone().unwrap_or_default(),
                reason: "a configured signing key is rotated by replacing the file".into(),
            });
        }
        let key = generate_key_file(&self.config.dir, self.clock.now()).await?;
        let signing = signing_from(&self.config, key)?;
        let kid = signing.kid.clone();
        self.set_signing(signing);
        self.publish_and_reload(store).await?;
        tracing::info!(%kid, "signing key rotated");
        Ok(kid)
    }

    fn set_signing(&self, key: SigningKey) {
        match self.signing.write() {
            Ok(mut s) => *s = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }

    async fn publish_and_reload(&self, store: &dyn SigningKeyStore) -> Result<(), KeyError> {
        let mut public = self.signing().public.clone();
        if self.config.fixed_file.is_some() {
            // A fixed key lives as long as it is in use: each refresh extends it.
            public.expires_at = self.clock.now() + chrono_duration(self.published_life());
        }
        store.publish_key(&public).await?;
        self.reload(store).await?;
        remove_expired_files(&self.config, &self.clock, &self.signing().kid);
        Ok(())
    }

    async fn reload(&self, store: &dyn SigningKeyStore) -> Result<(), KeyError> {
        let now = self.clock.now();
        let mut set = HashMap::new();
        for record in store.list_keys(now).await? {
            if record.alg == ALG {
                set.insert(record.kid.clone(), Arc::new(verifying_from(&record)));
            }
        }
        // Our own key verifies even if the store lost it.
        let own = self.signing();
        set.entry(own.kid.clone())
            .or_insert_with(|| Arc::new(verifying_from(&own.public)));
        match self.verifying.write() {
            Ok(mut v) => *v = Arc::new(set),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
        }
        Ok(())
    }

    fn published_life(&self) -> Duration {
        self.config.rotation + self.config.access_ttl + MARGIN
    }

    /// The JSON Web Key Set of every key that may verify a token now.
    pub fn jwks(&self) -> Jwks {
        let mut keys: Vec<Arc<VerifyingKey>> = self.verifying_set().values().cloned().collect();
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.kid.cmp(&b.kid)));
        let keys = keys
            .iter()
            .map(|k| Jwk {
                kty: "RSA",
                use_: "sig",
                alg: ALG,
                kid: k.kid.clone(),
                n: URL_SAFE_NO_PAD.encode(&k.n),
                e: URL_SAFE_NO_PAD.encode(&k.e),
            })
            .collect();
        Jwks { keys }
    }
}

/// The public keys that verify access tokens (RFC 7517 JWK Set), newest first.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// One RSA signing key's public half.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Jwk {
    #[schema(example = "RSA")]
    pub kty: &'static str,
    #[serde(rename = "use")]
    #[schema(example = "sig")]
    pub use_: &'static str,
    #[schema(example = "RS256")]
    pub alg: &'static str,
    pub kid: String,
    /// Modulus, base64url.
    pub n: String,
    /// Exponent, base64url.
    pub e: String,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn verifying_from(record: &PublicKeyRecord) -> VerifyingKey {
    VerifyingKey {
        kid: record.kid.clone(),
        decoding: DecodingKey::from_rsa_raw_components(&record.n, &record.e),
        n: record.n.clone(),
        e: record.e.clone(),
        created_at: record.created_at,
    }
}

fn signing_from(config: &KeyConfig, key: LocalKey) -> Result<SigningKey, KeyError> {
    let encoding = EncodingKey::from_rsa_pem(&key.pem).map_err(|e| KeyError::File {
        path: key.path.clone(),
        reason: format!("not an RSA private key: {e}"),
    })?;
    let life = config.rotation + config.access_ttl + MARGIN;
    Ok(SigningKey {
        public: PublicKeyRecord {
            kid: key.kid.clone(),
            alg: ALG.into(),
            n: key.n,
            e: key.e,
            created_at: key.created_at,
            expires_at: key.created_at + chrono_duration(life),
        },
        kid: key.kid,
        encoding,
        created_at: key.created_at,
    })
}

/// The configured key, or the newest key file, generating one when there is none or the
/// newest is due for rotation.
async fn current_signing_key(config: &KeyConfig, clock: &Clock) -> Result<SigningKey, KeyError> {
    let now = clock.now();
    if let Some(path) = &config.fixed_file {
        let key = read_key_file(path, now)?;
        return signing_from(config, key);
    }
    let newest = own_key_files(&config.dir)?
        .into_iter()
        .max_by_key(|k| k.created_at);
    let key = match newest {
        Some(k) if now - k.created_at < chrono_duration(config.rotation) => k,
        _ => generate_key_file(&config.dir, now).await?,
    };
    signing_from(config, key)
}

/// Key files in `dir`, named `<unix microseconds>-<kid>.pem`.
fn own_key_files(dir: &Path) -> Result<Vec<LocalKey>, KeyError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(KeyError::File {
                path: dir.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(created) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| n.ends_with(".pem"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(micros, _)| micros.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_micros)
        else {
            continue;
        };
        match read_key_file(&path, created) {
            Ok(key) => keys.push(key),
            Err(e) => tracing::warn!(error = %e, "ignoring unreadable key file"),
        }
    }
    Ok(keys)
}

fn read_key_file(path: &Path, created_at: DateTime<Utc>) -> Result<LocalKey, KeyError> {
    let fail = |reason: String| KeyError::File {
        path: path.to_path_buf(),
        reason,
    };
    let pem_bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let parsed = pem::parse(&pem_bytes).map_err(|e| fail(format!("not PEM: {e}")))?;
    let pair = match parsed.tag() {
        "PRIVATE KEY" => KeyPair::from_pkcs8(parsed.contents()),
        "RSA PRIVATE KEY" => KeyPair::from_der(parsed.contents()),
        other => return Err(fail(format!("expected an RSA private key, found {other}"))),
    }
    .map_err(|e| fail(format!("not a usable RSA key: {e}")))?;
    let public = pair.public_key();
    let n = public.modulus().big_endian_without_leading_zero().to_vec();
    let e = public.exponent().big_endian_without_leading_zero().to_vec();
    Ok(LocalKey {
        kid: thumbprint(&n, &e),
        pem: pem_bytes,
        n,
        e,
        created_at,
        path: path.to_path_buf(),
    })
}

/// Generates an RSA-2048 key and writes it atomically, mode 0600, into `dir` (mode 0700).
async fn generate_key_file(dir: &Path, now: DateTime<Utc>) -> Result<LocalKey, KeyError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let fail = |reason: String| KeyError::File {
            path: dir.clone(),
            reason,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail(e.to_string()))?;
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
        let der = pair.as_der().map_err(|_| KeyError::Generate)?;
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()));
        let public = pair.public_key();
        let kid = thumbprint(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );
        let path = dir.join(format!("{}-{kid}.pem", now.timestamp_micros()));
        let tmp = dir.join(format!(".{kid}.tmp"));
        write_private(&tmp, pem.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| fail(e.to_string()))?;
        tracing::info!(%kid, "generated a new signing key");
        read_key_file(&path, now)
    })
    .await
    .map_err(|_| KeyError::Generate)?
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Deletes key files no token can still need, keeping the current signing key.
fn remove_expired_files(config: &KeyConfig, clock: &Clock, current: &str) {
    if config.fixed_file.is_some() {
        return;
    }
    let life = chrono_duration(config.rotation + config.access_ttl + MARGIN);
    let now = clock.now();
    for key in own_key_files(&config.dir).unwrap_or_default() {
        if key.kid != current && key.created_at + life < now {
            match std::fs::remove_file(&key.path) {
                Ok(()) => tracing::info!(kid = %key.kid, "deleted an expired signing key"),
                Err(e) => {
                    tracing::warn!(kid = %key.kid, error = %e, "cannot delete an expired signing key")
                }
            }
        }
    }
}

/// RFC 7638 thumbprint of an RSA public key.
fn thumbprint(n: &[u8], e: &[u8]) -> String {
    let canonical = format!(
        r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(e),
        URL_SAFE_NO_PAD.encode(n)
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}
