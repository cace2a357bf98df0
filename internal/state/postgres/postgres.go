// Package postgres is the PostgreSQL state store (jackc/pgx/v5), used when the
// configuration sets state.postgres. Several opsd replicas share one database:
// schema migrations are serialised by an advisory lock, and River claims jobs
// and elects its leader in the same database (see internal/jobs).
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/migration"
)

// Advisory lock keys (pg_advisory_lock's bigint space is shared by everything
// using the database, so these are arbitrary fixed constants spelling
// "opsd" in their high bytes).
const (
	// LockStateMigrations serialises opsd's own schema migrations.
	LockStateMigrations int64 = 0x6f707364_00000001
	// LockRiverMigrations serialises River's schema migrations (internal/jobs).
	LockRiverMigrations int64 = 0x6f707364_00000002
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Store is the PostgreSQL implementation of state.Store.
type Store struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	now    func() time.Time
	closed atomic.Bool
}

var _ state.Store = (*Store)(nil)

// Migrations returns the schema migrations this binary applies to PostgreSQL.
func Migrations() ([]migration.Migration, error) {
	return migration.Load(migrationFS, "migrations")
}

// Open connects to dsn (a postgres:// URL or key=value string), applies
// pending schema migrations under an advisory lock and returns the store. It
// refuses a database whose schema is newer than this binary
// (state.ErrSchemaTooNew). Errors name the DSN with its password redacted.
func Open(ctx context.Context, dsn string, logger *slog.Logger) (*Store, error) {
	ms, err := Migrations()
	if err != nil {
		return nil, fmt.Errorf("open postgres state %s: %w", RedactDSN(dsn), err)
	}
	return open(ctx, dsn, logger, ms)
}

// open is Open with the migrations to apply given, so tests can create a
// database at an older schema version.
func open(ctx context.Context, dsn string, logger *slog.Logger, ms []migration.Migration) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "state", "backend", state.KindPostgres)
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors may quote the DSN; do not pass them on verbatim.
		return nil, fmt.Errorf("open postgres state %s: invalid DSN", RedactDSN(dsn))
	}
	if cfg.MaxConns < 4 {
		// River needs a connection for LISTEN, one for the leader and some
		// for work; migrations hold one for the advisory lock while using
		// another.
		cfg.MaxConns = 4
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open postgres state %s: %w", RedactDSN(dsn), redactErr(err, dsn))
	}
	s := &Store{pool: pool, logger: logger, now: time.Now}
	if err := s.init(ctx, ms); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open postgres state %s: %w", RedactDSN(dsn), redactErr(err, dsn))
	}
	return s, nil
}

func (s *Store) init(ctx context.Context, ms []migration.Migration) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return s.WithAdvisoryLock(ctx, LockStateMigrations, func(ctx context.Context, conn *pgx.Conn) error {
		return s.migrate(ctx, conn, ms)
	})
}

// WithAdvisoryLock runs fn while holding the session-level advisory lock key
// on a connection of its own (passed to fn), waiting for it as long as ctx
// allows. Replicas starting together use it to migrate one at a time.
func (s *Store) WithAdvisoryLock(ctx context.Context, key int64, fn func(ctx context.Context, conn *pgx.Conn) error) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire connection for advisory lock: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", key); err != nil {
		return fmt.Errorf("take advisory lock %#x: %w", key, err)
	}
	ferr := fn(ctx, conn.Conn())
	// Unlock even if ctx is done; if it fails, drop the connection, which
	// releases the lock server-side.
	if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", key); err != nil {
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		if ferr == nil {
			return fmt.Errorf("release advisory lock %#x: %w", key, err)
		}
	}
	return ferr
}

func (s *Store) migrate(ctx context.Context, conn *pgx.Conn, ms []migration.Migration) error {
	_, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS opsd_schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now()
	)`)
	if err != nil {
		return fmt.Errorf("create schema_migrations: %w", err)
	}
	latest := migration.Latest(ms)
	for _, m := range ms {
		applied, err := applyOne(ctx, conn, m, latest)
		if err != nil {
			return err
		}
		if applied {
			s.logger.InfoContext(ctx, "applied state schema migration", "version", m.Version, "name", m.Name)
		}
	}
	return nil
}

func applyOne(ctx context.Context, conn *pgx.Conn, m migration.Migration, latest int) (applied bool, err error) {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("migration %d: begin: %w", m.Version, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	var cur int
	if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM opsd_schema_migrations").Scan(&cur); err != nil {
		return false, fmt.Errorf("read schema version: %w", err)
	}
	if err := migration.CheckNotNewer(cur, latest); err != nil {
		return false, err
	}
	if cur >= m.Version {
		return false, tx.Rollback(ctx)
	}
	// Exec without arguments uses the simple protocol, which runs every
	// statement of the file.
	if _, err := tx.Exec(ctx, m.SQL); err != nil {
		return false, fmt.Errorf("migration %04d_%s: %w", m.Version, m.Name, err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO opsd_schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name); err != nil {
		return false, fmt.Errorf("migration %04d_%s: record: %w", m.Version, m.Name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("migration %04d_%s: commit: %w", m.Version, m.Name, err)
	}
	return true, nil
}

// Pool is the underlying pool, for River's pgx driver. Callers must not close it.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Kind returns state.KindPostgres.
func (s *Store) Kind() string { return state.KindPostgres }

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
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping postgres state: %w", err)
	}
	return nil
}

// SchemaVersion returns the highest applied migration.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	var v int
	if err := s.pool.QueryRow(ctx, "SELECT COALESCE(MAX(version), 0) FROM opsd_schema_migrations").Scan(&v); err != nil {
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
	err := s.pool.QueryRow(ctx, "SELECT value FROM opsd_kv WHERE key = $1", key).Scan(&v)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
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
	_, err := s.pool.Exec(ctx, `INSERT INTO opsd_kv (key, value, updated_at) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`,
		key, value, state.Timestamp(s.now()))
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
	tag, err := s.pool.Exec(ctx, `INSERT INTO opsd_kv (key, value, updated_at) VALUES ($1, $2, $3)
		ON CONFLICT (key) DO NOTHING`, key, value, state.Timestamp(s.now()))
	if err != nil {
		return fmt.Errorf("create %q: %w", key, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("create %q: key exists: %w", key, state.ErrConflict)
	}
	return nil
}

// CompareAndSwapValue replaces key's value old with new, atomically in one
// statement.
func (s *Store) CompareAndSwapValue(ctx context.Context, key, old, new string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckKV(key, new); err != nil {
		return fmt.Errorf("compare-and-swap %q: %w", key, err)
	}
	var swapped, exists bool
	err := s.pool.QueryRow(ctx, `WITH upd AS (
			UPDATE opsd_kv SET value = $3, updated_at = $4 WHERE key = $1 AND value = $2 RETURNING 1
		)
		SELECT EXISTS (SELECT 1 FROM upd), EXISTS (SELECT 1 FROM opsd_kv WHERE key = $1)`,
		key, old, new, state.Timestamp(s.now())).Scan(&swapped, &exists)
	switch {
	case err != nil:
		return fmt.Errorf("compare-and-swap %q: %w", key, err)
	case swapped:
		return nil
	case !exists:
		return fmt.Errorf("compare-and-swap %q: %w", key, state.ErrNotFound)
	default:
		return fmt.Errorf("compare-and-swap %q: %w", key, state.ErrConflict)
	}
}

// DeleteValue removes key.
func (s *Store) DeleteValue(ctx context.Context, key string) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := state.CheckKey(key); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	if _, err := s.pool.Exec(ctx, "DELETE FROM opsd_kv WHERE key = $1", key); err != nil {
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
	_, err := s.pool.Exec(ctx, `INSERT INTO opsd_replicas (id, hostname, version, config_hash, started_at, seen_at)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, version = excluded.version,
			config_hash = excluded.config_hash, started_at = excluded.started_at, seen_at = excluded.seen_at`,
		r.ID, r.Hostname, r.Version, r.ConfigHash, state.Timestamp(r.StartedAt), state.Timestamp(r.SeenAt))
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
	rows, err := s.pool.Query(ctx, `SELECT id, hostname, version, config_hash, started_at, seen_at
		FROM opsd_replicas ORDER BY id COLLATE "C"`)
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (state.Replica, error) {
		var r state.Replica
		err := row.Scan(&r.ID, &r.Hostname, &r.Version, &r.ConfigHash, &r.StartedAt, &r.SeenAt)
		r.StartedAt, r.SeenAt = r.StartedAt.UTC(), r.SeenAt.UTC()
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	return out, nil
}

// PruneReplicas forgets replicas last seen before cutoff.
func (s *Store) PruneReplicas(ctx context.Context, cutoff time.Time) (int, error) {
	if err := s.check(); err != nil {
		return 0, err
	}
	tag, err := s.pool.Exec(ctx, "DELETE FROM opsd_replicas WHERE seen_at < $1", state.Timestamp(cutoff))
	if err != nil {
		return 0, fmt.Errorf("prune replicas: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Close closes the pool. It is safe to call more than once.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.pool.Close()
	return nil
}

var kvPassword = regexp.MustCompile(`(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)`)

// RedactDSN returns dsn with its password (in the URL's user info, a
// password= query parameter or a password=... keyword) replaced by "xxxxx",
// safe to log or put in an error.
func RedactDSN(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "postgres://(unparseable DSN)"
		}
		if q := u.Query(); q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}xxxxx")
}

// redactErr removes the DSN's password from err's text if it shows up there
// (connection errors from pgconn include host and user, not normally the
// password, but a parse error may echo input). The error chain is kept
// when the text is clean.
func redactErr(err error, dsn string) error {
	cfg, perr := pgx.ParseConfig(dsn)
	if perr != nil || cfg.Password == "" || !strings.Contains(err.Error(), cfg.Password) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), cfg.Password, "xxxxx"))
}
