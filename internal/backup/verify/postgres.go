package verify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
)

// ErrScratchNotEmpty: the database named by verify.restore.into holds user
// data, so it is refused as a scratch target. "User data" is any table,
// partitioned table, view, materialized view, foreign table or sequence
// outside pg_catalog, information_schema and the pg_toast/pg_temp schemas
// that is not a member of an extension. An empty maintenance database
// (a fresh "postgres") passes; a production database does not.
var ErrScratchNotEmpty = errors.New("scratch database holds user data")

// ScratchPrefix starts the name of every temporary database and directory
// this package creates; CleanupStale only ever drops names with it.
const ScratchPrefix = "opsd_verify_"

// DefaultStaleAfter is how old a leftover temporary database must be
// before RestorePostgres drops it at start. Keep it above the longest
// restore verification: an older database of a run still going on (on
// another host sharing the scratch server) would be dropped under it.
const DefaultStaleAfter = 24 * time.Hour

// dropTimeout bounds dropping the temporary database, on a context of
// its own so that a cancelled verification still cleans up.
const dropTimeout = 2 * time.Minute

// PostgresOptions say which backup to verify and where.
type PostgresOptions struct {
	// Restore names the backup and how to read it: Targets, Source, ID,
	// Verifier, Identities, PGRestore, SpoolDir, NoSpool, Progress. Its
	// destination fields (ToDir, ToPostgres, ToWriter, Force) must be
	// unset: the destination is the temporary database.
	Restore backup.RestoreOptions
	// Into is the scratch server's DSN (a secret), naming a database that
	// holds no user data (see ErrScratchNotEmpty). Its role needs CREATEDB.
	Into string
	// Checks run on the restored database, in order.
	Checks []Check
	// CheckTimeout is each check's statement timeout (DefaultCheckTimeout
	// when 0).
	CheckTimeout time.Duration
	// StaleAfter: temporary databases older than this are dropped before
	// starting (DefaultStaleAfter when 0; negative skips the cleanup).
	StaleAfter time.Duration
	// Logger receives the scratch database's lifecycle; nil discards.
	Logger *slog.Logger
}

// RestorePostgres restores a pgdump backup into a temporary database on
// the server of opts.Into, runs opts.Checks there and drops the database
// (see the package doc). Nothing is created when the options are invalid
// or Into is unreachable, cannot create databases or holds user data.
func RestorePostgres(ctx context.Context, opts PostgresOptions) (rep *Report, err error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkRestoreOptions(opts.Restore); err != nil {
		return nil, err
	}
	for i, c := range opts.Checks {
		if strings.TrimSpace(c.SQL) == "" {
			return nil, fmt.Errorf("verify: check %d: no sql", i+1)
		}
		if _, err := ParseExpect(c.Expect); err != nil {
			return nil, fmt.Errorf("verify: check %d: %w", i+1, err)
		}
	}
	srv, err := openServer(ctx, opts.Into)
	if err != nil {
		return nil, err
	}
	if err := srv.checkScratch(ctx); err != nil {
		srv.close()
		return nil, err
	}
	if opts.StaleAfter >= 0 {
		stale := opts.StaleAfter
		if stale == 0 {
			stale = DefaultStaleAfter
		}
		dropped, err := srv.dropStale(ctx, stale, time.Now())
		for _, name := range dropped {
			log.Warn("dropped a stale temporary database left by an earlier run", "database", name)
		}
		if err != nil {
			// Not fatal: the leftovers only cost space, and this run's
			// own database has a fresh name.
			log.Warn("cleaning up stale temporary databases", "err", err)
		}
	}

	name := scratchName(opts.Restore.Source, opts.Restore.ID, time.Now())
	log = log.With("source", opts.Restore.Source, "backup", opts.Restore.ID, "database", name)
	err = srv.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0")
	if err == nil {
		// For whoever finds it: a comment cannot be set in CREATE DATABASE.
		note := fmt.Sprintf("opsd restore verification of %s/%s, created %s", opts.Restore.Source, opts.Restore.ID, time.Now().UTC().Format(time.RFC3339))
		_ = srv.exec(ctx, "COMMENT ON DATABASE "+pgx.Identifier{name}.Sanitize()+" IS "+quoteLiteral(note))
	}
	srv.close()
	if err != nil {
		// The server may have created it before the error (a cancelled
		// context): drop it now rather than leave it to CleanupStale.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
		derr := dropDatabase(dctx, srv, name)
		cancel()
		return nil, errors.Join(fmt.Errorf("verify: create temporary database %s on %s: %w", name, srv.redacted, err), derr)
	}
	log.Info("created temporary database")

	rep = &Report{BackupID: opts.Restore.ID, Source: opts.Restore.Source, Level: LevelRestore, Scratch: name, StartedAt: start.UTC(), Checks: []CheckResult{}}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropTimeout)
		defer cancel()
		if derr := dropDatabase(dctx, srv, name); derr != nil {
			derr = fmt.Errorf("verify: drop temporary database %s (CleanupStale will retry): %w", name, derr)
			rep.Error = joinMsg(rep.Error, derr.Error())
			err = errors.Join(err, derr)
		} else {
			log.Info("dropped temporary database")
		}
		rep.Duration = time.Since(start)
	}()

	ro := opts.Restore
	ro.ToPostgres, err = withDatabase(opts.Into, name)
	if err != nil {
		return rep, err
	}
	if ro.Logger == nil {
		ro.Logger = opts.Logger
	}
	rr, rerr := backup.Restore(ctx, ro)
	if rr != nil {
		rep.Target = rr.Target
		if rr.Manifest != nil {
			rep.Source = rr.Manifest.Source
		}
	}
	if rerr != nil {
		rerr = pgtool.Scrub(rerr, srv.password)
		rep.Error = rerr.Error()
		notRun(rep, opts.Checks, "not run: the restore failed")
		switch {
		case ctx.Err() != nil:
			return rep, fmt.Errorf("verify %s: %w", opts.Restore.ID, ctx.Err())
		case errors.Is(rerr, pgtool.ErrNoTool):
			// This host cannot restore; that says nothing about the backup.
			return rep, fmt.Errorf("verify %s: %w", opts.Restore.ID, rerr)
		case rr != nil && rr.Manifest != nil && rr.Manifest.Kind != "pgdump":
			return rep, fmt.Errorf("verify %s: a %s backup cannot be verified by restoring into PostgreSQL", opts.Restore.ID, rr.Manifest.Kind)
		}
		return rep, nil
	}

	cfg := srv.cfg.Copy()
	cfg.Database = name
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	db, err := pgx.ConnectConfig(cctx, cfg)
	cancel()
	if err != nil {
		err = pgtool.Scrub(fmt.Errorf("verify: connect to temporary database %s: %w", name, err), srv.password)
		rep.Error = err.Error()
		notRun(rep, opts.Checks, "not run: cannot connect to the restored database")
		return rep, err
	}
	defer db.Close(context.WithoutCancel(ctx))
	rep.OK = true
	for _, c := range opts.Checks {
		res := RunCheck(ctx, db, c, opts.CheckTimeout)
		rep.Checks = append(rep.Checks, res)
		rep.OK = rep.OK && res.OK
		if ctx.Err() != nil {
			rep.OK = false
			rep.Error = "cancelled while running checks"
			return rep, fmt.Errorf("verify %s: %w", opts.Restore.ID, ctx.Err())
		}
	}
	if !rep.OK {
		rep.Error = "a check failed"
	}
	return rep, nil
}

func notRun(rep *Report, checks []Check, why string) {
	for _, c := range checks {
		rep.Checks = append(rep.Checks, CheckResult{SQL: c.SQL, Expect: c.Expect, Error: why})
	}
}

func joinMsg(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func checkRestoreOptions(ro backup.RestoreOptions) error {
	if err := manifest.CheckID(ro.ID); err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if len(ro.Targets) == 0 {
		return errors.New("verify: no targets")
	}
	if ro.ToDir != "" || ro.ToPostgres != "" || ro.ToWriter != nil || ro.Force {
		return errors.New("verify: the restore destination is the scratch space; leave ToDir, ToPostgres, ToWriter and Force unset")
	}
	return nil
}

// CleanupStale drops the temporary databases on the server of into that
// are older than olderThan — what a crashed or killed run left behind —
// and returns their names. Only names this package makes (ScratchPrefix,
// then source, short id, creation time and a random suffix) are
// considered; the creation time is read from the name.
func CleanupStale(ctx context.Context, into string, olderThan time.Duration) ([]string, error) {
	srv, err := openServer(ctx, into)
	if err != nil {
		return nil, err
	}
	defer srv.close()
	return srv.dropStale(ctx, olderThan, time.Now())
}

// server is a connection to the scratch server's maintenance database.
type server struct {
	cfg        *pgx.ConnConfig
	conn       *pgx.Conn
	password   string
	redacted   string
	versionNum int
}

func openServer(ctx context.Context, into string) (*server, error) {
	if into == "" {
		return nil, errors.New("verify: no scratch database (verify.restore.into)")
	}
	split, err := pgtool.Split(into)
	if err != nil {
		return nil, fmt.Errorf("verify: scratch database: %w", err)
	}
	s := &server{password: split.Password, redacted: split.Redacted}
	cfg, err := pgx.ParseConfig(into)
	if err != nil {
		return nil, fmt.Errorf("verify: scratch database %s: invalid connection string", s.redacted)
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	cfg.RuntimeParams["application_name"] = "opsd verify"
	s.cfg = cfg
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if s.conn, err = pgx.ConnectConfig(cctx, cfg.Copy()); err != nil {
		return nil, s.scrub(fmt.Errorf("verify: connect to scratch server %s: %w", s.redacted, err))
	}
	if err := s.conn.QueryRow(cctx, "SELECT current_setting('server_version_num')::int").Scan(&s.versionNum); err != nil {
		s.close()
		return nil, s.scrub(fmt.Errorf("verify: query server version of %s: %w", s.redacted, err))
	}
	return s, nil
}

func (s *server) scrub(err error) error { return pgtool.Scrub(err, s.password) }

func (s *server) close() {
	if s.conn != nil {
		_ = s.conn.Close(context.Background())
		s.conn = nil
	}
}

func (s *server) exec(ctx context.Context, sql string) error {
	_, err := s.conn.Exec(ctx, sql)
	return s.scrub(err)
}

// userRelationsSQL lists the relations that count as user data (see
// ErrScratchNotEmpty).
const userRelationsSQL = `
SELECT n.nspname || '.' || c.relname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%'
  AND n.nspname NOT LIKE 'pg\_temp\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                  WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1`

// checkScratch refuses a database holding user data and a role that
// cannot create databases.
func (s *server) checkScratch(ctx context.Context) error {
	var db string
	var canCreate bool
	err := s.conn.QueryRow(ctx, `SELECT current_database(), r.rolcreatedb OR r.rolsuper
		FROM pg_catalog.pg_roles r WHERE r.rolname = current_user`).Scan(&db, &canCreate)
	if err != nil {
		return s.scrub(fmt.Errorf("verify: inspect scratch database %s: %w", s.redacted, err))
	}
	rows, err := s.conn.Query(ctx, userRelationsSQL)
	if err != nil {
		return s.scrub(fmt.Errorf("verify: inspect scratch database %s: %w", s.redacted, err))
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return s.scrub(fmt.Errorf("verify: inspect scratch database %s: %w", s.redacted, err))
	}
	if len(names) > 0 {
		shown := names[:min(len(names), 5)]
		more := ""
		if len(names) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(names)-len(shown))
		}
		return fmt.Errorf("verify: %w: database %q of %s has %d user relations (%s%s); verify.restore.into must name an empty maintenance or scratch database — opsd restores into a temporary database it creates next to it",
			ErrScratchNotEmpty, db, s.redacted, len(names), strings.Join(shown, ", "), more)
	}
	if !canCreate {
		return fmt.Errorf("verify: the role of %s cannot create databases: grant it CREATEDB", s.redacted)
	}
	return nil
}

// staleRE matches the names scratchName makes; group 1 is the creation
// time in base-36 Unix seconds.
var staleRE = regexp.MustCompile(`^` + ScratchPrefix + `[a-z0-9_]+_[a-z0-9]{1,8}_([a-z0-9]{1,12})_[0-9a-f]{6}$`)

func (s *server) dropStale(ctx context.Context, olderThan time.Duration, now time.Time) ([]string, error) {
	rows, err := s.conn.Query(ctx, `SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE 'opsd\_verify\_%' ORDER BY datname`)
	if err != nil {
		return nil, s.scrub(fmt.Errorf("verify: list temporary databases on %s: %w", s.redacted, err))
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.scrub(fmt.Errorf("verify: list temporary databases on %s: %w", s.redacted, err))
	}
	var dropped []string
	var errs []error
	for _, name := range names {
		created, ok := scratchCreated(name)
		if !ok || now.Sub(created) <= olderThan {
			continue
		}
		if err := s.drop(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("verify: drop stale database %s: %w", name, err))
			continue
		}
		dropped = append(dropped, name)
	}
	return dropped, errors.Join(errs...)
}

// drop drops name, disconnecting its sessions first.
func (s *server) drop(ctx context.Context, name string) error {
	ident := pgx.Identifier{name}.Sanitize()
	if s.versionNum >= 130000 {
		return s.exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)")
	}
	// Before 13: stop new sessions, end the current ones, then drop.
	if err := s.exec(ctx, "ALTER DATABASE "+ident+" ALLOW_CONNECTIONS false"); err != nil {
		var exists bool
		if qerr := s.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = $1)", name).Scan(&exists); qerr == nil && !exists {
			return nil
		}
		return err
	}
	if _, err := s.conn.Exec(ctx, "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name); err != nil {
		return s.scrub(err)
	}
	return s.exec(ctx, "DROP DATABASE IF EXISTS "+ident)
}

// dropDatabase reconnects to the scratch server (the verification may have
// taken hours) and drops name, retrying briefly.
func dropDatabase(ctx context.Context, srv *server, name string) error {
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return errors.Join(err, ctx.Err())
			case <-time.After(time.Duration(attempt) * 2 * time.Second):
			}
		}
		var conn *pgx.Conn
		if conn, err = pgx.ConnectConfig(ctx, srv.cfg.Copy()); err != nil {
			err = srv.scrub(fmt.Errorf("connect to %s: %w", srv.redacted, err))
			continue
		}
		s := *srv
		s.conn = conn
		err = s.drop(ctx, name)
		_ = conn.Close(context.WithoutCancel(ctx))
		if err == nil {
			return nil
		}
	}
	return err
}

// scratchName returns opsd_verify_<source>_<shortid>_<created>_<rand>:
// the source reduced to [a-z0-9_] and 20 bytes, the first 8 characters of
// the backup id's random part, the creation time in base-36 Unix seconds
// and 6 random hex digits — at most 62 bytes, under PostgreSQL's 63.
func scratchName(source, id string, created time.Time) string {
	src := sanitize(source, 20)
	if src == "" {
		src = "backup"
	}
	short := id
	if _, after, ok := strings.Cut(id, "-"); ok {
		short = after
	}
	short = sanitize(short, 8)
	short = strings.ReplaceAll(short, "_", "")
	if short == "" {
		short = "x"
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	return ScratchPrefix + src + "_" + short + "_" + strconv.FormatInt(created.Unix(), 36) + "_" + hex.EncodeToString(b[:])
}

// scratchCreated reads the creation time from a name scratchName made.
func scratchCreated(name string) (time.Time, bool) {
	m := staleRE.FindStringSubmatch(name)
	if m == nil {
		return time.Time{}, false
	}
	sec, err := strconv.ParseInt(m[1], 36, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(sec, 0), true
}

func sanitize(s string, maxLen int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() >= maxLen {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// withDatabase returns dsn with its database replaced by name (a plain
// identifier), for URL and key=value DSNs.
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("verify: scratch database %s: invalid URL", pgtool.Redact(dsn))
		}
		u.Path = "/" + name
		u.RawPath = ""
		if q := u.Query(); q.Has("dbname") {
			q.Set("dbname", name)
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	// In key=value form a later keyword overrides an earlier one.
	return strings.TrimSpace(dsn) + " dbname=" + name, nil
}

// quoteLiteral quotes s as an SQL string literal. Backslashes are dropped
// so the result means the same whatever standard_conforming_strings says.
func quoteLiteral(s string) string {
	s = strings.ReplaceAll(s, `\`, "")
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
