package postgres_test

import (
	"testing"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/state/statetest"
)

func TestRunsConformance(t *testing.T) {
	statetest.RunRuns(t, func(t *testing.T) state.Runs {
		return open(t, pgtest.DSN(t))
	})
}
