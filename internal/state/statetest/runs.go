package statetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/state"
)

// RunRuns exercises every method of state.Runs. open must return a new,
// empty, migrated store for each call and arrange for it to be closed.
func RunRuns(t *testing.T, open func(t *testing.T) state.Runs) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s state.Runs)
	}{
		{"CreateGet", testRunCreateGet},
		{"UpdateRun", testRunUpdate},
		{"UpdateRunConcurrent", testRunUpdateConcurrent},
		{"StepStates", testRunStepStates},
		{"Events", testRunEvents},
		{"EventsConcurrent", testRunEventsConcurrent},
		{"ListRuns", testListRuns},
		{"Missing", testRunMissing},
		{"Invalid", testRunInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, open(t))
		})
	}
}

var runT0 = time.Date(2026, 11, 25, 10, 0, 0, 123456000, time.UTC)

func sampleRun(id string) state.Run {
	return state.Run{
		ID: id, Runbook: "orders-drill", RunbookSHA256: "ab12", Mode: "drill", State: state.RunRunning,
		Actor: "token:ci", Params: `{"n":1,"dsn":"***"}`, Secrets: []byte{1, 2, 3}, Data: `{"phase":"main"}`,
		CreatedAt: runT0, StartedAt: runT0.Add(time.Second), Version: 1,
	}
}

func ev(typ, step, st string) state.RunEvent {
	return state.RunEvent{Time: runT0, Type: typ, StepID: step, State: st, Message: typ + " " + st, Data: "{}"}
}

func testRunCreateGet(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	want := sampleRun("20261125T100000Z-a")
	if err := s.CreateRun(ctx, want, ev("run", "", "running")); err != nil {
		t.Fatalf("CreateRun = %v", err)
	}
	got, err := s.GetRun(ctx, want.ID)
	if err != nil {
		t.Fatalf("GetRun = %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GetRun mismatch (-want +got):\n%s", diff)
	}
	if err := s.CreateRun(ctx, want); !errors.Is(err, state.ErrConflict) {
		t.Errorf("CreateRun(existing) = %v, want ErrConflict", err)
	}
	evs, err := s.ListRunEvents(ctx, want.ID, 0, 0)
	if err != nil || len(evs) != 1 || evs[0].Seq != 1 {
		t.Errorf("ListRunEvents = %+v, %v, want one event with seq 1", evs, err)
	}
	// Zero times and nil secrets round-trip as such.
	bare := state.Run{ID: "20261125T100000Z-b", Runbook: "x", State: state.RunQueued, CreatedAt: runT0}
	if err := s.CreateRun(ctx, bare); err != nil {
		t.Fatalf("CreateRun(bare) = %v", err)
	}
	bare.Version = 1
	if got, err := s.GetRun(ctx, bare.ID); err != nil || !cmp.Equal(bare, got) {
		t.Errorf("GetRun(bare) = %+v, %v, want %+v", got, err, bare)
	}
}

func testRunUpdate(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	r := sampleRun("20261125T100000Z-a")
	if err := s.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	got, seq, err := s.UpdateRun(ctx, r.ID, func(r *state.Run) error {
		r.State = state.RunSucceeded
		r.FinishedAt = runT0.Add(time.Minute)
		return nil
	}, ev("run", "", "succeeded"), ev("log", "", "x"))
	if err != nil {
		t.Fatalf("UpdateRun = %v", err)
	}
	if got.Version != 2 || got.State != state.RunSucceeded || seq != 2 {
		t.Errorf("UpdateRun = version %d state %q seq %d, want 2 succeeded 2", got.Version, got.State, seq)
	}
	if read, _ := s.GetRun(ctx, r.ID); !cmp.Equal(read, got) {
		t.Errorf("GetRun after update = %+v, want %+v", read, got)
	}
	boom := errors.New("boom")
	_, _, err = s.UpdateRun(ctx, r.ID, func(r *state.Run) error { r.State = "x"; return boom }, ev("run", "", "x"))
	if !errors.Is(err, boom) {
		t.Errorf("UpdateRun(fn fails) = %v, want boom", err)
	}
	if read, _ := s.GetRun(ctx, r.ID); read.State != state.RunSucceeded || read.Version != 2 {
		t.Errorf("after failed fn: state %q version %d, want unchanged", read.State, read.Version)
	}
	if evs, _ := s.ListRunEvents(ctx, r.ID, 0, 0); len(evs) != 2 {
		t.Errorf("after failed fn: %d events, want 2", len(evs))
	}
	_, _, err = s.UpdateRun(ctx, r.ID, func(r *state.Run) error { r.Version = 9; return nil })
	if !errors.Is(err, state.ErrInvalid) {
		t.Errorf("UpdateRun(changing Version) = %v, want ErrInvalid", err)
	}
}

func testRunUpdateConcurrent(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	r := sampleRun("20261125T100000Z-a")
	r.Data = "0"
	if err := s.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			_, _, err := s.UpdateRun(ctx, r.ID, func(r *state.Run) error {
				var v int
				fmt.Sscan(r.Data, &v)
				r.Data = fmt.Sprint(v + 1)
				return nil
			}, ev("log", "", "inc"))
			if err != nil {
				t.Errorf("UpdateRun = %v", err)
			}
		})
	}
	wg.Wait()
	got, _ := s.GetRun(ctx, r.ID)
	if got.Data != fmt.Sprint(n) || got.Version != n+1 {
		t.Errorf("after %d concurrent increments: data %q version %d, want %d, %d", n, got.Data, got.Version, n, n+1)
	}
}

func testRunStepStates(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	r := sampleRun("20261125T100000Z-a")
	if err := s.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	a := state.StepState{RunID: r.ID, StepID: "a", Phase: state.PhaseMain, State: state.StepRunning, Attempts: 1,
		StartedAt: runT0.Add(2 * time.Second), Outputs: "{}", Data: "{}"}
	b := state.StepState{RunID: r.ID, StepID: "b", Phase: state.PhaseMain, State: state.StepRunning, Attempts: 1,
		StartedAt: runT0.Add(time.Second), Outputs: "{}", Data: "{}"}
	for _, st := range []state.StepState{a, b} {
		if _, err := s.PutStepState(ctx, st, ev("step", st.StepID, st.State)); err != nil {
			t.Fatalf("PutStepState(%s) = %v", st.StepID, err)
		}
	}
	a.State, a.FinishedAt, a.Outputs, a.Attempts = state.StepSucceeded, runT0.Add(3*time.Second), `{"x":1}`, 2
	seq, err := s.PutStepState(ctx, a, ev("step", "a", "succeeded"))
	if err != nil || seq != 3 {
		t.Fatalf("PutStepState(update) = %d, %v, want 3, nil", seq, err)
	}
	ac := state.StepState{RunID: r.ID, StepID: "a", Phase: state.PhaseCompensate, State: state.StepSucceeded,
		StartedAt: runT0.Add(4 * time.Second), Error: "e"}
	if _, err := s.PutStepState(ctx, ac); err != nil {
		t.Fatalf("PutStepState(compensate) = %v", err)
	}
	got, err := s.GetStepStates(ctx, r.ID)
	if err != nil {
		t.Fatalf("GetStepStates = %v", err)
	}
	want := []state.StepState{b, a, ac}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("GetStepStates mismatch (-want +got):\n%s", diff)
	}
	if got, err := s.GetStepStates(ctx, "nope"); err != nil || len(got) != 0 {
		t.Errorf("GetStepStates(missing run) = %v, %v, want empty", got, err)
	}
}

func testRunEvents(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	r := sampleRun("20261125T100000Z-a")
	if err := s.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	other := sampleRun("20261125T100000Z-b")
	if err := s.CreateRun(ctx, other, ev("run", "", "other")); err != nil {
		t.Fatal(err)
	}
	var want []state.RunEvent
	for i := range 10 {
		e := ev("log", "s", fmt.Sprint(i))
		seq, err := s.AppendRunEvents(ctx, r.ID, e)
		if err != nil || seq != int64(i+1) {
			t.Fatalf("AppendRunEvents #%d = %d, %v", i, seq, err)
		}
		e.Seq = seq
		want = append(want, e)
	}
	if seq, err := s.AppendRunEvents(ctx, r.ID); err != nil || seq != 10 {
		t.Errorf("AppendRunEvents() = %d, %v, want 10, nil", seq, err)
	}
	got, err := s.ListRunEvents(ctx, r.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ListRunEvents mismatch (-want +got):\n%s", diff)
	}
	// Resuming after Last-Event-ID 7 with a page of 2.
	got, err = s.ListRunEvents(ctx, r.ID, 7, 2)
	if err != nil || !cmp.Equal(want[7:9], got) {
		t.Errorf("ListRunEvents(after 7, limit 2) = %+v, %v, want %+v", got, err, want[7:9])
	}
	if got, err := s.ListRunEvents(ctx, r.ID, 10, 0); err != nil || len(got) != 0 {
		t.Errorf("ListRunEvents(after last) = %v, %v, want none", got, err)
	}
}

func testRunEventsConcurrent(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	r := sampleRun("20261125T100000Z-a")
	if err := s.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Go(func() {
			st := state.StepState{RunID: r.ID, StepID: fmt.Sprint("s", i), Phase: state.PhaseMain, State: "running"}
			if _, err := s.PutStepState(ctx, st, ev("step", st.StepID, "running"), ev("log", st.StepID, "x")); err != nil {
				t.Errorf("PutStepState = %v", err)
			}
			if _, err := s.AppendRunEvents(ctx, r.ID, ev("log", "", "y")); err != nil {
				t.Errorf("AppendRunEvents = %v", err)
			}
		})
	}
	wg.Wait()
	got, err := s.ListRunEvents(ctx, r.ID, 0, 0)
	if err != nil || len(got) != 30 {
		t.Fatalf("ListRunEvents = %d events, %v, want 30", len(got), err)
	}
	for i, e := range got {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d, want dense sequence numbers", i, e.Seq)
		}
	}
}

func testListRuns(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	var all []state.Run
	for i := range 7 {
		r := sampleRun(fmt.Sprintf("20261125T1000%02dZ-x", i))
		if i%2 == 1 {
			r.Runbook = "other"
		}
		if i%3 == 0 {
			r.State = state.RunSucceeded
		}
		if err := s.CreateRun(ctx, r); err != nil {
			t.Fatal(err)
		}
		all = append([]state.Run{r}, all...)
	}
	ids := func(rs []state.Run) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	var got []state.Run
	cursor := ""
	for pages := 0; ; pages++ {
		items, next, err := s.ListRuns(ctx, state.RunFilter{Limit: 3, Cursor: cursor})
		if err != nil || pages > 5 {
			t.Fatalf("ListRuns = %v (page %d)", err, pages)
		}
		got = append(got, items...)
		if next == "" {
			break
		}
		cursor = next
	}
	if diff := cmp.Diff(ids(all), ids(got)); diff != "" {
		t.Errorf("ListRuns pages mismatch (-want +got):\n%s", diff)
	}
	items, _, err := s.ListRuns(ctx, state.RunFilter{Runbook: "other", States: []string{state.RunSucceeded}})
	if err != nil || len(items) != 1 || items[0].ID != "20261125T100003Z-x" {
		t.Errorf("ListRuns(other, succeeded) = %v, %v, want [20261125T100003Z-x]", ids(items), err)
	}
	items, _, err = s.ListRuns(ctx, state.RunFilter{States: []string{state.RunRunning, state.RunQueued}})
	if err != nil || len(items) != 4 {
		t.Errorf("ListRuns(running|queued) = %v, %v, want 4 runs", ids(items), err)
	}
	if _, _, err := s.ListRuns(ctx, state.RunFilter{Limit: -1}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("ListRuns(limit -1) = %v, want ErrInvalid", err)
	}
}

func testRunMissing(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	if _, err := s.GetRun(ctx, "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetRun(missing) = %v, want ErrNotFound", err)
	}
	if _, _, err := s.UpdateRun(ctx, "nope", func(*state.Run) error { return nil }); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("UpdateRun(missing) = %v, want ErrNotFound", err)
	}
	st := state.StepState{RunID: "nope", StepID: "a", Phase: state.PhaseMain, State: "running"}
	if _, err := s.PutStepState(ctx, st); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("PutStepState(missing run) = %v, want ErrNotFound", err)
	}
	if _, err := s.AppendRunEvents(ctx, "nope", ev("log", "", "")); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("AppendRunEvents(missing run) = %v, want ErrNotFound", err)
	}
}

func testRunInvalid(t *testing.T, s state.Runs) {
	ctx := ctxT(t)
	bad := sampleRun("20261125T100000Z-a")
	bad.Params = "a\x00b"
	if err := s.CreateRun(ctx, bad); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("CreateRun(NUL in params) = %v, want ErrInvalid", err)
	}
	if err := s.CreateRun(ctx, state.Run{}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("CreateRun(empty) = %v, want ErrInvalid", err)
	}
	r := sampleRun("20261125T100000Z-b")
	if err := s.CreateRun(ctx, r); err != nil {
		t.Fatal(err)
	}
	st := state.StepState{RunID: r.ID, StepID: "a", Phase: "sideways", State: "running"}
	if _, err := s.PutStepState(ctx, st); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("PutStepState(bad phase) = %v, want ErrInvalid", err)
	}
	e := ev("log", "", "")
	e.Message = "\xff"
	if _, err := s.AppendRunEvents(ctx, r.ID, e); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("AppendRunEvents(invalid UTF-8) = %v, want ErrInvalid", err)
	}
}
