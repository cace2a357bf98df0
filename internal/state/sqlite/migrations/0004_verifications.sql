-- opsd state: verification results of backup copies (checksum, restore).
CREATE TABLE opsd_verifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    backup_id   TEXT NOT NULL REFERENCES opsd_backups (id) ON DELETE CASCADE,
    target      TEXT NOT NULL,
    level       TEXT NOT NULL,
    ok          INTEGER NOT NULL,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    error       TEXT NOT NULL,
    report      BLOB,
    request     TEXT NOT NULL
) STRICT;

CREATE INDEX opsd_verifications_backup ON opsd_verifications (backup_id, id);
CREATE INDEX opsd_verifications_level ON opsd_verifications (level, ok, id);
