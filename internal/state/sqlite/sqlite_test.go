package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/migration"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
	"github.com/opsd-dev/opsd/internal/state/statetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func open(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatalf("Open(%q) = %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store {
		return open(t, filepath.Join(t.TempDir(), sqlite.FileName))
	})
}

// TestUpgradeFromV1 migrates a database created by the first schema.
func TestUpgradeFromV1(t *testing.T) {
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	statetest.RunUpgrade(t, 1, func(t *testing.T, version int) state.Store {
		s, err := sqlite.OpenAtVersion(t.Context(), path, nil, version)
		if err != nil {
			t.Fatalf("OpenAtVersion(%d) = %v", version, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestPragmas(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), sqlite.FileName))
	tests := []struct{ pragma, want string }{
		{"journal_mode", "wal"},
		{"synchronous", "2"}, // FULL
		{"foreign_keys", "1"},
		{"busy_timeout", "10000"},
	}
	for _, tt := range tests {
		var got string
		if err := s.DB().QueryRowContext(t.Context(), "PRAGMA "+tt.pragma).Scan(&got); err != nil {
			t.Fatalf("PRAGMA %s: %v", tt.pragma, err)
		}
		if got != tt.want {
			t.Errorf("PRAGMA %s = %q, want %q", tt.pragma, got, tt.want)
		}
	}
}

func TestFileIsPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	open(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("database file mode = %v, want 0600", perm)
	}
}

func TestReopenIsNoop(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	s := open(t, path)
	if err := s.PutValue(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	v1, err := s.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = open(t, path)
	v2, err := s.SchemaVersion(ctx)
	if err != nil || v2 != v1 {
		t.Errorf("SchemaVersion after reopen = %d, %v, want %d", v2, err, v1)
	}
	ms, err := sqlite.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := s.DB().QueryRowContext(ctx, "SELECT count(*) FROM opsd_schema_migrations").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != len(ms) {
		t.Errorf("schema_migrations has %d rows, want %d", rows, len(ms))
	}
	if got, ok, err := s.GetValue(ctx, "k"); got != "v" || !ok || err != nil {
		t.Errorf("GetValue after reopen = %q, %v, %v, want v, true, nil", got, ok, err)
	}
}

func TestRefuseNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), sqlite.FileName)
	s := open(t, path)
	if _, err := s.DB().ExecContext(t.Context(),
		"INSERT INTO opsd_schema_migrations (version, name, applied_at) VALUES (99, 'future', '2099-01-01T00:00:00.000000Z')"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := sqlite.Open(context.Background(), path, nil)
	if err == nil {
		_ = s2.Close()
		t.Fatal("Open(database with schema v99) succeeded, want ErrSchemaTooNew")
	}
	if !errors.Is(err, state.ErrSchemaTooNew) {
		t.Errorf("Open(database with schema v99) = %v, want ErrSchemaTooNew", err)
	}
	ms, merr := sqlite.Migrations()
	if merr != nil {
		t.Fatal(merr)
	}
	if want := fmt.Sprintf("database schema v99 is newer than this opsd (v%d): upgrade opsd", migration.Latest(ms)); !strings.Contains(err.Error(), want) {
		t.Errorf("Open error = %q, want it to contain %q", err, want)
	}
}

func TestOpenRejectsURIPath(t *testing.T) {
	if _, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "x.db?mode=ro"), nil); err == nil {
		t.Error("Open(path with '?') succeeded, want error")
	}
}
