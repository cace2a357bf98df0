package sqlite_test

import (
	"path/filepath"
	"testing"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
	"github.com/opsd-dev/opsd/internal/state/statetest"
)

func TestRunsConformance(t *testing.T) {
	statetest.RunRuns(t, func(t *testing.T) state.Runs {
		return open(t, filepath.Join(t.TempDir(), sqlite.FileName))
	})
}
