package backup_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// requireTools fails under CI=true and skips loudly otherwise when a
// binary is missing (SPEC §9).
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	testenv.Commands(t, names...)
}

const seedSQL = `
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigserial PRIMARY KEY, customer int REFERENCES customers, amount numeric(10,2), status text, note text);
INSERT INTO customers SELECT g, 'customer ' || g, '2026-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 500) g;
INSERT INTO orders (customer, amount, status, note)
  SELECT 1 + g % 500, (g * 7 % 10000) / 100.0, (ARRAY['paid','shipped','cancelled'])[1 + g % 3], md5(g::text)
  FROM generate_series(1, 20000) g;
CREATE INDEX orders_customer ON orders (customer);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 90;
`

// fingerprint summarises a database: row counts and content checksums.
func fingerprint(t *testing.T, dsn string) string {
	t.Helper()
	ctx := ctxT(t)
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	var out []string
	for _, q := range []string{
		"SELECT count(*)::text || ':' || md5(string_agg(c::text, ',' ORDER BY id)) FROM customers c",
		"SELECT count(*)::text || ':' || md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o",
		"SELECT count(*)::text FROM big_orders",
		"SELECT count(*)::text FROM pg_indexes WHERE indexname = 'orders_customer'",
	} {
		var s string
		if err := db.QueryRow(ctx, q).Scan(&s); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func seed(t *testing.T, dsn string) {
	t.Helper()
	ctx := ctxT(t)
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	if _, err := db.Exec(ctx, seedSQL); err != nil {
		t.Fatal(err)
	}
}

// pgBackup backs up a freshly seeded database.
func pgBackup(t *testing.T, k keys, st []storage.Backend) (srcDSN string, res *backup.Result) {
	t.Helper()
	requireTools(t, "pg_dump", "pg_restore")
	srcDSN = pgtest.DSN(t)
	seed(t, srcDSN)
	res, err := backup.Run(ctxT(t), &source.Postgres{DSN: srcDSN}, options(k, "orders-db", "postgres", st))
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return srcDSN, res
}

func TestPostgresBackupRestore(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	st := newStores(t, "local", "offsite")
	srcDSN, res := pgBackup(t, k, backends(st...))
	m := res.Manifest
	pg := m.SourceMeta.Postgres
	if pg == nil || pg.ServerVersionNum < 100000 || pg.WALLSN == "" || pg.Snapshot == "" || pg.SnapshotTime.IsZero() || pg.PGDumpVersion == "" {
		t.Fatalf("postgres meta = %+v, want version, LSN, snapshot and time", pg)
	}
	if m.Kind != "pgdump" || m.Objects[0].Name != "data.pgdump.zst.age" {
		t.Errorf("manifest kind/object = %s/%s", m.Kind, m.Objects[0].Name)
	}
	if !(pg.SnapshotTime.After(m.Started.Add(-1)) && pg.SnapshotTime.Before(m.Finished)) {
		t.Errorf("snapshot time %s outside the backup's %s..%s", pg.SnapshotTime, m.Started, m.Finished)
	}

	want := fingerprint(t, srcDSN)
	dst := pgtest.DSN(t)
	var last backup.Progress
	rr, err := backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: res.ID, Verifier: k.verifier,
		Identities: idents(k), ToPostgres: dst, Progress: func(p backup.Progress) { last = p }})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got := fingerprint(t, dst); got != want {
		t.Errorf("restored database = %s, want %s", got, want)
	}
	if rr.Bytes != m.Size.Raw || last.Phase != "restore" || last.Bytes != m.Size.Raw || last.Total != m.Size.Raw {
		t.Errorf("restored %d bytes, last progress %+v; want %d", rr.Bytes, last, m.Size.Raw)
	}

	// The database now has tables: a second restore is refused, unless forced.
	_, err = backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: res.ID, Verifier: k.verifier, Identities: idents(k), ToPostgres: dst})
	if !errors.Is(err, backup.ErrNotEmpty) {
		t.Fatalf("Restore into a non-empty database = %v, want ErrNotEmpty", err)
	}
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: res.ID, Verifier: k.verifier, Identities: idents(k), ToPostgres: dst, Force: true}); err != nil {
		t.Fatalf("forced Restore: %v", err)
	}
	if got := fingerprint(t, dst); got != want {
		t.Errorf("database after forced restore = %s, want %s", got, want)
	}
}

// fakeTool writes an executable script standing in for pg_dump.
func fakeTool(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func withPassword(t *testing.T, dsn, password string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Scheme == "" {
		testenv.Missing(t, "this test needs a URL-form %s", pgtest.EnvDSN)
	}
	u.User = url.UserPassword(u.User.Username(), password)
	return u.String()
}

func TestPGDumpSelectionAndSecrets(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	requireTools(t, "pg_dump")
	// Trust auth on the test server accepts any password: enough to see
	// where the password goes.
	const password = "s3cret-Pa55word"
	dsn := withPassword(t, pgtest.DSN(t), password)
	bin := t.TempDir()

	t.Run("older pg_dump refused with the package to install", func(t *testing.T) {
		st := newStores(t, "a")
		old := fakeTool(t, bin, "pg_dump", "echo 'pg_dump (PostgreSQL) 9.6.24'\n")
		src := &source.Postgres{DSN: dsn, Finder: pgtool.Finder{Configured: old}}
		_, err := backup.Run(ctx, src, options(k, "db", "postgres", backends(st...)))
		if err == nil || !strings.Contains(err.Error(), "older than the PostgreSQL") || !regexp.MustCompile(`postgresql-client-\d+`).MatchString(err.Error()) {
			t.Fatalf("Run = %v, want a too-old error naming postgresql-client-N", err)
		}
		if testing.Verbose() {
			t.Logf("old pg_dump error: %v", err)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error leaks the password: %v", err)
		}
		if n := countObjects(t, st[0]); n != 0 {
			t.Errorf("%d objects written, want 0", n)
		}
	})

	t.Run("missing pg_dump names the package", func(t *testing.T) {
		src := &source.Postgres{DSN: dsn, Finder: pgtool.Finder{Dirs: []string{filepath.Join(bin, "none-%d")}, LookPath: func(string) (string, error) { return "", exec.ErrNotFound }}}
		_, err := backup.Run(ctx, src, options(k, "db", "postgres", backends(newStores(t, "a")...)))
		if err == nil || !strings.Contains(err.Error(), "not found (install the postgresql-client-") {
			t.Fatalf("Run = %v, want not found naming the package", err)
		}
	})

	t.Run("password only in the environment, never in argv or errors", func(t *testing.T) {
		real, err := exec.LookPath("pg_dump")
		if err != nil {
			t.Fatal(err)
		}
		tool, err := pgtool.Version(ctx, real)
		if err != nil {
			t.Fatal(err)
		}
		record := filepath.Join(bin, "record")
		spy := fakeTool(t, bin, "pg_dump-spy", fmt.Sprintf(`case "$1" in --version) echo 'pg_dump (PostgreSQL) %s'; exit 0;; esac
printf '%%s\n' "$@" > %s
echo "PGPASSWORD=$PGPASSWORD" >> %s
echo "fatal: something broke" >&2
exit 1
`, tool.Version, record, record))
		st := newStores(t, "a")
		_, err = backup.Run(ctx, &source.Postgres{DSN: dsn, Finder: pgtool.Finder{Configured: spy}}, options(k, "db", "postgres", backends(st...)))
		if err == nil || !strings.Contains(err.Error(), "something broke") {
			t.Fatalf("Run = %v, want pg_dump's failure", err)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error leaks the password: %v", err)
		}
		data, _ := os.ReadFile(record)
		args, env, _ := strings.Cut(string(data), "PGPASSWORD=")
		if strings.Contains(args, password) {
			t.Errorf("password on pg_dump's command line: %s", args)
		}
		if strings.TrimSpace(env) != password {
			t.Errorf("PGPASSWORD = %q, want the DSN's password", env)
		}
		for _, want := range []string{"--format=custom", "--compress=0", "--snapshot="} {
			if !strings.Contains(args, want) {
				t.Errorf("pg_dump args %q lack %s", args, want)
			}
		}
		if n := countObjects(t, st[0]); n != 0 {
			t.Errorf("%d objects written, want 0", n)
		}
	})

	t.Run("bad DSN", func(t *testing.T) {
		st := newStores(t, "a")
		bad := "postgres://opsd:" + password + "@127.0.0.1:1/nowhere?sslmode=disable&connect_timeout=2"
		_, err := backup.Run(ctx, &source.Postgres{DSN: bad}, options(k, "db", "postgres", backends(st...)))
		if err == nil || !strings.Contains(err.Error(), "connect") {
			t.Fatalf("Run = %v, want a connect error", err)
		}
		if testing.Verbose() {
			t.Logf("bad DSN error: %v", err)
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("error leaks the password: %v", err)
		}
		if !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Errorf("error %v does not say which server", err)
		}
		if n := countObjects(t, st[0]); n != 0 {
			t.Errorf("%d objects written, want 0", n)
		}
		_, err = backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: "20260101T000000Z-abcd", Verifier: k.verifier, ToPostgres: bad})
		if err == nil || strings.Contains(err.Error(), password) {
			t.Errorf("Restore to a bad DSN = %v, want an error without the password", err)
		}
	})
}

// docCommand returns the first line of docs/FORMAT.md starting with prefix.
func docCommand(t *testing.T, prefix string) string {
	t.Helper()
	f, err := os.Open("../../docs/FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			return sc.Text()
		}
	}
	t.Fatalf("docs/FORMAT.md has no line starting with %q", prefix)
	return ""
}

// docBlock returns the fenced block of docs/FORMAT.md that starts with prefix.
func docBlock(t *testing.T, prefix string) string {
	t.Helper()
	data, err := os.ReadFile("../../docs/FORMAT.md")
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(data), "```sh\n"+prefix)
	if i < 0 {
		t.Fatalf("docs/FORMAT.md has no sh block starting with %q", prefix)
	}
	block := string(data[i+len("```sh\n"):])
	return block[:strings.Index(block, "```")]
}

// sh runs a documented command line with the standard tools, in dir.
func sh(t *testing.T, dir, script string, env ...string) string {
	t.Helper()
	cmd := exec.Command("sh", "-e", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// fetch copies a backup's objects from a dirstore into a work dir, as
// `aws s3 cp --recursive` would.
func fetch(t *testing.T, st interface{ Root() string }, res *backup.Result, k keys) string {
	t.Helper()
	work := t.TempDir()
	src := filepath.Join(st.Root(), res.Manifest.Source, res.ID)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(work, e.Name()), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	key := fmt.Sprintf("# created: test\n# public key: %s\n%s\n", k.identity.Recipient(), k.identity)
	if err := os.WriteFile(filepath.Join(work, "key.txt"), []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	return work
}

func TestNoOpsdRestore(t *testing.T) {
	requireTools(t, "age", "zstd", "tar", "pg_restore", "sha256sum", "jq", "openssl", "base64")
	k := newKeys(t)
	pgCmd := docCommand(t, "age -d -i key.txt data.pgdump.zst.age | zstd -d | pg_restore -d \"$DSN\"")
	tarCmd := docCommand(t, "age -d -i key.txt data.tar.zst.age | zstd -d | tar -x")
	shaCmd := docCommand(t, "jq -r '.objects[]")
	sigScript := docBlock(t, "head -n 3 manifest.json.sig")

	checkObjectAndSignature := func(t *testing.T, work string) {
		if out := sh(t, work, shaCmd); !strings.Contains(out, ": OK") {
			t.Errorf("sha256 check printed %q, want OK", out)
		}
		if out := sh(t, work, sigScript, "VKEY="+k.vkey); !strings.Contains(out, "Signature Verified Successfully") {
			t.Errorf("signature check printed %q", out)
		}
		// And the same script rejects a tampered manifest.
		bad := filepath.Join(work, "manifest.json")
		data, _ := os.ReadFile(bad)
		os.WriteFile(bad, bytes.Replace(data, []byte(`"raw":`), []byte(`"raw":9`), 1), 0o600)
		cmd := exec.Command("sh", "-e", "-c", sigScript)
		cmd.Dir, cmd.Env = work, append(os.Environ(), "VKEY="+k.vkey)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("signature check passed a tampered manifest: %s", out)
		}
		os.WriteFile(bad, data, 0o600)
	}

	t.Run("postgres", func(t *testing.T) {
		st := newStores(t, "local")
		srcDSN, res := pgBackup(t, k, backends(st...))
		work := fetch(t, st[0], res, k)
		checkObjectAndSignature(t, work)
		dst := pgtest.DSN(t)
		sh(t, work, pgCmd, "DSN="+dst)
		if got, want := fingerprint(t, dst), fingerprint(t, srcDSN); got != want {
			t.Errorf("database restored with standard tools = %s, want %s", got, want)
		}
	})

	t.Run("files", func(t *testing.T) {
		root := makeTree(t)
		st := newStores(t, "local")
		res, err := backup.Run(ctxT(t), &source.Files{Paths: []string{root}, Exclude: []string{"*.tmp", "cache"}}, options(k, "uploads", "files", backends(st...)))
		if err != nil {
			t.Fatal(err)
		}
		work := fetch(t, st[0], res, k)
		checkObjectAndSignature(t, work)
		dir := t.TempDir()
		sh(t, work, tarCmd, "DIR="+dir)
		fm := res.Manifest.SourceMeta.Files
		got, err := source.IndexDir(dir, fm.Paths)
		if err != nil {
			t.Fatal(err)
		}
		if got != fm.IndexDigest {
			t.Errorf("tree restored with standard tools has index %s, want %s", got, fm.IndexDigest)
		}
	})
}
