-- The monitor's local store (ADR-031's schema, with ids the hub keeps when entries sync).

-- Every entry taken from a client or the file watcher. `seq` orders them (sync goes in seq
-- order); `id` is the UUIDv7 the entry keeps on the hub, so a re-sent batch stores nothing
-- twice there.
CREATE TABLE logs (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             BLOB    NOT NULL UNIQUE,
    timestamp      INTEGER NOT NULL,          -- µs since the epoch, UTC
    level          INTEGER NOT NULL,          -- 0 trace … 5 fatal
    component      TEXT    NOT NULL,
    session_id     TEXT,
    message        TEXT    NOT NULL,
    metadata       TEXT,                      -- a JSON object
    synced         INTEGER NOT NULL DEFAULT 0,
    sync_timestamp INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX logs_timestamp ON logs (timestamp);
CREATE INDEX logs_session ON logs (session_id) WHERE session_id IS NOT NULL;
CREATE INDEX logs_unsynced ON logs (seq) WHERE synced = 0;

-- Who (a person or an AI agent) is working, so file events can be attributed.
CREATE TABLE sessions (
    id         TEXT    PRIMARY KEY,
    identity   TEXT    NOT NULL,
    agent_type TEXT,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    metadata   TEXT
);

-- Watches survive restarts: the daemon resumes every active row.
CREATE TABLE monitored_paths (
    path       TEXT    PRIMARY KEY,
    recursive  INTEGER NOT NULL,
    patterns   TEXT    NOT NULL,              -- JSON array of globs, `!` = exclude
    active     INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL
);

CREATE TABLE export_archive (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    original_path TEXT    NOT NULL,
    archive_path  TEXT    NOT NULL,
    sha256        TEXT    NOT NULL,
    session_id    TEXT,
    file_size     INTEGER NOT NULL,
    processed_at  INTEGER NOT NULL
);

-- Batches on their way to the hub: a stable batch_id per range of seqs, so a retry after
-- a lost answer is recognised by the hub.
CREATE TABLE sync_queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id    TEXT    NOT NULL UNIQUE,
    first_seq   INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    retry_count INTEGER NOT NULL DEFAULT 0,
    next_retry  INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL
);

-- Entries the hub refused, with its reason: kept, never retried.
CREATE TABLE sync_rejected (
    seq         INTEGER PRIMARY KEY,
    reason      TEXT    NOT NULL,
    rejected_at INTEGER NOT NULL
);
