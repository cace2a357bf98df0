package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/migration"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/statetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func open(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	statetest.Run(t, func(t *testing.T) state.Store {
		return open(t, pgtest.DSN(t))
	})
}

// TestUpgradeFromV1 migrates a database created by the first schema.
func TestUpgradeFromV1(t *testing.T) {
	dsn := pgtest.DSN(t)
	statetest.RunUpgrade(t, 1, func(t *testing.T, version int) state.Store {
		s, err := postgres.OpenAtVersion(t.Context(), dsn, nil, version)
		if err != nil {
			t.Fatalf("OpenAtVersion(%d) = %v", version, err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func latest(t *testing.T) int {
	t.Helper()
	ms, err := postgres.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	return migration.Latest(ms)
}

func countMigrations(t *testing.T, s *postgres.Store) int {
	t.Helper()
	var n int
	if err := s.Pool().QueryRow(t.Context(), "SELECT count(*) FROM opsd_schema_migrations").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestReopenIsNoop(t *testing.T) {
	ctx := t.Context()
	dsn := pgtest.DSN(t)
	s := open(t, dsn)
	if err := s.PutValue(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dsn)
	if v, err := s.SchemaVersion(ctx); err != nil || v != latest(t) {
		t.Errorf("SchemaVersion after reopen = %d, %v, want %d", v, err, latest(t))
	}
	if n := countMigrations(t, s); n != latest(t) {
		t.Errorf("schema_migrations has %d rows, want %d", n, latest(t))
	}
	if got, ok, err := s.GetValue(ctx, "k"); got != "v" || !ok || err != nil {
		t.Errorf("GetValue after reopen = %q, %v, %v, want v, true, nil", got, ok, err)
	}
}

func TestRefuseNewerSchema(t *testing.T) {
	dsn := pgtest.DSN(t)
	s := open(t, dsn)
	if _, err := s.Pool().Exec(t.Context(), "INSERT INTO opsd_schema_migrations (version, name) VALUES (99, 'future')"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := postgres.Open(t.Context(), dsn, nil)
	if err == nil {
		_ = s2.Close()
		t.Fatal("Open(database with schema v99) succeeded, want ErrSchemaTooNew")
	}
	if !errors.Is(err, state.ErrSchemaTooNew) {
		t.Errorf("Open(database with schema v99) = %v, want ErrSchemaTooNew", err)
	}
	want := fmt.Sprintf("database schema v99 is newer than this opsd (v%d): upgrade opsd", latest(t))
	if !strings.Contains(err.Error(), want) {
		t.Errorf("Open error = %q, want it to contain %q", err, want)
	}
}

// TestConcurrentOpen starts several replicas on one fresh database at once:
// the advisory lock must make exactly one of them migrate.
func TestConcurrentOpen(t *testing.T) {
	dsn := pgtest.DSN(t)
	const n = 4
	stores := make([]*postgres.Store, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			stores[i], errs[i] = postgres.Open(t.Context(), dsn, nil)
		})
	}
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("Open #%d = %v", i, errs[i])
			continue
		}
		t.Cleanup(func() { _ = s.Close() })
	}
	if t.Failed() {
		return
	}
	if got := countMigrations(t, stores[0]); got != latest(t) {
		t.Errorf("schema_migrations has %d rows, want %d", got, latest(t))
	}
	for i, s := range stores {
		if err := s.PutValue(t.Context(), fmt.Sprintf("replica-%d", i), "up"); err != nil {
			t.Errorf("store #%d PutValue = %v", i, err)
		}
	}
}

func TestOpenErrorHidesPassword(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	// Port 1 on loopback refuses connections immediately.
	for _, dsn := range []string{
		"postgres://opsd:s3cretpw@127.0.0.1:1/opsd?sslmode=disable&connect_timeout=2",
		"host=127.0.0.1 port=1 user=opsd password=s3cretpw dbname=opsd sslmode=disable connect_timeout=2",
		"postgres://opsd:s3cretpw@127.0.0.1:1/opsd?bogus_param=%zz",
	} {
		s, err := postgres.Open(ctx, dsn, nil)
		if err == nil {
			_ = s.Close()
			t.Fatalf("Open(%s) succeeded, want error", postgres.RedactDSN(dsn))
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("Open error leaks the password: %v", err)
		}
	}
}

func TestRedactDSN(t *testing.T) {
	tests := []struct{ give, want string }{
		{"postgres://u:pw@db:5432/x?sslmode=disable", "postgres://u:xxxxx@db:5432/x?sslmode=disable"},
		{"postgresql://u@db/x", "postgresql://u@db/x"},
		{"postgres://u@db/x?password=pw&sslmode=require", "postgres://u@db/x?password=xxxxx&sslmode=require"},
		{"host=db user=u password=pw dbname=x", "host=db user=u password=xxxxx dbname=x"},
		{"host=db password='p w\\'x' dbname=x", "host=db password=xxxxx dbname=x"},
		{"host=db PASSWORD = pw", "host=db PASSWORD = xxxxx"},
		{"host=db dbname=x", "host=db dbname=x"},
	}
	for _, tt := range tests {
		if got := postgres.RedactDSN(tt.give); got != tt.want {
			t.Errorf("RedactDSN(%q) = %q, want %q", tt.give, got, tt.want)
		}
	}
}
