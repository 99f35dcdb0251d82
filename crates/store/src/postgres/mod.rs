//! The shared engine: PostgreSQL, for any number of stateless hub replicas.
//!
//! - A connection pool (deadpool) whose connections are verified before reuse, so a
//!   PostgreSQL restart costs no hub restart: dead connections are dropped and replaced.
//! - Every session runs with `statement_timeout`, `lock_timeout` and
//!   `idle_in_transaction_session_timeout`, so a stuck query cannot hold a request forever.
//! - A supervisor task connects with exponential backoff and applies migrations; until it
//!   has, the store answers `Unavailable` and reports itself unhealthy. The hub never
//!   exits because PostgreSQL is down.

mod audit;
mod identity;
pub(crate) mod listen;
mod logs;
mod rows;
mod tenants;
mod workspaces;

use crate::{StoreError, migrate};
use coditect_proto::ComponentHealth;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
pub use logs::LOG_CHANNEL;
use rand::Rng;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use tracing::Instrument;

/// Connection settings for the shared store. `url` holds a secret (the password): it is
/// never logged nor shown; use [`PgConfig::target`] to name the server.
#[derive(Clone)]
pub struct PgConfig {
    pub url: String,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    /// Longest wait for a free pooled connection.
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    pub application_name: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConfig")
            .field("target", &self.target())
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> PgConfig {
        PgConfig {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            application_name: "coditect".into(),
        }
    }

    /// Checks that `url` is a PostgreSQL connection URL this build can use. The error never
    /// repeats the URL (it may hold a password).
    pub fn validate_url(url: &str) -> Result<(), String> {
        const SHAPE: &str =
            "a postgres:// URL with a host (postgres://user:password@host:port/database)";
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(SHAPE.into());
        }
        let cfg = tokio_postgres::Config::from_str(url).map_err(|_| SHAPE.to_string())?;
        if cfg.get_hosts().is_empty() {
            return Err(SHAPE.into());
        }
        if !matches!(
            cfg.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable | tokio_postgres::config::SslMode::Prefer
        ) {
            return Err("sslmode=disable or prefer: this build connects without TLS".into());
        }
        Ok(())
    }

    /// `user@host:port/database`, for logs: everything but the password.
    pub fn target(&self) -> String {
        let Ok(cfg) = tokio_postgres::Config::from_str(&self.url) else {
            return "<invalid url>".into();
        };
        let host = cfg
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "{}@{host}:{port}/{}",
            cfg.get_user().unwrap_or("?"),
            cfg.get_dbname().unwrap_or("?")
        )
    }

    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut cfg = tokio_postgres::Config::from_str(&self.url)
            .map_err(|_| StoreError::Internal("invalid postgres url".into()))?;
        let ms = |d: Duration| d.as_millis().max(1);
        cfg.connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name(&self.application_name)
            .options(format!(
                "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
                ms(self.statement_timeout),
                ms(self.statement_timeout),
                ms(self.statement_timeout * 2),
            ));
        Ok(cfg)
    }
}

/// Where the schema supervisor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchemaState {
    /// Still trying to reach the server and migrate.
    Connecting {
        attempts: u32,
    },
    Ready,
    /// The schema cannot be brought up to date by this binary; an operator must act.
    Failed(String),
}

/// Handle to the shared store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    target: String,
    schema: watch::Receiver<SchemaState>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl PgStore {
    /// Builds the pool and starts the supervisor; returns at once, even when the server
    /// is down. Use [`PgStore::wait_ready`] to wait for the schema.
    pub fn start(config: &PgConfig) -> Result<PgStore, StoreError> {
        let manager = Manager::from_config(
            config.pg_config()?,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the postgres pool: {e}")))?;
        let target = config.target();
        let (state, schema) = watch::channel(SchemaState::Connecting { attempts: 0 });
        let supervisor = tokio::spawn(supervise(pool.clone(), target.clone(), state));
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                target,
                schema,
                supervisor: Mutex::new(Some(supervisor)),
            }),
        })
    }

    pub fn target(&self) -> &str {
        &self.inner.target
    }

    pub fn schema_state(&self) -> SchemaState {
        self.inner.schema.borrow().clone()
    }

    /// Waits until the schema is migrated (or failed for good), at most `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), StoreError> {
        let mut rx = self.inner.schema.clone();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| !matches!(s, SchemaState::Connecting { .. })),
        )
        .await;
        match waited {
            Ok(Ok(state)) => match &*state {
                SchemaState::Failed(msg) => Err(StoreError::Migration(msg.clone())),
                _ => Ok(()),
            },
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::Unavailable("postgres is not reachable".into())),
        }
    }

    /// A pooled connection, once the schema is ready.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        match &*self.inner.schema.borrow() {
            SchemaState::Ready => {}
            SchemaState::Connecting { .. } => {
                return Err(StoreError::Unavailable(
                    "postgres is not reachable yet".into(),
                ));
            }
            SchemaState::Failed(msg) => return Err(StoreError::Migration(msg.clone())),
        }
        let client = self.inner.pool.get().await?;
        let status = self.inner.pool.status();
        metrics::gauge!("store_pg_pool_connections").set(status.size as f64);
        Ok(client)
    }

    /// Runs one statement (prepared once per connection); rows changed.
    pub(crate) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let span = crate::trace::call("postgresql", crate::trace::verb(sql), Some(sql));
        async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.execute(&stmt, params).await?)
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let span = crate::trace::call("postgresql", crate::trace::verb(sql), Some(sql));
        async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.query(&stmt, params).await?)
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, StoreError> {
        let span = crate::trace::call("postgresql", crate::trace::verb(sql), Some(sql));
        async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await?;
            Ok(client.query_opt(&stmt, params).await?)
        }
        .instrument(span)
        .await
    }

    pub async fn probe(&self) -> ComponentHealth {
        let started = Instant::now();
        let ping = async {
            let client = self.inner.pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, StoreError>(())
        };
        let result = match tokio::time::timeout(Duration::from_secs(2), ping).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("probe timed out".into())),
        };
        let message = match (&result, self.schema_state()) {
            (_, SchemaState::Failed(_)) => Some("schema migration failed".to_string()),
            (Err(_), _) => Some("unreachable".to_string()),
            (Ok(()), SchemaState::Connecting { .. }) => Some("migrating".to_string()),
            (Ok(()), SchemaState::Ready) => None,
        };
        ComponentHealth {
            name: "postgres".into(),
            healthy: message.is_none(),
            latency_ms: coditect_proto::duration_ms(started.elapsed()),
            critical: true,
            message,
        }
    }

    pub async fn close(&self) {
        let supervisor = self.inner.supervisor.lock().ok().and_then(|mut s| s.take());
        if let Some(task) = supervisor {
            task.abort();
        }
        self.inner.pool.close();
        tracing::info!(server = %self.inner.target, "postgres store closed");
    }
}

async fn supervise(pool: Pool, target: String, state: watch::Sender<SchemaState>) {
    const FIRST: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(10);
    let mut delay = FIRST;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match migrate_pg(&pool).await {
            Ok(()) => {
                tracing::info!(server = %target, attempts, "postgres store ready");
                state.send_replace(SchemaState::Ready);
                return;
            }
            Err(StoreError::Migration(msg)) => {
                tracing::error!(server = %target, error = %msg, "postgres schema cannot be migrated; fix the database or the binary");
                state.send_replace(SchemaState::Failed(msg));
                return;
            }
            Err(e) => {
                let jittered = delay.mul_f64(rand::rng().random_range(0.8..1.2));
                let retry_in_ms = jittered.as_millis() as u64;
                if let StoreError::Unavailable(_) = e {
                    tracing::warn!(server = %target, attempt = attempts, retry_in_ms, error = %e, "postgres unreachable, retrying");
                } else {
                    // Reached but refused: credentials, missing database, permissions.
                    tracing::error!(server = %target, attempt = attempts, retry_in_ms, error = %e, "postgres refused the hub, retrying");
                }
                state.send_replace(SchemaState::Connecting { attempts });
                tokio::time::sleep(jittered).await;
                delay = (delay * 2).min(MAX);
            }
        }
    }
}

/// Advisory-lock key that serializes migrations across replicas ("coditect" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_6469_7465_6374;

async fn migrate_pg(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Migrations may legitimately outlast the per-query timeouts, and waiting for another
    // replica's migration (the advisory lock) is the point.
    tx.batch_execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        .await?;
    tx.query_one("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(migrate::BOOKKEEPING).await?;
    let applied = tx
        .query("SELECT version, checksum FROM coditect_migrations", &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get::<_, i64>(0)?, r.try_get::<_, String>(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(|e| {
            StoreError::Migration(format!("coditect_migrations has an unexpected shape: {e}"))
        })?;
    let plan = migrate::plan(&applied, migrate::POSTGRES)?;
    plan.log("postgres");
    for m in &plan.pending {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| match StoreError::from(e) {
                transient @ StoreError::Unavailable(_) => transient,
                other => StoreError::Migration(format!("{} failed: {other}", m.name)),
            })?;
        tx.execute(
            "INSERT INTO coditect_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)",
            &[&m.version, &m.name, &m.checksum(), &chrono::Utc::now().to_rfc3339()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
