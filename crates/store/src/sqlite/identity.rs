//! Users, sessions (with refresh tokens), API keys and signing keys on SQLite.

use super::{RowExt, SqliteStore, blob, collect, from_micros, to_micros};
use crate::StoreError;
use crate::api_keys::{ApiKey, ApiKeyStore};
use crate::sessions::{RefreshOutcome, Session, SessionStore};
use crate::signing_keys::{PublicKeyRecord, SigningKeyStore};
use crate::users::{User, UserStore, UserUpdate};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{ApiKeyId, Email, SessionId, TenantId, UserId, WorkspaceId};
use rusqlite::{Connection, OptionalExtension, Row, params};

const USER_COLUMNS: &str = "tenant_id, user_id, email, password_hash, role, platform_admin, disabled, created_at, updated_at";

fn user_from_row(row: &Row<'_>) -> Result<User, StoreError> {
    let email: String = row.get(2)?;
    Ok(User {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: UserId::from_uuid(row.uuid(1)?),
        email: Email::parse(&email).map_err(StoreError::Internal)?,
        password_hash: row.get(3)?,
        role: row.parsed(4)?,
        platform_admin: row.get(5)?,
        disabled: row.get(6)?,
        created_at: row.instant(7)?,
        updated_at: row.instant(8)?,
    })
}

fn get_user(c: &Connection, tenant: TenantId, id: UserId) -> Result<Option<User>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND user_id = ?2"
    ))?
    .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
        Ok(user_from_row(r))
    })
    .optional()?
    .transpose()
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let u = user.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                blob(u.tenant_id.as_uuid()),
                blob(u.id.as_uuid()),
                u.email.as_str(),
                u.password_hash,
                u.role.as_str(),
                u.platform_admin,
                u.disabled,
                to_micros(u.created_at),
                to_micros(u.updated_at),
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_user(&self, tenant: TenantId, id: UserId) -> Result<Option<User>, StoreError> {
        self.read(move |c| get_user(c, tenant, id)).await
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        let email = email.clone();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE email = ?1"
            ))?
            .query_row(params![email.as_str()], |r| Ok(user_from_row(r)))
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_users(
        &self,
        tenant: TenantId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        let after = after
            .map(|a| blob(a.as_uuid()).to_vec())
            .unwrap_or_default();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = ?1 AND user_id > ?2
                 ORDER BY user_id LIMIT ?3"
            ))?;
            collect(
                stmt.query(params![blob(tenant.as_uuid()), after, limit])?,
                user_from_row,
            )
        })
        .await
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        update: &UserUpdate,
        at: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError> {
        let update = update.clone();
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE users SET
                        role = coalesce(?3, role),
                        disabled = coalesce(?4, disabled),
                        password_hash = coalesce(?5, password_hash),
                        updated_at = ?6
                     WHERE tenant_id = ?1 AND user_id = ?2",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    update.role.map(|r| r.as_str()),
                    update.disabled,
                    update.password_hash,
                    to_micros(at),
                ])?;
            if changed == 0 {
                return Ok(None);
            }
            get_user(c, tenant, id)
        })
        .await
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            Ok(c.query_row("SELECT count(*) FROM users", [], |r| r.get::<_, i64>(0))? as u64)
        })
        .await
    }

    async fn reset_login_throttle(
        &self,
        tenant: TenantId,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO login_resets (tenant_id, user_id, reset_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, user_id) DO UPDATE SET reset_at = excluded.reset_at",
            )?
            .execute(params![
                blob(tenant.as_uuid()),
                blob(user.as_uuid()),
                to_micros(at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn login_reset_at(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT reset_at FROM login_resets WHERE tenant_id = ?1 AND user_id = ?2",
            )?
            .query_row(params![blob(tenant.as_uuid()), blob(user.as_uuid())], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(from_micros)
            .transpose()
        })
        .await
    }
}

const SESSION_COLUMNS: &str = "tenant_id, session_id, user_id, status, created_at, last_access_at,
    expires_at, ended_at, end_reason, ip, user_agent, workspace_id, login_method";

fn session_from_row(row: &Row<'_>) -> Result<Session, StoreError> {
    Ok(Session {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: SessionId::from_uuid(row.uuid(1)?),
        user_id: UserId::from_uuid(row.uuid(2)?),
        status: row.parsed(3)?,
        created_at: row.instant(4)?,
        last_access_at: row.instant(5)?,
        expires_at: row.instant(6)?,
        ended_at: row.opt_instant(7)?,
        end_reason: row.get(8)?,
        ip: row.get(9)?,
        user_agent: row.get(10)?,
        workspace_id: row.opt_uuid(11)?.map(WorkspaceId::from_uuid),
        login_method: row.get(12)?,
    })
}

fn get_session(
    c: &Connection,
    tenant: TenantId,
    id: SessionId,
) -> Result<Option<Session>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = ?1 AND session_id = ?2"
    ))?
    .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
        Ok(session_from_row(r))
    })
    .optional()?
    .transpose()
}

fn end_session(
    c: &Connection,
    tenant: TenantId,
    id: SessionId,
    reason: &str,
    at: i64,
) -> Result<bool, StoreError> {
    let changed = c
        .prepare_cached(
            "UPDATE sessions SET status = 'terminated', ended_at = ?3, end_reason = ?4
             WHERE tenant_id = ?1 AND session_id = ?2 AND status <> 'terminated'",
        )?
        .execute(params![
            blob(tenant.as_uuid()),
            blob(id.as_uuid()),
            at,
            reason
        ])?;
    Ok(changed > 0)
}

#[async_trait]
impl SessionStore for SqliteStore {
    async fn create_session(
        &self,
        session: &Session,
        refresh_hash: &[u8],
    ) -> Result<(), StoreError> {
        let s = session.clone();
        let hash = refresh_hash.to_vec();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ))?
            .execute(params![
                blob(s.tenant_id.as_uuid()),
                blob(s.id.as_uuid()),
                blob(s.user_id.as_uuid()),
                s.status.as_str(),
                to_micros(s.created_at),
                to_micros(s.last_access_at),
                to_micros(s.expires_at),
                s.ended_at.map(to_micros),
                s.end_reason,
                s.ip,
                s.user_agent,
                s.workspace_id.map(|w| blob(w.as_uuid())),
                s.login_method,
            ])?;
            c.prepare_cached(
                "INSERT INTO refresh_tokens (tenant_id, session_id, token_hash, issued_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                blob(s.tenant_id.as_uuid()),
                blob(s.id.as_uuid()),
                hash,
                to_micros(s.created_at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_session(
        &self,
        tenant: TenantId,
        id: SessionId,
    ) -> Result<Option<Session>, StoreError> {
        self.read(move |c| get_session(c, tenant, id)).await
    }

    async fn touch_session(
        &self,
        tenant: TenantId,
        id: SessionId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE sessions SET last_access_at = max(last_access_at, ?3)
                 WHERE tenant_id = ?1 AND session_id = ?2",
            )?
            .execute(params![
                blob(tenant.as_uuid()),
                blob(id.as_uuid()),
                to_micros(at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn end_session(
        &self,
        tenant: TenantId,
        id: SessionId,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let reason = reason.to_string();
        self.write(move |c| end_session(c, tenant, id, &reason, to_micros(at)))
            .await
    }

    async fn end_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let reason = reason.to_string();
        let keep = keep.map(|k| blob(k.as_uuid()).to_vec()).unwrap_or_default();
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE sessions SET status = 'terminated', ended_at = ?4, end_reason = ?5
                     WHERE tenant_id = ?1 AND user_id = ?2 AND session_id <> ?3 AND status <> 'terminated'",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(user.as_uuid()),
                    keep,
                    to_micros(at),
                    reason
                ])?;
            Ok(changed as u64)
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        tenant: TenantId,
        id: SessionId,
        presented: &[u8],
        next: &[u8],
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<RefreshOutcome, StoreError> {
        let (presented, next) = (presented.to_vec(), next.to_vec());
        // The writer runs one job at a time: read-check-write here is atomic.
        self.write(move |c| {
            let Some(session) = get_session(c, tenant, id)? else {
                return Ok(RefreshOutcome::Rejected);
            };
            let used: Option<Option<i64>> = c
                .prepare_cached(
                    "SELECT used_at FROM refresh_tokens
                     WHERE tenant_id = ?1 AND session_id = ?2 AND token_hash = ?3",
                )?
                .query_row(
                    params![blob(tenant.as_uuid()), blob(id.as_uuid()), presented],
                    |r| r.get(0),
                )
                .optional()?;
            match used {
                None => Ok(RefreshOutcome::Rejected),
                Some(Some(_)) => {
                    end_session(c, tenant, id, "refresh_token_reused", to_micros(now))?;
                    let ended = get_session(c, tenant, id)?.unwrap_or(session);
                    Ok(RefreshOutcome::Reused(ended))
                }
                Some(None) if !session.is_live(now, idle_cutoff) => Ok(RefreshOutcome::Rejected),
                Some(None) => {
                    let at = to_micros(now);
                    c.prepare_cached(
                        "UPDATE refresh_tokens SET used_at = ?4
                         WHERE tenant_id = ?1 AND session_id = ?2 AND token_hash = ?3",
                    )?
                    .execute(params![
                        blob(tenant.as_uuid()),
                        blob(id.as_uuid()),
                        presented,
                        at
                    ])?;
                    c.prepare_cached(
                        "INSERT INTO refresh_tokens (tenant_id, session_id, token_hash, issued_at)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![
                        blob(tenant.as_uuid()),
                        blob(id.as_uuid()),
                        next,
                        at
                    ])?;
                    c.prepare_cached(
                        "DELETE FROM refresh_tokens
                         WHERE tenant_id = ?1 AND session_id = ?2 AND used_at < ?3",
                    )?
                    .execute(params![
                        blob(tenant.as_uuid()),
                        blob(id.as_uuid()),
                        to_micros(now - crate::sessions::REUSE_MEMORY)
                    ])?;
                    c.prepare_cached(
                        "UPDATE sessions SET last_access_at = max(last_access_at, ?3)
                         WHERE tenant_id = ?1 AND session_id = ?2",
                    )?
                    .execute(params![
                        blob(tenant.as_uuid()),
                        blob(id.as_uuid()),
                        at
                    ])?;
                    let touched = get_session(c, tenant, id)?.unwrap_or(session);
                    Ok(RefreshOutcome::Rotated(touched))
                }
            }
        })
        .await
    }

    async fn purge_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        ended_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.write(move |c| {
            let deleted = c
                .prepare_cached(
                    "DELETE FROM sessions
                     WHERE (status = 'active' AND (expires_at <= ?1 OR last_access_at < ?2))
                        OR (status <> 'active' AND coalesce(ended_at, last_access_at) < ?3)",
                )?
                .execute(params![
                    to_micros(now),
                    to_micros(idle_cutoff),
                    to_micros(ended_cutoff)
                ])?;
            c.prepare_cached("DELETE FROM ws_tickets_spent WHERE expires_at <= ?1")?
                .execute(params![to_micros(now)])?;
            c.prepare_cached("DELETE FROM login_flows WHERE expires_at <= ?1")?
                .execute(params![to_micros(now)])?;
            Ok(deleted as u64)
        })
        .await
    }

    async fn put_login_flow(
        &self,
        key: &[u8],
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (key, payload) = (key.to_vec(), payload.to_string());
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO login_flows (flow_key, payload, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, payload, to_micros(expires_at)])?;
            Ok(())
        })
        .await
    }

    async fn take_login_flow(
        &self,
        key: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let key = key.to_vec();
        self.write(move |c| {
            let taken = c
                .prepare_cached(
                    "DELETE FROM login_flows WHERE flow_key = ?1 AND expires_at > ?2 RETURNING payload",
                )?
                .query_row(params![key, to_micros(now)], |r| r.get::<_, String>(0))
                .optional()?;
            Ok(taken)
        })
        .await
    }

    async fn spend_ticket(
        &self,
        tenant: TenantId,
        ticket: uuid::Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "INSERT INTO ws_tickets_spent (tenant_id, ticket_id, expires_at)
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(ticket),
                    to_micros(expires_at)
                ])?;
            Ok(n == 1)
        })
        .await
    }

    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.read(move |c| {
            Ok(c.prepare_cached(
                "SELECT count(*) FROM sessions
                 WHERE status = 'active' AND expires_at > ?1 AND last_access_at >= ?2",
            )?
            .query_row(params![to_micros(now), to_micros(idle_cutoff)], |r| {
                r.get::<_, i64>(0)
            })? as u64)
        })
        .await
    }
}

const KEY_COLUMNS: &str =
    "tenant_id, key_id, owner_id, name, prefix, secret_hash, role, workspace_id,
    created_at, expires_at, last_used_at, revoked_at";

fn api_key_from_row(row: &Row<'_>) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: ApiKeyId::from_uuid(row.uuid(1)?),
        owner_id: UserId::from_uuid(row.uuid(2)?),
        name: row.get(3)?,
        prefix: row.get(4)?,
        secret_hash: row.get(5)?,
        role: row.parsed(6)?,
        workspace_id: row.opt_uuid(7)?.map(WorkspaceId::from_uuid),
        created_at: row.instant(8)?,
        expires_at: row.opt_instant(9)?,
        last_used_at: row.opt_instant(10)?,
        revoked_at: row.opt_instant(11)?,
    })
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn create_api_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let k = key.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ))?
            .execute(params![
                blob(k.tenant_id.as_uuid()),
                blob(k.id.as_uuid()),
                blob(k.owner_id.as_uuid()),
                k.name,
                k.prefix,
                k.secret_hash,
                k.role.as_str(),
                k.workspace_id.map(|w| blob(w.as_uuid())),
                to_micros(k.created_at),
                k.expires_at.map(to_micros),
                k.last_used_at.map(to_micros),
                k.revoked_at.map(to_micros),
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 AND key_id = ?2"
            ))?
            .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
                Ok(api_key_from_row(r))
            })
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_api_keys(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
    ) -> Result<Vec<ApiKey>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys
                 WHERE tenant_id = ?1 AND (?2 IS NULL OR owner_id = ?2) ORDER BY key_id DESC"
            ))?;
            let owner = owner.map(|o| blob(o.as_uuid()));
            collect(
                stmt.query(params![blob(tenant.as_uuid()), owner])?,
                api_key_from_row,
            )
        })
        .await
    }

    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE api_keys SET revoked_at = ?3
                     WHERE tenant_id = ?1 AND key_id = ?2 AND revoked_at IS NULL",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    to_micros(at)
                ])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn touch_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, 0), ?3)
                 WHERE tenant_id = ?1 AND key_id = ?2",
            )?
            .execute(params![
                blob(tenant.as_uuid()),
                blob(id.as_uuid()),
                to_micros(at)
            ])?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl SigningKeyStore for SqliteStore {
    async fn publish_key(&self, key: &PublicKeyRecord) -> Result<(), StoreError> {
        let k = key.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO jwt_keys (kid, alg, n, e, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (kid) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
            )?
            .execute(params![
                k.kid,
                k.alg,
                k.n,
                k.e,
                to_micros(k.created_at),
                to_micros(k.expires_at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublicKeyRecord>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT kid, alg, n, e, created_at, expires_at FROM jwt_keys
                 WHERE expires_at > ?1 ORDER BY created_at DESC",
            )?;
            collect(stmt.query(params![to_micros(now)])?, |r| {
                Ok(PublicKeyRecord {
                    kid: r.get(0)?,
                    alg: r.get(1)?,
                    n: r.get(2)?,
                    e: r.get(3)?,
                    created_at: from_micros(r.get(4)?)?,
                    expires_at: from_micros(r.get(5)?)?,
                })
            })
        })
        .await
    }
}
