package verify

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/storage/local"
)

const ordersSQL = `
CREATE TABLE orders (id int PRIMARY KEY, amount numeric(10,2) NOT NULL, paid bool NOT NULL);
INSERT INTO orders VALUES (1, 10.50, true), (2, 20.25, false), (3, 0.25, true);`

// pgFixture is a real backup of a real database with a real table, and an
// empty scratch database to verify it through.
type pgFixture struct {
	k      keys
	st     *local.Backend
	source string
	res    *backup.Result
	into   string
}

func newPGFixture(t *testing.T, sourceName string) *pgFixture {
	t.Helper()
	requireTools(t, "pg_dump", "pg_restore")
	f := &pgFixture{k: newKeys(t), st: newStore(t, "local"), source: sourceName}
	src := pgtest.DSN(t)
	execSQL(t, src, ordersSQL)
	f.res = makeBackup(t, f.k, &source.Postgres{DSN: src}, sourceName, "postgres", f.st)
	f.into = pgtest.DSN(t) // a fresh, empty database: a valid scratch target
	return f
}

func (f *pgFixture) opts(checks ...Check) PostgresOptions {
	return PostgresOptions{Restore: restoreOpts(f.k, f.st, f.source, f.res), Into: f.into, Checks: checks}
}

// scratchPrefix is the prefix of the fixture's temporary databases.
func (f *pgFixture) scratchPrefix() string { return ScratchPrefix + sanitize(f.source, 20) + "_" }

// assertDropped fails unless no temporary database of the fixture exists.
func (f *pgFixture) assertDropped(t *testing.T, rep *Report) {
	t.Helper()
	if left := databases(t, f.scratchPrefix()); len(left) != 0 {
		t.Errorf("temporary databases left behind: %v", left)
	}
	if rep != nil && !strings.HasPrefix(rep.Scratch, f.scratchPrefix()) {
		t.Errorf("report.Scratch = %q, want a name starting with %s", rep.Scratch, f.scratchPrefix())
	}
}

func TestRestorePostgresPasses(t *testing.T) {
	f := newPGFixture(t, "orders-db")
	checks := []struct {
		check Check
		got   string
	}{
		{Check{"select count(*) from orders", "= 3"}, "3"},
		{Check{"select sum(amount) from orders", ">= 31"}, "31.00"},
		{Check{"select count(*) from orders where not paid", "< 5"}, "1"},
		{Check{"select avg(amount)::float8 from orders", "> 10.3"}, "10.333333333333334"},
		{Check{"select bool_and(amount > 0) from orders", "== 1"}, "true"},
		{Check{"select '42'::text", "= 42"}, "42"},
		// The checks run in a read-only transaction, in the temporary database.
		{Check{"select current_setting('transaction_read_only') = 'on'", "= 1"}, "true"},
		{Check{`select count(*) from pg_database where datname = current_database() and datname like 'opsd\_verify\_orders\_db\_%'`, "= 1"}, "1"},
	}
	var cs []Check
	for _, c := range checks {
		cs = append(cs, c.check)
	}
	rep, err := RestorePostgres(ctxT(t), f.opts(cs...))
	if err != nil {
		t.Fatalf("RestorePostgres: %v", err)
	}
	if !rep.OK || rep.Error != "" {
		t.Errorf("report OK = %v, error %q; want OK: %+v", rep.OK, rep.Error, rep.Checks)
	}
	want := &Report{BackupID: f.res.ID, Source: "orders-db", Target: "local", Level: LevelRestore, OK: true}
	for _, c := range checks {
		want.Checks = append(want.Checks, CheckResult{SQL: c.check.SQL, Expect: c.check.Expect, Got: c.got, OK: true})
	}
	if diff := cmp.Diff(want, rep, cmpopts.IgnoreFields(Report{}, "Scratch", "StartedAt", "Duration"), cmpopts.IgnoreFields(CheckResult{}, "Duration")); diff != "" {
		t.Errorf("RestorePostgres report (-want +got):\n%s", diff)
	}
	if rep.Duration <= 0 || rep.StartedAt.IsZero() {
		t.Errorf("report duration %v, started %v; want both set", rep.Duration, rep.StartedAt)
	}
	f.assertDropped(t, rep)
}

func TestRestorePostgresFailingChecks(t *testing.T) {
	f := newPGFixture(t, "orders-bad")
	tests := []struct {
		name    string
		check   Check
		ok      bool
		got     string
		wantErr string
	}{
		{"wrong count", Check{"select count(*) from orders", "= 42"}, false, "3", "got 3, want = 42"},
		{"invalid sql", Check{"selec count(*) from orders", "> 0"}, false, "", "syntax error"},
		{"missing table", Check{"select count(*) from no_such_table", "> 0"}, false, "", `relation "no_such_table" does not exist`},
		{"null", Check{"select null::int", "> 0"}, false, "NULL", "NULL"},
		{"two columns", Check{"select 1, 2", "> 0"}, false, "", "2 columns"},
		{"many rows", Check{"select id from orders", "> 0"}, false, "", "more than 1 row"},
		{"no rows", Check{"select 1 where false", "> 0"}, false, "", "no rows"},
		{"text", Check{"select 'abc'", "> 0"}, false, "abc", "not a number"},
		{"nan", Check{"select 'NaN'::float8", "> 0"}, false, "NaN", "NaN"},
		{"two statements", Check{"select 1; select 2", "> 0"}, false, "", "multiple commands"},
		{"write refused", Check{"with d as (delete from orders returning 1) select count(*) from d", "= 0"}, false, "", "read-only transaction"},
		{"statement timeout", Check{"select count(*) from pg_sleep(5)", "> 0"}, false, "", "statement timeout"},
		// Earlier failures neither poison later checks nor changed data.
		{"still fine", Check{"select count(*) from orders", "= 3"}, true, "3", ""},
	}
	var cs []Check
	for _, tt := range tests {
		cs = append(cs, tt.check)
	}
	opts := f.opts(cs...)
	opts.CheckTimeout = 500 * time.Millisecond
	rep, err := RestorePostgres(ctxT(t), opts)
	if err != nil {
		t.Fatalf("RestorePostgres: %v", err)
	}
	if rep.OK || rep.Error == "" {
		t.Errorf("report OK = %v, error %q; want a failure", rep.OK, rep.Error)
	}
	if len(rep.Checks) != len(tests) {
		t.Fatalf("report has %d checks, want %d", len(rep.Checks), len(tests))
	}
	for i, tt := range tests {
		got := rep.Checks[i]
		if got.OK != tt.ok || got.Got != tt.got || got.SQL != tt.check.SQL || got.Expect != tt.check.Expect {
			t.Errorf("%s: check = %+v, want ok=%v got=%q", tt.name, got, tt.ok, tt.got)
		}
		if tt.wantErr == "" && got.Error != "" || !strings.Contains(got.Error, tt.wantErr) {
			t.Errorf("%s: check error = %q, want it to contain %q", tt.name, got.Error, tt.wantErr)
		}
	}
	f.assertDropped(t, rep)

	// A single invalid check on its own is a failure too, never a pass.
	rep, err = RestorePostgres(ctxT(t), f.opts(Check{"select count(*) fro orders", "> 0"}))
	if err != nil {
		t.Fatalf("RestorePostgres: %v", err)
	}
	if rep.OK || len(rep.Checks) != 1 || rep.Checks[0].OK || !strings.Contains(rep.Checks[0].Error, "syntax error") {
		t.Errorf("invalid SQL alone: report %+v, want OK=false with the syntax error", rep)
	}
	f.assertDropped(t, rep)
}

func TestRestorePostgresRefusesScratchWithData(t *testing.T) {
	f := newPGFixture(t, "orders-refused")
	tests := []struct {
		name string
		sql  string
		want string
	}{
		{"table", "CREATE TABLE customers (id int)", "public.customers"},
		{"table in a schema", "CREATE SCHEMA app; CREATE TABLE app.users (id int)", "app.users"},
		{"view", "CREATE VIEW v AS SELECT 1 AS one", "public.v"},
		{"sequence", "CREATE SEQUENCE s", "public.s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			into := pgtest.DSN(t)
			execSQL(t, into, tt.sql)
			opts := f.opts(Check{"select count(*) from orders", "= 3"})
			opts.Into = into
			rep, err := RestorePostgres(ctxT(t), opts)
			if !errors.Is(err, ErrScratchNotEmpty) || rep != nil {
				t.Fatalf("RestorePostgres into a database holding data = %+v, %v; want ErrScratchNotEmpty", rep, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "verify.restore.into") {
				t.Errorf("error = %q, want it to name %s and verify.restore.into", err, tt.want)
			}
			f.assertDropped(t, nil)
		})
	}
}

func TestRestorePostgresUnreachable(t *testing.T) {
	f := newPGFixture(t, "orders-unreachable")
	const secret = "s3cr3t-Pa55word"
	for _, into := range []string{
		"postgres://opsd:" + secret + "@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2",
		"host=127.0.0.1 port=1 user=opsd password=" + secret + " dbname=postgres sslmode=disable connect_timeout=2",
		"postgres://opsd@127.0.0.1:1/postgres?password=" + secret + "&sslmode=disable&connect_timeout=2",
		"postgres://opsd:" + secret + "@127.0.0.1:1/postgres?sslmode=bogus",
	} {
		opts := f.opts(Check{"select 1", "= 1"})
		opts.Into = into
		rep, err := RestorePostgres(ctxT(t), opts)
		if err == nil || rep != nil {
			t.Errorf("RestorePostgres(unreachable) = %+v, %v; want an error", rep, err)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("RestorePostgres(unreachable) error reveals the password: %v", err)
		}
		if _, err := CleanupStale(ctxT(t), into, time.Hour); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("CleanupStale(unreachable) error = %v, want one without the password", err)
		}
	}
}

func TestRestorePostgresCancelled(t *testing.T) {
	f := newPGFixture(t, "orders-cancel")
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	opts := f.opts(Check{"select count(*) from orders", "= 3"})
	created := false
	opts.Restore.Progress = func(backup.Progress) {
		// Called while restoring: the temporary database exists.
		created = len(databases(t, f.scratchPrefix())) == 1
		cancel()
	}
	rep, err := RestorePostgres(ctx, opts)
	if !errors.Is(err, context.Canceled) || rep == nil || rep.OK {
		t.Fatalf("RestorePostgres(cancelled) = %+v, %v; want a report and context.Canceled", rep, err)
	}
	if !created {
		t.Error("the temporary database did not exist during the restore")
	}
	f.assertDropped(t, rep)
}

func TestRestorePostgresCorruptCopy(t *testing.T) {
	f := newPGFixture(t, "orders-corrupt")
	obj := f.res.Manifest.Objects[0]
	p := filepath.Join(f.st.Root(), filepath.FromSlash(f.res.Manifest.Key(obj.Name)))
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := RestorePostgres(ctxT(t), f.opts(Check{"select count(*) from orders", "= 3"}))
	if err != nil {
		t.Fatalf("RestorePostgres: %v", err)
	}
	if rep.OK || !strings.Contains(rep.Error, "does not match") || len(rep.Checks) != 1 || rep.Checks[0].OK {
		t.Errorf("report = %+v, want OK=false, the checksum error and the check not run", rep)
	}
	f.assertDropped(t, rep)
}

func TestRestorePostgresBadOptions(t *testing.T) {
	f := newPGFixture(t, "orders-opts")
	tests := []struct {
		name   string
		modify func(*PostgresOptions)
		want   string
	}{
		{"bad expect", func(o *PostgresOptions) { o.Checks = []Check{{"select 1", "=> 1"}} }, "want an operator"},
		{"empty sql", func(o *PostgresOptions) { o.Checks = []Check{{" ", "> 0"}} }, "no sql"},
		{"destination set", func(o *PostgresOptions) { o.Restore.ToPostgres = f.into }, "destination"},
		{"force", func(o *PostgresOptions) { o.Restore.Force = true }, "destination"},
		{"bad id", func(o *PostgresOptions) { o.Restore.ID = "latest" }, "backup id"},
		{"no targets", func(o *PostgresOptions) { o.Restore.Targets = nil }, "no targets"},
		{"no into", func(o *PostgresOptions) { o.Into = "" }, "verify.restore.into"},
	}
	for _, tt := range tests {
		opts := f.opts(Check{"select 1", "= 1"})
		tt.modify(&opts)
		rep, err := RestorePostgres(ctxT(t), opts)
		if err == nil || rep != nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: RestorePostgres = %+v, %v; want an error containing %q", tt.name, rep, err, tt.want)
		}
	}
	f.assertDropped(t, nil)

	// A files backup cannot be verified through PostgreSQL.
	root := filepath.Join(t.TempDir(), "tree")
	writeFile(t, filepath.Join(root, "a.txt"), "a", 0o644, time.Now())
	fres := makeBackup(t, f.k, &source.Files{Paths: []string{root}}, "orders-opts", "files", f.st)
	opts := f.opts()
	opts.Restore.ID = fres.ID
	rep, err := RestorePostgres(ctxT(t), opts)
	if err == nil || !strings.Contains(err.Error(), "tar") {
		t.Errorf("RestorePostgres(files backup) = %+v, %v; want an error", rep, err)
	}
	f.assertDropped(t, rep)
}

func TestCleanupStale(t *testing.T) {
	into := pgtest.DSN(t)
	now := time.Now()
	old := scratchName("stale-src", "20260101T000000Z-aaaa1111", now.Add(-2*time.Hour))
	young := scratchName("stale-src", "20260101T000000Z-bbbb2222", now.Add(-time.Minute))
	other := ScratchPrefix + "stale_src_by_hand"
	for _, name := range []string{old, young, other} {
		execSQL(t, into, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
		t.Cleanup(func() {
			execSQL(t, pgtest.ServerDSN(), "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
		})
	}
	// A session connected to the stale database does not keep it alive.
	cfg, err := pgx.ParseConfig(into)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Database = old
	conn, err := pgx.ConnectConfig(ctxT(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	dropped, err := CleanupStale(ctxT(t), into, time.Hour)
	if err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	if diff := cmp.Diff([]string{old}, dropped); diff != "" {
		t.Errorf("CleanupStale dropped (-want +got):\n%s", diff)
	}
	left := databases(t, ScratchPrefix+"stale_src_")
	want := []string{other, young}
	slices.Sort(left)
	slices.Sort(want)
	if diff := cmp.Diff(want, left); diff != "" {
		t.Errorf("databases left (-want +got):\n%s", diff)
	}
}

func TestScratchName(t *testing.T) {
	created := time.Date(2026, 11, 23, 7, 45, 0, 0, time.UTC)
	tests := []struct {
		source, id string
		prefix     string
	}{
		{"orders-db", "20261123T074500Z-abcd1234", "opsd_verify_orders_db_abcd1234_"},
		{"Orders.DB/eu", "20261123T074500Z-abcd", "opsd_verify_orders_db_eu_abcd_"},
		{"a-very-long-source-name-indeed-much-too-long", "20261123T074500Z-0123456789abcdef0123456789abcdef", "opsd_verify_a_very_long_source_n_01234567_"},
		{"", "20261123T074500Z-abcd1234", "opsd_verify_backup_abcd1234_"},
		{"ünïcode", "20261123T074500Z-abcd1234", "opsd_verify__n_code_abcd1234_"},
	}
	re := regexp.MustCompile(`^[a-z0-9_]+$`)
	for _, tt := range tests {
		name := scratchName(tt.source, tt.id, created)
		if !strings.HasPrefix(name, tt.prefix) || len(name) > 63 || !re.MatchString(name) {
			t.Errorf("scratchName(%q, %q) = %q (%d bytes), want a plain identifier of at most 63 bytes starting %s", tt.source, tt.id, name, len(name), tt.prefix)
		}
		if got, ok := scratchCreated(name); !ok || !got.Equal(created) {
			t.Errorf("scratchCreated(%q) = %v, %v; want %v", name, got, ok, created)
		}
	}
	if a, b := scratchName("s", "20261123T074500Z-abcd", created), scratchName("s", "20261123T074500Z-abcd", created); a == b {
		t.Errorf("scratchName twice = %q, want distinct names", a)
	}
	for _, name := range []string{"opsd_verify_manual", "opsd_verify_x_abcd_zz_12345", "postgres", "opsd_verify_x_abcd_t0_12345g"} {
		if _, ok := scratchCreated(name); ok {
			t.Errorf("scratchCreated(%q) ok, want it not recognised", name)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	tests := []struct{ give, want string }{
		{"postgres://u:p@h:5432/postgres?sslmode=disable", "postgres://u:p@h:5432/tmp_db?sslmode=disable"},
		{"postgresql://h/postgres", "postgresql://h/tmp_db"},
		{"postgres://h/?dbname=postgres", "postgres://h/tmp_db?dbname=tmp_db"},
		{"host=h user=u password=p dbname=postgres", "host=h user=u password=p dbname=postgres dbname=tmp_db"},
	}
	for _, tt := range tests {
		got, err := withDatabase(tt.give, "tmp_db")
		if err != nil || got != tt.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", tt.give, got, err, tt.want)
		}
	}
}
