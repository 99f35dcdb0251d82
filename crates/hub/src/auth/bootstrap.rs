//! The first administrator. On a store without users, `CODITECT_BOOTSTRAP_EMAIL` and
//! `CODITECT_BOOTSTRAP_PASSWORD` create the first tenant and a platform admin in it;
//! without them the hub says in its log how to do it. `coditect-hub admin create-user`
//! does the same (and more) from the command line.

use super::password::Passwords;
use crate::authz::System;
use crate::clock::Clock;
use crate::config::Bootstrap;
use coditect_proto::{Email, Role, TenantId, UserId};
use coditect_store::{StoreError, User};

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Password(String),
    #[error("a user with e-mail {0} already exists")]
    Exists(Email),
    #[error("no tenant named or numbered {0}")]
    NoTenant(String),
}

/// A user to create from the command line or the bootstrap settings.
pub struct NewAccount {
    pub email: Email,
    pub password: Option<String>,
    pub role: Role,
    pub platform_admin: bool,
    /// Tenant name or id; created (by name) when `create_tenant` is set and it is missing.
    pub tenant: String,
    pub create_tenant: bool,
}

pub async fn create_account(
    system: &System<'_>,
    passwords: &Passwords,
    clock: &Clock,
    account: NewAccount,
) -> Result<(TenantId, UserId), BootstrapError> {
    let tenant = match system.find_tenant(&account.tenant).await? {
        Some(t) => t,
        None if account.create_tenant => system.ensure_tenant(&account.tenant).await?,
        None => return Err(BootstrapError::NoTenant(account.tenant)),
    };
    let password_hash = match account.password {
        Some(p) => {
            Passwords::check_new(&p).map_err(BootstrapError::Password)?;
            Some(passwords.hash(p).await.map_err(BootstrapError::Password)?)
        }
        None => None,
    };
    let now = clock.now();
    let user = User {
        tenant_id: tenant.id,
        id: UserId::new(),
        email: account.email.clone(),
        password_hash,
        role: account.role,
        platform_admin: account.platform_admin,
        disabled: false,
        created_at: now,
        updated_at: now,
    };
    match system.create_user(&user).await {
        Ok(()) => Ok((tenant.id, user.id)),
        Err(StoreError::Conflict(_)) => Err(BootstrapError::Exists(account.email)),
        Err(e) => Err(e.into()),
    }
}

/// Runs once the store is ready: creates the first admin if asked and needed, or says how.
pub async fn run(
    system: &System<'_>,
    passwords: &Passwords,
    clock: &Clock,
    bootstrap: Option<&Bootstrap>,
    tenant_name: &str,
) -> Result<(), BootstrapError> {
    if system.count_users().await? > 0 {
        return Ok(());
    }
    let Some(bootstrap) = bootstrap else {
        tracing::warn!(
            "no users yet: set CODITECT_BOOTSTRAP_EMAIL and CODITECT_BOOTSTRAP_PASSWORD and restart, \
             or run `coditect-hub admin create-user --email ADDRESS --platform-admin` (password on stdin)"
        );
        return Ok(());
    };
    let account = NewAccount {
        email: bootstrap.email.clone(),
        password: Some(bootstrap.password.expose().to_string()),
        role: Role::Admin,
        platform_admin: true,
        tenant: tenant_name.to_string(),
        create_tenant: true,
    };
    match create_account(system, passwords, clock, account).await {
        Ok((tenant, user)) => {
            tracing::info!(%tenant, %user, email = %bootstrap.email, "created the first platform admin");
            Ok(())
        }
        // Another replica bootstrapped at the same moment.
        Err(BootstrapError::Exists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
