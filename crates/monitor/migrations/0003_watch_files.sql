-- What the file watcher last recorded of each file under a watch (size and modification
-- time), so that changes made while the daemon was not running are found and recorded
-- when it resumes the watch.
CREATE TABLE watch_files (
    path     TEXT    PRIMARY KEY,
    len      INTEGER NOT NULL,
    mtime_ns INTEGER
) WITHOUT ROWID;
