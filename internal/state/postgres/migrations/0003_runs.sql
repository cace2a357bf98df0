-- opsd state schema v3: the runbook run journal (internal/dr), matching the
-- SQLite schema. last_seq is the number of the run's newest event, bumped in
-- the transaction that appends events (under the run row's lock), so
-- sequence numbers are dense per run and never reused.
CREATE TABLE opsd_runs (
    id             text COLLATE "C" PRIMARY KEY,
    runbook        text COLLATE "C" NOT NULL,
    runbook_sha256 text NOT NULL,
    mode           text NOT NULL,
    dry_run        boolean NOT NULL,
    state          text NOT NULL,
    actor          text NOT NULL,
    params         text NOT NULL,
    secrets        bytea,
    error          text NOT NULL,
    data           text NOT NULL,
    created_at     timestamptz NOT NULL,
    started_at     timestamptz,
    finished_at    timestamptz,
    version        bigint NOT NULL,
    last_seq       bigint NOT NULL
);

CREATE INDEX opsd_runs_runbook_id ON opsd_runs (runbook, id);
CREATE INDEX opsd_runs_state_id ON opsd_runs (state, id);

CREATE TABLE opsd_run_steps (
    run_id      text COLLATE "C" NOT NULL REFERENCES opsd_runs (id) ON DELETE CASCADE,
    step_id     text COLLATE "C" NOT NULL,
    phase       text COLLATE "C" NOT NULL,
    state       text NOT NULL,
    attempts    integer NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    outputs     text NOT NULL,
    error       text NOT NULL,
    data        text NOT NULL,
    PRIMARY KEY (run_id, step_id, phase)
);

CREATE TABLE opsd_run_events (
    run_id  text COLLATE "C" NOT NULL REFERENCES opsd_runs (id) ON DELETE CASCADE,
    seq     bigint NOT NULL,
    time    timestamptz NOT NULL,
    type    text NOT NULL,
    step_id text NOT NULL,
    state   text NOT NULL,
    message text NOT NULL,
    data    text NOT NULL,
    PRIMARY KEY (run_id, seq)
);
