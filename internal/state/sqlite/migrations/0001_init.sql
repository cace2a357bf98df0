-- opsd state schema v1: key/value facts and replica heartbeats.
-- Times are TEXT in RFC 3339 with microseconds, UTC, so they sort as strings.
CREATE TABLE opsd_kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE opsd_replicas (
    id          TEXT PRIMARY KEY NOT NULL,
    hostname    TEXT NOT NULL,
    version     TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    started_at  TEXT NOT NULL,
    seen_at     TEXT NOT NULL
) STRICT;

CREATE INDEX opsd_replicas_seen_at ON opsd_replicas (seen_at);
