//! `GET /api/v1/audit`: the audit trail, newest first (administrators; platform admins may
//! name another `tenant_id`). Filters: `actor`, `action`, `since`, `until` (RFC 3339),
//! `cursor`, `limit` (≤ 1000).

use crate::authz::{AuditFilter, Principal};
use crate::http::openapi::Routes;
use crate::http::{ApiError, FilterText, Query, check_instant};
use crate::state::AppState;
use axum::extract::State;
use chrono::{DateTime, Utc};
use coditect_proto::{AuditId, TenantId};
use coditect_store::AuditRecord;
use serde::{Deserialize, Serialize};
use utoipa_axum::routes;

pub fn routes() -> Routes {
    Routes::new().route(routes!(list))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Another tenant's trail (platform admins).
    tenant_id: Option<TenantId>,
    /// Only this actor's records (a user id, an API key id, or an e-mail address).
    actor: Option<FilterText>,
    /// Only this action, e.g. `auth.login`.
    action: Option<FilterText>,
    /// From this instant (RFC 3339, years 1970 to 9999).
    since: Option<DateTime<Utc>>,
    /// Until this instant (RFC 3339, years 1970 to 9999; not before `since`).
    until: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Records per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditView {
    id: AuditId,
    tenant_id: TenantId,
    timestamp: DateTime<Utc>,
    actor_type: String,
    actor_id: Option<String>,
    action: String,
    resource_type: String,
    resource_id: Option<String>,
    result: String,
    ip: Option<String>,
    user_agent: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        AuditView {
            id: r.id,
            tenant_id: r.tenant_id,
            timestamp: r.at,
            actor_type: r.actor_type,
            actor_id: r.actor_id,
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            result: r.result,
            ip: r.ip,
            user_agent: r.user_agent,
            request_id: r.request_id,
            detail: r.detail,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
struct AuditPage {
    items: Vec<AuditView>,
    next_cursor: Option<String>,
}

/// The audit trail, newest first (administrators).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "audit",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 403, description = "Not an administrator"),
        (status = 404, description = "No such tenant, or another tenant and the caller is no platform admin"),
    )
)]
async fn list(
    State(state): State<AppState>,
    principal: Principal,
    Query(p): Query<AuditParams>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let since = check_instant("since", p.since)?;
    let until = check_instant("until", p.until)?;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(ApiError::bad_request("since must not be after until"));
    }
    let page = state
        .gate()
        .scoped(&principal)
        .list_audit(AuditFilter {
            tenant: p.tenant_id,
            actor_id: p.actor.map(FilterText::into_inner),
            action: p.action.map(FilterText::into_inner),
            since,
            until,
            cursor: p.cursor,
            limit: p.limit,
        })
        .await?;
    Ok(axum::Json(AuditPage {
        items: page.items.into_iter().map(AuditView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}
