-- opsd state schema v2: the backup catalog.
-- States and types are validated in Go (state.CheckBackup), not with CHECK
-- constraints, so that adding one needs no table rebuild. Times are TEXT as
-- in v1, NULL when not (yet) set.
CREATE TABLE opsd_backups (
    id           TEXT PRIMARY KEY NOT NULL,
    source       TEXT NOT NULL,
    type         TEXT NOT NULL,
    state        TEXT NOT NULL,
    actor        TEXT NOT NULL,
    job_id       INTEGER NOT NULL,
    queued_at    TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT,
    raw_bytes    INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    error        TEXT NOT NULL,
    manifest     BLOB
) STRICT;

-- Newest backups of one source (listing, LatestBackup) and of one state.
CREATE INDEX opsd_backups_source_id ON opsd_backups (source, id);
CREATE INDEX opsd_backups_state_id ON opsd_backups (state, id);

CREATE TABLE opsd_backup_copies (
    backup_id   TEXT NOT NULL REFERENCES opsd_backups (id) ON DELETE CASCADE,
    target      TEXT NOT NULL,
    state       TEXT NOT NULL,
    object_key  TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    error       TEXT NOT NULL,
    PRIMARY KEY (backup_id, target)
) STRICT;
