-- Batch receipts keyed by workspace: one principal's idempotency keys can no longer touch
-- another workspace's batches. `actor` (who stored the batch) and `fingerprint` (a hash of
-- what was sent) let a key reused for a different request be refused instead of answered
-- with the first batch's receipt. log_batches stays for binaries older than this
-- migration during a rolling upgrade; nothing of this version reads or writes it but the
-- 24-hour clean-up.
CREATE TABLE log_receipts (
    tenant_key   INTEGER NOT NULL,
    batch_id     TEXT    NOT NULL,
    workspace_id BLOB    NOT NULL,
    actor        TEXT,
    fingerprint  TEXT,
    response     TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_key, batch_id, workspace_id)
) WITHOUT ROWID;
CREATE INDEX log_receipts_created ON log_receipts (created_at);

-- Existing receipts (at most a day old) keep working: a receipt was written in the
-- transaction of its batch's last chunk, with the chunk's received_at, which names the
-- workspace. Receipts whose workspace is ambiguous (two chunks of the tenant received in
-- the same microsecond for different workspaces) or gone are not carried over.
INSERT INTO log_receipts (tenant_key, batch_id, workspace_id, response, created_at)
SELECT b.tenant_key, b.batch_id, min(c.workspace_id), b.response, b.created_at
FROM log_batches b
JOIN log_chunks c ON c.tenant_key = b.tenant_key AND c.received_at = b.created_at
GROUP BY b.tenant_key, b.batch_id
HAVING count(DISTINCT c.workspace_id) = 1;

-- Outbox chunks PostgreSQL refused for good (or that no longer decode), kept with the
-- reason instead of blocking every chunk behind them.
CREATE TABLE log_outbox_set_aside (
    seq        INTEGER PRIMARY KEY,
    tenant_id  BLOB    NOT NULL,
    chunk      BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    reason     TEXT    NOT NULL,
    set_aside_at INTEGER NOT NULL
);
ALTER TABLE log_outbox ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;

-- WebSocket tickets are single-use: the first upgrade records the ticket's id; a second
-- finds it and is refused. Rows go once the ticket would have expired anyway.
CREATE TABLE ws_tickets_spent (
    tenant_id  BLOB    NOT NULL,
    ticket_id  BLOB    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, ticket_id)
) WITHOUT ROWID;
CREATE INDEX ws_tickets_spent_expiry ON ws_tickets_spent (expires_at);

-- When an administrator last cleared a user's login throttling: every replica forgets
-- failures counted before it (their counters live in memory).
CREATE TABLE login_resets (
    tenant_id BLOB    NOT NULL,
    user_id   BLOB    NOT NULL,
    reset_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, user_id)
) WITHOUT ROWID;
