package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/opsd-dev/opsd/internal/state"
)

const backupColumns = `id, source, type, state, actor, job_id, queued_at, started_at, finished_at,
	raw_bytes, stored_bytes, error, manifest`

const copyColumns = `backup_id, target, state, object_key, bytes, sha256, started_at, finished_at, error`

// foreignKeyViolation is PostgreSQL's SQLSTATE for a missing referenced row.
const foreignKeyViolation = "23503"

// CreateBackup adds b to the catalog.
func (s *Store) CreateBackup(ctx context.Context, b state.Backup) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckBackup(b); err != nil {
		return fmt.Errorf("create backup %q: %w", b.ID, err)
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO opsd_backups (`+backupColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
		ON CONFLICT (id) DO NOTHING`,
		b.ID, b.Source, b.Type, b.State, b.Actor, b.JobID, state.Timestamp(b.QueuedAt),
		nullTime(b.StartedAt), nullTime(b.FinishedAt), b.RawBytes, b.StoredBytes, b.Error, nullBytes(b.Manifest))
	if err != nil {
		return fmt.Errorf("create backup %q: %w", b.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("create backup %q: backup exists: %w", b.ID, state.ErrConflict)
	}
	return nil
}

// UpdateBackup replaces the backup with b.ID.
func (s *Store) UpdateBackup(ctx context.Context, b state.Backup) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckBackup(b); err != nil {
		return fmt.Errorf("update backup %q: %w", b.ID, err)
	}
	tag, err := s.pool.Exec(ctx, `UPDATE opsd_backups SET source = $2, type = $3, state = $4, actor = $5,
		job_id = $6, queued_at = $7, started_at = $8, finished_at = $9, raw_bytes = $10, stored_bytes = $11,
		error = $12, manifest = $13
		WHERE id = $1`,
		b.ID, b.Source, b.Type, b.State, b.Actor, b.JobID, state.Timestamp(b.QueuedAt),
		nullTime(b.StartedAt), nullTime(b.FinishedAt), b.RawBytes, b.StoredBytes, b.Error, nullBytes(b.Manifest))
	if err != nil {
		return fmt.Errorf("update backup %q: %w", b.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("update backup %q: %w", b.ID, state.ErrNotFound)
	}
	return nil
}

// GetBackup returns a backup and its copies from one snapshot.
func (s *Store) GetBackup(ctx context.Context, id string) (state.Backup, []state.Copy, error) {
	if err := s.check(); err != nil {
		return state.Backup{}, nil, err
	}
	if err := state.CheckBackupID(id); err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, err)
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()

	b, err := scanBackup(tx.QueryRow(ctx, `SELECT `+backupColumns+` FROM opsd_backups WHERE id = $1`, id))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, state.ErrNotFound)
	case err != nil:
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, err)
	}
	rows, err := tx.Query(ctx, `SELECT `+copyColumns+` FROM opsd_backup_copies
		WHERE backup_id = $1 ORDER BY target`, id)
	if err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: copies: %w", id, err)
	}
	copies, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (state.Copy, error) { return scanCopy(row) })
	if err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: copies: %w", id, err)
	}
	if len(copies) == 0 {
		copies = nil // as SQLite returns it
	}
	return b, copies, nil
}

// ListBackups returns one page of backups, newest first.
func (s *Store) ListBackups(ctx context.Context, f state.BackupFilter) ([]state.Backup, string, error) {
	if err := s.check(); err != nil {
		return nil, "", err
	}
	f, err := state.CheckBackupFilter(f)
	if err != nil {
		return nil, "", fmt.Errorf("list backups: %w", err)
	}
	var where []string
	var args []any
	for _, c := range []struct {
		col, op, v string
	}{{"source", "=", f.Source}, {"state", "=", f.State}, {"id", "<", f.Cursor}} {
		if c.v != "" {
			args = append(args, c.v)
			where = append(where, c.col+" "+c.op+" $"+strconv.Itoa(len(args)))
		}
	}
	q := `SELECT ` + backupColumns + ` FROM opsd_backups`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	// One row more than asked tells whether another page follows.
	args = append(args, f.Limit+1)
	q += " ORDER BY id DESC LIMIT $" + strconv.Itoa(len(args))
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list backups: %w", err)
	}
	items, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (state.Backup, error) { return scanBackup(row) })
	if err != nil {
		return nil, "", fmt.Errorf("list backups: %w", err)
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

// PutCopy inserts or replaces a copy; the foreign key reports a missing
// backup.
func (s *Store) PutCopy(ctx context.Context, c state.Copy) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckCopy(c); err != nil {
		return fmt.Errorf("put copy of %q on %q: %w", c.BackupID, c.Target, err)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO opsd_backup_copies (`+copyColumns+`)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (backup_id, target) DO UPDATE SET state = excluded.state, object_key = excluded.object_key,
			bytes = excluded.bytes, sha256 = excluded.sha256, started_at = excluded.started_at,
			finished_at = excluded.finished_at, error = excluded.error`,
		c.BackupID, c.Target, c.State, c.Key, c.Bytes, c.SHA256, nullTime(c.StartedAt), nullTime(c.FinishedAt), c.Error)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == foreignKeyViolation:
		return fmt.Errorf("put copy of %q on %q: backup: %w", c.BackupID, c.Target, state.ErrNotFound)
	case err != nil:
		return fmt.Errorf("put copy of %q on %q: %w", c.BackupID, c.Target, err)
	}
	return nil
}

// LatestBackup returns the newest backup of source in one of states.
func (s *Store) LatestBackup(ctx context.Context, source string, states ...string) (state.Backup, error) {
	if err := s.check(); err != nil {
		return state.Backup{}, err
	}
	if err := state.CheckLatest(source, states); err != nil {
		return state.Backup{}, fmt.Errorf("latest backup of %q: %w", source, err)
	}
	q := `SELECT ` + backupColumns + ` FROM opsd_backups WHERE source = $1`
	args := []any{source}
	if len(states) > 0 {
		q += " AND state = ANY($2)"
		args = append(args, states)
	}
	q += " ORDER BY id DESC LIMIT 1"
	b, err := scanBackup(s.pool.QueryRow(ctx, q, args...))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return state.Backup{}, fmt.Errorf("latest backup of %q in %v: %w", source, states, state.ErrNotFound)
	case err != nil:
		return state.Backup{}, fmt.Errorf("latest backup of %q: %w", source, err)
	}
	return b, nil
}

func scanBackup(row pgx.Row) (state.Backup, error) {
	var b state.Backup
	var started, finished *time.Time
	if err := row.Scan(&b.ID, &b.Source, &b.Type, &b.State, &b.Actor, &b.JobID, &b.QueuedAt, &started, &finished,
		&b.RawBytes, &b.StoredBytes, &b.Error, &b.Manifest); err != nil {
		return state.Backup{}, err
	}
	b.QueuedAt, b.StartedAt, b.FinishedAt = b.QueuedAt.UTC(), fromNull(started), fromNull(finished)
	if len(b.Manifest) == 0 {
		b.Manifest = nil
	}
	return b, nil
}

func scanCopy(row pgx.Row) (state.Copy, error) {
	var c state.Copy
	var started, finished *time.Time
	if err := row.Scan(&c.BackupID, &c.Target, &c.State, &c.Key, &c.Bytes, &c.SHA256, &started, &finished,
		&c.Error); err != nil {
		return state.Copy{}, err
	}
	c.StartedAt, c.FinishedAt = fromNull(started), fromNull(finished)
	return c, nil
}

// nullTime maps the zero time (also after truncation) to NULL.
func nullTime(t time.Time) any {
	if t = state.Timestamp(t); t.IsZero() {
		return nil
	}
	return t
}

func fromNull(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// nullBytes stores an empty manifest as NULL, so that it reads back as nil.
func nullBytes(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// DeleteBackup removes backup id with its copies and verifications.
func (s *Store) DeleteBackup(ctx context.Context, id string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckBackupID(id); err != nil {
		return fmt.Errorf("delete backup %q: %w", id, err)
	}
	// Copies and verifications go with it (ON DELETE CASCADE).
	tag, err := s.pool.Exec(ctx, `DELETE FROM opsd_backups WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete backup %q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("delete backup %q: %w", id, state.ErrNotFound)
	}
	return nil
}
