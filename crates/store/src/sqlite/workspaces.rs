use super::{RowExt, SqliteStore, blob, collect, to_micros};
use crate::StoreError;
use crate::workspaces::sql::{
    BUILD_COLUMNS, CLAIMABLE, COLUMNS, NEEDS_WORK, TEMPLATE_COLUMNS, USAGE, big,
};
use crate::workspaces::{
    Build, BuildStatus, Desired, Lifecycle, Observation, Quota, StatePut, Status, Template, Usage,
    Workspace, WorkspaceStore, stored,
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
        pooled: row.get(21)?,
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

fn template_from_row(row: &Row<'_>) -> Result<Template, StoreError> {
    Ok(Template {
        tenant_id: TenantId::from_uuid(row.uuid(0)?),
        id: TemplateId::from_uuid(row.uuid(1)?),
        name: row.get(2)?,
        spec: row.get(3)?,
        created_at: row.instant(4)?,
        updated_at: row.instant(5)?,
    })
}

fn micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(to_micros)
}

/// The tenant's usage besides `ws` (inside a write).
fn usage(c: &rusqlite::Connection, ws: &Workspace) -> Result<Usage, StoreError> {
    let sql = USAGE.replace("{tenant}", "?1").replace("{ws}", "?2");
    let (n, cpu, mem): (i64, i64, i64) = c.prepare_cached(&sql)?.query_row(
        params![blob(ws.tenant_id.as_uuid()), blob(ws.id.as_uuid())],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let whole = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Usage {
        workspaces: whole(n),
        cpu_millis: whole(cpu),
        memory_mb: whole(mem),
    })
}

/// Supersedes the workspace's pending builds and inserts `b` (inside a write).
fn insert_build(c: &rusqlite::Connection, b: &Build) -> Result<(), StoreError> {
    let (t, w) = (blob(b.tenant_id.as_uuid()), blob(b.workspace_id.as_uuid()));
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
    Ok(())
}

/// The tables whose rows are deleted by marking them.
#[derive(Clone, Copy)]
enum DeleteIn {
    Workspaces,
    Templates,
}

impl SqliteStore {
    /// Marks a live row deleted; false if there was none.
    async fn soft_delete(
        &self,
        table: DeleteIn,
        tenant: TenantId,
        id: uuid::Uuid,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sql = match table {
            DeleteIn::Workspaces => {
                "UPDATE workspaces SET deleted_at = ?3
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL"
            }
            DeleteIn::Templates => {
                "UPDATE workspace_templates SET deleted_at = ?3
                 WHERE tenant_id = ?1 AND template_id = ?2 AND deleted_at IS NULL"
            }
        };
        self.write(move |c| {
            let n = c.prepare_cached(sql)?.execute(params![
                blob(tenant.as_uuid()),
                blob(id),
                to_micros(at)
            ])?;
            Ok(n > 0)
        })
        .await
    }
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn create_workspace(
        &self,
        workspace: &Workspace,
        build: Option<&Build>,
        quota: Option<&Quota>,
    ) -> Result<(), StoreError> {
        let (w, b, quota) = (workspace.clone(), build.cloned(), quota.copied());
        // One writer: the usage read and the insert cannot interleave with another's.
        self.write(move |c| {
            if let Some(q) = quota {
                let running = w.lifecycle.desired == Desired::Running;
                let (cpu, mem) = if running {
                    (u64::from(w.cpu_millis), w.memory_mb)
                } else {
                    (0, 0)
                };
                q.admits(usage(c, &w)?, true, cpu, mem)?;
            }
            let l = &w.lifecycle;
            c.prepare_cached(&format!(
                "INSERT INTO workspaces ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
                 ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
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
                w.pooled,
            ])?;
            if let Some(b) = &b {
                insert_build(c, b)?;
            }
            Ok(())
        })
        .await
    }

    async fn request(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        desired: Desired,
        build: Option<&Build>,
        quota: Option<&Quota>,
    ) -> Result<Option<Workspace>, StoreError> {
        let (b, quota) = (build.cloned(), quota.copied());
        self.write(move |c| {
            let (t, w) = (blob(tenant.as_uuid()), blob(id.as_uuid()));
            if let (Some(q), Desired::Running) = (quota, desired) {
                let current = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM workspaces
                         WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL"
                    ))?
                    .query_row(params![t, w], |r| Ok(workspace_from_row(r)))
                    .optional()?
                    .transpose()?;
                if let Some(ws) = current {
                    q.admits(
                        usage(c, &ws)?,
                        false,
                        u64::from(ws.cpu_millis),
                        ws.memory_mb,
                    )?;
                }
            }
            let found = c
                .prepare_cached(&format!(
                    "UPDATE workspaces SET desired = ?3, attempts = 0, next_attempt_at = NULL
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL
                       AND (desired <> 'deleted' OR ?3 = 'deleted')
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
            if let Some(b) = &b {
                insert_build(c, b)?;
            }
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

    async fn set_spec(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        spec: &str,
    ) -> Result<bool, StoreError> {
        let (holder, spec) = (holder.to_string(), spec.to_string());
        self.write(move |c| {
            let changed = c
                .prepare_cached(
                    "UPDATE workspaces SET spec = ?4
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND lease_holder = ?3",
                )?
                .execute(params![
                    blob(tenant.as_uuid()),
                    blob(id.as_uuid()),
                    holder,
                    spec
                ])?;
            Ok(changed == 1)
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

    async fn release_all(&self, holder: &str) -> Result<u64, StoreError> {
        let holder = holder.to_string();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE workspaces SET lease_holder = NULL, lease_until = NULL,
                         next_attempt_at = NULL
                     WHERE lease_holder = ?1",
                )?
                .execute(params![holder])?;
            Ok(n as u64)
        })
        .await
    }

    async fn add_build(&self, build: &Build) -> Result<(), StoreError> {
        let b = build.clone();
        self.write(move |c| insert_build(c, &b)).await
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
        self.soft_delete(DeleteIn::Workspaces, tenant, id.as_uuid(), at)
            .await
    }

    async fn list_in_status(
        &self,
        status: Status,
        after: Option<(TenantId, WorkspaceId)>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let (t, w) = after.map_or(([0u8; 16], [0u8; 16]), |(t, w)| {
            (blob(t.as_uuid()), blob(w.as_uuid()))
        });
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE status = ?1 AND deleted_at IS NULL AND (tenant_id, workspace_id) > (?2, ?3)
                 ORDER BY tenant_id, workspace_id LIMIT ?4"
            ))?;
            collect(
                stmt.query(params![status.as_str(), t, w, limit])?,
                workspace_from_row,
            )
        })
        .await
    }

    async fn get_state(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<(u64, Option<String>)>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT state_version, state_json FROM workspaces
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL",
            )?
            .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
                let v: i64 = r.get(0)?;
                Ok((u64::try_from(v).unwrap_or(0), r.get(1)?))
            })
            .optional()
            .map_err(StoreError::from)
        })
        .await
    }

    async fn put_state(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        expected: Option<u64>,
        json: &str,
    ) -> Result<StatePut, StoreError> {
        let json = json.to_string();
        self.write(move |c| {
            let (t, w) = (blob(tenant.as_uuid()), blob(id.as_uuid()));
            let written: Option<i64> = c
                .prepare_cached(
                    "UPDATE workspaces SET state_json = ?3, state_version = state_version + 1
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL
                       AND (?4 IS NULL OR state_version = ?4)
                     RETURNING state_version",
                )?
                .query_row(params![t, w, json, expected.map(big)], |r| r.get(0))
                .optional()?;
            if let Some(v) = written {
                return Ok(StatePut::Stored(u64::try_from(v).unwrap_or(0)));
            }
            let current: Option<i64> = c
                .prepare_cached(
                    "SELECT state_version FROM workspaces
                     WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL",
                )?
                .query_row(params![t, w], |r| r.get(0))
                .optional()?;
            Ok(match current {
                Some(v) => StatePut::Stale(u64::try_from(v).unwrap_or(0)),
                None => StatePut::Missing,
            })
        })
        .await
    }

    async fn touch(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.prepare_cached(
                "UPDATE workspaces SET activity_at = MAX(COALESCE(activity_at, ?3), ?3)
                 WHERE tenant_id = ?1 AND workspace_id = ?2 AND deleted_at IS NULL",
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

    async fn create_template(&self, template: &Template) -> Result<(), StoreError> {
        let t = template.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO workspace_templates ({TEMPLATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?
            .execute(params![
                blob(t.tenant_id.as_uuid()),
                blob(t.id.as_uuid()),
                t.name,
                t.spec,
                to_micros(t.created_at),
                to_micros(t.updated_at),
            ])?;
            Ok(())
        })
        .await
    }

    async fn get_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
    ) -> Result<Option<Template>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {TEMPLATE_COLUMNS} FROM workspace_templates
                 WHERE tenant_id = ?1 AND template_id = ?2 AND deleted_at IS NULL"
            ))?
            .query_row(params![blob(tenant.as_uuid()), blob(id.as_uuid())], |r| {
                Ok(template_from_row(r))
            })
            .optional()?
            .transpose()
        })
        .await
    }

    async fn list_templates(&self, tenant: TenantId) -> Result<Vec<Template>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TEMPLATE_COLUMNS} FROM workspace_templates
                 WHERE tenant_id = ?1 AND deleted_at IS NULL ORDER BY name"
            ))?;
            collect(
                stmt.query(params![blob(tenant.as_uuid())])?,
                template_from_row,
            )
        })
        .await
    }

    async fn list_all_templates(&self) -> Result<Vec<Template>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {TEMPLATE_COLUMNS} FROM workspace_templates
                 WHERE deleted_at IS NULL ORDER BY tenant_id, template_id"
            ))?;
            collect(stmt.query([])?, template_from_row)
        })
        .await
    }

    async fn update_template(&self, template: &Template) -> Result<Option<Template>, StoreError> {
        let t = template.clone();
        self.write(move |c| {
            c.prepare_cached(&format!(
                "UPDATE workspace_templates SET name = ?3, spec = ?4, updated_at = ?5
                 WHERE tenant_id = ?1 AND template_id = ?2 AND deleted_at IS NULL
                 RETURNING {TEMPLATE_COLUMNS}"
            ))?
            .query_row(
                params![
                    blob(t.tenant_id.as_uuid()),
                    blob(t.id.as_uuid()),
                    t.name,
                    t.spec,
                    to_micros(t.updated_at)
                ],
                |r| Ok(template_from_row(r)),
            )
            .optional()?
            .transpose()
        })
        .await
    }

    async fn delete_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.soft_delete(DeleteIn::Templates, tenant, id.as_uuid(), at)
            .await
    }

    async fn claim(
        &self,
        tenant: TenantId,
        template: TemplateId,
        owner: UserId,
        name: &str,
        build: &Build,
        quota: Option<&Quota>,
    ) -> Result<Option<Workspace>, StoreError> {
        let (name, b, quota) = (name.to_string(), build.clone(), quota.copied());
        // One writer: no other claim can take the same instance between the pick and
        // the update.
        self.write(move |c| {
            let claimable = CLAIMABLE.replace("{tenant}", "?1").replace("{template}", "?2");
            let (t, tp) = (blob(tenant.as_uuid()), blob(template.as_uuid()));
            let candidate = c
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM workspaces WHERE {claimable}
                     ORDER BY created_at, workspace_id LIMIT 1"
                ))?
                .query_row(params![t, tp], |r| Ok(workspace_from_row(r)))
                .optional()?
                .transpose()?;
            let Some(ws) = candidate else {
                return Ok(None);
            };
            if let Some(q) = quota {
                q.admits(usage(c, &ws)?, true, u64::from(ws.cpu_millis), ws.memory_mb)?;
            }
            let claimed = c
                .prepare_cached(&format!(
                    "UPDATE workspaces SET pooled = FALSE, owner_id = ?3, name = ?4, activity_at = ?5
                     WHERE tenant_id = ?1 AND workspace_id = ?2 RETURNING {COLUMNS}"
                ))?
                .query_row(
                    params![
                        t,
                        blob(ws.id.as_uuid()),
                        blob(owner.as_uuid()),
                        name,
                        to_micros(b.created_at)
                    ],
                    |r| Ok(workspace_from_row(r)),
                )?;
            let claimed = claimed?;
            insert_build(
                c,
                &Build {
                    workspace_id: claimed.id,
                    generation: claimed.lifecycle.generation,
                    ..b
                },
            )?;
            Ok(Some(claimed))
        })
        .await
    }

    async fn pool_counts(
        &self,
        tenant: TenantId,
        template: TemplateId,
    ) -> Result<(u64, u64), StoreError> {
        self.read(move |c| {
            let claimable = CLAIMABLE
                .replace("{tenant}", "?1")
                .replace("{template}", "?2");
            let (all, ready): (i64, i64) = c
                .prepare_cached(&format!(
                    "SELECT
                         (SELECT COUNT(*) FROM workspaces WHERE tenant_id = ?1 AND template_id = ?2
                             AND pooled = TRUE AND deleted_at IS NULL AND desired <> 'deleted'),
                         (SELECT COUNT(*) FROM workspaces WHERE {claimable})"
                ))?
                .query_row(
                    params![blob(tenant.as_uuid()), blob(template.as_uuid())],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
            Ok((
                u64::try_from(all).unwrap_or(0),
                u64::try_from(ready).unwrap_or(0),
            ))
        })
        .await
    }
}
