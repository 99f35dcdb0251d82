-- Bloom filters: SQLite's 0004 moves them out of the chunk bodies' table. Here they already
-- live apart (log_chunks.bloom is stored out of line, STORAGE EXTERNAL, see 0003).
COMMENT ON COLUMN log_chunks.bloom IS
    'text-search bloom filter (store/src/logs/chunk.rs), stored out of line so scans skip the bodies';

-- The id index points at its chunk by chunk_id instead of seq. An append can then fill the
-- index (most of its work) before it takes the tenant's seq lock, which it holds until
-- commit: appends of one tenant no longer queue behind each other's index inserts.
ALTER TABLE log_ids ADD COLUMN chunk_id uuid;
UPDATE log_ids i SET chunk_id = c.chunk_id
    FROM log_chunks c WHERE c.tenant_id = i.tenant_id AND c.seq = i.seq;
DELETE FROM log_ids WHERE chunk_id IS NULL;
ALTER TABLE log_ids ALTER COLUMN chunk_id SET NOT NULL;
ALTER TABLE log_ids DROP COLUMN seq;
