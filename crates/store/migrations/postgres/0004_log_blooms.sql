-- SQLite's 0004 moves the text-search Bloom filters out of the chunk bodies' table. Here they
-- already live apart: log_chunks.bloom is stored out of line (STORAGE EXTERNAL, see 0003), so
-- reading it never touches the bodies. This step only documents that, keeping both engines'
-- migration lists in step.
COMMENT ON COLUMN log_chunks.bloom IS
    'text-search bloom filter (store/src/logs/chunk.rs), stored out of line so scans skip the bodies';
