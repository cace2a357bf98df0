// Package migration loads opsd's versioned schema migrations — embedded SQL
// files named NNNN_description.sql — and holds the rules both state backends
// apply them by: in version order, each in its own transaction, recorded in
// the schema_migrations table, and never against a database whose schema is
// newer than the binary knows.
package migration

import (
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/opsd-dev/opsd/internal/state"
)

// Migration is one schema step.
type Migration struct {
	Version int    // 1, 2, 3, ... without gaps
	Name    string // file name without the version and extension
	SQL     string // statements to run, in one transaction
}

// Load reads every *.sql file in dir of fsys. File names must be
// NNNN_name.sql and versions must run 1..n without gaps or duplicates.
func Load(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, ok := strings.Cut(base, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 || name == "" {
			return nil, fmt.Errorf("migration %q: name must be NNNN_description.sql", e.Name())
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", e.Name(), err)
		}
		ms = append(ms, Migration{Version: v, Name: name, SQL: string(b)})
	}
	slices.SortFunc(ms, func(a, b Migration) int { return a.Version - b.Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migrations: expected version %d, found %04d_%s", i+1, m.Version, m.Name)
		}
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("migrations: none found in %q", dir)
	}
	return ms, nil
}

// Latest is the version the binary's migrations bring a database to.
func Latest(ms []Migration) int {
	if len(ms) == 0 {
		return 0
	}
	return ms[len(ms)-1].Version
}

// CheckNotNewer returns an error wrapping state.ErrSchemaTooNew when the
// database's version is beyond what this binary knows.
func CheckNotNewer(dbVersion, known int) error {
	if dbVersion > known {
		return &tooNewError{db: dbVersion, known: known}
	}
	return nil
}

// tooNewError reads as an instruction to the operator and matches
// state.ErrSchemaTooNew with errors.Is.
type tooNewError struct{ db, known int }

func (e *tooNewError) Error() string {
	return fmt.Sprintf("database schema v%d is newer than this opsd (v%d): upgrade opsd", e.db, e.known)
}

func (e *tooNewError) Unwrap() error { return state.ErrSchemaTooNew }
