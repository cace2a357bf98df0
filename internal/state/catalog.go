package state

import (
	"fmt"
	"strings"
	"time"
)

// Backup states, in the order a backup normally passes through them.
const (
	BackupQueued    = "queued"
	BackupRunning   = "running"
	BackupSucceeded = "succeeded"
	BackupPartial   = "partial" // data written, but not to every target
	BackupFailed    = "failed"
)

// Copy states: one copy of a backup's data object on one storage target.
const (
	CopyWriting  = "writing"
	CopyComplete = "complete"
	CopyFailed   = "failed"
)

// Backup types other than plugins; a plugin source's type is
// TypePluginPrefix followed by the plugin name.
const (
	TypePostgres     = "postgres"
	TypeFiles        = "files"
	TypeCommand      = "command"
	TypePluginPrefix = "plugin:"
)

// Listing limits for BackupFilter.Limit.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// Backup is one entry of the backup catalog: a run of one source, from the
// moment it was queued until it finished, with what it produced.
type Backup struct {
	ID          string    // sorts by time: 20261123T074500Z-<random>
	Source      string    // configured source name
	Type        string    // TypePostgres, TypeFiles, TypeCommand or "plugin:<name>"
	State       string    // Backup* constant
	Actor       string    // who asked, e.g. "token:ci", "scheduler:backup:orders-db"
	JobID       int64     // River job id, 0 if none
	QueuedAt    time.Time // required
	StartedAt   time.Time // zero = not started
	FinishedAt  time.Time // zero = not finished
	RawBytes    int64
	StoredBytes int64
	Error       string
	Manifest    []byte // canonical manifest.json bytes once written; nil before (empty is stored as nil)
}

// Copy is one backup's data object on one storage target.
type Copy struct {
	BackupID   string
	Target     string // configured target name
	State      string // Copy* constant
	Key        string // object key of the data object on the target
	Bytes      int64
	SHA256     string    // lowercase hex of the object's SHA-256; empty while unknown
	StartedAt  time.Time // zero = not started
	FinishedAt time.Time // zero = not finished
	Error      string
}

// BackupFilter selects backups for Store.ListBackups.
type BackupFilter struct {
	Source string // empty = any
	State  string // empty = any
	Limit  int    // 0 = DefaultListLimit; larger than MaxListLimit is capped
	Cursor string // an ID: return backups with ID < Cursor (newest first); empty = from the newest
}

// CheckBackupID validates a backup ID given to GetBackup.
func CheckBackupID(id string) error {
	return checkName("backup id", id)
}

// CheckBackup validates b before CreateBackup or UpdateBackup stores it, so
// both backends accept exactly the same rows.
func CheckBackup(b Backup) error {
	if err := CheckBackupID(b.ID); err != nil {
		return err
	}
	if err := checkName("source", b.Source); err != nil {
		return err
	}
	if err := checkType(b.Type); err != nil {
		return err
	}
	if err := CheckBackupState(b.State); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"actor", b.Actor}, {"error", b.Error}} {
		if err := CheckText(f.name, f.v); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{{"job id", b.JobID}, {"raw bytes", b.RawBytes}, {"stored bytes", b.StoredBytes}} {
		if f.v < 0 {
			return fmt.Errorf("%w: negative %s %d", ErrInvalid, f.name, f.v)
		}
	}
	if Timestamp(b.QueuedAt).IsZero() {
		return fmt.Errorf("%w: backup without a queued time", ErrInvalid)
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"queued time", b.QueuedAt}, {"start time", b.StartedAt}, {"finish time", b.FinishedAt}} {
		if err := checkTime(f.name, f.t); err != nil {
			return err
		}
	}
	return nil
}

// CheckCopy validates c before PutCopy stores it.
func CheckCopy(c Copy) error {
	if err := CheckBackupID(c.BackupID); err != nil {
		return err
	}
	if err := checkName("target", c.Target); err != nil {
		return err
	}
	if err := CheckCopyState(c.State); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"object key", c.Key}, {"error", c.Error}} {
		if err := CheckText(f.name, f.v); err != nil {
			return err
		}
	}
	if c.Bytes < 0 {
		return fmt.Errorf("%w: negative copy size %d", ErrInvalid, c.Bytes)
	}
	if c.SHA256 != "" && !isSHA256Hex(c.SHA256) {
		return fmt.Errorf("%w: sha256 %q is not 64 lowercase hex digits", ErrInvalid, c.SHA256)
	}
	for _, f := range []struct {
		name string
		t    time.Time
	}{{"start time", c.StartedAt}, {"finish time", c.FinishedAt}} {
		if err := checkTime(f.name, f.t); err != nil {
			return err
		}
	}
	return nil
}

// CheckBackupFilter validates f and returns it with Limit resolved to the
// number of backups to return.
func CheckBackupFilter(f BackupFilter) (BackupFilter, error) {
	if f.State != "" {
		if err := CheckBackupState(f.State); err != nil {
			return f, err
		}
	}
	for _, x := range []struct{ name, v string }{{"source", f.Source}, {"cursor", f.Cursor}} {
		if err := CheckText(x.name, x.v); err != nil {
			return f, err
		}
	}
	switch {
	case f.Limit < 0:
		return f, fmt.Errorf("%w: negative limit %d", ErrInvalid, f.Limit)
	case f.Limit == 0:
		f.Limit = DefaultListLimit
	case f.Limit > MaxListLimit:
		f.Limit = MaxListLimit
	}
	return f, nil
}

// CheckLatest validates LatestBackup's arguments.
func CheckLatest(source string, states []string) error {
	if err := checkName("source", source); err != nil {
		return err
	}
	for _, st := range states {
		if err := CheckBackupState(st); err != nil {
			return err
		}
	}
	return nil
}

// CheckBackupState reports whether s is one of the Backup* states.
func CheckBackupState(s string) error {
	switch s {
	case BackupQueued, BackupRunning, BackupSucceeded, BackupPartial, BackupFailed:
		return nil
	}
	return fmt.Errorf("%w: unknown backup state %q", ErrInvalid, s)
}

// CheckCopyState reports whether s is one of the Copy* states.
func CheckCopyState(s string) error {
	switch s {
	case CopyWriting, CopyComplete, CopyFailed:
		return nil
	}
	return fmt.Errorf("%w: unknown copy state %q", ErrInvalid, s)
}

// checkName validates an identifier: non-empty, at most MaxKeyLen bytes,
// storable text.
func checkName(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	case len(s) > MaxKeyLen:
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, what, MaxKeyLen)
	}
	return CheckText(what, s)
}

func checkType(t string) error {
	switch t {
	case TypePostgres, TypeFiles, TypeCommand:
		return nil
	}
	if name, ok := strings.CutPrefix(t, TypePluginPrefix); ok && name != "" {
		return checkName("backup type", t)
	}
	return fmt.Errorf("%w: unknown backup type %q", ErrInvalid, t)
}

// checkTime rejects times both backends cannot store the same way: SQLite
// keeps fixed-width text, which needs a four-digit year.
func checkTime(what string, t time.Time) error {
	if t.IsZero() {
		return nil
	}
	if y := Timestamp(t).Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%w: %s %v outside years 1-9999", ErrInvalid, what, t)
	}
	return nil
}

func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
