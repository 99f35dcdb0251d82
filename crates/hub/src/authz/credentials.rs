//! What authentication may read and write before a principal exists, and the short-lived
//! cache that keeps token validation off the store on the hot path.
//!
//! The cache holds a session (or API key) together with its user for `auth_session_cache_ttl`
//! (default 2 s). A logout on this node drops the entry at once; other replicas see it when
//! their entry ages out, so a terminated session is refused everywhere within the TTL plus
//! one store read. `last_access_at` / `last_used_at` are written at most once a minute per
//! credential, in the background.

use super::Gate;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use coditect_proto::{ApiKeyId, Email, SessionId, TenantId};
use coditect_store::{ApiKey, RefreshOutcome, Session, SigningKeyStore, StoreError, User};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most cached credentials of each kind; past it, stale entries go first, then all.
const MAX_ENTRIES: usize = 100_000;
/// How long a cached credential may stand in for the store while the store is down.
pub(super) const MAX_STALE: Duration = Duration::from_secs(15 * 60);

/// How stale `last_access_at` may get before it is written again.
const TOUCH_EVERY: ChronoDuration = ChronoDuration::minutes(1);

/// A credential and the user it acts for, as last read from the store.
#[derive(Debug, Clone)]
pub struct Resolved<T> {
    pub credential: T,
    pub user: User,
}

struct Entry<T> {
    value: Resolved<T>,
    fetched: Instant,
}

struct Table<K, T> {
    map: Mutex<HashMap<K, Entry<T>>>,
    /// Bumped by every `forget`: a store read that started before a forget must not put
    /// its (possibly revoked) result back.
    generation: AtomicU64,
}

impl<K: Eq + Hash + Clone, T: Clone> Table<K, T> {
    fn new() -> Self {
        Table {
            map: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    fn get(&self, key: &K, ttl: Duration) -> Option<Resolved<T>> {
        let map = self.map.lock().ok()?;
        map.get(key)
            .filter(|e| e.fetched.elapsed() < ttl)
            .map(|e| e.value.clone())
    }

    /// An entry past its TTL but younger than [`MAX_STALE`]: used only while the store is
    /// unreachable, so a PostgreSQL outage does not log every client out.
    fn get_stale(&self, key: &K) -> Option<Resolved<T>> {
        let map = self.map.lock().ok()?;
        map.get(key)
            .filter(|e| e.fetched.elapsed() < MAX_STALE)
            .map(|e| e.value.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Caches `value` unless something was forgotten since `read_at` (a generation).
    fn put(&self, key: K, value: Resolved<T>, ttl: Duration, read_at: u64) {
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut map) = self.map.lock() {
            if self.generation() != read_at {
                return;
            }
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, e| e.fetched.elapsed() < ttl);
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            map.insert(
                key,
                Entry {
                    value,
                    fetched: Instant::now(),
                },
            );
        }
    }

    fn update(&self, key: &K, f: impl FnOnce(&mut Resolved<T>)) {
        if let Ok(mut map) = self.map.lock()
            && let Some(entry) = map.get_mut(key)
        {
            f(&mut entry.value);
        }
    }

    fn forget(&self, key: &K) {
        if let Ok(mut map) = self.map.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            map.remove(key);
        }
    }

    fn forget_where(&self, pred: impl Fn(&Resolved<T>) -> bool) {
        if let Ok(mut map) = self.map.lock() {
            self.generation.fetch_add(1, Ordering::SeqCst);
            map.retain(|_, e| !pred(&e.value));
        }
    }
}

/// While the store is unreachable, what was last known of a credential (if recent).
fn stale_or<T>(
    stale: Option<Resolved<T>>,
    err: StoreError,
) -> Result<Option<Resolved<T>>, StoreError> {
    match stale {
        Some(known) if err.is_transient() => {
            metrics::counter!("auth_stale_credentials_total").increment(1);
            Ok(Some(known))
        }
        _ => Err(err),
    }
}

pub(super) struct CredentialCache {
    ttl: Duration,
    sessions: Table<(TenantId, SessionId), Session>,
    keys: Table<(TenantId, ApiKeyId), ApiKey>,
}

impl CredentialCache {
    pub(super) fn new(ttl: Duration) -> CredentialCache {
        CredentialCache {
            ttl,
            sessions: Table::new(),
            keys: Table::new(),
        }
    }

    pub(super) fn forget_session(&self, tenant: TenantId, id: SessionId) {
        self.sessions.forget(&(tenant, id));
    }

    pub(super) fn forget_key(&self, tenant: TenantId, id: ApiKeyId) {
        self.keys.forget(&(tenant, id));
    }

    /// Drops everything cached for a user (disabled, role changed, password changed).
    pub(super) fn forget_user(&self, tenant: TenantId, user: coditect_proto::UserId) {
        let theirs = |u: &User| u.tenant_id == tenant && u.id == user;
        self.sessions.forget_where(|r| theirs(&r.user));
        self.keys.forget_where(|r| theirs(&r.user));
    }
}

pub struct Credentials<'a> {
    gate: &'a Gate,
}

impl<'a> Credentials<'a> {
    pub(super) fn new(gate: &'a Gate) -> Credentials<'a> {
        Credentials { gate }
    }

    pub fn signing_keys(&self) -> &'a dyn SigningKeyStore {
        self.gate.store.signing_keys()
    }

    /// Spends a single-use ticket: true the first time (on any replica), false after.
    pub async fn spend_ticket(
        &self,
        tenant: TenantId,
        ticket: uuid::Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.gate
            .store
            .sessions()
            .spend_ticket(tenant, ticket, expires_at)
            .await
    }

    /// When an administrator last cleared the user's failed logins.
    pub async fn login_reset_at(
        &self,
        tenant: TenantId,
        user: coditect_proto::UserId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.gate.store.users().login_reset_at(tenant, user).await
    }

    /// Keeps a step of an external login (see `auth::sso`) under a hash of its secret.
    pub async fn put_login_flow(
        &self,
        key: &[u8],
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.gate
            .store
            .sessions()
            .put_login_flow(key, payload, expires_at)
            .await
    }

    /// Takes a step of an external login, once.
    pub async fn take_login_flow(
        &self,
        key: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        self.gate.store.sessions().take_login_flow(key, now).await
    }

    /// Creates the account of someone an identity provider vouched for (a verified
    /// e-mail address the provisioning rule admits): in `tenant` (by name, made if
    /// missing), with `role`, no password. Audited as `user.provision`.
    pub async fn provision_user(
        &self,
        tenant: &str,
        email: Email,
        role: coditect_proto::Role,
        provider: &str,
        meta: &super::RequestMeta,
    ) -> Result<User, StoreError> {
        let tenant = self.gate.system().ensure_tenant(tenant).await?;
        let now = self.gate.clock().now();
        let user = User {
            tenant_id: tenant.id,
            id: coditect_proto::UserId::new(),
            email,
            password_hash: None,
            role,
            platform_admin: false,
            disabled: false,
            created_at: now,
            updated_at: now,
        };
        self.gate.store.users().create_user(&user).await?;
        let event = super::AuditEvent::anonymous(
            tenant.id,
            Some(user.email.to_string()),
            "user.provision",
            "user",
            Some(user.id.to_string()),
        )
        .as_user(tenant.id, user.id.to_string())
        .detail(format!("first login through {provider}, role {role}"));
        self.gate.auditor().record(event, meta).await;
        Ok(user)
    }

    pub async fn find_user(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.gate.store.users().find_user_by_email(email).await
    }

    pub async fn start_session(
        &self,
        session: &Session,
        refresh_hash: &[u8],
    ) -> Result<(), StoreError> {
        self.gate
            .store
            .sessions()
            .create_session(session, refresh_hash)
            .await
    }

    pub async fn rotate_refresh(
        &self,
        tenant: TenantId,
        id: SessionId,
        presented: &[u8],
        next: &[u8],
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<RefreshOutcome, StoreError> {
        let outcome = self
            .gate
            .store
            .sessions()
            .rotate_refresh(tenant, id, presented, next, now, idle_cutoff)
            .await?;
        if !matches!(outcome, RefreshOutcome::Rotated(_)) {
            self.gate.cache.forget_session(tenant, id);
        }
        Ok(outcome)
    }

    /// Whether the tenant has this (undeleted) workspace.
    pub async fn workspace_exists(
        &self,
        tenant: TenantId,
        id: coditect_proto::WorkspaceId,
    ) -> Result<bool, StoreError> {
        let ws = self
            .gate
            .store
            .workspaces()
            .get_workspace(tenant, id)
            .await?;
        Ok(ws.is_some())
    }

    /// Stores a re-hash of a password that was just verified (parameter upgrade).
    pub async fn set_password_hash(
        &self,
        tenant: TenantId,
        id: coditect_proto::UserId,
        hash: String,
    ) -> Result<(), StoreError> {
        let update = coditect_store::UserUpdate {
            password_hash: Some(hash),
            ..Default::default()
        };
        self.gate
            .store
            .users()
            .update_user(tenant, id, &update, self.gate.clock.now())
            .await
            .map(|_| ())
    }

    pub async fn get_user(
        &self,
        tenant: TenantId,
        id: coditect_proto::UserId,
    ) -> Result<Option<User>, StoreError> {
        self.gate.store.users().get_user(tenant, id).await
    }

    /// The session a token names, with its user; cached.
    pub async fn resolve_session(
        &self,
        tenant: TenantId,
        id: SessionId,
    ) -> Result<Option<Resolved<Session>>, StoreError> {
        let cache = &self.gate.cache;
        let key = (tenant, id);
        if let Some(hit) = cache.sessions.get(&key, cache.ttl) {
            return Ok(Some(hit));
        }
        let read_at = cache.sessions.generation();
        let store = &self.gate.store;
        let session = match store.sessions().get_session(tenant, id).await {
            Ok(Some(session)) => session,
            Ok(None) => return Ok(None),
            Err(e) => return stale_or(cache.sessions.get_stale(&key), e),
        };
        let user = match store.users().get_user(tenant, session.user_id).await {
            Ok(Some(user)) => user,
            Ok(None) => return Ok(None),
            Err(e) => return stale_or(cache.sessions.get_stale(&key), e),
        };
        let resolved = Resolved {
            credential: session,
            user,
        };
        cache
            .sessions
            .put(key, resolved.clone(), cache.ttl, read_at);
        Ok(Some(resolved))
    }

    /// Records that a session which passed every check was used now (at most once a
    /// minute, in the background). Never call it for a refused credential: activity on an
    /// idle-expired session must not revive it.
    pub fn session_used(&self, session: &Session, now: DateTime<Utc>) {
        if now - session.last_access_at < TOUCH_EVERY {
            return;
        }
        let (tenant, id) = (session.tenant_id, session.id);
        self.gate
            .cache
            .sessions
            .update(&(tenant, id), |r| r.credential.last_access_at = now);
        let store = self.gate.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.sessions().touch_session(tenant, id, now).await {
                tracing::warn!(error = %e, "cannot record session activity");
            }
        });
    }

    /// The API key a token names, with its owner; cached.
    pub async fn resolve_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
    ) -> Result<Option<Resolved<ApiKey>>, StoreError> {
        let cache = &self.gate.cache;
        let key = (tenant, id);
        if let Some(hit) = cache.keys.get(&key, cache.ttl) {
            return Ok(Some(hit));
        }
        let read_at = cache.keys.generation();
        let store = &self.gate.store;
        let api_key = match store.api_keys().get_api_key(tenant, id).await {
            Ok(Some(key)) => key,
            Ok(None) => return Ok(None),
            Err(e) => return stale_or(cache.keys.get_stale(&key), e),
        };
        let user = match store.users().get_user(tenant, api_key.owner_id).await {
            Ok(Some(user)) => user,
            Ok(None) => return Ok(None),
            Err(e) => return stale_or(cache.keys.get_stale(&key), e),
        };
        let resolved = Resolved {
            credential: api_key,
            user,
        };
        cache.keys.put(key, resolved.clone(), cache.ttl, read_at);
        Ok(Some(resolved))
    }

    /// Records the use of a key that passed every check (at most once a minute).
    pub fn api_key_used(&self, key: &ApiKey, now: DateTime<Utc>) {
        if key
            .last_used_at
            .is_some_and(|used| now - used < TOUCH_EVERY)
        {
            return;
        }
        let (tenant, id) = (key.tenant_id, key.id);
        self.gate
            .cache
            .keys
            .update(&(tenant, id), |r| r.credential.last_used_at = Some(now));
        let store = self.gate.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.api_keys().touch_api_key(tenant, id, now).await {
                tracing::warn!(error = %e, "cannot record api key use");
            }
        });
    }
}
