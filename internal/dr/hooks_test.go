package dr_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/state"
)

// hookLog records the hook calls.
type hookLog struct {
	mu     sync.Mutex
	starts []dr.RunInfo
	ends   []dr.RunInfo
}

func (l *hookLog) hooks() dr.Hooks {
	return dr.Hooks{
		OnRunStart: func(_ context.Context, r dr.RunInfo) { l.mu.Lock(); l.starts = append(l.starts, r); l.mu.Unlock() },
		OnRunEnd:   func(_ context.Context, r dr.RunInfo) { l.mu.Lock(); l.ends = append(l.ends, r); l.mu.Unlock() },
	}
}

func (l *hookLog) get() (starts, ends []dr.RunInfo) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]dr.RunInfo(nil), l.starts...), append([]dr.RunInfo(nil), l.ends...)
}

// hookBook touches sources literally, through a parameter, in a
// compensation and through a step's output (not knowable at start).
const hookBook = `name: hooked
params:
  src: {type: string, default: billing}
  fail: {type: bool, default: false}
steps:
  - id: b1
    uses: backup.run
    with: {source: orders}
    compensate: {uses: backup.verify, with: {source: files}}
  - id: b2
    uses: backup.run
    with: {source: "${{ params.src }}"}
  - id: b3
    uses: backup.verify
    with: {source: "${{ steps.b1.outputs.backup_id }}"}
  - id: again
    uses: backup.run
    with: {source: orders}
  - id: boom
    uses: assert
    if: ${{ params.fail }}
    with: {that: "${{ false }}", message: told to fail}
`

func backupStub(_ context.Context, sc *dr.StepContext) (map[string]any, error) {
	return map[string]any{dr.BackupIDOutput: "x-" + sc.String("source")}, nil
}

var infoCmp = cmpopts.IgnoreFields(dr.RunInfo{}, "StartedAt", "FinishedAt", "Error")

func TestHooks(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	var log hookLog
	h.hooks = log.hooks()
	for _, a := range []string{"backup.run", "backup.verify"} {
		h.reg.Register(a, dr.ActionFunc(backupStub))
	}
	rb := parse(t, hookBook)
	h.start(rb)

	ok := h.run(rb, map[string]any{"src": "payments"}, "", operator)
	bad := h.run(rb, map[string]any{"fail": true}, "", operator)
	if ok.State != state.RunSucceeded || bad.State != state.RunFailed {
		t.Fatalf("runs ended %s and %s, want succeeded and failed", ok.State, bad.State)
	}
	// A dry run executes nothing: no hooks.
	if _, err := h.e.Start(context.Background(), rb, nil, "", true, operator); err != nil {
		t.Fatal(err)
	}
	actor := operator.String()
	starts, ends := log.get()
	wantStarts := []dr.RunInfo{
		{ID: ok.ID, Runbook: "hooked", Mode: "drill", Sources: []string{"files", "orders", "payments"}, Actor: actor},
		{ID: bad.ID, Runbook: "hooked", Mode: "drill", Sources: []string{"billing", "files", "orders"}, Actor: actor},
	}
	if diff := cmp.Diff(wantStarts, starts, infoCmp); diff != "" {
		t.Errorf("OnRunStart calls (-want +got):\n%s", diff)
	}
	wantEnds := []dr.RunInfo{
		{ID: ok.ID, Runbook: "hooked", Mode: "drill", Sources: []string{"files", "orders", "payments"}, Actor: actor, State: state.RunSucceeded},
		{ID: bad.ID, Runbook: "hooked", Mode: "drill", Sources: []string{"billing", "files", "orders"}, Actor: actor, State: state.RunFailed},
	}
	if diff := cmp.Diff(wantEnds, ends, infoCmp); diff != "" {
		t.Errorf("OnRunEnd calls (-want +got):\n%s", diff)
	}
	for _, e := range ends {
		if e.FinishedAt.IsZero() || e.StartedAt.IsZero() || e.FinishedAt.Before(e.StartedAt) {
			t.Errorf("run %s: started %v, finished %v", e.ID, e.StartedAt, e.FinishedAt)
		}
	}
	if ends[1].Error == "" {
		t.Errorf("OnRunEnd of the failed run carries no error")
	}
}

// TestHooksResume: a run the engine stops in is not ended (no OnRunEnd);
// the engine that resumes it calls OnRunStart again, marked resumed, then
// OnRunEnd once. A run that cannot resume (its runbook changed) gets an
// OnRunEnd only.
func TestHooksResume(t *testing.T) {
	store := openSQLite(t)
	rb := parse(t, crashBookWith(true))

	h1 := newHarness(t, store)
	var log1 hookLog
	h1.hooks = log1.hooks()
	blk1 := newBlocker()
	h1.reg.Register("plugin:rec", &recorder{})
	h1.reg.Register("plugin:block", blk1)
	h1.start(rb)
	id, err := h1.e.Start(context.Background(), rb, nil, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	// A second run, to be resumed with a changed runbook.
	other := parse(t, strings.Replace(crashBookWith(true), "name: crash", "name: crash2", 1))
	h1.books[other.Name] = other
	id2, err := h1.e.Start(context.Background(), other, nil, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	<-blk1.started
	<-blk1.started
	h1.shutdown()
	starts, ends := log1.get()
	if len(starts) != 2 || len(ends) != 0 {
		t.Fatalf("before the restart: %d OnRunStart, %d OnRunEnd; want 2 and 0", len(starts), len(ends))
	}

	h2 := newHarness(t, store)
	var log2 hookLog
	h2.hooks = log2.hooks()
	blk2 := newBlocker()
	close(blk2.release)
	h2.reg.Register("plugin:rec", &recorder{})
	h2.reg.Register("plugin:block", blk2)
	changed := parse(t, strings.Replace(crashBookWith(true), "name: crash", "name: crash2\ndescription: changed", 1))
	h2.books[changed.Name] = changed
	h2.start(rb)
	if v := h2.wait(id); v.State != state.RunSucceeded {
		t.Fatalf("resumed run = %s, want succeeded", v.State)
	}
	h2.waitState(id2, state.RunFailed)
	starts, ends = log2.get()
	actor := operator.String()
	if diff := cmp.Diff([]dr.RunInfo{{ID: id, Runbook: "crash", Mode: "drill", Actor: actor, Resumed: true}}, starts, infoCmp); diff != "" {
		t.Errorf("OnRunStart after the restart (-want +got):\n%s", diff)
	}
	want := map[string]dr.RunInfo{
		id:  {ID: id, Runbook: "crash", Mode: "drill", Actor: actor, Resumed: true, State: state.RunSucceeded},
		id2: {ID: id2, Runbook: "crash2", Mode: "drill", Actor: actor, Resumed: true, State: state.RunFailed},
	}
	got := map[string]dr.RunInfo{}
	for _, e := range ends {
		if _, dup := got[e.ID]; dup {
			t.Errorf("OnRunEnd called twice for %s", e.ID)
		}
		got[e.ID] = e
	}
	if diff := cmp.Diff(want, got, infoCmp); diff != "" {
		t.Errorf("OnRunEnd after the restart (-want +got):\n%s", diff)
	}
	if !strings.Contains(got[id2].Error, "changed") {
		t.Errorf("OnRunEnd of the run that cannot resume: error %q, want the runbook changed", got[id2].Error)
	}
}

// TestHookPanic: a panicking hook is logged; the run goes on.
func TestHookPanic(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	h.hooks = dr.Hooks{
		OnRunStart: func(context.Context, dr.RunInfo) { panic("start hook bug") },
		OnRunEnd:   func(context.Context, dr.RunInfo) { panic("end hook bug") },
	}
	rb := parse(t, noopRunbook("noop", 2, 1))
	h.start(rb)
	if v := h.run(rb, nil, "", operator); v.State != state.RunSucceeded {
		t.Fatalf("run = %s, want succeeded", v.State)
	}
	for _, want := range []string{"start hook bug", "end hook bug"} {
		if !strings.Contains(h.logs.String(), want) {
			t.Errorf("log lacks the panic %q", want)
		}
	}
}

func crashBookWith(idempotent bool) string {
	return strings.Replace(crashBook, "IDEMPOTENT", strconv.FormatBool(idempotent), 1)
}
