//! The audit trail: append-only, one record per security-relevant event.

use crate::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{AuditId, TenantId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// `TenantId::NONE` for events that belong to no tenant (unknown login).
    pub tenant_id: TenantId,
    pub id: AuditId,
    pub at: DateTime<Utc>,
    /// `user`, `api_key` or `anonymous`.
    pub actor_type: String,
    pub actor_id: Option<String>,
    /// Dotted verb, e.g. `auth.login`, `api_key.create`, `access.denied`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    /// `success`, `failure` or `denied`.
    pub result: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Short free text (why it failed), never a secret.
    pub detail: Option<String>,
}

/// Newest first. `before` is the id of the last record of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub tenant_id: TenantId,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub before: Option<AuditId>,
    pub limit: u32,
}

#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}
