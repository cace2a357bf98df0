package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/state"
)

const backupColumns = `id, source, type, state, actor, job_id, queued_at, started_at, finished_at,
	raw_bytes, stored_bytes, error, manifest`

const copyColumns = `backup_id, target, state, object_key, bytes, sha256, started_at, finished_at, error`

// CreateBackup adds b to the catalog.
func (s *Store) CreateBackup(ctx context.Context, b state.Backup) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckBackup(b); err != nil {
		return fmt.Errorf("create backup %q: %w", b.ID, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO opsd_backups (`+backupColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO NOTHING`,
		b.ID, b.Source, b.Type, b.State, b.Actor, b.JobID, formatTime(b.QueuedAt),
		nullTime(b.StartedAt), nullTime(b.FinishedAt), b.RawBytes, b.StoredBytes, b.Error, nullBytes(b.Manifest))
	if err != nil {
		return fmt.Errorf("create backup %q: %w", b.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("create backup %q: %w", b.ID, err)
	} else if n == 0 {
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
	res, err := s.db.ExecContext(ctx, `UPDATE opsd_backups SET source = ?, type = ?, state = ?, actor = ?,
		job_id = ?, queued_at = ?, started_at = ?, finished_at = ?, raw_bytes = ?, stored_bytes = ?,
		error = ?, manifest = ?
		WHERE id = ?`,
		b.Source, b.Type, b.State, b.Actor, b.JobID, formatTime(b.QueuedAt), nullTime(b.StartedAt),
		nullTime(b.FinishedAt), b.RawBytes, b.StoredBytes, b.Error, nullBytes(b.Manifest), b.ID)
	if err != nil {
		return fmt.Errorf("update backup %q: %w", b.ID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("update backup %q: %w", b.ID, err)
	} else if n == 0 {
		return fmt.Errorf("update backup %q: %w", b.ID, state.ErrNotFound)
	}
	return nil
}

// GetBackup returns a backup and its copies, read in one transaction.
func (s *Store) GetBackup(ctx context.Context, id string) (state.Backup, []state.Copy, error) {
	if err := s.check(); err != nil {
		return state.Backup{}, nil, err
	}
	if err := state.CheckBackupID(id); err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()

	b, err := scanBackup(tx.QueryRowContext(ctx, `SELECT `+backupColumns+` FROM opsd_backups WHERE id = ?`, id))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, state.ErrNotFound)
	case err != nil:
		return state.Backup{}, nil, fmt.Errorf("get backup %q: %w", id, err)
	}
	rows, err := tx.QueryContext(ctx, `SELECT `+copyColumns+` FROM opsd_backup_copies
		WHERE backup_id = ? ORDER BY target`, id)
	if err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: copies: %w", id, err)
	}
	defer rows.Close()
	var copies []state.Copy
	for rows.Next() {
		c, err := scanCopy(rows)
		if err != nil {
			return state.Backup{}, nil, fmt.Errorf("get backup %q: copies: %w", id, err)
		}
		copies = append(copies, c)
	}
	if err := rows.Err(); err != nil {
		return state.Backup{}, nil, fmt.Errorf("get backup %q: copies: %w", id, err)
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
		cond, v string
	}{{"source = ?", f.Source}, {"state = ?", f.State}, {"id < ?", f.Cursor}} {
		if c.v != "" {
			where = append(where, c.cond)
			args = append(args, c.v)
		}
	}
	q := `SELECT ` + backupColumns + ` FROM opsd_backups`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	// One row more than asked tells whether another page follows.
	q += " ORDER BY id DESC LIMIT ?"
	args = append(args, f.Limit+1)
	items, err := s.queryBackups(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list backups: %w", err)
	}
	var next string
	if len(items) > f.Limit {
		items = items[:f.Limit]
		next = items[len(items)-1].ID
	}
	return items, next, nil
}

// PutCopy inserts or replaces a copy. The existence check and the upsert are
// one statement, so a missing backup leaves no row behind.
func (s *Store) PutCopy(ctx context.Context, c state.Copy) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckCopy(c); err != nil {
		return fmt.Errorf("put copy of %q on %q: %w", c.BackupID, c.Target, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO opsd_backup_copies (`+copyColumns+`)
		SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?
		WHERE EXISTS (SELECT 1 FROM opsd_backups WHERE id = ?)
		ON CONFLICT (backup_id, target) DO UPDATE SET state = excluded.state, object_key = excluded.object_key,
			bytes = excluded.bytes, sha256 = excluded.sha256, started_at = excluded.started_at,
			finished_at = excluded.finished_at, error = excluded.error`,
		c.BackupID, c.Target, c.State, c.Key, c.Bytes, c.SHA256, nullTime(c.StartedAt), nullTime(c.FinishedAt),
		c.Error, c.BackupID)
	if err != nil {
		return fmt.Errorf("put copy of %q on %q: %w", c.BackupID, c.Target, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("put copy of %q on %q: %w", c.BackupID, c.Target, err)
	} else if n == 0 {
		return fmt.Errorf("put copy of %q on %q: backup: %w", c.BackupID, c.Target, state.ErrNotFound)
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
	q := `SELECT ` + backupColumns + ` FROM opsd_backups WHERE source = ?`
	args := []any{source}
	if len(states) > 0 {
		q += " AND state IN (?" + strings.Repeat(", ?", len(states)-1) + ")"
		for _, st := range states {
			args = append(args, st)
		}
	}
	q += " ORDER BY id DESC LIMIT 1"
	b, err := scanBackup(s.db.QueryRowContext(ctx, q, args...))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return state.Backup{}, fmt.Errorf("latest backup of %q in %v: %w", source, states, state.ErrNotFound)
	case err != nil:
		return state.Backup{}, fmt.Errorf("latest backup of %q: %w", source, err)
	}
	return b, nil
}

func (s *Store) queryBackups(ctx context.Context, q string, args ...any) ([]state.Backup, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []state.Backup
	for rows.Next() {
		b, err := scanBackup(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

type scanner interface{ Scan(dest ...any) error }

func scanBackup(row scanner) (state.Backup, error) {
	var b state.Backup
	var queued string
	var started, finished sql.NullString
	if err := row.Scan(&b.ID, &b.Source, &b.Type, &b.State, &b.Actor, &b.JobID, &queued, &started, &finished,
		&b.RawBytes, &b.StoredBytes, &b.Error, &b.Manifest); err != nil {
		return state.Backup{}, err
	}
	var err error
	if b.QueuedAt, err = parseTime(queued); err != nil {
		return state.Backup{}, fmt.Errorf("backup %q queued_at: %w", b.ID, err)
	}
	if b.StartedAt, err = parseNullTime(started); err != nil {
		return state.Backup{}, fmt.Errorf("backup %q started_at: %w", b.ID, err)
	}
	if b.FinishedAt, err = parseNullTime(finished); err != nil {
		return state.Backup{}, fmt.Errorf("backup %q finished_at: %w", b.ID, err)
	}
	if len(b.Manifest) == 0 {
		b.Manifest = nil
	}
	return b, nil
}

func scanCopy(row scanner) (state.Copy, error) {
	var c state.Copy
	var started, finished sql.NullString
	if err := row.Scan(&c.BackupID, &c.Target, &c.State, &c.Key, &c.Bytes, &c.SHA256, &started, &finished,
		&c.Error); err != nil {
		return state.Copy{}, err
	}
	var err error
	if c.StartedAt, err = parseNullTime(started); err != nil {
		return state.Copy{}, fmt.Errorf("copy on %q started_at: %w", c.Target, err)
	}
	if c.FinishedAt, err = parseNullTime(finished); err != nil {
		return state.Copy{}, fmt.Errorf("copy on %q finished_at: %w", c.Target, err)
	}
	return c, nil
}

// nullTime maps the zero time (also after truncation) to NULL.
func nullTime(t time.Time) any {
	if state.Timestamp(t).IsZero() {
		return nil
	}
	return formatTime(t)
}

func parseNullTime(s sql.NullString) (time.Time, error) {
	if !s.Valid {
		return time.Time{}, nil
	}
	return parseTime(s.String)
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
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("delete backup %q: %w", id, err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, q := range []string{`DELETE FROM opsd_verifications WHERE backup_id = ?`, `DELETE FROM opsd_backup_copies WHERE backup_id = ?`} {
		if _, err := tx.ExecContext(ctx, q, id); err != nil {
			return fmt.Errorf("delete backup %q: %w", id, err)
		}
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM opsd_backups WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete backup %q: %w", id, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("delete backup %q: %w", id, err)
	} else if n == 0 {
		return fmt.Errorf("delete backup %q: %w", id, state.ErrNotFound)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("delete backup %q: %w", id, err)
	}
	return nil
}
