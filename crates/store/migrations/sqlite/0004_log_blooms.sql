-- Text-search Bloom filters get their own table. In log_chunk_bodies the filter sat after
-- the large `data` blob, so reading it walked the blob's overflow pages: a rare-term search
-- over 10M entries read ~1 GB instead of ~80 MB. New chunks store an empty `bloom` there.
CREATE TABLE log_chunk_blooms (
    seq   INTEGER PRIMARY KEY,
    bloom BLOB NOT NULL
);
INSERT INTO log_chunk_blooms (seq, bloom) SELECT seq, bloom FROM log_chunk_bodies;
