-- opsd state schema v3: the runbook run journal (internal/dr).
-- States are validated in Go. last_seq is the number of the run's newest
-- event, bumped in the transaction that appends events, so sequence numbers
-- are dense per run and never reused.
CREATE TABLE opsd_runs (
    id             TEXT PRIMARY KEY NOT NULL,
    runbook        TEXT NOT NULL,
    runbook_sha256 TEXT NOT NULL,
    mode           TEXT NOT NULL,
    dry_run        INTEGER NOT NULL,
    state          TEXT NOT NULL,
    actor          TEXT NOT NULL,
    params         TEXT NOT NULL,
    secrets        BLOB,
    error          TEXT NOT NULL,
    data           TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    started_at     TEXT,
    finished_at    TEXT,
    version        INTEGER NOT NULL,
    last_seq       INTEGER NOT NULL
) STRICT;

CREATE INDEX opsd_runs_runbook_id ON opsd_runs (runbook, id);
CREATE INDEX opsd_runs_state_id ON opsd_runs (state, id);

CREATE TABLE opsd_run_steps (
    run_id      TEXT NOT NULL REFERENCES opsd_runs (id) ON DELETE CASCADE,
    step_id     TEXT NOT NULL,
    phase       TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    outputs     TEXT NOT NULL,
    error       TEXT NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (run_id, step_id, phase)
) STRICT;

CREATE TABLE opsd_run_events (
    run_id  TEXT NOT NULL REFERENCES opsd_runs (id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    time    TEXT NOT NULL,
    type    TEXT NOT NULL,
    step_id TEXT NOT NULL,
    state   TEXT NOT NULL,
    message TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) STRICT;
