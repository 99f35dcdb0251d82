use super::{RowExt, SqliteStore, blob, collect, to_micros};
use crate::StoreError;
use crate::workspaces::sql::{BUILD_COLUMNS, COLUMNS, NEEDS_WORK, big};
use crate::workspaces::{
    Build, BuildStatus, Desired, Lifecycle, Observation, Status, Workspace, WorkspaceStore, stored,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use coditect_proto::{BuildId, TemplateId, TenantId, UserId, WorkspaceId};
use rusqlite::{OptionalExtension, Row, params};

fn workspace_from_row(row: &Row<'_>) -> Result<Workspace, StoreError> {
    let int = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = row.get(i)?;
        u64::try_from(v).map_err(|_| StoreError::Internal(format!("column {i}: negative")))
    };
    let desired: String = row.get(9)?;
    let status: String = row.get(10)?;
    Ok(Workspace {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: WorkspaceId::from_uuid(row.uuid(1)?),
        name: row.get(2)?,
        owner_id: UserId::from_uuid(row.uuid(3)?),
        created_at: row.instant(4)?,
        template_id: row.opt_uuid(5)?.map(TemplateId::from_uuid),
        spec: row.get(6)?,
        cpu_millis: u32::try_from(int(7)?).unwrap_or(u32::MAX),
        memory_mb: int(8)?,
        lifecycle: Lifecycle {
            desired: stored(&desired, Desired::parse)?,
            status: stored(&status, Status::parse)?,
            status_reason: row.get(11)?,
            status_at: row.opt_instant(12)?,
            generation: int(13)?,
            instance_token: row.get(14)?,
            attempts: u32::try_from(int(15)?).unwrap_or(0),
            next_attempt_at: row.opt_instant(16)?,
            ready_at: row.opt_instant(17)?,
            seen_at: row.opt_instant(18)?,
            activity_at: row.opt_instant(19)?,
            state_version: int(20)?,
        },
    })
}

fn build_from_row(row: &Row<'_>) -> Result<Build, StoreError> {
    let status: String = row.get(6)?;
    let generation: i64 = row.get(8)?;
    Ok(Build {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        workspace_id: WorkspaceId::from_uuid(row.uuid(1)?),
        id: BuildId::from_uuid(row.uuid(2)?),
        transition: row.get(3)?,
        initiator: row.get(4)?,
        reason: row.get(5)?,
        status: stored(&status, BuildStatus::parse)?,
        error: row.get(7)?,
        generation: u64::try_from(generation).unwrap_or(0),
        created_at: row.instant(9)?,
        finished_at: row.opt_instant(10)?,
    })
}

fn micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(to_micros)
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn create_workspace(&self, workspace: &Workspace) -> Result<(), StoreError> {
        let w = workspace.clone();
        self.write(move |c| {
            let l = &w.lifecycle;
            c.prepare_cached(&format!(
                "INSERT INTO workspaces ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
            ))?
            .execute(params![
                blob(w.tenant_id.as_uuid()),
                blob(w.id.as_uuid()),
                w.name,
                blob(w.owner_id.as_uuid()),
                to_micros(w.created_at),
                w.template_id.map(|t| blob(t.as_uuid())),
                w.spec,
                i64::from(w.cpu_millis),
                big(w.memory_mb),
                l.desired.as_str(),
                l.status.as_str(),
                l.status_reason,
                micros(l.status_at),
                big(l.generation),
                l.instance_token,
                i64::from(l.attempts),
                micros(l.next_attempt_at),
                micros(l.ready_at),
                micros(l.seen_at),
                micros(l.activity_at),
                big(l.state_version),
            ])?;
            Ok(())
        })
        .await
    }

    async fn request(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        desired: Desired,
        build: &Build,
    ) -> Result<Option<Workspace>, StoreError> {
        let b = build.clone();
        self.write(move |c| {
            let (t, w) = (blob(tenant.as_uuid()), blob(id.as_uuid()));
            let found = c
                .prepare_cached(&format!(
                    "UPDATE workspaces SET desired = ?3, attempts = 0, next_attempt_at = NULL
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL
                     RETURNING {COLUMNS}"
                ))?
                .query_row(params![t, w, desired.as_str()], |r| {
                    Ok(workspace_from_row(r))
                })
                .optional()?
                .transpose()?;
            let Some(found) = found else {
                return Ok(None);
            };
            c.prepare_cached(
                "UPDATE workspace_builds SET status = 'superseded', finished_at = ?3
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND status = 'pending'",
            )?
            .execute(params![t, w, to_micros(b.created_at)])?;
            c.prepare_cached(&format!(
                "INSERT INTO workspace_builds ({BUILD_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ))?
            .execute(params![
                t,
                w,
                blob(b.id.as_uuid()),
                b.transition,
                b.initiator,
                b.reason,
                b.status.as_str(),
                b.error,
                big(b.generation),
                to_micros(b.created_at),
                micros(b.finished_at),
            ])?;
            Ok(Some(found))
        })
        .await
    }

    async fn lease_due(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let holder = holder.to_string();
        // One writer: the select and the update cannot interleave with another lease.
        self.write(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "UPDATE workspaces SET lease_holder = ?1, lease_until = ?3
                 WHERE (tenant_id, workspace_id) IN (
                     SELECT tenant_id, workspace_id FROM workspaces
                     WHERE {NEEDS_WORK}
                       AND (lease_until IS NULL OR lease_until < ?2 OR lease_holder = ?1)
                       AND (next_attempt_at IS NULL OR next_attempt_at <= ?2)
                     ORDER BY next_attempt_at NULLS FIRST
                     LIMIT ?4)
                 RETURNING {COLUMNS}"
            ))?;
            collect(
                stmt.query(params![holder, to_micros(now), to_micros(until), limit])?,
                workspace_from_row,
            )
        })
        .await
    }

    async fn lease(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Workspace>, StoreError> {
        let holder = holder.to_string();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "UPDATE workspaces SET lease_holder = ?3, lease_until = ?5
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL
                   AND (lease_until IS NULL OR lease_until < ?4 OR lease_holder = ?3)
                 RETURNING {COLUMNS}"
            ))?
            .query_row(
                params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    holder,
                    to_micros(now),
                    to_micros(until)
                ],
                |r| Ok(workspace_from_row(r)),
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn observe(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        observation: &Observation,
    ) -> Result<bool, StoreError> {
        let (holder, o) = (holder.to_string(), observation.clone());
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE workspaces SET status = ?4, status_reason = ?5, status_at = ?6,
                         generation = ?7, instance_token = ?8, attempts = ?9, next_attempt_at = ?10,
                         ready_at = CASE WHEN ?11 THEN NULL ELSE ready_at END
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND lease_holder = ?3",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    holder,
                    o.status.as_str(),
                    o.reason,
                    to_micros(o.at),
                    big(o.generation),
                    o.instance_token,
                    i64::from(o.attempts),
                    micros(o.next_attempt_at),
                    o.reset_ready,
                ])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn release(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
    ) -> Result<(), StoreError> {
        let holder = holder.to_string();
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE workspaces SET lease_holder = NULL, lease_until = NULL
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND lease_holder = ?3",
            )?
            .execute(params![blob(tenant.as_uuid()), blob(id.as_uuid()), holder])?;
            Ok(())
        })
        .await
    }

    async fn finish_build(
        &self,
        tenant: TenantId,
        workspace: WorkspaceId,
        build: BuildId,
        status: BuildStatus,
        error: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error = error.map(str::to_string);
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE workspace_builds SET status = ?4, error = ?5, finished_at = ?6
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND build_id = ?3
                   AND status = 'pending'",
            )?
            .execute(params![
                blob(tenant.as_uuid()),
                blob(workspace.as_uuid()),
                blob(build.as_uuid()),
                status.as_str(),
                error,
                to_micros(at),
            ])?;
            Ok(())
        })
        .await
    }

    async fn list_builds(
        &self,
        tenant: TenantId,
        workspace: WorkspaceId,
        before: Option<BuildId>,
        limit: u32,
    ) -> Result<Vec<Build>, StoreError> {
        // Ids are UUIDv7 blobs: byte order is time order; the all-ones id is "no bound".
        let before = before.map_or([0xff; 16], |b| blob(b.as_uuid()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {BUILD_COLUMNS} FROM workspace_builds
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND build_id < ?3
                 ORDER BY build_id DESC LIMIT ?4"
            ))?;
            collect(
                stmt.query(params![
                    blob(tenant.as_uuid()),
                    blob(workspace.as_uuid()),
                    before,
                    limit
                ])?,
                build_from_row,
            )
        })
        .await
    }

    async fn agent_report(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        token: &str,
        ready: bool,
        activity: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let token = token.to_string();
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE workspaces SET seen_at = ?5,
                         ready_at = CASE WHEN ?4 THEN COALESCE(ready_at, ?5) ELSE ready_at END,
                         activity_at = MAX(COALESCE(activity_at, ?6), COALESCE(?6, activity_at)),
                         next_attempt_at = CASE WHEN status = 'starting' THEN NULL
                                                ELSE next_attempt_at END
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND instance_token = ?3
                       AND deleted_at IS NULL",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    token,
                    ready,
                    to_micros(at),
                    micros(activity),
                ])?;
            Ok(changed > 0)
        })
        .await
    }

    async fn get_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<Workspace>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL"
            ))?
            .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
                Ok(workspace_from_row(r))
            })
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_workspaces(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
        after: Option<WorkspaceId>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let after = after
            .map(|a| blob(a.as_uuid()).to_vec())
            .unwrap_or_default();
        let owner = owner.map(|o| blob(o.as_uuid()));
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE tenant_id = ?1 AND deleted_at IS NULL AND (?2 IS NULL OR owner_id = ?2)
                   AND workspace_id > ?3
                 ORDER BY workspace_id LIMIT ?4"
            ))?;
            collect(
                stmt.query(params![blob(tenant.as_uuid()), owner, after, limit])?,
                workspace_from_row,
            )
        })
        .await
    }

    async fn delete_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE workspaces SET deleted_at = ?3
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL",
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
}
