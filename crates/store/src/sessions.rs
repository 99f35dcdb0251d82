//! Login sessions and their rotating refresh tokens.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{SessionId, SessionStatus, TenantId, UserId, WorkspaceId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub tenant_id: TenantId,
    pub id: SessionId,
    pub user_id: UserId,
    pub status: SessionStatus,
    pub created_at: DateTime<Utc>,
    pub last_access_at: DateTime<Utc>,
    /// The absolute end of the session, whatever its activity.
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The workspace the session was opened for, if any.
    pub workspace_id: Option<WorkspaceId>,
    /// How the user logged in: `password`, `oidc` or `github`.
    pub login_method: String,
}

impl Session {
    /// Active, within its absolute lifetime, and used since `idle_cutoff`.
    pub fn is_live(&self, now: DateTime<Utc>, idle_cutoff: DateTime<Utc>) -> bool {
        self.status == SessionStatus::Active
            && now < self.expires_at
            && self.last_access_at >= idle_cutoff
    }
}

/// How long a spent refresh token is remembered (presenting it within this window
/// terminates the session; later it is merely unknown).
pub const REUSE_MEMORY: chrono::Duration = chrono::Duration::days(7);

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now used, `next` is current, the session was touched.
    Rotated(Session),
    /// The token had been used before: the session is now terminated (theft suspected).
    Reused(Session),
    /// Unknown token, or a session that is no longer live.
    Rejected,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session with its first refresh token (by hash).
    async fn create_session(
        &self,
        session: &Session,
        refresh_hash: &[u8],
    ) -> Result<(), StoreError>;

    async fn get_session(
        &self,
        tenant: TenantId,
        id: SessionId,
    ) -> Result<Option<Session>, StoreError>;

    /// Moves `last_access_at` forward to `at` (never back).
    async fn touch_session(
        &self,
        tenant: TenantId,
        id: SessionId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Ends an active or suspended session; false if there was none to end.
    async fn end_session(
        &self,
        tenant: TenantId,
        id: SessionId,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Ends every live session of a user except `keep`; how many were ended.
    async fn end_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Atomically checks `presented` and, if it is the current token of a live session,
    /// marks it used and stores `next` as current. A used token terminates the session.
    /// Spent tokens are kept for [`REUSE_MEMORY`] to catch their reuse, then forgotten.
    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        id: SessionId,
        presented: &[u8],
        next: &[u8],
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<RefreshOutcome, StoreError>;

    /// Deletes active sessions past their lifetime or idle since before `idle_cutoff`, and
    /// ended (or suspended) ones whose end (or last use) is before `ended_cutoff`, with
    /// their refresh tokens, and spent tickets past their expiry; how many sessions were
    /// deleted.
    async fn purge_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        ended_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Spends a single-use ticket (its id, valid until `expires_at`): true the first
    /// time, false ever after, atomically across every replica sharing the store. Spent
    /// ids are forgotten by [`SessionStore::purge_sessions`] once expired.
    async fn spend_ticket(
        &self,
        tenant: TenantId,
        ticket: uuid::Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Keeps a step of an external login until `expires_at`, under `key` (a hash of its
    /// one-time secret); `payload` is the step's own JSON. Conflict if the key is taken.
    async fn put_login_flow(
        &self,
        key: &[u8],
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Takes the step stored under `key` if it has not expired: once, atomically across
    /// every replica (a second take finds nothing). Expired steps are deleted by
    /// [`SessionStore::purge_sessions`].
    async fn take_login_flow(
        &self,
        key: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;

    /// Live sessions in all tenants.
    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}
