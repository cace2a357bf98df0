-- opsd state: verification results of backup copies (checksum, restore).
CREATE TABLE opsd_verifications (
    id          bigserial PRIMARY KEY,
    backup_id   text COLLATE "C" NOT NULL REFERENCES opsd_backups (id) ON DELETE CASCADE,
    target      text COLLATE "C" NOT NULL,
    level       text NOT NULL,
    ok          boolean NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    error       text NOT NULL,
    report      bytea,
    request     text NOT NULL
);

CREATE INDEX opsd_verifications_backup ON opsd_verifications (backup_id, id);
CREATE INDEX opsd_verifications_level ON opsd_verifications (level, ok, id);
