package jobs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
)

type noopArgs struct {
	N int `json:"n"`
}

func (noopArgs) Kind() string { return "bench_noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	mu   sync.Mutex
	late []time.Duration
}

func (w *noopWorker) Work(_ context.Context, job *river.Job[noopArgs]) error {
	// The slot is the minute the schedule fired for: ScheduledAt.
	late := time.Since(job.ScheduledAt)
	w.mu.Lock()
	w.late = append(w.late, late)
	w.mu.Unlock()
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkScheduler1000 registers 1,000 periodic jobs on "@every 1m" with a
// worker that does nothing, on the embedded SQLite store, and lets two
// rounds fire (about 2 minutes of wall time per iteration; run it with
// -benchtime=1x). It reports the process CPU per scheduled run and as a
// share of one core over the window, and how late runs started after their
// slot (p50, p99, max). The audit choke point records into memory here, so
// the figure is the scheduler's own cost (River's periodic enqueuer, job
// fetching and dispatch, the middleware), not the audit log's fsyncs.
func BenchmarkScheduler1000(b *testing.B) {
	const sources = 1000
	for range b.N {
		ctx := context.Background()
		s, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), sqlite.FileName), nil)
		if err != nil {
			b.Fatal(err)
		}
		w := &noopWorker{}
		workers := river.NewWorkers()
		river.AddWorker(workers, w)
		var ps []Periodic
		for i := range sources {
			ps = append(ps, Periodic{Name: fmt.Sprintf("backup:s%04d", i), Spec: "@every 1m",
				Construct: func() (river.JobArgs, *river.InsertOpts) { return noopArgs{N: i}, nil }})
		}
		opts := Options{Dispatcher: action.NewDispatcher(&recorder{}), Workers: workers, Periodic: ps, Concurrency: DefaultConcurrency}
		if v := os.Getenv("OPSD_BENCH_WORKERS"); v != "" {
			if opts.Concurrency, err = strconv.Atoi(v); err != nil {
				b.Fatal(err)
			}
		}
		if v := os.Getenv("OPSD_BENCH_FETCH_COOLDOWN"); v != "" {
			if opts.FetchCooldown, err = time.ParseDuration(v); err != nil {
				b.Fatal(err)
			}
		}
		b.Logf("workers %d, fetch cooldown %v", opts.Concurrency, opts.FetchCooldown)
		e, err := New(ctx, s, opts)
		if err != nil {
			b.Fatal(err)
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- e.Run(rctx) }()
		// Wait for the engine, then measure from just before the first slot.
		for e.Ready() != nil {
			time.Sleep(50 * time.Millisecond)
		}
		b.ResetTimer()
		cpu0, t0 := cpuTime(), time.Now()
		deadline := time.Now().Add(2*time.Minute + 20*time.Second)
		for time.Now().Before(deadline) {
			w.mu.Lock()
			n := len(w.late)
			w.mu.Unlock()
			if n >= 2*sources {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		cpu, wall := cpuTime()-cpu0, time.Since(t0)
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		_ = s.Close()
		w.mu.Lock()
		late := slices.Clone(w.late)
		w.mu.Unlock()
		if len(late) < 2*sources {
			b.Fatalf("%d runs in %v, want %d (two rounds of %d)", len(late), wall, 2*sources, sources)
		}
		slices.Sort(late)
		pct := func(p float64) time.Duration { return late[int(p*float64(len(late)-1))] }
		b.ReportMetric(float64(cpu.Microseconds())/1000/float64(len(late)), "cpu-ms/run")
		b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%core")
		b.ReportMetric(float64(pct(0.5).Milliseconds()), "p50-late-ms")
		b.ReportMetric(float64(pct(0.99).Milliseconds()), "p99-late-ms")
		b.ReportMetric(float64(late[len(late)-1].Milliseconds()), "max-late-ms")
		b.ReportMetric(float64(len(late)), "runs")
	}
}
