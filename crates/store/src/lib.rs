//! Persistence for CODITECT behind small per-domain traits.
//!
//! Two engines implement every domain trait:
//! - [`sqlite`]: the embedded default, one WAL file per node, always present (in shared
//!   mode it is the node-local store that later holds the outbox);
//! - [`postgres`]: the shared engine that any number of hub replicas use together.
//!
//! [`Store`] opens what the configuration asks for and hands out each domain through an
//! accessor (`store.tenants()`), routed to the engine that owns that domain.
//!
//! Invariants: nothing here knows HTTP; every table is keyed by `tenant_id` first (the
//! future distribution column); domain traits speak in domain types (no SQL, no rows), so
//! another engine (the notes' FoundationDB) can be added by implementing them.

pub mod api_keys;
pub mod audit;
pub mod error;
pub mod files;
pub mod logs;
pub mod migrate;
pub mod pipeline;
pub mod postgres;
pub mod sessions;
pub mod signing_keys;
pub mod sqlite;
pub mod tenants;
mod trace;
pub mod users;
pub mod workspaces;

pub use api_keys::{ApiKey, ApiKeyStore};
pub use audit::{AuditQuery, AuditRecord, AuditStore};
pub use error::StoreError;
pub use logs::{
    AppendEvent, Appended, ChunkRef, ChunkScan, Durability, EncodedChunk, LogRecord, LogStore,
    Order, Stored,
};
pub use pipeline::OutboxStatus;
pub use postgres::{PgConfig, PgStore, SchemaState};
pub use sessions::{RefreshOutcome, Session, SessionStore};
pub use signing_keys::{PublicKeyRecord, SigningKeyStore};
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};
pub use tenants::{Tenant, TenantStore};
pub use users::{User, UserStore, UserUpdate};
pub use workspaces::{
    Build, BuildStatus, Desired, Lifecycle, Observation, Quota, StatePut, Status, Template, Usage,
    Workspace, WorkspaceStore,
};

use chrono::{DateTime, SubsecRound, Utc};
use coditect_proto::ComponentHealth;

/// The current instant at the precision both engines store (microseconds).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The node-local embedded store (always opened).
    pub sqlite: SqliteConfig,
    /// The shared store; `None` runs embedded only.
    pub postgres: Option<PgConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// One node, SQLite only.
    Embedded,
    /// Shared PostgreSQL plus the node-local SQLite.
    Shared,
}

impl StorageMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StorageMode::Embedded => "embedded",
            StorageMode::Shared => "shared",
        }
    }
}

/// `store.users()` and friends: each shared domain is served by PostgreSQL in shared mode
/// and by the node's SQLite otherwise.
macro_rules! domain_accessors {
    ($($name:ident: $domain:ident),* $(,)?) => {
        $(
            pub fn $name(&self) -> &dyn $domain {
                match &self.shared {
                    Some(pg) => pg,
                    None => &self.local,
                }
            }
        )*
    };
}

/// Every store a node uses, opened together and closed together. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    local: SqliteStore,
    shared: Option<PgStore>,
    events: tokio::sync::broadcast::Sender<logs::AppendEvent>,
    listener: std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// Append events buffered per live-tail subscriber before it must resync.
const EVENT_BUFFER: usize = 4096;

impl Store {
    /// Opens the local store (failing if it cannot) and, in shared mode, starts connecting
    /// to PostgreSQL in the background (never failing because the server is down).
    pub async fn open(config: StoreConfig) -> Result<Store, StoreError> {
        let local = SqliteStore::open(config.sqlite).await?;
        let shared = match &config.postgres {
            Some(pg) => match PgStore::start(pg) {
                Ok(store) => Some(store),
                Err(e) => {
                    local.close().await;
                    return Err(e);
                }
            },
            None => None,
        };
        let (events, _) = tokio::sync::broadcast::channel(EVENT_BUFFER);
        let listener = config
            .postgres
            .as_ref()
            .map(|pg| postgres::listen::spawn(pg, events.clone()));
        Ok(Store {
            local,
            shared,
            events,
            listener: std::sync::Arc::new(std::sync::Mutex::new(listener)),
        })
    }

    pub fn mode(&self) -> StorageMode {
        match self.shared {
            Some(_) => StorageMode::Shared,
            None => StorageMode::Embedded,
        }
    }

    pub fn local(&self) -> &SqliteStore {
        &self.local
    }

    pub fn shared(&self) -> Option<&PgStore> {
        self.shared.as_ref()
    }

    /// Whether every engine is reachable and migrated (for readiness probes).
    pub fn is_ready(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|pg| pg.schema_state() == SchemaState::Ready)
    }

    /// Probes every engine concurrently; in shared mode also the outbox, which is
    /// unhealthy (not critical: the hub is degraded) while chunks wait for PostgreSQL.
    pub async fn probe(&self) -> Vec<ComponentHealth> {
        let local = self.local.probe();
        match &self.shared {
            Some(pg) => {
                let (local, shared, outbox) = tokio::join!(local, pg.probe(), self.probe_outbox());
                vec![local, shared, outbox]
            }
            None => vec![local.await],
        }
    }

    async fn probe_outbox(&self) -> ComponentHealth {
        /// Chunks younger than this are in flight, not waiting.
        const WAITING: chrono::Duration = chrono::Duration::seconds(5);
        let started = std::time::Instant::now();
        let status = self.outbox_status().await;
        let (healthy, message) = match status {
            Ok(s) if s.set_aside > 0 => (
                false,
                Some(format!(
                    "{} batches postgres refused are kept in log_outbox_set_aside",
                    s.set_aside
                )),
            ),
            Ok(s) if s.oldest.is_none_or(|o| Utc::now() - o < WAITING) => (true, None),
            Ok(s) => (
                false,
                Some(format!("{} batches waiting for postgres", s.depth)),
            ),
            Err(_) => (false, Some("unreadable".to_string())),
        };
        ComponentHealth {
            name: "outbox".into(),
            healthy,
            latency_ms: coditect_proto::duration_ms(started.elapsed()),
            critical: false,
            message,
        }
    }

    domain_accessors! {
        tenants: TenantStore,
        users: UserStore,
        sessions: SessionStore,
        api_keys: ApiKeyStore,
        workspaces: WorkspaceStore,
        audit: AuditStore,
        signing_keys: SigningKeyStore,
        logs: LogStore,
    }

    pub async fn close(&self) {
        let listener = self.listener.lock().ok().and_then(|mut l| l.take());
        if let Some(task) = listener {
            task.abort();
        }
        if let Some(pg) = &self.shared {
            pg.close().await;
        }
        self.local.close().await;
    }
}
