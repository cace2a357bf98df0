package verify

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/local"
	"github.com/opsd-dev/opsd/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type keys struct {
	signer   note.Signer
	verifier note.Verifier
	identity *age.X25519Identity
}

func newKeys(t testing.TB) keys {
	t.Helper()
	g, err := signing.Generate("opsd.test/verify")
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(g.SignerKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(g.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return keys{signer: s, verifier: v, identity: id}
}

func newStore(t testing.TB, name string) *local.Backend {
	t.Helper()
	s, err := local.New(name, filepath.Join(t.TempDir(), name))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// makeBackup runs a real backup of src to st.
func makeBackup(t testing.TB, k keys, src source.Source, name, typ string, st storage.Backend) *backup.Result {
	t.Helper()
	res, err := backup.Run(ctxT(t), src, backup.Options{Source: name, Type: typ, Targets: []storage.Backend{st},
		Recipients: []age.Recipient{k.identity.Recipient()}, Signer: k.signer, ZstdLevel: 3})
	if err != nil {
		t.Fatalf("backup.Run: %v", err)
	}
	if res.State != backup.StateSucceeded {
		t.Fatalf("backup state = %s, want succeeded: %+v", res.State, res.Copies)
	}
	return res
}

// restoreOpts reads backup res of source from st.
func restoreOpts(k keys, st storage.Backend, source string, res *backup.Result) backup.RestoreOptions {
	return backup.RestoreOptions{Targets: []storage.Backend{st}, Source: source, ID: res.ID,
		Verifier: k.verifier, Identities: []age.Identity{k.identity}}
}

// requireTools fails under CI=true and skips loudly otherwise (SPEC §9).
func requireTools(t *testing.T, names ...string) {
	t.Helper()
	testenv.Commands(t, names...)
}

// execSQL runs statements on dsn.
func execSQL(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	ctx := ctxT(t)
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	if _, err := db.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// databases lists the server's databases whose name starts with prefix.
func databases(t testing.TB, prefix string) []string {
	t.Helper()
	ctx := ctxT(t)
	db, err := pgx.Connect(ctx, pgtest.ServerDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	rows, err := db.Query(ctx, "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY 1", prefix)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return names
}
