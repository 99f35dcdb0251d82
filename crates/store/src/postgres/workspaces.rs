use super::PgStore;
use super::rows::{PgRowExt, map_rows};
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
use tokio_postgres::Row;
use uuid::Uuid;

fn workspace_from_row(row: &Row) -> Result<Workspace, StoreError> {
    let int = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = row.col(i)?;
        u64::try_from(v).map_err(|_| StoreError::Internal(format!("column {i}: negative")))
    };
    Ok(Workspace {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: WorkspaceId::from_uuid(row.col(1)?),
        name: row.col(2)?,
        owner_id: UserId::from_uuid(row.col(3)?),
        created_at: row.col(4)?,
        template_id: row.col::<Option<Uuid>>(5)?.map(TemplateId::from_uuid),
        spec: row.col(6)?,
        cpu_millis: u32::try_from(int(7)?).unwrap_or(u32::MAX),
        memory_mb: int(8)?,
        pooled: row.col(21)?,
        lifecycle: Lifecycle {
            desired: stored(row.col(9)?, Desired::parse)?,
            status: stored(row.col(10)?, Status::parse)?,
            status_reason: row.col(11)?,
            status_at: row.col(12)?,
            generation: int(13)?,
            instance_token: row.col(14)?,
            attempts: u32::try_from(row.col::<i32>(15)?).unwrap_or(0),
            next_attempt_at: row.col(16)?,
            ready_at: row.col(17)?,
            seen_at: row.col(18)?,
            activity_at: row.col(19)?,
            state_version: int(20)?,
        },
    })
}

fn template_from_row(row: &Row) -> Result<Template, StoreError> {
    Ok(Template {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        id: TemplateId::from_uuid(row.col(1)?),
        name: row.col(2)?,
        spec: row.col(3)?,
        created_at: row.col(4)?,
        updated_at: row.col(5)?,
    })
}

fn build_from_row(row: &Row) -> Result<Build, StoreError> {
    let generation: i64 = row.col(8)?;
    Ok(Build {
        tenant_id: TenantId::from_uuid(row.col(0)?),
        workspace_id: WorkspaceId::from_uuid(row.col(1)?),
        id: BuildId::from_uuid(row.col(2)?),
        transition: row.col(3)?,
        initiator: row.col(4)?,
        reason: row.col(5)?,
        status: stored(row.col(6)?, BuildStatus::parse)?,
        error: row.col(7)?,
        generation: u64::try_from(generation).unwrap_or(0),
        created_at: row.col(9)?,
        finished_at: row.col(10)?,
    })
}

/// The tenant's usage besides `ws`, inside `tx`, holding the tenant's row until `tx` ends:
/// two replicas checking one tenant's quota take turns.
async fn usage(tx: &tokio_postgres::Transaction<'_>, ws: &Workspace) -> Result<Usage, StoreError> {
    tx.execute(
        "SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE",
        &[&ws.tenant_id.as_uuid()],
    )
    .await?;
    let sql = USAGE.replace("{tenant}", "$1").replace("{ws}", "$2");
    let row = tx
        .query_one(&sql, &[&ws.tenant_id.as_uuid(), &ws.id.as_uuid()])
        .await?;
    let whole = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Usage {
        workspaces: whole(row.col(0)?),
        cpu_millis: whole(row.col(1)?),
        memory_mb: whole(row.col(2)?),
    })
}

/// Supersedes the workspace's pending builds and inserts `build`, inside `tx`.
async fn insert_build(
    tx: &tokio_postgres::Transaction<'_>,
    build: &Build,
) -> Result<(), StoreError> {
    let (tenant, id) = (build.tenant_id.as_uuid(), build.workspace_id.as_uuid());
    tx.execute(
        "UPDATE workspace_builds SET status = 'superseded', finished_at = $3
         WHERE tenant_id = $1 AND workspace_id = $2 AND status = 'pending'",
        &[&tenant, &id, &build.created_at],
    )
    .await?;
    tx.execute(
        &format!(
            "INSERT INTO workspace_builds ({BUILD_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        ),
        &[
            &tenant,
            &id,
            &build.id.as_uuid(),
            &build.transition,
            &build.initiator,
            &build.reason,
            &build.status.as_str(),
            &build.error,
            &big(build.generation),
            &build.created_at,
            &build.finished_at,
        ],
    )
    .await?;
    Ok(())
}

#[async_trait]
impl WorkspaceStore for PgStore {
    async fn create_workspace(
        &self,
        w: &Workspace,
        build: Option<&Build>,
        quota: Option<&Quota>,
    ) -> Result<(), StoreError> {
        let l = &w.lifecycle;
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(q) = quota {
            let (cpu, mem) = match l.desired {
                Desired::Running => (u64::from(w.cpu_millis), w.memory_mb),
                _ => (0, 0),
            };
            q.admits(usage(&tx, w).await?, true, cpu, mem)?;
        }
        tx.execute(
            &format!(
                "INSERT INTO workspaces ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
            ),
            &[
                &w.tenant_id.as_uuid(),
                &w.id.as_uuid(),
                &w.name,
                &w.owner_id.as_uuid(),
                &w.created_at,
                &w.template_id.map(|t| t.as_uuid()),
                &w.spec,
                &i64::from(w.cpu_millis),
                &big(w.memory_mb),
                &l.desired.as_str(),
                &l.status.as_str(),
                &l.status_reason,
                &l.status_at,
                &big(l.generation),
                &l.instance_token,
                &i32::try_from(l.attempts).unwrap_or(i32::MAX),
                &l.next_attempt_at,
                &l.ready_at,
                &l.seen_at,
                &l.activity_at,
                &big(l.state_version),
                &w.pooled,
            ],
        )
        .await?;
        if let Some(b) = build {
            insert_build(&tx, b).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn request(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        desired: Desired,
        build: Option<&Build>,
        quota: Option<&Quota>,
    ) -> Result<Option<Workspace>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let (Some(q), Desired::Running) = (quota, desired) {
            let current = tx
                .query_opt(
                    &format!(
                        "SELECT {COLUMNS} FROM workspaces
                         WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL"
                    ),
                    &[&tenant.as_uuid(), &id.as_uuid()],
                )
                .await?;
            if let Some(row) = current {
                let ws = workspace_from_row(&row)?;
                q.admits(
                    usage(&tx, &ws).await?,
                    false,
                    u64::from(ws.cpu_millis),
                    ws.memory_mb,
                )?;
            }
        }
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE workspaces SET desired = $3, attempts = 0, next_attempt_at = NULL
                     WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL
                       AND (desired <> 'deleted' OR $3 = 'deleted')
                     RETURNING {COLUMNS}"
                ),
                &[&tenant.as_uuid(), &id.as_uuid(), &desired.as_str()],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        if let Some(b) = build {
            insert_build(&tx, b).await?;
        }
        tx.commit().await?;
        workspace_from_row(&row).map(Some)
    }

    async fn lease_due(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "UPDATE workspaces SET lease_holder = $1, lease_until = $3
                     WHERE (tenant_id, workspace_id) IN (
                         SELECT tenant_id, workspace_id FROM workspaces
                         WHERE {NEEDS_WORK}
                           AND (lease_until IS NULL OR lease_until < $2 OR lease_holder = $1)
                           AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
                         ORDER BY next_attempt_at NULLS FIRST
                         LIMIT $4
                         FOR UPDATE SKIP LOCKED)
                     RETURNING {COLUMNS}"
                ),
                &[&holder, &now, &until, &i64::from(limit)],
            )
            .await?;
        map_rows(&rows, workspace_from_row)
    }

    async fn lease(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<Workspace>, StoreError> {
        self.query_opt(
            &format!(
                "UPDATE workspaces SET lease_holder = $3, lease_until = $5
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL
                   AND (lease_until IS NULL OR lease_until < $4 OR lease_holder = $3)
                 RETURNING {COLUMNS}"
            ),
            &[&tenant.as_uuid(), &id.as_uuid(), &holder, &now, &until],
        )
        .await?
        .as_ref()
        .map(workspace_from_row)
        .transpose()
    }

    async fn observe(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        o: &Observation,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE workspaces SET status = $4, status_reason = $5, status_at = $6,
                     generation = $7, instance_token = $8, attempts = $9, next_attempt_at = $10,
                     ready_at = CASE WHEN $11 THEN NULL ELSE ready_at END
                 WHERE tenant_id = $1 AND workspace_id = $2 AND lease_holder = $3",
                &[
                    &tenant.as_uuid(),
                    &id.as_uuid(),
                    &holder,
                    &o.status.as_str(),
                    &o.reason,
                    &o.at,
                    &big(o.generation),
                    &o.instance_token,
                    &i32::try_from(o.attempts).unwrap_or(i32::MAX),
                    &o.next_attempt_at,
                    &o.reset_ready,
                ],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn set_spec(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
        spec: &str,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE workspaces SET spec = $4
                 WHERE tenant_id = $1 AND workspace_id = $2 AND lease_holder = $3",
                &[&tenant.as_uuid(), &id.as_uuid(), &holder, &spec],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn release(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        holder: &str,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE workspaces SET lease_holder = NULL, lease_until = NULL
             WHERE tenant_id = $1 AND workspace_id = $2 AND lease_holder = $3",
            &[&tenant.as_uuid(), &id.as_uuid(), &holder],
        )
        .await
        .map(|_| ())
    }

    async fn release_all(&self, holder: &str) -> Result<u64, StoreError> {
        self.execute(
            "UPDATE workspaces SET lease_holder = NULL, lease_until = NULL, next_attempt_at = NULL
             WHERE lease_holder = $1",
            &[&holder],
        )
        .await
    }

    async fn add_build(&self, build: &Build) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        insert_build(&tx, build).await?;
        tx.commit().await?;
        Ok(())
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
        self.execute(
            "UPDATE workspace_builds SET status = $4, error = $5, finished_at = $6
             WHERE tenant_id = $1 AND workspace_id = $2 AND build_id = $3 AND status = 'pending'",
            &[
                &tenant.as_uuid(),
                &workspace.as_uuid(),
                &build.as_uuid(),
                &status.as_str(),
                &error,
                &at,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn list_builds(
        &self,
        tenant: TenantId,
        workspace: WorkspaceId,
        before: Option<BuildId>,
        limit: u32,
    ) -> Result<Vec<Build>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {BUILD_COLUMNS} FROM workspace_builds
                     WHERE tenant_id = $1 AND workspace_id = $2
                       AND ($3::uuid IS NULL OR build_id < $3)
                     ORDER BY build_id DESC LIMIT $4"
                ),
                &[
                    &tenant.as_uuid(),
                    &workspace.as_uuid(),
                    &before.map(|b| b.as_uuid()),
                    &i64::from(limit),
                ],
            )
            .await?;
        map_rows(&rows, build_from_row)
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
        let changed = self
            .execute(
                "UPDATE workspaces SET seen_at = $5,
                     ready_at = CASE WHEN $4 THEN COALESCE(ready_at, $5) ELSE ready_at END,
                     activity_at = GREATEST(activity_at, $6),
                     next_attempt_at = CASE WHEN status = 'starting' THEN NULL ELSE next_attempt_at END
                 WHERE tenant_id = $1 AND workspace_id = $2 AND instance_token = $3
                   AND deleted_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid(), &token, &ready, &at, &activity],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn get_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<Workspace>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {COLUMNS} FROM workspaces
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL"
            ),
            &[&tenant.as_uuid(), &id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(workspace_from_row)
        .transpose()
    }

    async fn list_workspaces(
        &self,
        tenant: TenantId,
        owner: Option<UserId>,
        after: Option<WorkspaceId>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM workspaces
                     WHERE tenant_id = $1 AND deleted_at IS NULL
                       AND ($2::uuid IS NULL OR owner_id = $2)
                       AND ($3::uuid IS NULL OR workspace_id > $3)
                     ORDER BY workspace_id LIMIT $4"
                ),
                &[
                    &tenant.as_uuid(),
                    &owner.map(|o| o.as_uuid()),
                    &after.map(|a| a.as_uuid()),
                    &i64::from(limit),
                ],
            )
            .await?;
        map_rows(&rows, workspace_from_row)
    }

    async fn delete_workspace(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE workspaces SET deleted_at = $3
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid(), &at],
            )
            .await?;
        Ok(changed > 0)
    }

    async fn list_in_status(
        &self,
        status: Status,
        after: Option<(TenantId, WorkspaceId)>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        let (t, w) = after.map_or((Uuid::nil(), Uuid::nil()), |(t, w)| {
            (t.as_uuid(), w.as_uuid())
        });
        let rows = self
            .query(
                &format!(
                    "SELECT {COLUMNS} FROM workspaces
                     WHERE status = $1 AND deleted_at IS NULL
                       AND (tenant_id, workspace_id) > ($2, $3)
                     ORDER BY tenant_id, workspace_id LIMIT $4"
                ),
                &[&status.as_str(), &t, &w, &i64::from(limit)],
            )
            .await?;
        map_rows(&rows, workspace_from_row)
    }

    async fn get_state(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
    ) -> Result<Option<(u64, Option<String>)>, StoreError> {
        let row = self
            .query_opt(
                "SELECT state_version, state_json FROM workspaces
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid()],
            )
            .await?;
        row.map(|r| {
            let v: i64 = r.col(0)?;
            Ok((u64::try_from(v).unwrap_or(0), r.col(1)?))
        })
        .transpose()
    }

    async fn put_state(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        expected: Option<u64>,
        json: &str,
    ) -> Result<StatePut, StoreError> {
        // The version check is in the UPDATE's condition, re-read on the newest row when
        // another replica writes concurrently: the compare and the write cannot be split.
        let written = self
            .query_opt(
                "UPDATE workspaces SET state_json = $3, state_version = state_version + 1
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL
                   AND ($4::bigint IS NULL OR state_version = $4)
                 RETURNING state_version",
                &[&tenant.as_uuid(), &id.as_uuid(), &json, &expected.map(big)],
            )
            .await?;
        let version = |v: i64| u64::try_from(v).unwrap_or(0);
        if let Some(row) = written {
            return Ok(StatePut::Stored(version(row.col(0)?)));
        }
        let current = self
            .query_opt(
                "SELECT state_version FROM workspaces
                 WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid()],
            )
            .await?;
        Ok(match current {
            Some(row) => StatePut::Stale(version(row.col(0)?)),
            None => StatePut::Missing,
        })
    }

    async fn touch(
        &self,
        tenant: TenantId,
        id: WorkspaceId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.execute(
            "UPDATE workspaces SET activity_at = GREATEST(activity_at, $3)
             WHERE tenant_id = $1 AND workspace_id = $2 AND deleted_at IS NULL",
            &[&tenant.as_uuid(), &id.as_uuid(), &at],
        )
        .await?;
        Ok(())
    }

    async fn create_template(&self, t: &Template) -> Result<(), StoreError> {
        self.execute(
            &format!(
                "INSERT INTO workspace_templates ({TEMPLATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
            ),
            &[
                &t.tenant_id.as_uuid(),
                &t.id.as_uuid(),
                &t.name,
                &t.spec,
                &t.created_at,
                &t.updated_at,
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
    ) -> Result<Option<Template>, StoreError> {
        self.query_opt(
            &format!(
                "SELECT {TEMPLATE_COLUMNS} FROM workspace_templates
                 WHERE tenant_id = $1 AND template_id = $2 AND deleted_at IS NULL"
            ),
            &[&tenant.as_uuid(), &id.as_uuid()],
        )
        .await?
        .as_ref()
        .map(template_from_row)
        .transpose()
    }

    async fn list_templates(&self, tenant: TenantId) -> Result<Vec<Template>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM workspace_templates
                     WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY name"
                ),
                &[&tenant.as_uuid()],
            )
            .await?;
        map_rows(&rows, template_from_row)
    }

    async fn list_all_templates(&self) -> Result<Vec<Template>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {TEMPLATE_COLUMNS} FROM workspace_templates
                     WHERE deleted_at IS NULL ORDER BY tenant_id, template_id"
                ),
                &[],
            )
            .await?;
        map_rows(&rows, template_from_row)
    }

    async fn update_template(&self, t: &Template) -> Result<Option<Template>, StoreError> {
        self.query_opt(
            &format!(
                "UPDATE workspace_templates SET name = $3, spec = $4, updated_at = $5
                 WHERE tenant_id = $1 AND template_id = $2 AND deleted_at IS NULL
                 RETURNING {TEMPLATE_COLUMNS}"
            ),
            &[
                &t.tenant_id.as_uuid(),
                &t.id.as_uuid(),
                &t.name,
                &t.spec,
                &t.updated_at,
            ],
        )
        .await?
        .as_ref()
        .map(template_from_row)
        .transpose()
    }

    async fn delete_template(
        &self,
        tenant: TenantId,
        id: TemplateId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let n = self
            .execute(
                "UPDATE workspace_templates SET deleted_at = $3
                 WHERE tenant_id = $1 AND template_id = $2 AND deleted_at IS NULL",
                &[&tenant.as_uuid(), &id.as_uuid(), &at],
            )
            .await?;
        Ok(n > 0)
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
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let claimable = CLAIMABLE
            .replace("{tenant}", "$1")
            .replace("{template}", "$2");
        // SKIP LOCKED: a concurrent claim takes the next instance, never waits for this one.
        let candidate = tx
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM workspaces WHERE {claimable}
                     ORDER BY created_at, workspace_id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                &[&tenant.as_uuid(), &template.as_uuid()],
            )
            .await?;
        let Some(row) = candidate else {
            return Ok(None);
        };
        let ws = workspace_from_row(&row)?;
        if let Some(q) = quota {
            q.admits(
                usage(&tx, &ws).await?,
                true,
                u64::from(ws.cpu_millis),
                ws.memory_mb,
            )?;
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE workspaces SET pooled = FALSE, owner_id = $3, name = $4, activity_at = $5
                     WHERE tenant_id = $1 AND workspace_id = $2 RETURNING {COLUMNS}"
                ),
                &[
                    &tenant.as_uuid(),
                    &ws.id.as_uuid(),
                    &owner.as_uuid(),
                    &name,
                    &build.created_at,
                ],
            )
            .await?;
        let claimed = workspace_from_row(&row)?;
        insert_build(
            &tx,
            &Build {
                workspace_id: claimed.id,
                generation: claimed.lifecycle.generation,
                ..build.clone()
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    async fn pool_counts(
        &self,
        tenant: TenantId,
        template: TemplateId,
    ) -> Result<(u64, u64), StoreError> {
        let claimable = CLAIMABLE
            .replace("{tenant}", "$1")
            .replace("{template}", "$2");
        let row = self
            .query_opt(
                &format!(
                    "SELECT
                         (SELECT COUNT(*) FROM workspaces WHERE tenant_id = $1 AND template_id = $2
                             AND pooled AND deleted_at IS NULL AND desired <> 'deleted'),
                         (SELECT COUNT(*) FROM workspaces WHERE {claimable})"
                ),
                &[&tenant.as_uuid(), &template.as_uuid()],
            )
            .await?;
        let Some(row) = row else {
            return Ok((0, 0));
        };
        let (all, ready): (i64, i64) = (row.col(0)?, row.col(1)?);
        Ok((
            u64::try_from(all).unwrap_or(0),
            u64::try_from(ready).unwrap_or(0),
        ))
    }
}
