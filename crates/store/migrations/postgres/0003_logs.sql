-- Logs, stored as chunks (see store/src/logs/chunk.rs). Bodies and Bloom filters are
-- TOASTed out of line, so metadata scans never read them.
CREATE TABLE log_seqs (
    tenant_id uuid   NOT NULL PRIMARY KEY,
    last_seq  bigint NOT NULL
);

CREATE TABLE log_chunks (
    tenant_id    uuid        NOT NULL,
    seq          bigint      NOT NULL,
    chunk_id     uuid        NOT NULL,
    workspace_id uuid        NOT NULL,
    min_ts       bigint      NOT NULL,
    max_ts       bigint      NOT NULL,
    count        integer     NOT NULL,
    levels       smallint    NOT NULL,
    components   text,
    sessions     bytea,
    skip         bytea,
    received_at  timestamptz NOT NULL,
    data         bytea       NOT NULL,
    bloom        bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
ALTER TABLE log_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE log_chunks ALTER COLUMN bloom SET STORAGE EXTERNAL;
CREATE INDEX log_chunks_newest ON log_chunks (tenant_id, max_ts, seq);
CREATE INDEX log_chunks_oldest ON log_chunks (tenant_id, min_ts, seq);
CREATE UNIQUE INDEX log_chunks_chunk_id ON log_chunks (tenant_id, chunk_id);

CREATE TABLE log_ids (
    tenant_id uuid    NOT NULL,
    id        uuid    NOT NULL,
    seq       bigint  NOT NULL,
    pos       integer NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE log_batches (
    tenant_id  uuid        NOT NULL,
    batch_id   text        NOT NULL,
    response   text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, batch_id)
);
CREATE INDEX log_batches_created ON log_batches (created_at);
