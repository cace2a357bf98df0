-- opsd state schema v2: the backup catalog.
-- States and types are validated in Go (state.CheckBackup), not with CHECK
-- constraints, matching the SQLite schema. Identifiers use the "C" collation
-- so that IDs order (and compare against a cursor) byte by byte, as in SQLite.
CREATE TABLE opsd_backups (
    id           text COLLATE "C" PRIMARY KEY,
    source       text COLLATE "C" NOT NULL,
    type         text NOT NULL,
    state        text NOT NULL,
    actor        text NOT NULL,
    job_id       bigint NOT NULL,
    queued_at    timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    raw_bytes    bigint NOT NULL,
    stored_bytes bigint NOT NULL,
    error        text NOT NULL,
    manifest     bytea
);

-- Newest backups of one source (listing, LatestBackup) and of one state.
CREATE INDEX opsd_backups_source_id ON opsd_backups (source, id);
CREATE INDEX opsd_backups_state_id ON opsd_backups (state, id);

CREATE TABLE opsd_backup_copies (
    backup_id   text COLLATE "C" NOT NULL REFERENCES opsd_backups (id) ON DELETE CASCADE,
    target      text COLLATE "C" NOT NULL,
    state       text NOT NULL,
    object_key  text NOT NULL,
    bytes       bigint NOT NULL,
    sha256      text NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    error       text NOT NULL,
    PRIMARY KEY (backup_id, target)
);
