-- How each session was opened: `password`, `oidc` or `github`.
ALTER TABLE sessions ADD COLUMN login_method TEXT NOT NULL DEFAULT 'password';

-- External logins in flight, keyed by a hash of their one-time key (the OAuth `state`,
-- or the code a command-line client exchanges for its tokens): taken once, atomically,
-- whichever replica the next step reaches; expired ones are purged with the sessions.
CREATE TABLE login_flows (
    flow_key   BLOB    PRIMARY KEY,
    payload    TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX login_flows_expiry ON login_flows (expires_at);
