-- Tenants are the root of the keyspace: every other table is keyed (tenant_id, ...),
-- so the schema can be distributed by tenant (e.g. Citus) without change.
CREATE TABLE tenants (
    tenant_id  uuid        NOT NULL PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE UNIQUE INDEX tenants_name_key ON tenants (name);
