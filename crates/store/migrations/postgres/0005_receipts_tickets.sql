-- Batch receipts keyed by workspace (see the SQLite migration of the same name for the
-- why). log_batches stays for older binaries during a rolling upgrade.
CREATE TABLE log_receipts (
    tenant_id    uuid        NOT NULL,
    batch_id     text        NOT NULL,
    workspace_id uuid        NOT NULL,
    actor        text,
    fingerprint  text,
    response     text        NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, batch_id, workspace_id)
);
CREATE INDEX log_receipts_created ON log_receipts (created_at);

INSERT INTO log_receipts (tenant_id, batch_id, workspace_id, response, created_at)
SELECT b.tenant_id, b.batch_id, (array_agg(DISTINCT c.workspace_id))[1], b.response, b.created_at
FROM log_batches b
JOIN log_chunks c ON c.tenant_id = b.tenant_id AND c.received_at = b.created_at
GROUP BY b.tenant_id, b.batch_id, b.response, b.created_at
HAVING count(DISTINCT c.workspace_id) = 1;

CREATE TABLE ws_tickets_spent (
    tenant_id  uuid        NOT NULL,
    ticket_id  uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, ticket_id)
);
CREATE INDEX ws_tickets_spent_expiry ON ws_tickets_spent (expires_at);

-- When an administrator last cleared a user's login throttling: every replica forgets
-- failures counted before it (their counters live in memory).
CREATE TABLE login_resets (
    tenant_id uuid        NOT NULL,
    user_id   uuid        NOT NULL,
    reset_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
);
