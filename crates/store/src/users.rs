//! Users: people and service accounts of a tenant.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{Email, Role, TenantId, UserId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub tenant_id: TenantId,
    pub id: UserId,
    pub email: Email,
    /// Argon2id PHC string; `None` for service accounts (they use API keys only).
    pub password_hash: Option<String>,
    pub role: Role,
    /// May act across tenants (create tenants, read any tenant's audit trail).
    pub platform_admin: bool,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields an update may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserUpdate {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub password_hash: Option<String>,
}

#[async_trait]
pub trait UserStore: Send + Sync {
    /// `Conflict` if the e-mail address is taken (in any tenant).
    async fn create_user(&self, user: &User) -> Result<(), StoreError>;

    async fn get_user(&self, tenant: TenantId, id: UserId) -> Result<Option<User>, StoreError>;

    /// Across tenants: login knows only the address.
    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;

    /// Up to `limit` users of `tenant` ordered by id, after `after`.
    async fn list_users(
        &self,
        tenant: TenantId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError>;

    /// Applies `update`; the updated user, or `None` if there is no such user.
    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        update: &UserUpdate,
        at: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError>;

    /// Users in all tenants (0 means the platform needs its first admin).
    async fn count_users(&self) -> Result<u64, StoreError>;

    /// Records that failed logins of `user` counted before `at` are forgiven.
    async fn reset_login_throttle(
        &self,
        tenant: TenantId,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// When failed logins of `user` were last forgiven, if ever.
    async fn login_reset_at(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Option<DateTime<Utc>>, StoreError>;
}
