package backup

import (
	"errors"
	"time"
)

// RestoreRequest is a restore asked for through the API
// (POST /api/v1/backups/{id}/restore): into a directory or a PostgreSQL
// database of the daemon's host, from the copy on Target or ("") the
// first good one. The DSN is a secret: it is held in memory for the
// restore only, never stored, logged or audited.
type RestoreRequest struct {
	Target     string
	ToDir      string
	ToPostgres string
	Force      bool
}

// ErrRestoreBusy: another API restore is writing to the same destination.
var ErrRestoreBusy = errors.New("a restore is already writing to this destination")

// Restore states.
const (
	RestoreRunning   = "running"
	RestoreSucceeded = "succeeded"
	RestoreFailed    = "failed"
)

// RestoreJob is one API restore as GET /api/v1/restores/{id} shows it.
// Restores run in the daemon that accepted them and are kept in its
// memory (the last 100); the audit log keeps each one's outcome.
type RestoreJob struct {
	ID          string
	BackupID    string
	Source      string
	Actor       string
	Destination string // the directory, or postgres://host/db without credentials
	Force       bool
	Target      string // the copy restored from, once chosen
	State       string
	Bytes       int64 // plaintext bytes restored so far
	Error       string
	Rejected    []string // copies refused before the one used, and why
	StartedAt   time.Time
	FinishedAt  time.Time
}
