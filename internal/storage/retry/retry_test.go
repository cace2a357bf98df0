package retry_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/mem"
	"github.com/opsd-dev/opsd/internal/storage/retry"
	"github.com/opsd-dev/opsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errTransient = errors.New("connection reset")

// flaky fails the next fails[op] calls of op with err, then passes them
// to the wrapped backend. List fails after delivering one object.
type flaky struct {
	storage.Backend
	mu    sync.Mutex
	fails map[string]int
	err   error
	calls map[string]int
}

func newFlaky(fails map[string]int, err error) *flaky {
	return &flaky{Backend: mem.New("flaky", mem.Options{}), fails: fails, err: err, calls: map[string]int{}}
}

func (f *flaky) fail(op string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	if f.fails[op] > 0 {
		f.fails[op]--
		return true
	}
	return false
}

func (f *flaky) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	if f.fail("save") {
		_, _ = io.CopyN(io.Discard, r, 3) // consume some, as a failed upload does
		return storage.ObjectInfo{}, f.err
	}
	return f.Backend.Save(ctx, key, r, opts)
}

func (f *flaky) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if f.fail("stat") {
		return storage.ObjectInfo{}, f.err
	}
	return f.Backend.Stat(ctx, key)
}

func (f *flaky) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	failing := f.fail("list")
	n := 0
	return f.Backend.List(ctx, prefix, func(fi storage.ObjectInfo) error {
		if failing && n == 1 {
			return f.err
		}
		n++
		return fn(fi)
	})
}

type attempt struct {
	Op      string
	Attempt int
	Delay   time.Duration
}

func newRetry(be storage.Backend, reports *[]attempt) *retry.Backend {
	return retry.New(be, retry.Options{
		MaxAttempts: 4,
		Initial:     100 * time.Millisecond,
		Max:         250 * time.Millisecond,
		Rand:        func() float64 { return 1 },
		Sleep:       func(ctx context.Context, d time.Duration) error { return ctx.Err() },
		Report: func(op, key string, n int, err error, d time.Duration) {
			*reports = append(*reports, attempt{op, n, d})
		},
	})
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		var reports []attempt
		return newRetry(mem.New("m", mem.Options{}), &reports)
	})
}

func TestRetriesTransientWithBackoff(t *testing.T) {
	f := newFlaky(map[string]int{"stat": 3}, errTransient)
	if _, err := f.Backend.Save(t.Context(), "k", strings.NewReader("v"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	var reports []attempt
	var succeeded int
	be := retry.New(f, retry.Options{
		MaxAttempts: 4, Initial: 100 * time.Millisecond, Max: 250 * time.Millisecond,
		Rand:    func() float64 { return 1 },
		Sleep:   func(ctx context.Context, d time.Duration) error { return nil },
		Report:  func(op, key string, n int, err error, d time.Duration) { reports = append(reports, attempt{op, n, d}) },
		Success: func(op, key string, n int) { succeeded = n },
	})
	if _, err := be.Stat(t.Context(), "k"); err != nil {
		t.Fatalf("Stat() = %v, want success on the 4th attempt", err)
	}
	want := []attempt{{"stat", 1, 100 * time.Millisecond}, {"stat", 2, 200 * time.Millisecond}, {"stat", 3, 250 * time.Millisecond}}
	if diff := cmp.Diff(want, reports); diff != "" {
		t.Errorf("reports mismatch (-want +got):\n%s", diff)
	}
	if succeeded != 4 {
		t.Errorf("Success attempts = %d, want 4", succeeded)
	}
}

func TestGivesUp(t *testing.T) {
	f := newFlaky(map[string]int{"stat": 10}, errTransient)
	var reports []attempt
	_, err := newRetry(f, &reports).Stat(t.Context(), "k")
	if !errors.Is(err, errTransient) || f.calls["stat"] != 4 {
		t.Errorf("Stat() = %v after %d calls, want %v after 4", err, f.calls["stat"], errTransient)
	}
}

func TestNeverRetriesPermanent(t *testing.T) {
	for _, perm := range []error{storage.ErrLocked, storage.Permanent(errors.New("access denied")), context.Canceled} {
		f := newFlaky(map[string]int{"stat": 1}, perm)
		var reports []attempt
		_, err := newRetry(f, &reports).Stat(t.Context(), "k")
		if !errors.Is(err, perm) || f.calls["stat"] != 1 || len(reports) != 0 {
			t.Errorf("Stat() = %v after %d calls, want %v after 1", err, f.calls["stat"], perm)
		}
	}
}

func TestCtxCheckedBeforeEachAttempt(t *testing.T) {
	f := newFlaky(map[string]int{"stat": 10}, errTransient)
	ctx, cancel := context.WithCancel(t.Context())
	be := retry.New(f, retry.Options{
		Sleep: func(context.Context, time.Duration) error { cancel(); return nil },
	})
	_, err := be.Stat(ctx, "k")
	if !errors.Is(err, context.Canceled) || f.calls["stat"] != 1 {
		t.Errorf("Stat() = %v after %d calls, want context.Canceled after 1", err, f.calls["stat"])
	}
	if _, err := be.Stat(ctx, "k"); !errors.Is(err, context.Canceled) || f.calls["stat"] != 1 {
		t.Errorf("Stat(cancelled) = %v after %d calls, want context.Canceled and no call", err, f.calls["stat"])
	}
}

func TestRealSleepHonoursCtx(t *testing.T) {
	f := newFlaky(map[string]int{"stat": 10}, errTransient)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	be := retry.New(f, retry.Options{Initial: time.Hour, Rand: func() float64 { return 1 }})
	start := time.Now()
	_, err := be.Stat(ctx, "k")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Errorf("Stat() = %v after %v, want DeadlineExceeded promptly", err, time.Since(start))
	}
}

func TestSaveRewindsSeekableReader(t *testing.T) {
	f := newFlaky(map[string]int{"save": 2}, errTransient)
	var reports []attempt
	be := newRetry(f, &reports)
	r := strings.NewReader("prefix-ignored|payload")
	if _, err := r.Seek(15, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Save(t.Context(), "k", r, storage.SaveOptions{}); err != nil {
		t.Fatalf("Save() = %v", err)
	}
	rc, err := be.Open(t.Context(), "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got, _ := io.ReadAll(rc)
	if string(got) != "payload" || f.calls["save"] != 3 {
		t.Errorf("saved %q in %d calls, want %q in 3", got, f.calls["save"], "payload")
	}
}

func TestSaveDoesNotRetryPlainReader(t *testing.T) {
	f := newFlaky(map[string]int{"save": 1}, errTransient)
	var reports []attempt
	r := io.MultiReader(strings.NewReader("stream"))
	_, err := newRetry(f, &reports).Save(t.Context(), "k", r, storage.SaveOptions{})
	if !errors.Is(err, errTransient) || f.calls["save"] != 1 {
		t.Errorf("Save(plain reader) = %v after %d calls, want %v after 1", err, f.calls["save"], errTransient)
	}
}

func TestListResumesWithoutDuplicates(t *testing.T) {
	f := newFlaky(map[string]int{"list": 1}, errTransient)
	for _, k := range []string{"a", "b", "c"} {
		if _, err := f.Backend.Save(t.Context(), k, strings.NewReader(k), storage.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var reports []attempt
	var got []string
	err := newRetry(f, &reports).List(t.Context(), "", func(fi storage.ObjectInfo) error {
		got = append(got, fi.Key)
		return nil
	})
	if err != nil || len(reports) != 1 {
		t.Fatalf("List() = %v with %d retries, want nil with 1", err, len(reports))
	}
	if diff := cmp.Diff([]string{"a", "b", "c"}, got); diff != "" {
		t.Errorf("List() keys mismatch (-want +got):\n%s", diff)
	}
	// An error from fn is returned as is and never retried.
	stop := errors.New("stop")
	calls := 0
	err = newRetry(f, &reports).List(t.Context(), "", func(storage.ObjectInfo) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Errorf("List() = %v after %d calls, want exactly %v after 1", err, calls, stop)
	}
}

func TestUnwrap(t *testing.T) {
	inner := mem.New("m", mem.Options{})
	if got := retry.New(inner, retry.Options{}).Unwrap(); got != inner {
		t.Errorf("Unwrap() = %v, want the wrapped backend", got)
	}
}
