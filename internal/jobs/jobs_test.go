package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// recorder is an in-memory action.Recorder; with fail set it refuses to
// make anything durable, like an audit log on a full disk.
type recorder struct {
	mu      sync.Mutex
	records []action.Record
	fail    bool
	calls   int
}

func (r *recorder) Record(_ context.Context, rec action.Record) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	if r.fail {
		return 0, errors.New("disk full")
	}
	r.records = append(r.records, rec)
	return int64(len(r.records) - 1), nil
}

func (r *recorder) snapshot() []action.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]action.Record(nil), r.records...)
}

// harness is one backend under test.
type harness struct {
	t     *testing.T
	store state.Store
	dsn   string // PostgreSQL only
	rec   *recorder
}

// forEachBackend runs fn against SQLite and PostgreSQL.
func forEachBackend(t *testing.T, fn func(t *testing.T, h *harness)) {
	t.Run("sqlite", func(t *testing.T) {
		s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), sqlite.FileName), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		fn(t, &harness{t: t, store: s, rec: &recorder{}})
	})
	t.Run("postgres", func(t *testing.T) {
		h := &harness{t: t, dsn: pgtest.DSN(t), rec: &recorder{}}
		h.store = openPostgres(t, h.dsn)
		fn(t, h)
	})
}

func openPostgres(t *testing.T, dsn string) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// engine builds an engine on h.store with fast test settings; modify
// adjusts the options.
func (h *harness) engine(modify func(*Options)) *Engine {
	return h.engineOn(h.store, modify)
}

func (h *harness) engineOn(store state.Store, modify func(*Options)) *Engine {
	h.t.Helper()
	opts := Options{
		Logger:            testLogger(h.t),
		Dispatcher:        action.NewDispatcher(h.rec),
		Concurrency:       4,
		ShutdownGrace:     5 * time.Second,
		FetchPollInterval: 100 * time.Millisecond,
		FetchCooldown:     20 * time.Millisecond,
		testOnly:          true,
	}
	if modify != nil {
		modify(&opts)
	}
	e, err := New(h.t.Context(), store, opts)
	if err != nil {
		h.t.Fatalf("New(%s) = %v", store.Kind(), err)
	}
	return e
}

// start runs e until the test ends (or the returned stop is called) and
// waits until it is ready. stop returns Run's error.
func start(t *testing.T, e *Engine) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("Run did not return within 30s of cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	})
	waitFor(t, 10*time.Second, "engine ready", func() bool { return e.Ready() == nil })
	return stop
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func waitState(t *testing.T, e *Engine, id int64, want rivertype.JobState) JobInfo {
	t.Helper()
	var info JobInfo
	waitFor(t, 20*time.Second, fmt.Sprintf("job %d to be %s", id, want), func() bool {
		var err error
		info, err = e.Job(t.Context(), id)
		if err != nil {
			t.Fatalf("Job(%d) = %v", id, err)
		}
		return info.State == string(want)
	})
	return info
}

func outcomes(recs []action.Record, name string) []action.Outcome {
	var out []action.Outcome
	for _, r := range recs {
		if r.Action == name {
			out = append(out, r.Outcome)
		}
	}
	return out
}

func TestPing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		e := h.engine(nil)
		start(t, e)

		ci := action.Actor{Kind: action.ActorToken, Name: "ci"}
		before := time.Now().Add(-time.Second)
		info, err := e.Insert(action.WithActor(t.Context(), ci), PingArgs{Note: "hello"}, nil)
		if err != nil {
			t.Fatalf("Insert(ping) = %v", err)
		}
		if info.Kind != "ping" || info.Actor != ci || info.Duplicate {
			t.Errorf("Insert(ping) = %+v, want kind ping, actor %v, not duplicate", info, ci)
		}
		waitState(t, e, info.ID, rivertype.JobStateCompleted)

		v, ok, err := h.store.GetValue(t.Context(), PingKey)
		if err != nil || !ok {
			t.Fatalf("GetValue(%s) = %q, %v, %v", PingKey, v, ok, err)
		}
		f := strings.Fields(v)
		if len(f) != 3 || f[0] != strconv.FormatInt(info.ID, 10) || f[1] != "hello" {
			t.Fatalf("%s = %q, want \"%d hello <time>\"", PingKey, v, info.ID)
		}
		ts, err := time.Parse(time.RFC3339, f[2])
		if err != nil || ts.Before(before.Truncate(time.Second)) || ts.After(time.Now().Add(time.Second)) {
			t.Errorf("%s time = %q (%v), want an RFC 3339 time of about now", PingKey, f[2], err)
		}

		recs := h.rec.snapshot()
		if got, want := outcomes(recs, "job.ping"), []action.Outcome{action.Accepted, action.Succeeded}; !cmp.Equal(got, want) {
			t.Fatalf("recorded outcomes for job.ping = %v, want %v", got, want)
		}
		for _, r := range recs {
			if r.Actor != ci || r.Object != fmt.Sprintf("job/%d", info.ID) {
				t.Errorf("record %+v: want actor %v, object job/%d", r, ci, info.ID)
			}
		}
		if recs[1].AcceptedIndex != 0 {
			t.Errorf("succeeded record AcceptedIndex = %d, want 0", recs[1].AcceptedIndex)
		}
		if args, _ := recs[0].Params["args"].(map[string]any); args["note"] != "hello" {
			t.Errorf("accepted record params = %v, want args.note = hello", recs[0].Params)
		}
	})
}

func TestPeriodic(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		e := h.engine(func(o *Options) {
			o.Periodic = []Periodic{{
				Name: "ping-every-second",
				Spec: "@every 1s",
				Construct: func() (river.JobArgs, *river.InsertOpts) {
					return PingArgs{Note: "periodic"}, nil
				},
			}}
		})
		start(t, e)
		waitFor(t, 20*time.Second, "a periodic ping", func() bool {
			v, _, _ := h.store.GetValue(t.Context(), PingKey)
			return strings.Contains(v, " periodic ")
		})
		want := action.Actor{Kind: action.ActorScheduler, Name: "ping-every-second"}
		recs := h.rec.snapshot()
		if len(recs) == 0 || recs[0].Actor != want || recs[0].Action != "job.ping" {
			t.Errorf("first record = %+v, want job.ping by %v", recs, want)
		}
	})
}

// flakyArgs fails its first attempt.
type flakyArgs struct{}

func (flakyArgs) Kind() string { return "test_flaky" }

type flakyWorker struct {
	river.WorkerDefaults[flakyArgs]
	attempts atomic.Int32
}

func (w *flakyWorker) Work(_ context.Context, job *river.Job[flakyArgs]) error {
	if w.attempts.Add(1) == 1 {
		return errors.New("transient failure")
	}
	return nil
}

// immediateRetry retries at once so the test need not wait for River's backoff.
type immediateRetry struct{}

func (immediateRetry) NextRetry(*rivertype.JobRow) time.Time { return time.Now() }

func TestRetry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		w := &flakyWorker{}
		workers := river.NewWorkers()
		river.AddWorker(workers, w)
		e := h.engine(func(o *Options) { o.Workers = workers; o.retryPolicy = immediateRetry{} })
		start(t, e)

		info, err := e.Insert(t.Context(), flakyArgs{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := waitState(t, e, info.ID, rivertype.JobStateCompleted)
		if got.Attempt != 2 || w.attempts.Load() != 2 || !strings.Contains(got.LastError, "transient failure") {
			t.Errorf("job = %+v after %d attempts, want attempt 2 with the first error recorded", got, w.attempts.Load())
		}
		want := []action.Outcome{action.Accepted, action.Failed, action.Accepted, action.Succeeded}
		if got := outcomes(h.rec.snapshot(), "job.test_flaky"); !cmp.Equal(got, want) {
			t.Errorf("recorded outcomes = %v, want %v", got, want)
		}
	})
}

func TestUnique(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		e := h.engine(nil) // not started: inserts must dedupe on their own
		opts := &river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true}}
		first, err := e.Insert(t.Context(), PingArgs{Note: "once"}, opts)
		if err != nil {
			t.Fatal(err)
		}
		second, err := e.Insert(t.Context(), PingArgs{Note: "once"}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if first.Duplicate || !second.Duplicate || second.ID != first.ID {
			t.Errorf("Insert twice = %+v, %+v; want the second a duplicate of the first", first, second)
		}
		other, err := e.Insert(t.Context(), PingArgs{Note: "other"}, opts)
		if err != nil || other.Duplicate || other.ID == first.ID {
			t.Errorf("Insert(other args) = %+v, %v; want a new job", other, err)
		}
		if opts.Metadata != nil {
			t.Errorf("Insert modified the caller's InsertOpts")
		}
	})
}

// slowArgs runs until released or cancelled.
type slowArgs struct{}

func (slowArgs) Kind() string { return "test_slow" }

type slowWorker struct {
	river.WorkerDefaults[slowArgs]
	started  chan struct{}
	duration time.Duration
	finished atomic.Bool
}

func (w *slowWorker) Work(ctx context.Context, job *river.Job[slowArgs]) error {
	close(w.started)
	select {
	case <-time.After(w.duration):
		w.finished.Store(true)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestGracefulStop(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		w := &slowWorker{started: make(chan struct{}), duration: 700 * time.Millisecond}
		workers := river.NewWorkers()
		river.AddWorker(workers, w)
		e := h.engine(func(o *Options) { o.Workers = workers })
		stop := start(t, e)

		info, err := e.Insert(t.Context(), slowArgs{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.started:
		case <-time.After(20 * time.Second):
			t.Fatal("slow job did not start")
		}
		if err := stop(); err != nil {
			t.Fatalf("Run() = %v, want nil", err)
		}
		if !w.finished.Load() {
			t.Error("Run returned before the running job finished")
		}
		if err := e.Ready(); err == nil {
			t.Error("Ready() = nil after stop, want an error")
		}
		got, err := e.Job(t.Context(), info.ID)
		if err != nil || got.State != string(rivertype.JobStateCompleted) {
			t.Errorf("job after graceful stop = %+v, %v, want completed", got, err)
		}
		if got := outcomes(h.rec.snapshot(), "job.test_slow"); !cmp.Equal(got, []action.Outcome{action.Accepted, action.Succeeded}) {
			t.Errorf("recorded outcomes = %v, want accepted, succeeded", got)
		}
	})
}

func TestHardStopAfterGrace(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		w := &slowWorker{started: make(chan struct{}), duration: time.Hour}
		workers := river.NewWorkers()
		river.AddWorker(workers, w)
		e := h.engine(func(o *Options) { o.Workers = workers; o.ShutdownGrace = 200 * time.Millisecond })
		stop := start(t, e)
		if _, err := e.Insert(t.Context(), slowArgs{}, nil); err != nil {
			t.Fatal(err)
		}
		<-w.started
		began := time.Now()
		if err := stop(); err != nil {
			t.Fatalf("Run() = %v, want nil", err)
		}
		if d := time.Since(began); d > 5*time.Second {
			t.Errorf("Run took %v to return after cancel, want about the 200ms grace", d)
		}
		if w.finished.Load() {
			t.Error("job finished; want it cancelled")
		}
		if got := outcomes(h.rec.snapshot(), "job.test_slow"); !cmp.Equal(got, []action.Outcome{action.Accepted, action.Failed}) {
			t.Errorf("recorded outcomes = %v, want accepted, failed", got)
		}
	})
}

func TestAuditUnavailableCancelsJob(t *testing.T) {
	forEachBackend(t, func(t *testing.T, h *harness) {
		h.rec.fail = true
		e := h.engine(nil)
		start(t, e)
		info, err := e.Insert(t.Context(), PingArgs{Note: "refused"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := waitState(t, e, info.ID, rivertype.JobStateCancelled)
		if !strings.Contains(got.LastError, "audit log unavailable") {
			t.Errorf("cancelled job error = %q, want it to name the audit log", got.LastError)
		}
		if got.Attempt != 1 {
			t.Errorf("job attempts = %d, want 1 (no retries)", got.Attempt)
		}
		if v, ok, _ := h.store.GetValue(t.Context(), PingKey); ok {
			t.Errorf("refused ping ran anyway: %s = %q", PingKey, v)
		}
	})
}

// countArgs is a job that records which engine ran it.
type countArgs struct {
	N int `json:"n"`
}

func (countArgs) Kind() string { return "test_count" }

type countWorker struct {
	river.WorkerDefaults[countArgs]
	engine string
	mu     *sync.Mutex
	runs   map[int][]string
}

func (w *countWorker) Work(ctx context.Context, job *river.Job[countArgs]) error {
	w.mu.Lock()
	w.runs[job.Args.N] = append(w.runs[job.Args.N], w.engine)
	w.mu.Unlock()
	select {
	case <-time.After(50 * time.Millisecond):
	case <-ctx.Done():
	}
	return nil
}

// TestSharedWorkPostgres runs two replicas on one database: every job runs
// exactly once, and both replicas take part.
func TestSharedWorkPostgres(t *testing.T) {
	h := &harness{t: t, dsn: pgtest.DSN(t), rec: &recorder{}}
	h.store = openPostgres(t, h.dsn)
	var mu sync.Mutex
	runs := map[int][]string{}
	var engines []*Engine
	for i, name := range []string{"replica-a", "replica-b"} {
		store := h.store
		if i > 0 {
			store = openPostgres(t, h.dsn) // a second process has its own pool
		}
		workers := river.NewWorkers()
		river.AddWorker(workers, &countWorker{engine: name, mu: &mu, runs: runs})
		e := h.engineOn(store, func(o *Options) { o.Workers = workers; o.ID = name; o.Concurrency = 2 })
		start(t, e)
		engines = append(engines, e)
	}
	const n = 30
	var ids []int64
	for i := range n {
		info, err := engines[i%2].Insert(t.Context(), countArgs{N: i}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	for _, id := range ids {
		waitState(t, engines[0], id, rivertype.JobStateCompleted)
	}
	mu.Lock()
	defer mu.Unlock()
	per := map[string]int{}
	for i := range n {
		if len(runs[i]) != 1 {
			t.Errorf("job %d ran %d times (%v), want exactly once", i, len(runs[i]), runs[i])
		}
		for _, e := range runs[i] {
			per[e]++
		}
	}
	if per["replica-a"] == 0 || per["replica-b"] == 0 {
		t.Errorf("runs per replica = %v, want both replicas to work", per)
	}
}

func TestReplacePeriodic(t *testing.T) {
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), sqlite.FileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	e, err := New(t.Context(), s, Options{Dispatcher: action.NewDispatcher(nil)})
	if err != nil {
		t.Fatal(err)
	}
	ping := func() (river.JobArgs, *river.InsertOpts) { return PingArgs{}, nil }
	if err := e.AddPeriodic("p-a", "@hourly", ping); err != nil {
		t.Fatal(err)
	}
	if err := e.AddPeriodic("p-a", "@daily", ping); err == nil {
		t.Error("AddPeriodic(duplicate name) succeeded, want error")
	}
	if err := e.ReplacePeriodic([]Periodic{{Name: "p-b", Spec: "@daily", Construct: ping}, {Name: "p-c", Spec: "nope", Construct: ping}}); err == nil {
		t.Error("ReplacePeriodic(with a bad spec) succeeded, want error")
	}
	if !e.RemovePeriodic("p-a") {
		t.Error(`RemovePeriodic("p-a") = false after a failed ReplacePeriodic, want true (nothing changed)`)
	}
	if err := e.ReplacePeriodic([]Periodic{{Name: "p-b", Spec: "@daily", Construct: ping}}); err != nil {
		t.Fatalf("ReplacePeriodic = %v", err)
	}
	if !e.RemovePeriodic("p-b") || e.RemovePeriodic("p-a") {
		t.Error("after ReplacePeriodic([b]), want b registered and a gone")
	}
}

func TestNewValidates(t *testing.T) {
	s, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), sqlite.FileName), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name string
		opts Options
	}{
		{"no dispatcher", Options{}},
		{"rescue below timeout", Options{Dispatcher: action.NewDispatcher(nil), JobTimeout: time.Hour, RescueStuckJobsAfter: time.Minute}},
		{"bad periodic name", Options{Dispatcher: action.NewDispatcher(nil), Periodic: []Periodic{{Name: "x", Spec: "@daily",
			Construct: func() (river.JobArgs, *river.InsertOpts) { return PingArgs{}, nil }}}}},
		{"bad periodic spec", Options{Dispatcher: action.NewDispatcher(nil), Periodic: []Periodic{{Name: "pp", Spec: "every day",
			Construct: func() (river.JobArgs, *river.InsertOpts) { return PingArgs{}, nil }}}}},
	}
	for _, tt := range tests {
		if _, err := New(t.Context(), s, tt.opts); err == nil {
			t.Errorf("New(%s) succeeded, want error", tt.name)
		}
	}
}

func TestParseSchedule(t *testing.T) {
	from := time.Date(2026, 3, 2, 10, 30, 0, 0, time.UTC) // a Monday
	tests := []struct {
		spec    string
		want    time.Time
		wantErr bool
	}{
		{spec: "0 4 * * 0", want: time.Date(2026, 3, 8, 4, 0, 0, 0, time.UTC)},
		{spec: "@hourly", want: time.Date(2026, 3, 2, 11, 0, 0, 0, time.UTC)},
		{spec: "@every 15m", want: from.Add(15 * time.Minute)},
		{spec: "CRON_TZ=Europe/Paris 0 12 * * *", want: time.Date(2026, 3, 2, 11, 0, 0, 0, time.UTC)},
		{spec: "0 0 4 * * *", wantErr: true}, // seconds field is not part of the config syntax
		{spec: "every day", wantErr: true},
		{spec: "CRON_TZ=Europe/Paris", wantErr: true}, // robfig/cron would panic
		{spec: "0 0 30 2 *", wantErr: true},           // never fires
	}
	for _, tt := range tests {
		s, err := ParseSchedule(tt.spec)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseSchedule(%q) error = %v, wantErr %v", tt.spec, err, tt.wantErr)
			continue
		}
		if err == nil {
			if got := s.Next(from).UTC(); !got.Equal(tt.want) {
				t.Errorf("ParseSchedule(%q).Next(%v) = %v, want %v", tt.spec, from, got, tt.want)
			}
		}
	}
}
