-- Workspace orchestration: what users asked for (desired) next to what the reconciler saw
-- (status), the lease that keeps one replica at a time on a workspace, the agent's
-- reports, the persisted browser state, and every transition as a build.
ALTER TABLE workspaces ADD COLUMN template_id     uuid;
ALTER TABLE workspaces ADD COLUMN spec            text        NOT NULL DEFAULT '{}';
ALTER TABLE workspaces ADD COLUMN cpu_millis      bigint      NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN memory_mb       bigint      NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN desired         text        NOT NULL DEFAULT 'stopped';
ALTER TABLE workspaces ADD COLUMN status          text        NOT NULL DEFAULT 'stopped';
ALTER TABLE workspaces ADD COLUMN status_reason   text;
ALTER TABLE workspaces ADD COLUMN status_at       timestamptz;
ALTER TABLE workspaces ADD COLUMN generation      bigint      NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN instance_token  text;
ALTER TABLE workspaces ADD COLUMN attempts        integer     NOT NULL DEFAULT 0;
ALTER TABLE workspaces ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE workspaces ADD COLUMN lease_holder    text;
ALTER TABLE workspaces ADD COLUMN lease_until     timestamptz;
ALTER TABLE workspaces ADD COLUMN ready_at        timestamptz;
ALTER TABLE workspaces ADD COLUMN seen_at         timestamptz;
ALTER TABLE workspaces ADD COLUMN activity_at     timestamptz;
ALTER TABLE workspaces ADD COLUMN state_json      text;
ALTER TABLE workspaces ADD COLUMN state_version   bigint      NOT NULL DEFAULT 0;
-- The reconciler's scan: workspaces whose status is not what is desired, or that wait in
-- a transitional status.
CREATE INDEX workspaces_due ON workspaces (next_attempt_at)
    WHERE deleted_at IS NULL AND (desired <> status OR status IN ('pending', 'starting', 'stopping', 'deleting'));

CREATE TABLE workspace_builds (
    tenant_id    uuid        NOT NULL,
    workspace_id uuid        NOT NULL,
    build_id     uuid        NOT NULL,
    transition   text        NOT NULL,
    initiator    text        NOT NULL,
    reason       text,
    status       text        NOT NULL,
    error        text,
    generation   bigint      NOT NULL,
    created_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    PRIMARY KEY (tenant_id, workspace_id, build_id),
    FOREIGN KEY (tenant_id, workspace_id) REFERENCES workspaces (tenant_id, workspace_id)
);

CREATE TABLE workspace_templates (
    tenant_id   uuid        NOT NULL,
    template_id uuid        NOT NULL,
    name        text        NOT NULL,
    spec        text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted_at  timestamptz,
    PRIMARY KEY (tenant_id, template_id)
);
CREATE UNIQUE INDEX workspace_templates_name_key ON workspace_templates (tenant_id, name) WHERE deleted_at IS NULL;
