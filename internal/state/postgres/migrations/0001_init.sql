-- opsd state schema v1: key/value facts and replica heartbeats.
CREATE TABLE opsd_kv (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opsd_replicas (
    id          text PRIMARY KEY,
    hostname    text NOT NULL,
    version     text NOT NULL,
    config_hash text NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL
);

CREATE INDEX opsd_replicas_seen_at ON opsd_replicas (seen_at);
