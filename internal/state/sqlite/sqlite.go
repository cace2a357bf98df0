// Package sqlite is the embedded state store: one SQLite file (modernc.org/sqlite,
// no cgo) in opsd's data directory. It is the default when the configuration
// names no PostgreSQL database.
//
// The database runs in WAL mode with synchronous=FULL, so a transaction that
// returned is on disk even if the host loses power; foreign keys are enforced
// and writers wait (busy_timeout) instead of failing with SQLITE_BUSY. The pool
// holds a single connection: SQLite has one writer anyway, and River's SQLite
// driver needs it to avoid SQLITE_BUSY between its own concurrent operations.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/migration"
)

// FileName is the name of the database file inside opsd's data directory.
const FileName = "opsd.db"

// busyTimeout is how long a statement waits for a lock held by another
// connection (e.g. an offline `opsd` command reading the file) before failing.
const busyTimeout = 10 * time.Second

// timeLayout is fixed-width so that stored times sort as strings.
const timeLayout = "2006-01-02T15:04:05.000000Z"

//go:embed migrations/*.sql
var migrationFS embed.FS

// Store is the SQLite implementation of state.Store.
type Store struct {
	db     *sql.DB
	path   string
	logger *slog.Logger
	now    func() time.Time
	closed atomic.Bool
}

var _ state.Store = (*Store)(nil)

// Migrations returns the schema migrations this binary applies to SQLite.
func Migrations() ([]migration.Migration, error) {
	return migration.Load(migrationFS, "migrations")
}

// Open opens (creating it if needed, with mode 0600) the SQLite database at
// path, applies pending schema migrations and returns the store. It refuses a
// database whose schema is newer than this binary (state.ErrSchemaTooNew).
func Open(ctx context.Context, path string, logger *slog.Logger) (*Store, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, fmt.Errorf("open sqlite state %q: %w", path, err)
	}
	return open(ctx, path, logger, ms)
}

// open is Open with the migrations to apply given, so tests can create a
// database at an older schema version.
func open(ctx context.Context, path string, logger *slog.Logger, ms []migration.Migration) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "state", "backend", state.KindSQLite)
	if path == "" || strings.ContainsAny(path, "?#") {
		return nil, fmt.Errorf("open sqlite state %q: path must be a plain file name", path)
	}
	// Create the file ourselves so that it is private to opsd's user; SQLite
	// would create it with the umask's permissions.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open sqlite state: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open sqlite state: %w", err)
	}

	dsn := "file:" + path + "?" + strings.Join([]string{
		fmt.Sprintf("_pragma=busy_timeout(%d)", busyTimeout.Milliseconds()),
		"_pragma=journal_mode(WAL)",
		"_pragma=synchronous(FULL)",
		"_pragma=foreign_keys(1)",
		"_txlock=immediate", // take the write lock at BEGIN: no deadlocking lock upgrades
	}, "&")
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite state %q: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	db.SetConnMaxIdleTime(0)

	s := &Store{db: db, path: path, logger: logger, now: time.Now}
	if err := s.init(ctx, ms); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open sqlite state %q: %w", path, err)
	}
	return s, nil
}

func (s *Store) init(ctx context.Context, ms []migration.Migration) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("read journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, want wal", mode)
	}
	return s.migrate(ctx, ms)
}

// migrate applies pending migrations, each in its own (immediate, so
// exclusive for writers) transaction that re-reads the version first.
func (s *Store) migrate(ctx context.Context, ms []migration.Migration) error {
	_, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS opsd_schema_migrations (
		version    INTEGER PRIMARY KEY NOT NULL,
		name       TEXT NOT NULL,
		applied_at TEXT NOT NULL
	) STRICT`)
	if err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	latest := migration.Latest(ms)
	for _, m := range ms {
		applied, err := s.applyOne(ctx, m, latest)
		if err != nil {
			return err
		}
		if applied {
			s.logger.InfoContext(ctx, "applied state schema migration", "version", m.Version, "name", m.Name)
		}
	}
	return nil
}

func (s *Store) applyOne(ctx context.Context, m migration.Migration, latest int) (applied bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("migration %d: begin: %w", m.Version, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var cur int
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM opsd_schema_migrations").Scan(&cur); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	if err := migration.CheckNotNewer(cur, latest); err != nil {
		return false, err
	}
	if cur >= m.Version {
		return false, tx.Rollback()
	}
	if _, err := tx.ExecContext(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO opsd_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
		m.Version, m.Name, s.now().UTC().Format(timeLayout)); err != nil {
		return false, fmt.Errorf("migration %04d_%s: record: %w", m.Version, m.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("migration %04d_%s: commit: %w", m.Version, m.Name, err)
	}
	return true, nil
}

// DB is the underlying pool, for River's SQLite driver. Callers must not
// close it or change its pool settings.
func (s *Store) DB() *sql.DB { return s.db }

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Kind returns state.KindSQLite.
func (s *Store) Kind() string { return state.KindSQLite }

func (s *Store) check() error {
	if s.closed.Load() {
		return state.ErrClosed
	}
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := s.db.PingContext(ctx); err != nil {
		return fmt.Errorf("ping sqlite state: %w", err)
	}
	return nil
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	var v int
	if err := s.db.QueryRowContext(ctx, "SELECT COALESCE(MAX(version), 0) FROM opsd_schema_migrations").Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// GetValue returns key's value.
func (s *Store) GetValue(ctx context.Context, key string) (string, bool, error) {
	if err := s.check(); err != nil {
		return "", false, err
	}
	if err := state.CheckKey(key); err != nil {
		return "", false, fmt.Errorf("get %q: %w", key, err)
	}
	var v string
	err := s.db.QueryRowContext(ctx, "SELECT value FROM opsd_kv WHERE key = ?", key).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", false, nil
	case err != nil:
		return "", false, fmt.Errorf("get %q: %w", key, err)
	}
	return v, true, nil
}

// PutValue stores value under key.
func (s *Store) PutValue(ctx context.Context, key, value string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckKV(key, value); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO opsd_kv (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		key, value, s.stamp())
	if err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// CreateValue stores value under key if the key does not exist.
func (s *Store) CreateValue(ctx context.Context, key, value string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckKV(key, value); err != nil {
		return fmt.Errorf("create %q: %w", key, err)
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO opsd_kv (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO NOTHING`, key, value, s.stamp())
	if err != nil {
		return fmt.Errorf("create %q: %w", key, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("create %q: %w", key, err)
	} else if n == 0 {
		return fmt.Errorf("create %q: key exists: %w", key, state.ErrConflict)
	}
	return nil
}

// CompareAndSwapValue replaces key's value old with new.
func (s *Store) CompareAndSwapValue(ctx context.Context, key, old, new string) (err error) {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckKV(key, new); err != nil {
		return fmt.Errorf("compare-and-swap %q: %w", key, err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("compare-and-swap %q: %w", key, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	var cur string
	err = tx.QueryRowContext(ctx, "SELECT value FROM opsd_kv WHERE key = ?", key).Scan(&cur)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return fmt.Errorf("compare-and-swap %q: %w", key, state.ErrNotFound)
	case err != nil:
		return fmt.Errorf("compare-and-swap %q: %w", key, err)
	case cur != old:
		return fmt.Errorf("compare-and-swap %q: %w", key, state.ErrConflict)
	}
	if _, err = tx.ExecContext(ctx, "UPDATE opsd_kv SET value = ?, updated_at = ? WHERE key = ?", new, s.stamp(), key); err != nil {
		return fmt.Errorf("compare-and-swap %q: %w", key, err)
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("compare-and-swap %q: commit: %w", key, err)
	}
	return nil
}

// DeleteValue removes key.
func (s *Store) DeleteValue(ctx context.Context, key string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckKey(key); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	if _, err := s.db.ExecContext(ctx, "DELETE FROM opsd_kv WHERE key = ?", key); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

// Heartbeat records that replica r is alive.
func (s *Store) Heartbeat(ctx context.Context, r state.Replica) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckReplica(r); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if r.SeenAt.IsZero() {
		r.SeenAt = s.now()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO opsd_replicas (id, hostname, version, config_hash, started_at, seen_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, version = excluded.version,
			config_hash = excluded.config_hash, started_at = excluded.started_at, seen_at = excluded.seen_at`,
		r.ID, r.Hostname, r.Version, r.ConfigHash, formatTime(r.StartedAt), formatTime(r.SeenAt))
	if err != nil {
		return fmt.Errorf("heartbeat %q: %w", r.ID, err)
	}
	return nil
}

// Replicas lists known replicas ordered by ID.
func (s *Store) Replicas(ctx context.Context) ([]state.Replica, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, hostname, version, config_hash, started_at, seen_at
		FROM opsd_replicas ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	defer rows.Close()
	var out []state.Replica
	for rows.Next() {
		var r state.Replica
		var started, seen string
		if err := rows.Scan(&r.ID, &r.Hostname, &r.Version, &r.ConfigHash, &started, &seen); err != nil {
			return nil, fmt.Errorf("list replicas: %w", err)
		}
		if r.StartedAt, err = parseTime(started); err != nil {
			return nil, fmt.Errorf("list replicas: %q started_at: %w", r.ID, err)
		}
		if r.SeenAt, err = parseTime(seen); err != nil {
			return nil, fmt.Errorf("list replicas: %q seen_at: %w", r.ID, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	return out, nil
}

// PruneReplicas forgets replicas last seen before cutoff.
func (s *Store) PruneReplicas(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	res, err := s.db.ExecContext(ctx, "DELETE FROM opsd_replicas WHERE seen_at < ?", formatTime(cutoff))
	if err != nil {
		return 0, fmt.Errorf("prune replicas: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("prune replicas: %w", err)
	}
	return int(n), nil
}

// Close closes the database (SQLite checkpoints the WAL into the main file
// on the last close). It is safe to call more than once.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close sqlite state: %w", err)
	}
	return nil
}

func (s *Store) stamp() string { return formatTime(s.now()) }

func formatTime(t time.Time) string { return state.Timestamp(t).Format(timeLayout) }

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(timeLayout, s)
	if err != nil {
		return time.Time{}, err
	}
	return t.UTC(), nil
}
