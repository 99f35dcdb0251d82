-- Identity: users, sessions and their refresh tokens, API keys, workspaces, the audit
-- trail, and the public halves of the token-signing keys.
-- Every tenant table is keyed (tenant_id, ...).

CREATE TABLE users (
    tenant_id      uuid        NOT NULL REFERENCES tenants (tenant_id),
    user_id        uuid        NOT NULL,
    email          text        NOT NULL,
    password_hash  text,
    role           text        NOT NULL CHECK (role IN ('admin', 'member', 'viewer', 'service')),
    platform_admin boolean     NOT NULL DEFAULT false,
    disabled       boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
-- Login is by e-mail alone, so an address belongs to one user across all tenants.
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE sessions (
    tenant_id      uuid        NOT NULL,
    session_id     uuid        NOT NULL,
    user_id        uuid        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('active', 'suspended', 'terminated')),
    created_at     timestamptz NOT NULL,
    last_access_at timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    end_reason     text,
    ip             text,
    user_agent     text,
    workspace_id   uuid,
    PRIMARY KEY (tenant_id, session_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX sessions_last_access ON sessions (last_access_at);

CREATE TABLE refresh_tokens (
    tenant_id  uuid        NOT NULL,
    session_id uuid        NOT NULL,
    token_hash bytea       NOT NULL,
    issued_at  timestamptz NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (tenant_id, session_id, token_hash),
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, session_id) ON DELETE CASCADE
);

CREATE TABLE api_keys (
    tenant_id    uuid        NOT NULL,
    key_id       uuid        NOT NULL,
    owner_id     uuid        NOT NULL,
    name         text        NOT NULL,
    prefix       text        NOT NULL,
    secret_hash  bytea       NOT NULL,
    role         text        NOT NULL CHECK (role IN ('admin', 'member', 'viewer', 'service')),
    workspace_id uuid,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    PRIMARY KEY (tenant_id, key_id),
    FOREIGN KEY (tenant_id, owner_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX api_keys_owner ON api_keys (tenant_id, owner_id);

CREATE TABLE workspaces (
    tenant_id    uuid        NOT NULL,
    workspace_id uuid        NOT NULL,
    name         text        NOT NULL,
    owner_id     uuid        NOT NULL,
    created_at   timestamptz NOT NULL,
    deleted_at   timestamptz,
    PRIMARY KEY (tenant_id, workspace_id),
    FOREIGN KEY (tenant_id, owner_id) REFERENCES users (tenant_id, user_id)
);
CREATE UNIQUE INDEX workspaces_name_key ON workspaces (tenant_id, name) WHERE deleted_at IS NULL;

-- Append-only: the trigger refuses every UPDATE, DELETE and TRUNCATE.
CREATE TABLE audit_log (
    tenant_id     uuid        NOT NULL,
    audit_id      uuid        NOT NULL,
    at            timestamptz NOT NULL,
    actor_type    text        NOT NULL,
    actor_id      text,
    action        text        NOT NULL,
    resource_type text        NOT NULL,
    resource_id   text,
    result        text        NOT NULL,
    ip            text,
    user_agent    text,
    request_id    text,
    detail        text,
    PRIMARY KEY (tenant_id, audit_id)
);
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor_id, audit_id);
CREATE INDEX audit_log_action ON audit_log (tenant_id, action, audit_id);
CREATE FUNCTION coditect_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION coditect_audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION coditect_audit_append_only();

-- Public halves of the keys that sign access tokens (a platform table, not tenant data).
-- Private keys never leave the node that generated them.
CREATE TABLE jwt_keys (
    kid        text        NOT NULL PRIMARY KEY,
    alg        text        NOT NULL,
    n          bytea       NOT NULL,
    e          bytea       NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
