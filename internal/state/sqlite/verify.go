package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/opsd-dev/opsd/internal/state"
)

const verificationColumns = `v.id, v.backup_id, v.target, v.level, v.ok, v.started_at, v.finished_at, v.error, v.report, v.request`

// AddVerification records v and returns its id.
func (s *Store) AddVerification(ctx context.Context, v state.Verification) (int64, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	if err := state.CheckVerification(v); err != nil {
		return 0, fmt.Errorf("add verification of %q on %q: %w", v.BackupID, v.Target, err)
	}
	var id int64
	err := s.db.QueryRowContext(ctx, `INSERT INTO opsd_verifications
		(backup_id, target, level, ok, started_at, finished_at, error, report, request)
		SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM opsd_backups WHERE id = ?)
		RETURNING id`,
		v.BackupID, v.Target, v.Level, v.OK, formatTime(v.StartedAt), formatTime(v.FinishedAt), v.Error,
		nullBytes(v.Report), v.Request, v.BackupID).Scan(&id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return 0, fmt.Errorf("add verification of %q: backup: %w", v.BackupID, state.ErrNotFound)
	case err != nil:
		return 0, fmt.Errorf("add verification of %q on %q: %w", v.BackupID, v.Target, err)
	}
	return id, nil
}

// ListVerifications returns backupID's verifications, oldest first.
func (s *Store) ListVerifications(ctx context.Context, backupID string) ([]state.Verification, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+verificationColumns+` FROM opsd_verifications v
		WHERE v.backup_id = ? ORDER BY v.id`, backupID)
	if err != nil {
		return nil, fmt.Errorf("list verifications of %q: %w", backupID, err)
	}
	defer rows.Close()
	var out []state.Verification
	for rows.Next() {
		v, err := scanVerification(rows)
		if err != nil {
			return nil, fmt.Errorf("list verifications of %q: %w", backupID, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list verifications of %q: %w", backupID, err)
	}
	return out, nil
}

// LatestVerification returns the newest verification at level of any
// backup of source, only passed ones when okOnly.
func (s *Store) LatestVerification(ctx context.Context, source, level string, okOnly bool) (state.Verification, error) {
	if err := s.check(); err != nil {
		return state.Verification{}, err
	}
	q := `SELECT ` + verificationColumns + ` FROM opsd_verifications v JOIN opsd_backups b ON b.id = v.backup_id
		WHERE b.source = ? AND v.level = ?`
	if okOnly {
		q += ` AND v.ok = 1`
	}
	v, err := scanVerification(s.db.QueryRowContext(ctx, q+` ORDER BY v.finished_at DESC, v.id DESC LIMIT 1`, source, level))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return state.Verification{}, fmt.Errorf("latest %s verification of %q: %w", level, source, state.ErrNotFound)
	case err != nil:
		return state.Verification{}, fmt.Errorf("latest %s verification of %q: %w", level, source, err)
	}
	return v, nil
}

func scanVerification(row interface{ Scan(...any) error }) (state.Verification, error) {
	var v state.Verification
	var started, finished string
	if err := row.Scan(&v.ID, &v.BackupID, &v.Target, &v.Level, &v.OK, &started, &finished, &v.Error, &v.Report, &v.Request); err != nil {
		return state.Verification{}, err
	}
	var err error
	if v.StartedAt, err = parseTime(started); err != nil {
		return state.Verification{}, err
	}
	if v.FinishedAt, err = parseTime(finished); err != nil {
		return state.Verification{}, err
	}
	if len(v.Report) == 0 {
		v.Report = nil
	}
	return v, nil
}
