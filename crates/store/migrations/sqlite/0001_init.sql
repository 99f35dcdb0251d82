-- Tenants are the root of the keyspace: every other table is keyed (tenant_id, ...).
-- UUIDs are stored as 16-byte BLOBs, instants as INTEGER microseconds since the epoch (UTC).
CREATE TABLE tenants (
    tenant_id  BLOB    NOT NULL PRIMARY KEY CHECK (length(tenant_id) = 16),
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE UNIQUE INDEX tenants_name_key ON tenants (name);
