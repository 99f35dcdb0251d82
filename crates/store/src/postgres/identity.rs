//! Users, sessions (with refresh tokens), API keys and signing keys on PostgreSQL.

use super::PgStore;
use super::rows::{PgRowExt, map_rows};
use crate::StoreError;
use crate::api_keys::{ApiKey, ApiKeyStore};
use crate::sessions::{RefreshOutcome, Session, SessionStore};
use crate::signing_keys::{PublicKeyRecord, SigningKeyStore};
use crate::users::{User, UserStore, UserUpdate};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{ApiKeyId, Email, SessionId, TenantId, UserId, WorkspaceId};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use tracing::Instrument;
use uuid::Uuid;

const USER_COLUMNS: &str = "tenant_id, user_id, email, password_hash, role, platform_admin, disabled, created_at, updated_at";

fn user_from_row(row: &Row) -> Result<User, StoreError> {
    let email: String = row.col(2)?;
    Ok(User {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: UserId::from_uuid(row.col(1)?),
        email: Email::parse(&email).map_err(StoreError::Internal)?,
        password_hash: row.col(3)?,
        role: row.parsed(4)?,
        platform_admin: row.col(5)?,
        disabled: row.col(6)?,
        created_at: row.col(7)?,
        updated_at: row.col(8)?,
    })
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, u: &User) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "INSERT INTO users ({USER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ),
            &[
                &u.tenant_id.as_uuid(),
                &u.id.as_uuid(),
                &u.email.as_str(),
                &u.password_hash,
                &u.role.as_str(),
                &u.platform_admin,
                &u.disabled,
                &u.created_at,
                &u.updated_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn get_user(&self, tenant: TenantId, id: UserId) -> Result<Option<User>, StoreError> {
        self.query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND user_id = $2"),
            &[&tenant.as_uuid(), &id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn find_user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
        self.query_opt(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"),
            &[&email.as_str()],
        )
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn list_users(
        &self,
        tenant: TenantId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<User>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users
                     WHERE tenant_id = $1 AND ($2::uuid IS NULL OR user_id > $2)
                     ORDER BY user_id LIMIT $3"
                ),
                &[
                    &tenant.as_uuid(),
                    &after.map(|a| a.as_uuid()),
                    &i64::from(limit),
                ],
            )
            .await?;
        map_rows(&rows, user_from_row)
    }

    async fn update_user(
        &self,
        tenant: TenantId,
        id: UserId,
        update: &UserUpdate,
        at: DateTime<Utc>,
    ) -> Result<Option<User>, StoreError> {
        self.query_opt(
            &format!(
                "UPDATE users SET
                    role = coalesce($3, role),
                    disabled = coalesce($4, disabled),
                    password_hash = coalesce($5, password_hash),
                    updated_at = $6
                 WHERE tenant_id = $1 AND user_id = $2
                 RETURNING {USER_COLUMNS}"
            ),
            &[
                &tenant.as_uuid(),
                &id.as_uuid(),
                &update.role.map(|r| r.as_str()),
                &update.disabled,
                &update.password_hash,
                &at,
            ],
        )
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn count_users(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT count(*) FROM users", &[]).await?;
        let n: i64 = rows.first().map(|r| r.col(0)).transpose()?.unwrap_or(0);
        Ok(n as u64)
    }

    async fn reset_login_throttle(
        &self,
        tenant: TenantId,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO login_resets (tenant_id, user_id, reset_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET reset_at = excluded.reset_at",
            &[&tenant.as_uuid(), &user.as_uuid(), &at],
        )
        .await?;
        Ok(())
    }

    async fn login_reset_at(
        &self,
        tenant: TenantId,
        user: UserId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.query_opt(
            "SELECT reset_at FROM login_resets WHERE tenant_id = $1 AND user_id = $2",
            &[&tenant.as_uuid(), &user.as_uuid()],
        )
        .await?
        .map(|r| r.col(0))
        .transpose()
    }
}

const SESSION_COLUMNS: &str = "tenant_id, session_id, user_id, status, created_at, last_access_at,
    expires_at, ended_at, end_reason, ip, user_agent, workspace_id, login_method";

fn session_from_row(row: &Row) -> Result<Session, StoreError> {
    Ok(Session {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: SessionId::from_uuid(row.col(1)?),
        user_id: UserId::from_uuid(row.col(2)?),
        status: row.parsed(3)?,
        created_at: row.col(4)?,
        last_access_at: row.col(5)?,
        expires_at: row.col(6)?,
        ended_at: row.col(7)?,
        end_reason: row.col(8)?,
        ip: row.col(9)?,
        user_agent: row.col(10)?,
        workspace_id: row.col::<Option<Uuid>>(11)?.map(WorkspaceId::from_uuid),
        login_method: row.col(12)?,
    })
}

const END_SESSION: &str =
    "UPDATE sessions SET status = 'terminated', ended_at = $3, end_reason = $4
    WHERE tenant_id = $1 AND session_id = $2 AND status <> 'terminated'";

#[async_trait]
impl SessionStore for PgStore {
    async fn create_session(&self, s: &Session, refresh_hash: &[u8]) -> Result<(), StoreError> {
        let span = crate::trace::call("postgresql", "create_session", None);
        async {
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            let workspace = s.workspace_id.map(|w| w.as_uuid());
            let params: [&(dyn ToSql + Sync); 13] = [
                &s.tenant_id.as_uuid(),
                &s.id.as_uuid(),
                &s.user_id.as_uuid(),
                &s.status.as_str(),
                &s.created_at,
                &s.last_access_at,
                &s.expires_at,
                &s.ended_at,
                &s.end_reason,
                &s.ip,
                &s.user_agent,
                &workspace,
                &s.login_method,
            ];
            tx.execute(
                &format!(
                    "INSERT INTO sessions ({SESSION_COLUMNS})
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ),
                &params,
            )
            .await?;
            tx.execute(
                "INSERT INTO refresh_tokens (tenant_id, session_id, token_hash, issued_at) VALUES ($1, $2, $3, $4)",
                &[&s.tenant_id.as_uuid(), &s.id.as_uuid(), &refresh_hash, &s.created_at],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn get_session(
        &self,
        tenant: TenantId,
        id: SessionId,
    ) -> Result<Option<Session>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = $1 AND session_id = $2"
            ),
            &[&tenant.as_uuid(), &id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(session_from_row)
        .transpose()
    }

    async fn touch_session(
        &self,
        tenant: TenantId,
        id: SessionId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE sessions SET last_access_at = greatest(last_access_at, $3)
             WHERE tenant_id = $1 AND session_id = $2",
            &[&tenant.as_uuid(), &id.as_uuid(), &at],
        )
        .await
        .map(|_| ())
    }

    async fn end_session(
        &self,
        tenant: TenantId,
        id: SessionId,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                END_SESSION,
                &[&tenant.as_uuid(), &id.as_uuid(), &at, &reason],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn end_user_sessions(
        &self,
        tenant: TenantId,
        user: UserId,
        keep: Option<SessionId>,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.execute(
            "UPDATE sessions SET status = 'terminated', ended_at = $4, end_reason = $5
             WHERE tenant_id = $1 AND user_id = $2 AND ($3::uuid IS NULL OR session_id <> $3)
               AND status <> 'terminated'",
            &[
                &tenant.as_uuid(),
                &user.as_uuid(),
                &keep.map(|k| k.as_uuid()),
                &at,
                &reason,
            ],
        )
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
        let span = crate::trace::call("postgresql", "rotate_refresh", None);
        async {
            let (t, s): (Uuid, Uuid) = (tenant.as_uuid(), id.as_uuid());
            let mut client = self.client().await?;
            let tx = client.transaction().await?;
            // The session row lock serializes concurrent refreshes of one session.
            let Some(row) = tx
                .query_opt(
                    &format!(
                        "SELECT {SESSION_COLUMNS} FROM sessions
                         WHERE tenant_id = $1 AND session_id = $2 FOR UPDATE"
                    ),
                    &[&t, &s],
                )
                .await?
            else {
                return Ok(RefreshOutcome::Rejected);
            };
            let session = session_from_row(&row)?;
            let used = tx
                .query_opt(
                    "SELECT used_at FROM refresh_tokens
                     WHERE tenant_id = $1 AND session_id = $2 AND token_hash = $3",
                    &[&t, &s, &presented],
                )
                .await?
                .map(|r| r.col::<Option<DateTime<Utc>>>(0))
                .transpose()?;
            let outcome = match used {
                None => RefreshOutcome::Rejected,
                Some(Some(_)) => {
                    let ended = tx
                        .query_opt(
                            &format!("{END_SESSION} RETURNING {SESSION_COLUMNS}"),
                            &[&t, &s, &now, &"refresh_token_reused"],
                        )
                        .await?
                        .as_ref()
                        .map(session_from_row)
                        .transpose()?;
                    RefreshOutcome::Reused(ended.unwrap_or(session))
                }
                Some(None) if !session.is_live(now, idle_cutoff) => RefreshOutcome::Rejected,
                Some(None) => {
                    tx.execute(
                        "UPDATE refresh_tokens SET used_at = $4
                         WHERE tenant_id = $1 AND session_id = $2 AND token_hash = $3",
                        &[&t, &s, &presented, &now],
                    )
                    .await?;
                    tx.execute(
                        "INSERT INTO refresh_tokens (tenant_id, session_id, token_hash, issued_at)
                         VALUES ($1, $2, $3, $4)",
                        &[&t, &s, &next, &now],
                    )
                    .await?;
                    tx.execute(
                        "DELETE FROM refresh_tokens
                         WHERE tenant_id = $1 AND session_id = $2 AND used_at < $3",
                        &[&t, &s, &(now - crate::sessions::REUSE_MEMORY)],
                    )
                    .await?;
                    let touched = tx
                        .query_one(
                            &format!(
                                "UPDATE sessions SET last_access_at = greatest(last_access_at, $3)
                                 WHERE tenant_id = $1 AND session_id = $2 RETURNING {SESSION_COLUMNS}"
                            ),
                            &[&t, &s, &now],
                        )
                        .await?;
                    RefreshOutcome::Rotated(session_from_row(&touched)?)
                }
            };
            tx.commit().await?;
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    async fn purge_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
        ended_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let deleted = self
            .execute(
                "DELETE FROM sessions
                 WHERE (status = 'active' AND (expires_at <= $1 OR last_access_at < $2))
                    OR (status <> 'active' AND coalesce(ended_at, last_access_at) < $3)",
                &[&now, &idle_cutoff, &ended_cutoff],
            )
            .await?;
        self.execute(
            "DELETE FROM ws_tickets_spent WHERE expires_at <= $1",
            &[&now],
        )
        .await?;
        self.execute("DELETE FROM login_flows WHERE expires_at <= $1", &[&now])
            .await?;
        Ok(deleted)
    }

    async fn put_login_flow(
        &self,
        key: &[u8],
        payload: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO login_flows (flow_key, payload, expires_at) VALUES ($1, $2, $3)",
            &[&key, &payload, &expires_at],
        )
        .await?;
        Ok(())
    }

    async fn take_login_flow(
        &self,
        key: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let row = self
            .query_opt(
                "DELETE FROM login_flows WHERE flow_key = $1 AND expires_at > $2 RETURNING payload",
                &[&key, &now],
            )
            .await?;
        row.map(|r| r.col(0)).transpose()
    }

    async fn spend_ticket(
        &self,
        tenant: TenantId,
        ticket: Uuid,
        expires_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "INSERT INTO ws_tickets_spent (tenant_id, ticket_id, expires_at)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&tenant.as_uuid(), &ticket, &expires_at],
            )
            .await?;
        Ok(n == 1)
    }

    async fn count_live_sessions(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let rows = self
            .query(
                "SELECT count(*) FROM sessions
                 WHERE status = 'active' AND expires_at > $1 AND last_access_at >= $2",
                &[&now, &idle_cutoff],
            )
            .await?;
        let n: i64 = rows.first().map(|r| r.col(0)).transpose()?.unwrap_or(0);
        Ok(n as u64)
    }
}

const KEY_COLUMNS: &str =
    "tenant_id, key_id, owner_id, name, prefix, secret_hash, role, workspace_id,
    created_at, expires_at, last_used_at, revoked_at";

fn api_key_from_row(row: &Row) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: ApiKeyId::from_uuid(row.col(1)?),
        owner_id: UserId::from_uuid(row.col(2)?),
        name: row.col(3)?,
        prefix: row.col(4)?,
        secret_hash: row.col(5)?,
        role: row.parsed(6)?,
        workspace_id: row.col::<Option<Uuid>>(7)?.map(WorkspaceId::from_uuid),
        created_at: row.col(8)?,
        expires_at: row.col(9)?,
        last_used_at: row.col(10)?,
        revoked_at: row.col(11)?,
    })
}

#[async_trait]
impl ApiKeyStore for PgStore {
    async fn create_api_key(&self, k: &ApiKey) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "INSERT INTO api_keys ({KEY_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            ),
            &[
                &k.tenant_id.as_uuid(),
                &k.id.as_uuid(),
                &k.owner_id.as_uuid(),
                &k.name,
                &k.prefix,
                &k.secret_hash,
                &k.role.as_str(),
                &k.workspace_id.map(|w| w.as_uuid()),
                &k.created_at,
                &k.expires_at,
                &k.last_used_at,
                &k.revoked_at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn get_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKey>, StoreError> {
        self.query_opt(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND key_id = $2"),
            &[&tenant.as_uuid(), &id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(api_key_from_row)
        .transpose()
    }

    async fn list_api_keys(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
    ) -> Result<Vec<ApiKey>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {KEY_COLUMNS} FROM api_keys
                     WHERE tenant_id = $1 AND ($2::uuid IS NULL OR owner_id = $2) ORDER BY key_id DESC"
                ),
                &[&tenant.as_uuid(), &owner.map(|o| o.as_uuid())],
            )
            .await?;
        map_rows(&rows, api_key_from_row)
    }

    async fn revoke_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE api_keys SET revoked_at = $3
                 WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid(), &at],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn touch_api_key(
        &self,
        tenant: TenantId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE api_keys SET last_used_at = greatest(last_used_at, $3)
             WHERE tenant_id = $1 AND key_id = $2",
            &[&tenant.as_uuid(), &id.as_uuid(), &at],
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl SigningKeyStore for PgStore {
    async fn publish_key(&self, k: &PublicKeyRecord) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO jwt_keys (kid, alg, n, e, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (kid) DO UPDATE SET expires_at = greatest(jwt_keys.expires_at, excluded.expires_at)",
            &[&k.kid, &k.alg, &k.n, &k.e, &k.created_at, &k.expires_at],
        )
        .await
        .map(|_| ())
    }

    async fn list_keys(&self, now: DateTime<Utc>) -> Result<Vec<PublicKeyRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT kid, alg, n, e, created_at, expires_at FROM jwt_keys
                 WHERE expires_at > $1 ORDER BY created_at DESC",
                &[&now],
            )
            .await?;
        map_rows(&rows, |r| {
            Ok(PublicKeyRecord {
                kid: r.col(0)?,
                alg: r.col(1)?,
                n: r.col(2)?,
                e: r.col(3)?,
                created_at: r.col(4)?,
                expires_at: r.col(5)?,
            })
        })
    }
}
