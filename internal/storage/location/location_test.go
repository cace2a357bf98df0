package location_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/location"
	"github.com/opsd-dev/opsd/internal/storage/mem"
	"github.com/opsd-dev/opsd/internal/storage/metrics"
	"github.com/opsd-dev/opsd/internal/storage/retry"
	"github.com/opsd-dev/opsd/internal/storage/s3"
	"github.com/opsd-dev/opsd/internal/storage/s3/s3test"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// unwrapper is what every decorator offers.
type unwrapper interface{ Unwrap() storage.Backend }

// layers names the types from the outside in.
func layers(be storage.Backend) []string {
	var got []string
	for {
		switch be.(type) {
		case *metrics.Backend:
			got = append(got, "metrics")
		case *retry.Backend:
			got = append(got, "retry")
		default:
			got = append(got, be.Name())
		}
		u, ok := be.(unwrapper)
		if !ok {
			return got
		}
		be = u.Unwrap()
	}
}

func TestOpenLocalWithStack(t *testing.T) {
	m, err := metrics.NewMetrics(prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	o := &location.Opener{Registry: location.NewDefaultRegistry(), Stack: location.Stack{Metrics: m}}
	tgt := &config.Target{Type: config.TargetLocal, Path: filepath.Join(t.TempDir(), "backups")}
	be, err := o.Open(t.Context(), "local", tgt, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if diff := cmp.Diff([]string{"metrics", "retry", "local"}, layers(be)); diff != "" {
		t.Errorf("stack mismatch (-want +got):\n%s", diff)
	}
	if _, err := be.Save(t.Context(), "a/b", strings.NewReader("x"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
}

func TestUnknownType(t *testing.T) {
	_, err := location.NewDefaultRegistry().Open(t.Context(), "x", &config.Target{Type: "ftp"}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), `unknown type "ftp"`) || !storage.IsPermanent(err) {
		t.Errorf("Open(type ftp) = %v, want a permanent unknown-type error", err)
	}
	if diff := cmp.Diff([]string{"gcs", "local", "s3"}, location.NewDefaultRegistry().Types()); diff != "" {
		t.Errorf("Types() mismatch (-want +got):\n%s", diff)
	}
}

// flaky fails its first Stat transiently.
type flaky struct {
	storage.Backend
	failed bool
}

func (f *flaky) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if !f.failed {
		f.failed = true
		return storage.ObjectInfo{}, errors.New("connection reset by peer")
	}
	return f.Backend.Stat(ctx, key)
}

func TestRetriesAreLoggedAndCounted(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := metrics.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	inner := &flaky{Backend: mem.New("offsite", mem.Options{})}
	if _, err := inner.Save(t.Context(), "k", strings.NewReader("v"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	be := location.Wrap(inner, location.Stack{Metrics: m, Retry: retry.Options{Initial: time.Millisecond}}, logger)
	if _, err := be.Stat(t.Context(), "k"); err != nil {
		t.Fatalf("Stat() = %v, want success after a retry", err)
	}
	want := `
# HELP opsd_storage_retries_total Attempts that failed transiently and were retried.
# TYPE opsd_storage_retries_total counter
opsd_storage_retries_total{op="stat",target="offsite"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "opsd_storage_retries_total"); err != nil {
		t.Error(err)
	}
	if !strings.Contains(logs.String(), "retrying") || !strings.Contains(logs.String(), "target=offsite") {
		t.Errorf("log = %q, want a retry line naming the target", logs.String())
	}
}

// TestOpenS3FromConfig opens an s3 target the way the daemon does, with
// credentials from the environment (the default chain), against Versity.
func TestOpenS3FromConfig(t *testing.T) {
	v := s3test.StartVersity(t)
	t.Setenv("AWS_ACCESS_KEY_ID", v.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", v.SecretKey)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	tgt := &config.Target{Type: config.TargetS3, Bucket: v.NewBucket(t, true), Region: v.Region, Endpoint: v.Endpoint,
		PathStyle: true, Prefix: "opsd", ObjectLock: &config.ObjectLock{Mode: "GOVERNANCE", Days: 1}}
	o := &location.Opener{Registry: location.NewDefaultRegistry()}
	be, err := o.Open(t.Context(), "offsite-s3", tgt, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	if diff := cmp.Diff([]string{"retry", "offsite-s3"}, layers(be)); diff != "" {
		t.Errorf("stack mismatch (-want +got):\n%s", diff)
	}
	if _, ok := be.(unwrapper).Unwrap().(*s3.Backend); !ok {
		t.Errorf("innermost backend is %T, want *s3.Backend", be.(unwrapper).Unwrap())
	}
	if _, err := be.Save(t.Context(), "src/id/manifest.json", strings.NewReader("{}"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	rc, err := be.Open(t.Context(), "src/id/manifest.json", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "{}" {
		t.Errorf("read %q, want {}", got)
	}
	if err := be.Remove(t.Context(), "src/id/manifest.json"); !errors.Is(err, storage.ErrLocked) {
		t.Errorf("Remove() = %v, want ErrLocked from the target's object_lock", err)
	}
}
