-- Identity: users, sessions and their refresh tokens, API keys, workspaces, the audit
-- trail, and the public halves of the token-signing keys.
-- Every tenant table is keyed (tenant_id, ...). UUIDs are 16-byte BLOBs, instants INTEGER
-- microseconds since the epoch (UTC), booleans 0/1.

CREATE TABLE users (
    tenant_id      BLOB    NOT NULL REFERENCES tenants (tenant_id),
    user_id        BLOB    NOT NULL,
    email          TEXT    NOT NULL,
    password_hash  TEXT,
    role           TEXT    NOT NULL CHECK (role IN ('admin', 'member', 'viewer', 'service')),
    platform_admin INTEGER NOT NULL DEFAULT 0,
    disabled       INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
) WITHOUT ROWID;
-- Login is by e-mail alone, so an address belongs to one user across all tenants.
CREATE UNIQUE INDEX users_email_key ON users (email);

CREATE TABLE sessions (
    tenant_id      BLOB    NOT NULL,
    session_id     BLOB    NOT NULL,
    user_id        BLOB    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('active', 'suspended', 'terminated')),
    created_at     INTEGER NOT NULL,
    last_access_at INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    ended_at       INTEGER,
    end_reason     TEXT,
    ip             TEXT,
    user_agent     TEXT,
    workspace_id   BLOB,
    PRIMARY KEY (tenant_id, session_id),
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX sessions_user ON sessions (tenant_id, user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);
CREATE INDEX sessions_last_access ON sessions (last_access_at);

CREATE TABLE refresh_tokens (
    tenant_id  BLOB    NOT NULL,
    session_id BLOB    NOT NULL,
    token_hash BLOB    NOT NULL,
    issued_at  INTEGER NOT NULL,
    used_at    INTEGER,
    PRIMARY KEY (tenant_id, session_id, token_hash),
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, session_id) ON DELETE CASCADE
) WITHOUT ROWID;

CREATE TABLE api_keys (
    tenant_id    BLOB    NOT NULL,
    key_id       BLOB    NOT NULL,
    owner_id     BLOB    NOT NULL,
    name         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('admin', 'member', 'viewer', 'service')),
    workspace_id BLOB,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER,
    PRIMARY KEY (tenant_id, key_id),
    FOREIGN KEY (tenant_id, owner_id) REFERENCES users (tenant_id, user_id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX api_keys_owner ON api_keys (tenant_id, owner_id);

CREATE TABLE workspaces (
    tenant_id    BLOB    NOT NULL,
    workspace_id BLOB    NOT NULL,
    name         TEXT    NOT NULL,
    owner_id     BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    deleted_at   INTEGER,
    PRIMARY KEY (tenant_id, workspace_id),
    FOREIGN KEY (tenant_id, owner_id) REFERENCES users (tenant_id, user_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX workspaces_name_key ON workspaces (tenant_id, name) WHERE deleted_at IS NULL;

-- Append-only: the triggers refuse every UPDATE and DELETE.
CREATE TABLE audit_log (
    tenant_id     BLOB    NOT NULL,
    audit_id      BLOB    NOT NULL,
    at            INTEGER NOT NULL,
    actor_type    TEXT    NOT NULL,
    actor_id      TEXT,
    action        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    resource_id   TEXT,
    result        TEXT    NOT NULL,
    ip            TEXT,
    user_agent    TEXT,
    request_id    TEXT,
    detail        TEXT,
    PRIMARY KEY (tenant_id, audit_id)
) WITHOUT ROWID;
CREATE INDEX audit_log_actor ON audit_log (tenant_id, actor_id, audit_id);
CREATE INDEX audit_log_action ON audit_log (tenant_id, action, audit_id);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;

-- Public halves of the keys that sign access tokens (a platform table, not tenant data).
-- Private keys never leave the node that generated them.
CREATE TABLE jwt_keys (
    kid        TEXT    NOT NULL PRIMARY KEY,
    alg        TEXT    NOT NULL,
    n          BLOB    NOT NULL,
    e          BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
