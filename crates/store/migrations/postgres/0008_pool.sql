-- The warm pool: a pooled workspace runs, its agent ready, owned by the tenant's pool
-- account, until a user claims it (one UPDATE moving it to its new owner).
ALTER TABLE workspaces ADD COLUMN pooled boolean NOT NULL DEFAULT false;
CREATE INDEX workspaces_pool ON workspaces (tenant_id, template_id) WHERE pooled AND deleted_at IS NULL;
