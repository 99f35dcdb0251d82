//! What the standard protocols (OTLP, Loki push) share before [`super::ingest`]: the
//! tenant named by `X-Scope-OrgID` must be the credential's, each entry's workspace is
//! resolved, and a request is identified by the hash of its decoded body so a retry is
//! stored once (neither protocol carries a batch id).
//!
//! An entry's workspace, first found wins: the entry's own (resource attribute or label
//! `coditect.workspace.id` / `coditect_workspace_id`), the `X-Coditect-Workspace-Id`
//! header, the workspace the API key is bound to, the tenant's default workspace (named
//! `default`, made on first use).

use super::entry::Candidate;
use super::{BatchKey, Outcome, Part, Rejected, rank};
use crate::authz::Principal;
use crate::http::ApiError;
use crate::state::AppState;
use axum::http::HeaderMap;
use coditect_proto::{ErrorCode, WorkspaceId};
use coditect_store::Stored;
use std::collections::BTreeMap;

/// Most entries one OTLP or Loki request may carry (across all its workspaces).
pub const MAX_ENTRIES: usize = 10_000;

pub const WORKSPACE_HEADER: &str = "x-coditect-workspace-id";

/// The request's media type, lower case, without parameters (`""` when absent).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Refuses a request whose `X-Scope-OrgID` names another tenant than its credential
/// (the id or the name of the tenant are both accepted).
pub async fn check_org(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let Some(value) = headers.get("x-scope-orgid") else {
        return Ok(());
    };
    let org = value
        .to_str()
        .map_err(|_| ApiError::bad_request("X-Scope-OrgID must be printable ASCII"))?
        .trim();
    if org == principal.tenant_id.to_string() {
        return Ok(());
    }
    let tenant = state
        .gate()
        .scoped(principal)
        .get_tenant(principal.tenant_id)
        .await?;
    if org == tenant.name {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::AccessDenied,
        "X-Scope-OrgID names another tenant than the credential",
    ))
}

/// The workspace for entries that do not name one: the header, else the key's binding,
/// else the tenant's default workspace (made on first use; when it cannot be, entries that
/// name none are rejected with the reason why).
pub async fn default_workspace(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
) -> Result<Result<WorkspaceId, String>, ApiError> {
    if let Some(v) = headers.get(WORKSPACE_HEADER) {
        return v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Ok)
            .ok_or_else(|| ApiError::bad_request("X-Coditect-Workspace-Id is not a workspace id"));
    }
    if let Some(w) = principal.workspace {
        return Ok(Ok(w));
    }
    match state.gate().scoped(principal).default_workspace().await {
        Ok(w) => Ok(Ok(w)),
        // Not allowed to write logs at all, or the store cannot be reached: the request
        // is answered as such, not entry by entry.
        Err(e) if matches!(e.code(), ErrorCode::Unavailable | ErrorCode::AccessDenied) => Err(e),
        Err(e) => Ok(Err(format!("no workspace: {}", e.message()))),
    }
}

/// The workspace of entries that may name their own (`named`), else `fallback`.
pub fn pick_workspace(
    named: Option<&str>,
    fallback: &Result<WorkspaceId, String>,
) -> Result<WorkspaceId, String> {
    match named {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("workspace id {text:?} is not a UUID")),
        None => fallback.clone(),
    }
}

/// Entries grouped by workspace, in arrival order within each group; entries whose
/// workspace could not be resolved are rejected with the reason.
#[derive(Default)]
pub struct Groups<'a> {
    by_workspace: BTreeMap<WorkspaceId, Vec<Result<Candidate<'a>, String>>>,
    unplaced: Vec<String>,
    count: usize,
}

impl<'a> Groups<'a> {
    pub fn push(
        &mut self,
        workspace: &Result<WorkspaceId, String>,
        entry: Result<Candidate<'a>, String>,
    ) -> Result<(), ApiError> {
        self.count += 1;
        if self.count > MAX_ENTRIES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("more than {MAX_ENTRIES} log records in one request"),
            ));
        }
        match workspace {
            Ok(w) => self.by_workspace.entry(*w).or_default().push(entry),
            Err(reason) => self.unplaced.push(reason.clone()),
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// What storing a request's groups did.
#[derive(Debug, Default)]
pub struct Totals {
    pub processed: usize,
    pub rejected: usize,
    /// The first rejection's reason, for the protocol's error message.
    pub first_reason: Option<String>,
    /// The weakest durability of the parts; `None` when nothing was stored.
    pub stored: Option<Stored>,
}

impl Totals {
    fn reject(&mut self, reason: &str, n: usize) {
        self.rejected += n;
        if self.first_reason.is_none() {
            self.first_reason = Some(reason.to_string());
        }
    }
}

/// A hex digest identifying a request by its decoded body.
pub fn body_hash(body: &[u8]) -> String {
    super::digest([body])
}

/// Stores each workspace's entries as one idempotent batch (`<protocol>-<hash>-<ws>`); a
/// retried request finds the receipts of the parts already stored and skips them. The
/// request is authorized whole first (see [`super::ingest`]): a workspace the credential
/// may not write to refuses the request before anything of it is stored.
pub async fn ingest_groups(
    state: &AppState,
    principal: &Principal,
    groups: Groups<'_>,
    hash: &str,
    protocol: &'static str,
) -> Result<Totals, ApiError> {
    let mut totals = Totals::default();
    for reason in &groups.unplaced {
        totals.reject(reason, 1);
    }
    let parts = groups
        .by_workspace
        .into_iter()
        .map(|(workspace, candidates)| Part {
            workspace,
            candidates,
            key: Some(BatchKey {
                id: format!("{protocol}-{hash}-{workspace}"),
                fingerprint: hash.to_string(),
            }),
        })
        .collect();
    for outcome in super::ingest(state, principal, parts, protocol).await? {
        match outcome {
            Outcome::Replayed(first) => {
                let receipt: serde_json::Value = serde_json::from_str(&first).unwrap_or_default();
                let rejected: Vec<Rejected> =
                    serde_json::from_value(receipt["rejected"].clone()).unwrap_or_default();
                totals.processed += receipt["processed"].as_u64().unwrap_or(0) as usize;
                if let Some(r) = rejected.first() {
                    totals.reject(&r.reason, rejected.len());
                }
            }
            Outcome::Stored(accepted) => {
                totals.processed += accepted.processed;
                if let Some(r) = accepted.rejected.first() {
                    totals.reject(&r.reason, accepted.rejected.len());
                }
                totals.stored = match (totals.stored, accepted.stored) {
                    (Some(prev), Some(now)) if rank(prev) < rank(now) => Some(prev),
                    (prev, now) => now.or(prev),
                };
            }
        }
    }
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspaces_resolve_in_order() {
        let ws = WorkspaceId::new();
        assert_eq!(pick_workspace(None, &Ok(ws)), Ok(ws));
        let named = WorkspaceId::new();
        assert_eq!(pick_workspace(Some(&named.to_string()), &Ok(ws)), Ok(named));
        assert!(pick_workspace(Some("nope"), &Ok(ws)).is_err());
        let none = Err("no workspace: why".to_string());
        assert_eq!(pick_workspace(None, &none), none);
        assert_eq!(pick_workspace(Some(&named.to_string()), &none), Ok(named));
    }

    #[test]
    fn hashes_are_stable_and_short() {
        assert_eq!(body_hash(b"abc"), body_hash(b"abc"));
        assert_ne!(body_hash(b"abc"), body_hash(b"abd"));
        assert_eq!(body_hash(b"").len(), 32);
    }
}
