package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

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
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO opsd_runs (`+runColumns+`, last_seq)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, 0)
			ON CONFLICT (id) DO NOTHING`,
			r.ID, r.Runbook, r.RunbookSHA256, r.Mode, r.DryRun, r.State, r.Actor, r.Params, nullBytes(r.Secrets),
			r.Error, r.Data, state.Timestamp(r.CreatedAt), nullTime(r.StartedAt), nullTime(r.FinishedAt))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("run exists: %w", state.ErrConflict)
		}
		_, err = appendEvents(ctx, tx, r.ID, events)
		return err
	})
	if err != nil {
		return fmt.Errorf("create run %q: %w", r.ID, err)
	}
	return nil
}

// GetRun returns one run.
func (s *Store) GetRun(ctx context.Context, id string) (state.Run, error) {
	if err := s.check(); err != nil {
		return state.Run{}, err
	}
	r, err := scanRun(s.pool.QueryRow(ctx, `SELECT `+runColumns+` FROM opsd_runs WHERE id = $1`, id))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
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
		args = append(args, f.Runbook)
		where = append(where, "runbook = $"+strconv.Itoa(len(args)))
	}
	if f.Cursor != "" {
		args = append(args, f.Cursor)
		where = append(where, "id < $"+strconv.Itoa(len(args)))
	}
	if len(f.States) > 0 {
		args = append(args, f.States)
		where = append(where, "state = ANY($"+strconv.Itoa(len(args))+")")
	}
	q := `SELECT ` + runColumns + ` FROM opsd_runs`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	args = append(args, f.Limit+1)
	q += " ORDER BY id DESC LIMIT $" + strconv.Itoa(len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (state.Run, error) { return scanRun(row) })
	if err != nil {
		return nil, "", fmt.Errorf("list runs: %w", err)
	}
	var next string
	if len(items) > f.Limit {
		items = items[:f.Limit]
		next = items[len(items)-1].ID
	}
	if len(items) == 0 {
		items = nil // as SQLite returns it
	}
	return items, next, nil
}

// errAbort carries fn's error out of the transaction unwrapped.
type errAbort struct{ err error }

func (e errAbort) Error() string { return e.err.Error() }

// UpdateRun applies fn to the run under its row lock (SELECT ... FOR UPDATE).
func (s *Store) UpdateRun(ctx context.Context, id string, fn func(r *state.Run) error, events ...state.RunEvent) (state.Run, int64, error) {
	if err := s.check(); err != nil {
		return state.Run{}, 0, err
	}
	if err := state.CheckRunEvents(events); err != nil {
		return state.Run{}, 0, fmt.Errorf("update run %q: %w", id, err)
	}
	var r state.Run
	var seq int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		r, err = scanRun(tx.QueryRow(ctx, `SELECT `+runColumns+` FROM opsd_runs WHERE id = $1 FOR UPDATE`, id))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return state.ErrNotFound
		case err != nil:
			return err
		}
		old := r
		if err := fn(&r); err != nil {
			return errAbort{err}
		}
		if r.ID != old.ID || r.Version != old.Version {
			return fmt.Errorf("%w: ID and Version are the store's", state.ErrInvalid)
		}
		if err := state.CheckRun(r); err != nil {
			return err
		}
		r.Version++
		tag, err := tx.Exec(ctx, `UPDATE opsd_runs SET runbook = $3, runbook_sha256 = $4, mode = $5, dry_run = $6,
			state = $7, actor = $8, params = $9, secrets = $10, error = $11, data = $12, created_at = $13,
			started_at = $14, finished_at = $15, version = $16
			WHERE id = $1 AND version = $2`,
			id, old.Version, r.Runbook, r.RunbookSHA256, r.Mode, r.DryRun, r.State, r.Actor, r.Params,
			nullBytes(r.Secrets), r.Error, r.Data, state.Timestamp(r.CreatedAt), nullTime(r.StartedAt),
			nullTime(r.FinishedAt), r.Version)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return state.ErrConflict
		}
		seq, err = appendEvents(ctx, tx, id, events)
		return err
	})
	var abort errAbort
	switch {
	case errors.As(err, &abort):
		return state.Run{}, 0, abort.err
	case err != nil:
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
	var seq int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		// First: it locks the run row and reports a missing run.
		if seq, err = appendEvents(ctx, tx, st.RunID, events); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO opsd_run_steps (`+stepColumns+`)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
			ON CONFLICT (run_id, step_id, phase) DO UPDATE SET state = excluded.state, attempts = excluded.attempts,
				started_at = excluded.started_at, finished_at = excluded.finished_at, outputs = excluded.outputs,
				error = excluded.error, data = excluded.data`,
			st.RunID, st.StepID, st.Phase, st.State, st.Attempts, nullTime(st.StartedAt), nullTime(st.FinishedAt),
			st.Outputs, st.Error, st.Data)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("put step %q of run %q: %w", st.StepID, st.RunID, err)
	}
	return seq, nil
}

// GetStepStates returns every step state of a run.
func (s *Store) GetStepStates(ctx context.Context, runID string) ([]state.StepState, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, `SELECT `+stepColumns+` FROM opsd_run_steps WHERE run_id = $1
		ORDER BY started_at IS NOT NULL, started_at, step_id, phase`, runID)
	if err != nil {
		return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (state.StepState, error) {
		var st state.StepState
		var started, finished *time.Time
		err := row.Scan(&st.RunID, &st.StepID, &st.Phase, &st.State, &st.Attempts, &started, &finished,
			&st.Outputs, &st.Error, &st.Data)
		st.StartedAt, st.FinishedAt = fromNull(started), fromNull(finished)
		return st, err
	})
	if err != nil {
		return nil, fmt.Errorf("get steps of run %q: %w", runID, err)
	}
	if len(out) == 0 {
		out = nil
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
	var seq int64
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		seq, err = appendEvents(ctx, tx, runID, events)
		return err
	})
	if err != nil {
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
	rows, err := s.pool.Query(ctx, `SELECT seq, time, type, step_id, state, message, data
		FROM opsd_run_events WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, runID, afterSeq, limit)
	if err != nil {
		return nil, fmt.Errorf("list events of run %q: %w", runID, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (state.RunEvent, error) {
		var e state.RunEvent
		err := row.Scan(&e.Seq, &e.Time, &e.Type, &e.StepID, &e.State, &e.Message, &e.Data)
		e.Time = e.Time.UTC()
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("list events of run %q: %w", runID, err)
	}
	if len(out) == 0 {
		out = nil
	}
	return out, nil
}

// appendEvents numbers events after the run's last_seq (locking the run row)
// and inserts them. It returns the run's last sequence number afterwards.
func appendEvents(ctx context.Context, tx pgx.Tx, runID string, events []state.RunEvent) (int64, error) {
	var last int64
	err := tx.QueryRow(ctx, `UPDATE opsd_runs SET last_seq = last_seq + $1 WHERE id = $2 RETURNING last_seq`,
		len(events), runID).Scan(&last)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, fmt.Errorf("run %q: %w", runID, state.ErrNotFound)
	case err != nil:
		return 0, err
	}
	if len(events) == 0 {
		return last, nil
	}
	seq := last - int64(len(events))
	batch := &pgx.Batch{}
	for _, e := range events {
		seq++
		batch.Queue(`INSERT INTO opsd_run_events (run_id, seq, time, type, step_id, state, message, data)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			runID, seq, state.Timestamp(e.Time), e.Type, e.StepID, e.State, e.Message, e.Data)
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		return 0, err
	}
	return last, nil
}

func scanRun(row pgx.Row) (state.Run, error) {
	var r state.Run
	var started, finished *time.Time
	if err := row.Scan(&r.ID, &r.Runbook, &r.RunbookSHA256, &r.Mode, &r.DryRun, &r.State, &r.Actor, &r.Params,
		&r.Secrets, &r.Error, &r.Data, &r.CreatedAt, &started, &finished, &r.Version); err != nil {
		return state.Run{}, err
	}
	r.CreatedAt, r.StartedAt, r.FinishedAt = r.CreatedAt.UTC(), fromNull(started), fromNull(finished)
	if len(r.Secrets) == 0 {
		r.Secrets = nil
	}
	return r, nil
}
