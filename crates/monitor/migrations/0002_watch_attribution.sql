-- A watch may belong to a session (its events are attributed to that session's person or
-- agent while it is open), and may poll instead of using the kernel's events.
ALTER TABLE monitored_paths ADD COLUMN session_id TEXT;
ALTER TABLE monitored_paths ADD COLUMN mode TEXT NOT NULL DEFAULT 'native';
