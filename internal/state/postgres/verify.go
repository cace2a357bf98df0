package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

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
	err := s.pool.QueryRow(ctx, `INSERT INTO opsd_verifications
		(backup_id, target, level, ok, started_at, finished_at, error, report, request)
		SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS (SELECT 1 FROM opsd_backups WHERE id = $1)
		RETURNING id`,
		v.BackupID, v.Target, v.Level, v.OK, state.Timestamp(v.StartedAt), state.Timestamp(v.FinishedAt), v.Error,
		nullBytes(v.Report), v.Request).Scan(&id)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
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
	rows, err := s.pool.Query(ctx, `SELECT `+verificationColumns+` FROM opsd_verifications v
		WHERE v.backup_id = $1 ORDER BY v.id`, backupID)
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
		WHERE b.source = $1 AND v.level = $2`
	if okOnly {
		q += ` AND v.ok`
	}
	v, err := scanVerification(s.pool.QueryRow(ctx, q+` ORDER BY v.finished_at DESC, v.id DESC LIMIT 1`, source, level))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return state.Verification{}, fmt.Errorf("latest %s verification of %q: %w", level, source, state.ErrNotFound)
	case err != nil:
		return state.Verification{}, fmt.Errorf("latest %s verification of %q: %w", level, source, err)
	}
	return v, nil
}

func scanVerification(row pgx.Row) (state.Verification, error) {
	var v state.Verification
	if err := row.Scan(&v.ID, &v.BackupID, &v.Target, &v.Level, &v.OK, &v.StartedAt, &v.FinishedAt, &v.Error, &v.Report, &v.Request); err != nil {
		return state.Verification{}, err
	}
	v.StartedAt, v.FinishedAt = v.StartedAt.UTC(), v.FinishedAt.UTC()
	if len(v.Report) == 0 {
		v.Report = nil
	}
	return v, nil
}
