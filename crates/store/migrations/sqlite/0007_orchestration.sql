-- Workspace orchestration: what users asked for (desired) next to what the reconciler saw
-- (status), the lease that keeps one replica at a time on a workspace, the agent's
-- reports, the persisted browser state, and every transition as a build.
ALTER TABLE workspaces ADD COLUMN template_id     BLOB;
ALTER TABLE workspaces ADD COLUMN spec            TEXT        NOT NULL DEFAULT '{}';
ALTER TABLE workspaces ADD COLUMN cpu_millis      INTEGER      NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN memory_mb       INTEGER      NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN desired         TEXT        NOT NULL DEFAULT 'stopped';
ALTER TABLE workspaces ADD COLUMN status          TEXT        NOT NULL DEFAULT 'stopped';
ALTER TABLE workspaces ADD COLUMN status_reason   TEXT;
ALTER TABLE workspaces ADD COLUMN status_at       INTEGER;
ALTER TABLE workspaces ADD COLUMN generation      INTEGER      NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN instance_token  TEXT;
ALTER TABLE workspaces ADD COLUMN attempts        INTEGER     NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN next_attempt_at INTEGER;
ALTER TABLE workspaces ADD COLUMN lease_holder    TEXT;
ALTER TABLE workspaces ADD COLUMN lease_until     INTEGER;
ALTER TABLE workspaces ADD COLUMN ready_at        INTEGER;
ALTER TABLE workspaces ADD COLUMN seen_at         INTEGER;
ALTER TABLE workspaces ADD COLUMN activity_at     INTEGER;
ALTER TABLE workspaces ADD COLUMN state_json      TEXT;
ALTER TABLE workspaces ADD COLUMN state_version   INTEGER      NOT NULL DEFAULT 0;
-- The reconciler's scan: workspaces whose status is not what is desired, or that wait in
-- a transitional status.
CREATE INDEX workspaces_due ON workspaces (next_attempt_at)
    WHERE deleted_at IS NULL AND (desired <> status OR status IN ('pending', 'starting', 'stopping', 'deleting'));

CREATE TABLE workspace_builds (
    tenant_id    BLOB        NOT NULL,
    workspace_id BLOB        NOT NULL,
    build_id     BLOB        NOT NULL,
    transition   TEXT        NOT NULL,
    initiator    TEXT        NOT NULL,
    reason       TEXT,
    status       TEXT        NOT NULL,
    error        TEXT,
    generation   INTEGER      NOT NULL,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (tenant_id, workspace_id, build_id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces (tenant_id, workspace_id)
) WITHOUT ROWID;

CREATE TABLE workspace_templates (
    tenant_id   BLOB        NOT NULL,
    template_id BLOB        NOT NULL,
    name        TEXT        NOT NULL,
    spec        TEXT        NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    deleted_at  INTEGER,
    PRIMARY KEY (tenant_id, template_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX workspace_templates_name_key ON workspace_templates (tenant_id, name) WHERE deleted_at IS NULL;
