package dr_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/state"
)

func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// BenchmarkNoopStep measures the engine's overhead per step, journal
// included: runs of 20 no-op (assert) steps, one after another. p50-ms and
// p99-ms are per step, over runs.
func BenchmarkNoopStep(b *testing.B) {
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			h := newHarness(b, st.open(b))
			rb := parse(b, noopRunbook("noop", 20, 1))
			h.start(rb)
			var perStep []float64
			b.ResetTimer()
			for done := 0; done < b.N; done += 20 {
				t0 := time.Now()
				v := h.run(rb, nil, "", operator)
				if v.State != state.RunSucceeded {
					b.Fatalf("run = %s", v.State)
				}
				perStep = append(perStep, float64(time.Since(t0))/20/1e6)
			}
			b.StopTimer()
			b.ReportMetric(percentile(perStep, 0.5), "p50-ms")
			b.ReportMetric(percentile(perStep, 0.99), "p99-ms")
		})
	}
}

// BenchmarkJournalFloor is BenchmarkNoopStep's baseline, on the same
// store: the journal writes of a 20-step run alone, no engine — the run
// created, each step written running then succeeded with its event, the
// run finished. BenchmarkNoopStep minus this is the engine's own cost.
func BenchmarkJournalFloor(b *testing.B) {
	ctx := context.Background()
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			store := st.open(b)
			var perStep []float64
			b.ResetTimer()
			for done, n := 0, 0; done < b.N; done, n = done+20, n+1 {
				t0 := time.Now()
				now := time.Now().UTC()
				id := fmt.Sprintf("floor-%06d", n)
				r := state.Run{ID: id, Runbook: "noop", RunbookSHA256: strings.Repeat("0", 64), Mode: "drill",
					State: state.RunRunning, Actor: "bench", Params: "{}", Data: "{}", CreatedAt: now, StartedAt: now}
				if err := store.CreateRun(ctx, r, state.RunEvent{Time: now, Type: "run", State: r.State, Message: "started"}); err != nil {
					b.Fatal(err)
				}
				for i := range 20 {
					step := fmt.Sprintf("s%02d", i)
					ss := state.StepState{RunID: id, StepID: step, Phase: state.PhaseMain, State: state.StepRunning, Attempts: 1, StartedAt: now, Data: "{}"}
					if _, err := store.PutStepState(ctx, ss, state.RunEvent{Time: now, Type: "step", StepID: step, State: ss.State, Message: step + ": attempt 1"}); err != nil {
						b.Fatal(err)
					}
					ss.State, ss.FinishedAt, ss.Outputs = state.StepSucceeded, time.Now().UTC(), "{}"
					if _, err := store.PutStepState(ctx, ss, state.RunEvent{Time: ss.FinishedAt, Type: "step", StepID: step, State: ss.State, Message: step + ": succeeded"}); err != nil {
						b.Fatal(err)
					}
				}
				fin := time.Now().UTC()
				if _, _, err := store.UpdateRun(ctx, id, func(r *state.Run) error {
					r.State, r.FinishedAt = state.RunSucceeded, fin
					return nil
				}, state.RunEvent{Time: fin, Type: "run", State: state.RunSucceeded, Message: "run succeeded"}); err != nil {
					b.Fatal(err)
				}
				perStep = append(perStep, float64(time.Since(t0))/20/1e6)
			}
			b.StopTimer()
			b.ReportMetric(percentile(perStep, 0.5), "p50-ms")
			b.ReportMetric(percentile(perStep, 0.99), "p99-ms")
		})
	}
}

// BenchmarkConcurrentRuns runs 50 runs of a 20-step no-op runbook at once
// per iteration and reports steps/s and the p99 time between one step's start
// and the next's within a run (the per-step overhead under load).
func BenchmarkConcurrentRuns(b *testing.B) {
	const runs, steps = 50, 20
	for _, st := range stores {
		b.Run(st.name, func(b *testing.B) {
			h := newHarness(b, st.open(b))
			rb := parse(b, noopRunbook("noop50", steps, runs))
			h.start(rb)
			var gaps []float64
			var total time.Duration
			b.ResetTimer()
			for range b.N {
				t0 := time.Now()
				ids := make([]string, runs)
				for i := range ids {
					id, err := h.e.Start(context.Background(), rb, nil, "", false, operator)
					if err != nil {
						b.Fatal(err)
					}
					ids[i] = id
				}
				var mu sync.Mutex
				var wg sync.WaitGroup
				for _, id := range ids {
					wg.Go(func() {
						v := h.wait(id)
						if v.State != state.RunSucceeded {
							b.Errorf("run %s = %s", id, v.State)
						}
						mu.Lock()
						defer mu.Unlock()
						for i := 1; i < len(v.Steps); i++ {
							gaps = append(gaps, float64(v.Steps[i].StartedAt.Sub(v.Steps[i-1].StartedAt))/1e6)
						}
					})
				}
				wg.Wait()
				total += time.Since(t0)
			}
			b.StopTimer()
			b.ReportMetric(float64(runs*steps*b.N)/total.Seconds(), "steps/s")
			b.ReportMetric(percentile(gaps, 0.99), "p99-step-ms")
		})
	}
}
