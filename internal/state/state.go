// Package state defines opsd's state store: the one interface through which
// the daemon keeps persisted facts and the cluster view, with two
// implementations — an embedded SQLite file (state/sqlite, the default) and
// PostgreSQL (state/postgres, for several replicas sharing the work).
//
// Both implementations pass the same conformance suite (state/statetest), so
// callers never branch on the backend except to hand its connection to River
// (see internal/jobs).
package state

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Sentinel errors callers branch on. Implementations wrap them with context.
var (
	// ErrNotFound: the key (or row) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a compare-and-swap found a value other than the expected
	// one, or a create found the key (or row) already there.
	ErrConflict = errors.New("value changed concurrently")
	// ErrInvalid: a key, value or replica was rejected before reaching the
	// database (empty key, invalid UTF-8, NUL byte, too long).
	ErrInvalid = errors.New("invalid input")
	// ErrSchemaTooNew: the database was migrated by a newer opsd; this binary
	// refuses to touch it rather than misread it.
	ErrSchemaTooNew = errors.New("database schema is newer than this opsd")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("state store closed")
)

// Store kinds returned by Store.Kind.
const (
	KindSQLite   = "sqlite"
	KindPostgres = "postgres"
)

// MaxKeyLen is the longest key, in bytes, a Store accepts.
const MaxKeyLen = 512

// Replica is one opsd process as it last announced itself. PostgreSQL-backed
// deployments list every replica sharing the database; with SQLite there is
// only ever the local one.
type Replica struct {
	ID         string    // unique per process start (e.g. hostname + random)
	Hostname   string    // os.Hostname of the replica
	Version    string    // opsd version
	ConfigHash string    // hash of the loaded configuration, to spot drift
	StartedAt  time.Time // when the process started
	SeenAt     time.Time // last heartbeat; zero means "now" when passed to Heartbeat
}

// Store is opsd's persisted state. Every method takes ctx first and is safe
// for concurrent use. Times are stored with microsecond precision in UTC and
// returned in UTC.
//
// Errors: methods wrap ErrNotFound, ErrConflict, ErrInvalid and ErrClosed
// where they apply; any other error is an I/O or database error that may be
// transient.
type Store interface {
	// Kind is KindSQLite or KindPostgres.
	Kind() string
	// Ping checks that the database answers (for /readyz).
	Ping(ctx context.Context) error
	// SchemaVersion is the highest opsd schema migration applied.
	SchemaVersion(ctx context.Context) (int, error)

	// GetValue returns the value stored under key; ok is false (and err nil)
	// when the key does not exist.
	GetValue(ctx context.Context, key string) (value string, ok bool, err error)
	// PutValue stores value under key, replacing any previous value.
	PutValue(ctx context.Context, key, value string) error
	// CompareAndSwapValue replaces key's value with new only if it is
	// currently old. It returns an error wrapping ErrNotFound when the key
	// does not exist and ErrConflict when it holds another value. Use
	// CreateValue to create a key only if it does not exist.
	CompareAndSwapValue(ctx context.Context, key, old, new string) error
	// CreateValue stores value under key only if the key does not exist yet;
	// otherwise it returns an error wrapping ErrConflict.
	CreateValue(ctx context.Context, key, value string) error
	// DeleteValue removes key. Deleting a missing key is not an error.
	DeleteValue(ctx context.Context, key string) error

	// Heartbeat inserts or updates the replica r (keyed by r.ID). A zero
	// r.SeenAt is replaced by the current time.
	Heartbeat(ctx context.Context, r Replica) error
	// Replicas lists every known replica ordered by ID.
	Replicas(ctx context.Context) ([]Replica, error)
	// PruneReplicas forgets replicas last seen before cutoff and returns how
	// many were removed.
	PruneReplicas(ctx context.Context, cutoff time.Time) (int, error)

	// CreateBackup adds b to the backup catalog. It returns an error wrapping
	// ErrConflict when a backup with b.ID exists and ErrInvalid when b fails
	// CheckBackup.
	CreateBackup(ctx context.Context, b Backup) error
	// UpdateBackup replaces every field of the backup with b.ID by b's. It
	// returns an error wrapping ErrNotFound when there is no such backup.
	UpdateBackup(ctx context.Context, b Backup) error
	// GetBackup returns the backup id and its copies ordered by target. It
	// returns an error wrapping ErrNotFound when there is no such backup.
	GetBackup(ctx context.Context, id string) (Backup, []Copy, error)
	// ListBackups returns the backups matching f, newest (largest ID) first,
	// at most f.Limit of them. nextCursor, when not empty, is the Cursor that
	// continues the listing; it is empty once the last backup was returned.
	ListBackups(ctx context.Context, f BackupFilter) (items []Backup, nextCursor string, err error)
	// PutCopy inserts or replaces the copy of c.BackupID on c.Target. It
	// returns an error wrapping ErrNotFound when the backup does not exist.
	PutCopy(ctx context.Context, c Copy) error
	// LatestBackup returns the newest (largest ID) backup of source whose
	// state is one of states, or in any state when states is empty. It
	// returns an error wrapping ErrNotFound when there is none.
	LatestBackup(ctx context.Context, source string, states ...string) (Backup, error)

	// DeleteBackup removes a backup from the catalog with its copies and
	// verifications (after prune deleted its objects). It returns an error
	// wrapping ErrNotFound when there is no such backup.
	DeleteBackup(ctx context.Context, id string) error

	// AddVerification records a verification of a copy and returns its
	// id. It returns an error wrapping ErrNotFound when the backup does not
	// exist and ErrInvalid when v fails CheckVerification.
	AddVerification(ctx context.Context, v Verification) (int64, error)
	// ListVerifications returns a backup's verifications, oldest first.
	ListVerifications(ctx context.Context, backupID string) ([]Verification, error)
	// LatestVerification returns the newest (by finish time) verification
	// at level of any backup of source, only passed ones when okOnly. It
	// returns an error wrapping ErrNotFound when there is none.
	LatestVerification(ctx context.Context, source, level string, okOnly bool) (Verification, error)

	// Close releases the database. Methods called after Close return an error
	// wrapping ErrClosed.
	Close() error
}

// CheckKey validates a key before it reaches a database, so both backends
// accept exactly the same keys.
func CheckKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: key longer than %d bytes", ErrInvalid, MaxKeyLen)
	}
	return CheckText("key", key)
}

// CheckKV validates a key and its value.
func CheckKV(key, value string) error {
	if err := CheckKey(key); err != nil {
		return err
	}
	return CheckText("value", value)
}

// CheckText validates text that a backend must store verbatim: valid UTF-8
// without NUL bytes (PostgreSQL's text type refuses both).
func CheckText(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalid, what)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalid, what)
	}
	return nil
}

// CheckReplica validates r before Heartbeat stores it.
func CheckReplica(r Replica) error {
	if r.ID == "" {
		return fmt.Errorf("%w: replica without an ID", ErrInvalid)
	}
	for _, f := range []struct{ name, v string }{
		{"replica id", r.ID}, {"hostname", r.Hostname}, {"version", r.Version}, {"config hash", r.ConfigHash},
	} {
		if err := CheckText(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// Timestamp normalises t the way every Store stores times: UTC, truncated to
// microseconds.
func Timestamp(t time.Time) time.Time {
	return t.UTC().Truncate(time.Microsecond)
}
