package mem_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/mem"
	"github.com/opsd-dev/opsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		return mem.New("mem", mem.Options{})
	})
}

func TestConformanceWithLock(t *testing.T) {
	newBackend := func(t *testing.T) storage.Backend {
		return mem.New("mem-lock", mem.Options{Lock: true})
	}
	storagetest.Run(t, newBackend)
	storagetest.RunLock(t, "GOVERNANCE", newBackend)
}
