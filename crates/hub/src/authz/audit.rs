//! Writing the audit trail.

use super::Principal;
use crate::clock::Clock;
use crate::http::middleware::RequestId;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use coditect_proto::{AuditId, TenantId};
use coditect_store::{AuditRecord, Store};
use std::convert::Infallible;
use std::net::SocketAddr;

/// Where a request came from, for the audit trail and login throttling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        // Printable and bounded: it is stored and shown to admins.
        let user_agent = parts
            .headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect());
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone());
        Ok(RequestMeta {
            ip,
            user_agent,
            request_id,
        })
    }
}

/// One event to record. Build with [`AuditEvent::by`] or [`AuditEvent::anonymous`].
#[derive(Debug, Clone)]
pub struct AuditEvent {
    tenant_id: TenantId,
    actor_type: &'static str,
    actor_id: Option<String>,
    action: &'static str,
    resource_type: &'static str,
    resource_id: Option<String>,
    result: &'static str,
    detail: Option<String>,
}

impl AuditEvent {
    /// A successful act of `principal`.
    pub fn by(
        principal: &Principal,
        action: &'static str,
        resource_type: &'static str,
        resource_id: Option<String>,
    ) -> AuditEvent {
        let (actor_type, actor_id) = principal.actor();
        AuditEvent {
            tenant_id: principal.tenant_id,
            actor_type,
            actor_id: Some(actor_id),
            action,
            resource_type,
            resource_id,
            result: "success",
            detail: None,
        }
    }

    /// An act before authentication (a login), attributed to what was claimed.
    pub fn anonymous(
        tenant_id: TenantId,
        actor_id: Option<String>,
        action: &'static str,
        resource_type: &'static str,
        resource_id: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            tenant_id,
            actor_type: "anonymous",
            actor_id,
            action,
            resource_type,
            resource_id,
            result: "success",
            detail: None,
        }
    }

    /// An act of the hub itself (the orchestrator, a sweeper).
    pub fn system(
        tenant_id: TenantId,
        action: &'static str,
        resource_type: &'static str,
        resource_id: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            tenant_id,
            actor_type: "system",
            actor_id: None,
            action,
            resource_type,
            resource_id,
            result: "success",
            detail: None,
        }
    }

    /// An act of an operator on the command line.
    pub fn cli(
        tenant_id: TenantId,
        operator: Option<String>,
        action: &'static str,
        resource_type: &'static str,
        resource_id: Option<String>,
    ) -> AuditEvent {
        AuditEvent {
            tenant_id,
            actor_type: "cli",
            actor_id: operator,
            action,
            resource_type,
            resource_id,
            result: "success",
            detail: None,
        }
    }

    /// The act was attempted and failed (wrong password, reused token…).
    pub fn failed(mut self, detail: impl Into<String>) -> AuditEvent {
        self.result = "failure";
        self.detail = Some(detail.into());
        self
    }

    /// The act was refused by authorization.
    pub fn denied(mut self, detail: impl Into<String>) -> AuditEvent {
        self.result = "denied";
        self.detail = Some(detail.into());
        self
    }

    /// Adds a short note (what changed); never a secret.
    pub fn detail(mut self, detail: impl Into<String>) -> AuditEvent {
        self.detail = Some(detail.into());
        self
    }

    /// Re-attributes the event to a known user (a login that found its account).
    pub fn as_user(mut self, tenant_id: TenantId, user_id: String) -> AuditEvent {
        self.tenant_id = tenant_id;
        self.actor_type = "user";
        self.actor_id = Some(user_id);
        self
    }
}

pub struct Auditor<'a> {
    store: &'a Store,
    clock: &'a Clock,
}

impl<'a> Auditor<'a> {
    pub(super) fn new(store: &'a Store, clock: &'a Clock) -> Auditor<'a> {
        Auditor { store, clock }
    }

    /// Appends the event. A failure to write is logged loudly but does not fail the
    /// request: the act itself has already happened (or been refused).
    pub async fn record(&self, event: AuditEvent, meta: &RequestMeta) {
        let record = AuditRecord {
            tenant_id: event.tenant_id,
            id: AuditId::new(),
            at: self.clock.now(),
            actor_type: event.actor_type.into(),
            actor_id: event.actor_id,
            action: event.action.into(),
            resource_type: event.resource_type.into(),
            resource_id: event.resource_id,
            result: event.result.into(),
            ip: meta.ip.clone(),
            user_agent: meta.user_agent.clone(),
            request_id: meta.request_id.clone(),
            detail: event.detail,
        };
        if let Err(e) = self.store.audit().append_audit(&[record]).await {
            metrics::counter!("audit_write_failures_total").increment(1);
            tracing::error!(error = %e, action = event.action, "cannot write the audit trail");
        }
    }
}
