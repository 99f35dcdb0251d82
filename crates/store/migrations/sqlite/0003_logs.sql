-- Logs, stored as chunks (see store/src/logs/chunk.rs).
--
-- log_tenants gives each tenant a small integer key, so the per-entry id index stays
-- compact (it takes one row per entry: the cost that bounds ingestion).
-- Chunk metadata rows are small and keyed (tenant, seq); chunk bodies are large and live
-- in a rowid table keyed by the global seq, which is what SQLite stores large rows best in
-- (every read of them comes through a tenant-keyed metadata row first).
CREATE TABLE log_tenants (
    tenant_key INTEGER PRIMARY KEY,
    tenant_id  BLOB    NOT NULL UNIQUE
);

CREATE TABLE log_chunks (
    tenant_key   INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    chunk_id     BLOB    NOT NULL,
    workspace_id BLOB    NOT NULL,
    min_ts       INTEGER NOT NULL,
    max_ts       INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    levels       INTEGER NOT NULL,
    components   TEXT,
    sessions     BLOB,
    skip         BLOB,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_key, seq)
) WITHOUT ROWID;
CREATE INDEX log_chunks_newest ON log_chunks (tenant_key, max_ts, seq);
CREATE INDEX log_chunks_oldest ON log_chunks (tenant_key, min_ts, seq);
CREATE UNIQUE INDEX log_chunks_chunk_id ON log_chunks (tenant_key, chunk_id);

CREATE TABLE log_chunk_bodies (
    seq   INTEGER PRIMARY KEY,
    data  BLOB NOT NULL,
    bloom BLOB NOT NULL
);

CREATE TABLE log_ids (
    tenant_key INTEGER NOT NULL,
    id         BLOB    NOT NULL,
    seq        INTEGER NOT NULL,
    pos        INTEGER NOT NULL,
    PRIMARY KEY (tenant_key, id)
) WITHOUT ROWID;

CREATE TABLE log_batches (
    tenant_key INTEGER NOT NULL,
    batch_id   TEXT    NOT NULL,
    response   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_key, batch_id)
) WITHOUT ROWID;
CREATE INDEX log_batches_created ON log_batches (created_at);

-- Shared mode only: batches accepted locally and not yet in PostgreSQL, in order.
CREATE TABLE log_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  BLOB    NOT NULL,
    chunk      BLOB    NOT NULL,
    created_at INTEGER NOT NULL
);
