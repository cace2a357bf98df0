package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/opsd-dev/opsd/internal/state"
)

var _ state.Runs = (*Store)(nil)

const runColumns = `id, runbook, runbook_sha256, mode, dry_run, state, actor, params, secrets, error, data,
	created_at, started_at, finished_at, version`

const stepColumns = `run_id, step_id, phase, state, attempts, started_at, finished_at, outputs, error, data`

// CreateRun adds a run and its first events.
func (s *Store) CreateRun(ctx context.Context, r state.Run, events ...state.RunEvent) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckRun(r); err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	if err := state.CheckRunEvents(events); err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, `INSERT INTO opsd_runs (`+runColumns+`, last_seq)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 0)
		ON CONFLICT (id) DO NOTHING`,
		r.ID, r.Runbook, r.RunbookSHA256, r.Mode, r.DryRun, r.State, r.Actor, r.Params, nullBytes(r.Secrets),
		r.Error, r.Data, formatTime(r.CreatedAt), nullTime(r.StartedAt), nullTime(r.FinishedAt))
	if err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	} else if n == 0 {
		return fmt.Errorf("create run %q: run exists: %w", r.ID, state.ErrConflict)
	}
	if _, err := appendEvents(ctx, tx, r.ID, events); err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	return nil
}

// GetRun returns one run.
func (s *Store) GetRun(ctx context.Context, id string) (state.Run, error) {
	if err := s.check(); err != nil {
		return state.Run{}, err
	}
	r, err := scanRun(s.db.QueryRowContext(ctx, `SELECT `+runColumns+` FROM opsd_runs WHERE id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return state.Run{}, fmt.Errorf("get run %q: %w", id, state.ErrNotFound)
	case err != nil:
		return state.Run{}, fmt.Errorf("get run %q: %w", id, err)
	}
	return r, nil
}

// ListRuns returns one page of runs, newest first.
func (s *Store) ListRuns(ctx context.Context, f state.RunFilter) ([]state.Run, string, error) {
	if err := s.check(); err != nil {
		return nil, "", err
	}
	f, err := state.CheckRunFilter(f)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	var where []string
	var args []any
	if f.Runbook != "" {
		where, args = append(where, "runbook = ?"), append(args, f.Runbook)
	}
	if f.Cursor != "" {
		where, args = append(where, "id < ?"), append(args, f.Cursor)
	}
	if len(f.States) > 0 {
		where = append(where, "state IN (?"+strings.Repeat(", ?", len(f.States)-1)+")")
		for _, st := range f.States {
			args = append(args, st)
		}
	}
	q := `SELECT ` + runColumns + ` FROM opsd_runs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id DESC LIMIT ?"
	args = append(args, f.Limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	defer rows.Close()
	var items []state.Run
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list runs: %w", err)
		}
		items = append(items, r)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	var next string
	if len(items) > f.Limit {
		items = items[:f.Limit]
		next = items[len(items)-1].ID
	}
	return items, next, nil
}

// UpdateRun applies fn to the run in an immediate (write-locked) transaction.
func (s *Store) UpdateRun(ctx context.Context, id string, fn func(r *state.Run) error, events ...state.RunEvent) (state.Run, int64, error) {
	if err := s.check(); err != nil {
		return state.Run{}, 0, err
	}
	if err := state.CheckRunEvents(events); err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()
	r, err := scanRun(tx.QueryRowContext(ctx, `SELECT `+runColumns+` FROM opsd_runs WHERE id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, state.ErrNotFound)
	case err != nil:
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	old := r
	if err := fn(&r); err != nil {
		return state.Run{}, 0, err
	}
	if r.ID != old.ID || r.Version != old.Version {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w: ID and Version are the store's", id, state.ErrInvalid)
	}
	if err := state.CheckRun(r); err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	r.Version++
	res, err := tx.ExecContext(ctx, `UPDATE opsd_runs SET runbook = ?, runbook_sha256 = ?, mode = ?, dry_run = ?,
		state = ?, actor = ?, params = ?, secrets = ?, error = ?, data = ?, created_at = ?, started_at = ?,
		finished_at = ?, version = ?
		WHERE id = ? AND version = ?`,
		r.Runbook, r.RunbookSHA256, r.Mode, r.DryRun, r.State, r.Actor, r.Params, nullBytes(r.Secrets), r.Error,
		r.Data, formatTime(r.CreatedAt), nullTime(r.StartedAt), nullTime(r.FinishedAt), r.Version, id, old.Version)
	if err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	} else if n == 0 {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, state.ErrConflict)
	}
	seq, err := appendEvents(ctx, tx, id, events)
	if err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	if err := tx.Commit(); err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	r.CreatedAt = state.Timestamp(r.CreatedAt)
	r.StartedAt = state.Timestamp(r.StartedAt)
	r.FinishedAt = state.Timestamp(r.FinishedAt)
	return r, seq, nil
}

// PutStepState upserts a step's state and appends events in one transaction.
func (s *Store) PutStepState(ctx context.Context, st state.StepState, events ...state.RunEvent) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if err := state.CheckStepState(st); err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	if err := state.CheckRunEvents(events); err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	defer func() { _ = tx.Rollback() }()
	// appendEvents checks that the run exists (and bumps its sequence) before
	// the step row is written, so a missing run is ErrNotFound rather than a
	// foreign-key error.
	seq, err := appendEvents(ctx, tx, st.RunID, events)
	if err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO opsd_run_steps (`+stepColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (run_id, step_id, phase) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,
			started_at = excluded.started_at, finished_at = excluded.finished_at, outputs = excluded.outputs,
			error = excluded.error, data = excluded.data`,
		st.RunID, st.StepID, st.Phase, st.State, st.Attempts, nullTime(st.StartedAt), nullTime(st.FinishedAt),
		st.Outputs, st.Error, st.Data); err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	return seq, nil
}

// GetStepStates returns every step state of a run.
func (s *Store) GetStepStates(ctx context.Context, runID string) ([]state.StepState, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+stepColumns+` FROM opsd_run_steps WHERE run_id = ?
		ORDER BY started_at IS NOT NULL, started_at, step_id, phase`, runID)
	if err != nil {
		return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
	}
	defer rows.Close()
	var out []state.StepState
	for rows.Next() {
		var st state.StepState
		var started, finished sql.NullString
		if err := rows.Scan(&st.RunID, &st.StepID, &st.Phase, &st.State, &st.Attempts, &started, &finished,
			&st.Outputs, &st.Error, &st.Data); err != nil {
			return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
		}
		if st.StartedAt, err = parseNullTime(started); err != nil {
			return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
		}
		if st.FinishedAt, err = parseNullTime(finished); err != nil {
			return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
	}
	return out, nil
}

// AppendRunEvents appends events to a run.
func (s *Store) AppendRunEvents(ctx context.Context, runID string, events ...state.RunEvent) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if err := state.CheckRunEvents(events); err != nil {
		return 0, fmt.Errorf("append events to run %q: %w", runID, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("append events to run %q: %w", runID, err)
	}
	defer func() { _ = tx.Rollback() }()
	seq, err := appendEvents(ctx, tx, runID, events)
	if err != nil {
		return 0, fmt.Errorf("append events to run %q: %w", runID, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("append events to run %q: %w", runID, err)
	}
	return seq, nil
}

// ListRunEvents returns a run's events after afterSeq.
func (s *Store) ListRunEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]state.RunEvent, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if limit <= 0 || limit > state.MaxRunEventPage {
		limit = state.MaxRunEventPage
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, time, type, step_id, state, message, data
		FROM opsd_run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?`, runID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("list events of run %q: %w", runID, err)
	}
	defer rows.Close()
	var out []state.RunEvent
	for rows.Next() {
		var e state.RunEvent
		var t string
		if err := rows.Scan(&e.Seq, &t, &e.Type, &e.StepID, &e.State, &e.Message, &e.Data); err != nil {
			return nil, fmt.Errorf("list events of run %q: %w", runID, err)
		}
		if e.Time, err = parseTime(t); err != nil {
			return nil, fmt.Errorf("list events of run %q: %w", runID, err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events of run %q: %w", runID, err)
	}
	return out, nil
}

// appendEvents numbers events after the run's last_seq and inserts them. It
// returns the run's last sequence number afterwards, and ErrNotFound when the
// run does not exist.
func appendEvents(ctx context.Context, tx *sql.Tx, runID string, events []state.RunEvent) (int64, error) {
	var last int64
	err := tx.QueryRowContext(ctx, `UPDATE opsd_runs SET last_seq = last_seq + ? WHERE id = ? RETURNING last_seq`,
		len(events), runID).Scan(&last)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, fmt.Errorf("run %q: %w", runID, state.ErrNotFound)
	case err != nil:
		return 0, err
	}
	seq := last - int64(len(events))
	for _, e := range events {
		seq++
		if _, err := tx.ExecContext(ctx, `INSERT INTO opsd_run_events (run_id, seq, time, type, step_id, state,
			message, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
			runID, seq, formatTime(e.Time), e.Type, e.StepID, e.State, e.Message, e.Data); err != nil {
			return 0, err
		}
	}
	return last, nil
}

func scanRun(row scanner) (state.Run, error) {
	var r state.Run
	var created string
	var started, finished sql.NullString
	if err := row.Scan(&r.ID, &r.Runbook, &r.RunbookSHA256, &r.Mode, &r.DryRun, &r.State, &r.Actor, &r.Params,
		&r.Secrets, &r.Error, &r.Data, &created, &started, &finished, &r.Version); err != nil {
		return state.Run{}, err
	}
	var err error
	if r.CreatedAt, err = parseTime(created); err != nil {
		return state.Run{}, fmt.Errorf("run %q created_at: %w", r.ID, err)
	}
	if r.StartedAt, err = parseNullTime(started); err != nil {
		return state.Run{}, fmt.Errorf("run %q started_at: %w", r.ID, err)
	}
	if r.FinishedAt, err = parseNullTime(finished); err != nil {
		return state.Run{}, fmt.Errorf("run %q finished_at: %w", r.ID, err)
	}
	if len(r.Secrets) == 0 {
		r.Secrets = nil
	}
	return r, nil
}
