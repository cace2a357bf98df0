package dr_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	operator = dr.Actor{Name: "ci", Role: dr.RoleOperator}
	admin    = dr.Actor{Name: "root", Role: dr.RoleAdmin}
	viewer   = dr.Actor{Name: "grafana", Role: dr.RoleViewer}
)

func openSQLite(t testing.TB) state.Runs {
	t.Helper()
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), sqlite.FileName), nil)
	if err != nil {
		t.Fatalf("sqlite.Open = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func openPostgres(t testing.TB) state.Runs {
	t.Helper()
	return openPostgresDSN(t, pgtest.DSN(t))
}

// openPostgresDSN opens the state store on one database, closed at cleanup.
func openPostgresDSN(t testing.TB, dsn string) state.Runs {
	t.Helper()
	s, err := postgres.Open(context.Background(), dsn, nil)
	if err != nil {
		t.Fatalf("postgres.Open = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

var stores = []struct {
	name string
	open func(testing.TB) state.Runs
}{{"sqlite", openSQLite}, {"postgres", openPostgres}}

func parse(t testing.TB, src string) *runbook.Runbook {
	t.Helper()
	rb, err := runbook.Parse("test.yaml", []byte(src), nil)
	if err != nil {
		t.Fatalf("runbook.Parse = %v", err)
	}
	return rb
}

// harness is an engine on a store, with test actions registered.
type harness struct {
	t       testing.TB
	store   state.Runs
	reg     *dr.Registry
	books   map[string]*runbook.Runbook
	sealer  dr.Sealer
	metrics *dr.Metrics
	hooks   dr.Hooks
	logs    *syncBuffer
	logger  *slog.Logger
	e       *dr.Engine
	stop    context.CancelFunc
	done    chan error
}

func newHarness(t testing.TB, store state.Runs) *harness {
	t.Helper()
	key := make([]byte, 32)
	sealer, err := dr.NewAESGCMSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := dr.NewRegistry()
	dr.RegisterBuiltins(reg, dr.Builtins{ExecDir: t.TempDir(), Logger: logger})
	h := &harness{t: t, store: store, reg: reg, books: map[string]*runbook.Runbook{}, sealer: sealer,
		logs: logs, logger: logger}
	return h
}

func (h *harness) start(rbs ...*runbook.Runbook) *dr.Engine {
	h.t.Helper()
	for _, rb := range rbs {
		h.books[rb.Name] = rb
	}
	e, err := dr.New(dr.Config{Store: h.store, Actions: h.reg, Sealer: h.sealer, Metrics: h.metrics, Logger: h.logger,
		Hooks: h.hooks, Lookup: func(name string) (*runbook.Runbook, bool) { rb, ok := h.books[name]; return rb, ok }})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	for !e.Ready() {
		time.Sleep(time.Millisecond)
	}
	h.e, h.stop, h.done = e, cancel, done
	h.t.Cleanup(h.shutdown)
	return e
}

// shutdown stops the engine as a kill would: nothing more is journaled.
func (h *harness) shutdown() {
	if h.stop == nil {
		return
	}
	h.stop()
	<-h.done
	h.stop = nil
}

func (h *harness) run(rb *runbook.Runbook, params map[string]any, mode string, actor dr.Actor) *dr.RunView {
	h.t.Helper()
	id, err := h.e.Start(context.Background(), rb, params, mode, false, actor)
	if err != nil {
		h.t.Fatalf("Start = %v", err)
	}
	return h.wait(id)
}

func (h *harness) wait(id string) *dr.RunView {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := h.e.Wait(ctx, id)
	if err != nil {
		h.t.Fatalf("Wait(%s) = %v", id, err)
	}
	return v
}

// waitState polls until run id is in state want.
func (h *harness) waitState(id, want string) *dr.RunView {
	h.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := h.e.Get(context.Background(), id)
		if err == nil && v.State == want {
			return v
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("run %s: state %v (err %v), want %s", id, v, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func stepStates(v *dr.RunView) map[string]string {
	out := map[string]string{}
	for _, s := range v.Steps {
		out[s.ID] = s.State
		if s.Compensation != nil {
			out[s.ID+"/compensate"] = s.Compensation.State
		}
	}
	return out
}

func noopRunbook(name string, n, concurrency int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: %s\nconcurrency: %d\nsteps:\n", name, concurrency)
	for i := range n {
		fmt.Fprintf(&b, "  - {id: s%02d, uses: assert, with: {that: \"${{ true }}\"}}\n", i)
	}
	return b.String()
}

func TestNoop20Steps(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			h := newHarness(t, st.open(t))
			rb := parse(t, noopRunbook("noop", 20, 1))
			h.start(rb)
			v := h.run(rb, nil, "", operator)
			if v.State != state.RunSucceeded || len(v.Steps) != 20 {
				t.Fatalf("run = %s with %d steps (%s), want succeeded with 20", v.State, len(v.Steps), v.Error)
			}
			for _, s := range v.Steps {
				if s.State != state.StepSucceeded || len(s.Attempts) != 1 {
					t.Errorf("step %s = %s after %d attempts, want succeeded after 1", s.ID, s.State, len(s.Attempts))
				}
			}
			evs, err := h.e.Events(context.Background(), v.ID, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			// start, 2 per step, phase, end.
			if len(evs) != 1+2*20+2 {
				t.Errorf("%d events, want %d", len(evs), 1+2*20+2)
			}
			for i, ev := range evs {
				if ev.Seq != int64(i+1) {
					t.Fatalf("event %d has seq %d", i, ev.Seq)
				}
			}
			// Replay after Last-Event-ID.
			tail, _ := h.e.Events(context.Background(), v.ID, evs[len(evs)-3].Seq, 0)
			if len(tail) != 2 || tail[1].State != state.RunSucceeded {
				t.Errorf("Events(after %d) = %+v, want the last two", evs[len(evs)-3].Seq, tail)
			}
		})
	}
}

// flaky fails its first n calls per step.
type flaky struct {
	mu    sync.Mutex
	fails int
	calls map[string]int
}

func (f *flaky) Run(_ context.Context, sc *dr.StepContext) (map[string]any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.calls == nil {
		f.calls = map[string]int{}
	}
	f.calls[sc.StepID]++
	if f.calls[sc.StepID] <= f.fails {
		return nil, fmt.Errorf("flaky failure %d", f.calls[sc.StepID])
	}
	return map[string]any{"calls": f.calls[sc.StepID]}, nil
}

func TestRetry(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	h.reg.Register("plugin:flaky", &flaky{fails: 2})
	rb := parse(t, `name: retry
steps:
  - id: enough
    uses: plugin:flaky
    retry: {max_attempts: 3, backoff: {initial: 1ms, factor: 2, max: 5ms}}
  - id: later
    uses: assert
    with: {that: "${{ steps.enough.outputs.calls == 3 }}"}
  - id: too-few
    uses: plugin:flaky
    retry: {max_attempts: 2, backoff: {initial: 1ms}}
`)
	h.start(rb)
	v := h.run(rb, nil, "", operator)
	want := map[string]string{"enough": "succeeded", "later": "succeeded", "too-few": "failed"}
	if got := stepStates(v); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("steps = %v, want %v", got, want)
	}
	if v.State != state.RunFailed || !strings.Contains(v.Error, "flaky failure 2") {
		t.Errorf("run = %s %q, want failed naming the last error", v.State, v.Error)
	}
	if n := len(v.Steps[0].Attempts); n != 3 || v.Steps[0].Attempts[0].Error != "flaky failure 1" {
		t.Errorf("enough: %d attempts %+v, want 3, the first failed", n, v.Steps[0].Attempts)
	}
}

func TestTimeout(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	rb := parse(t, `name: timeout
steps:
  - id: slow
    uses: wait
    with: {duration: 1h}
    timeout: 50ms
    retry: {max_attempts: 2, backoff: {initial: 1ms}}
`)
	h.start(rb)
	start := time.Now()
	v := h.run(rb, nil, "", operator)
	if v.State != state.RunFailed || !strings.Contains(v.Steps[0].Error, "timed out after 50ms") {
		t.Errorf("run = %s, step error %q, want failed, timed out", v.State, v.Steps[0].Error)
	}
	if len(v.Steps[0].Attempts) != 2 || time.Since(start) > 10*time.Second {
		t.Errorf("%d attempts in %s, want 2 quickly", len(v.Steps[0].Attempts), time.Since(start))
	}
}

func TestIfAndLiveOnly(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	rb := parse(t, `name: conditions
params:
  go: {type: bool, default: false}
steps:
  - id: guarded
    uses: assert
    if: ${{ params.go }}
    with: {that: "${{ true }}"}
  - id: live
    uses: assert
    live_only: true
    with: {that: "${{ mode == 'live' }}"}
  - id: after
    uses: assert
    with: {that: "${{ steps.guarded.state == 'skipped' || params.go }}"}
`)
	h.start(rb)
	v := h.run(rb, nil, runbook.ModeDrill, operator)
	want := map[string]string{"guarded": "skipped", "live": "skipped", "after": "succeeded"}
	if got := stepStates(v); fmt.Sprint(got) != fmt.Sprint(want) || v.State != state.RunSucceeded {
		t.Errorf("drill: %s steps = %v, want succeeded %v", v.State, got, want)
	}
	if _, err := h.e.Start(context.Background(), rb, nil, runbook.ModeLive, false, operator); !errors.Is(err, dr.ErrForbidden) {
		t.Errorf("Start(live, operator) = %v, want ErrForbidden", err)
	}
	v = h.run(rb, map[string]any{"go": true}, runbook.ModeLive, admin)
	want = map[string]string{"guarded": "succeeded", "live": "succeeded", "after": "succeeded"}
	if got := stepStates(v); fmt.Sprint(got) != fmt.Sprint(want) || v.State != state.RunSucceeded {
		t.Errorf("live: %s steps = %v, want succeeded %v", v.State, got, want)
	}
}

// recorder records the order of calls.
type recorder struct {
	mu    sync.Mutex
	calls []string
}

func (r *recorder) Run(_ context.Context, sc *dr.StepContext) (map[string]any, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, sc.StepID+"/"+sc.Phase+"/"+sc.String("what"))
	if sc.String("fail") == "yes" {
		return nil, errors.New("told to fail")
	}
	return map[string]any{"what": sc.String("what")}, nil
}

const compensateBook = `name: compensate
steps:
  - id: a
    uses: plugin:rec
    with: {what: do-a}
    compensate: {uses: plugin:rec, with: {what: "undo-${{ steps.a.outputs.what }}"}}
  - id: b
    uses: plugin:rec
    with: {what: do-b}
    compensate: {uses: plugin:rec, with: {what: undo-b}}
  - id: skipped
    uses: plugin:rec
    live_only: true
    compensate: {uses: plugin:rec, with: {what: undo-skipped}}
  - id: c
    uses: plugin:rec
    with: {what: do-c, fail: "${{ params.fail }}"}
  - id: d
    uses: plugin:rec
    with: {what: do-d}
  - id: f
    uses: plugin:rec
    finally: true
    with: {what: "finally-${{ run.failed }}"}
params:
  fail: {default: "yes"}
`

func TestCompensateAndFinally(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	rec := &recorder{}
	h.reg.Register("plugin:rec", rec)
	rb := parse(t, compensateBook)
	h.start(rb)
	v := h.run(rb, nil, "", operator)
	wantCalls := "a/main/do-a b/main/do-b c/main/do-c b/compensate/undo-b a/compensate/undo-do-a f/main/finally-true"
	if got := strings.Join(rec.calls, " "); got != wantCalls {
		t.Errorf("calls = %s\nwant    %s", got, wantCalls)
	}
	want := map[string]string{"a": "compensated", "a/compensate": "succeeded", "b": "compensated",
		"b/compensate": "succeeded", "skipped": "skipped", "c": "failed", "d": "pending", "f": "succeeded"}
	if got := stepStates(v); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("steps = %v\nwant %v", got, want)
	}
	if v.State != state.RunFailed {
		t.Errorf("run = %s, want failed", v.State)
	}
	// Success: no compensation, finally sees run.failed false.
	rec.calls = nil
	v = h.run(rb, map[string]any{"fail": "no"}, "", operator)
	if got := strings.Join(rec.calls, " "); v.State != state.RunSucceeded || !strings.HasSuffix(got, "f/main/finally-false") || strings.Contains(got, "undo") {
		t.Errorf("successful run %s: calls = %s", v.State, got)
	}
}

// blocker blocks until released or its context ends.
type blocker struct {
	calls   atomic.Int32
	started chan string
	release chan struct{}
}

func newBlocker() *blocker {
	return &blocker{started: make(chan string, 10), release: make(chan struct{})}
}

func (b *blocker) Run(ctx context.Context, sc *dr.StepContext) (map[string]any, error) {
	b.calls.Add(1)
	b.started <- sc.StepID
	select {
	case <-b.release:
		return map[string]any{"ok": true}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func TestCancel(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	rec := &recorder{}
	blk := newBlocker()
	h.reg.Register("plugin:rec", rec)
	h.reg.Register("plugin:block", blk)
	rb := parse(t, `name: cancel
steps:
  - id: a
    uses: plugin:rec
    with: {what: do-a}
    compensate: {uses: plugin:rec, with: {what: undo-a}}
  - id: hang
    uses: plugin:block
  - id: f
    uses: plugin:rec
    finally: true
    with: {what: fin}
`)
	h.start(rb)
	id, err := h.e.Start(context.Background(), rb, nil, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	<-blk.started
	if err := h.e.Cancel(context.Background(), id, viewer, ""); !errors.Is(err, dr.ErrForbidden) {
		t.Errorf("Cancel(viewer) = %v, want ErrForbidden", err)
	}
	if err := h.e.Cancel(context.Background(), id, operator, "drill aborted"); err != nil {
		t.Fatalf("Cancel = %v", err)
	}
	v := h.wait(id)
	want := map[string]string{"a": "compensated", "a/compensate": "succeeded", "hang": "failed", "f": "succeeded"}
	if got := stepStates(v); v.State != state.RunCancelled || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("run %s steps = %v, want cancelled %v", v.State, got, want)
	}
	if v.Cancelled == nil || v.Cancelled.Actor != "ci" || v.Cancelled.Comment != "drill aborted" {
		t.Errorf("Cancelled = %+v", v.Cancelled)
	}
	if got := strings.Join(rec.calls, " "); got != "a/main/do-a a/compensate/undo-a f/main/fin" {
		t.Errorf("calls = %s", got)
	}
}

func TestConcurrencyLimit(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	blk := newBlocker()
	h.reg.Register("plugin:block", blk)
	rb := parse(t, "name: one\nsteps:\n  - {id: hang, uses: plugin:block}\n")
	two := parse(t, "name: two\nconcurrency: 2\nsteps:\n  - {id: hang, uses: plugin:block}\n")
	h.start(rb, two)
	id, err := h.e.Start(context.Background(), rb, nil, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.e.Start(context.Background(), rb, nil, "", false, operator); !errors.Is(err, dr.ErrBusy) {
		t.Errorf("second Start = %v, want ErrBusy", err)
	}
	var ids []string
	for range 2 {
		id2, err := h.e.Start(context.Background(), two, nil, "", false, operator)
		if err != nil {
			t.Fatalf("Start(concurrency 2) = %v", err)
		}
		ids = append(ids, id2)
	}
	if _, err := h.e.Start(context.Background(), two, nil, "", false, operator); !errors.Is(err, dr.ErrBusy) {
		t.Errorf("third Start(concurrency 2) = %v, want ErrBusy", err)
	}
	if _, err := h.e.Start(context.Background(), rb, nil, "", false, viewer); !errors.Is(err, dr.ErrForbidden) {
		t.Errorf("Start(viewer) = %v, want ErrForbidden", err)
	}
	close(blk.release)
	for _, id := range append(ids, id) {
		if v := h.wait(id); v.State != state.RunSucceeded {
			t.Errorf("run %s = %s", id, v.State)
		}
	}
	if _, err := h.e.Start(context.Background(), rb, nil, "", false, operator); err != nil {
		t.Errorf("Start after the run ended = %v", err)
	}
}

func TestDryRun(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	rec := &recorder{}
	h.reg.Register("plugin:rec", rec)
	rb := parse(t, compensateBook)
	h.start(rb)
	id, err := h.e.Start(context.Background(), rb, map[string]any{"fail": "no"}, "", true, operator)
	if err != nil {
		t.Fatal(err)
	}
	v, err := h.e.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if !v.DryRun || v.State != state.RunSucceeded || len(rec.calls) != 0 {
		t.Fatalf("dry run = %+v, calls %v", v, rec.calls)
	}
	if p := v.Steps[2].Plan; p == nil || *p.WouldRun || p.DryRunComment == "" {
		t.Errorf("live_only step plan = %+v, want would_run false with a comment", p)
	}
	if p := v.Steps[3].Plan; p == nil || p.With["fail"] != "no" {
		t.Errorf("step c plan = %+v, want with.fail rendered", p)
	}
}

func TestOutputsBetweenSteps(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	rb := parse(t, `name: outputs
params:
  greeting: {default: hello}
steps:
  - id: say
    uses: exec
    with: {argv: [sh, -c, 'printf "%s world" "$OPSD_PARAM_GREETING"']}
  - id: check
    uses: assert
    with: {that: "${{ steps.say.outputs.stdout == 'hello world' && steps.say.outputs.exit_code == 0 }}", message: unexpected output}
  - id: fails
    uses: exec
    with: {argv: [sh, -c, 'echo oops >&2; exit 3']}
`)
	h.start(rb)
	v := h.run(rb, nil, "", operator)
	if got := stepStates(v); got["say"] != "succeeded" || got["check"] != "succeeded" || got["fails"] != "failed" {
		t.Errorf("steps = %v (%s)", got, v.Error)
	}
	f := v.Steps[2]
	if f.Outputs["exit_code"] != 3 || f.Outputs["stderr"] != "oops\n" || !strings.Contains(f.Error, "exit status 3") {
		t.Errorf("failed exec: outputs %v, error %q", f.Outputs, f.Error)
	}
}

// flakyStore fails the next n step writes as an unreachable database would.
type flakyStore struct {
	state.Runs
	fail atomic.Int32
}

func (f *flakyStore) PutStepState(ctx context.Context, s state.StepState, events ...state.RunEvent) (int64, error) {
	if f.fail.Add(-1) >= 0 {
		return 0, errors.New("connection refused")
	}
	return f.Runs.PutStepState(ctx, s, events...)
}

func TestJournalRetry(t *testing.T) {
	store := &flakyStore{Runs: openSQLite(t)}
	h := newHarness(t, store)
	rb := parse(t, noopRunbook("flaky-journal", 3, 1))
	h.start(rb)
	store.fail.Store(3)
	v := h.run(rb, nil, "", operator)
	if v.State != state.RunSucceeded || store.fail.Load() >= 0 {
		t.Errorf("run = %s (%s) with %d failures left, want succeeded after retrying the journal", v.State, v.Error, store.fail.Load())
	}
	if !strings.Contains(h.logs.String(), "journal write failed; retrying") {
		t.Errorf("retries were not logged")
	}
}
