package metrics_test

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/mem"
	"github.com/opsd-dev/opsd/internal/storage/metrics"
	"github.com/opsd-dev/opsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		m, err := metrics.NewMetrics(prometheus.NewPedanticRegistry())
		if err != nil {
			t.Fatal(err)
		}
		return m.Wrap(mem.New("m", mem.Options{}))
	})
}

func TestCounts(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := metrics.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	inner := mem.New("offsite", mem.Options{})
	be := m.Wrap(inner)
	if be.Unwrap() != inner {
		t.Errorf("Unwrap() is not the wrapped backend")
	}
	ctx := t.Context()
	if _, err := be.Save(ctx, "a", strings.NewReader("0123456789"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	rc, err := be.Open(ctx, "a", 2, 5)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, rc)
	rc.Close()
	if _, err := be.Stat(ctx, "missing"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	_ = be.List(ctx, "", func(storage.ObjectInfo) error { return stop })
	m.RetryReport("offsite")("save")

	want := `
# HELP opsd_storage_bytes_read_total Bytes read from opened objects.
# TYPE opsd_storage_bytes_read_total counter
opsd_storage_bytes_read_total{target="offsite"} 5
# HELP opsd_storage_bytes_written_total Bytes of objects saved completely.
# TYPE opsd_storage_bytes_written_total counter
opsd_storage_bytes_written_total{target="offsite"} 10
# HELP opsd_storage_errors_total Storage operations that failed, after retries.
# TYPE opsd_storage_errors_total counter
opsd_storage_errors_total{op="stat",target="offsite"} 1
# HELP opsd_storage_operations_total Storage operations by target and operation, successful or not.
# TYPE opsd_storage_operations_total counter
opsd_storage_operations_total{op="list",target="offsite"} 1
opsd_storage_operations_total{op="open",target="offsite"} 1
opsd_storage_operations_total{op="save",target="offsite"} 1
opsd_storage_operations_total{op="stat",target="offsite"} 1
# HELP opsd_storage_retries_total Attempts that failed transiently and were retried.
# TYPE opsd_storage_retries_total counter
opsd_storage_retries_total{op="save",target="offsite"} 1
`
	names := []string{"opsd_storage_bytes_read_total", "opsd_storage_bytes_written_total", "opsd_storage_errors_total",
		"opsd_storage_operations_total", "opsd_storage_retries_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(reg, "opsd_storage_operation_duration_seconds"); n != 4 {
		t.Errorf("latency series = %d, want 4", n)
	}
	if _, err := metrics.NewMetrics(reg); err == nil {
		t.Errorf("NewMetrics(same registry twice) = nil error, want a registration error")
	}
}
