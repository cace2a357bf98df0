// Package pgtest gives tests a fresh, private PostgreSQL database.
//
// The server comes from OPSD_TEST_POSTGRES_DSN (default DefaultDSN). When it
// cannot be reached the test fails under CI=true and is skipped, loudly,
// otherwise (SPEC §9).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// EnvDSN names the environment variable holding the test server's DSN.
const EnvDSN = "OPSD_TEST_POSTGRES_DSN"

// DefaultDSN is used when EnvDSN is unset.
const DefaultDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ServerDSN returns the DSN of the test server's maintenance database.
func ServerDSN() string {
	if v := os.Getenv(EnvDSN); v != "" {
		return v
	}
	return DefaultDSN
}

// DSN creates a new database opsd_test_<random> on the test server and
// returns a DSN for it. The database is dropped (with any sessions still
// connected) when the test ends.
func DSN(t testing.TB) string {
	t.Helper()
	server := ServerDSN()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		unavailable(t, fmt.Sprintf("cannot connect to PostgreSQL at %s (%s): %v", redact(server), EnvDSN, err))
		return ""
	}
	defer conn.Close(context.Background())

	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "opsd_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	t.Cleanup(func() { drop(t, server, name) })

	dsn, err := withDatabase(server, name)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return dsn
}

func drop(t testing.TB, server, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
		return
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		t.Errorf("pgtest: drop database %s: %v", name, err)
	}
}

// unavailable fails the test under CI=true and skips it otherwise.
func unavailable(t testing.TB, msg string) {
	t.Helper()
	testenv.Missing(t, "pgtest: PostgreSQL not available: %s (set %s to a reachable server)", msg, EnvDSN)
}

// withDatabase returns server with its database replaced by name, for both
// URL and key=value DSNs.
func withDatabase(server, name string) (string, error) {
	if strings.HasPrefix(server, "postgres://") || strings.HasPrefix(server, "postgresql://") {
		u, err := url.Parse(server)
		if err != nil {
			return "", fmt.Errorf("parse %s: %w", EnvDSN, err)
		}
		u.Path = "/" + name
		q := u.Query()
		if q.Has("dbname") {
			q.Set("dbname", name)
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	// In key=value form a later keyword overrides an earlier one.
	return server + " dbname=" + name, nil
}

func redact(dsn string) string {
	if u, err := url.Parse(dsn); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "(key=value DSN)"
}
