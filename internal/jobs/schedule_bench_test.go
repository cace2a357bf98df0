package jobs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
)

type noopArgs struct {
	N int `json:"n"`
}

func (noopArgs) Kind() string { return "bench_noop" }

type noopWorker struct {
	river.WorkerDefaults[noopArgs]
	mu    sync.Mutex
	late  []time.Duration
	slots map[time.Time]int
}

func (w *noopWorker) Work(_ context.Context, job *river.Job[noopArgs]) error {
	// Start is now, when Work begins (after River fetched the job and the
	// dispatch middleware accepted the run); the slot is ScheduledAt, the
	// time the schedule fired for (River's own timing sets it to the slot
	// too).
	late := time.Since(job.ScheduledAt)
	w.mu.Lock()
	w.late = append(w.late, late)
	if w.slots == nil {
		w.slots = map[time.Time]int{}
	}
	w.slots[job.ScheduledAt]++
	w.mu.Unlock()
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU returns the CPU time used so far by each PostgreSQL backend
// serving the store's database (from /proc: the server runs on this
// machine in the benchmark), by pid.
func backendCPU(ctx context.Context, s *postgres.Store) map[int]time.Duration {
	rows, err := s.Pool().Query(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
	if err != nil {
		return nil
	}
	defer rows.Close()
	out := map[int]time.Duration{}
	for rows.Next() {
		var pid int
		if rows.Scan(&pid) != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: state is
		// field 3, utime 14, stime 15 (clock ticks of 10 ms).
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		out[pid] = time.Duration(ut+st) * 10 * time.Millisecond
	}
	return out
}

// BenchmarkScheduler1000 registers 1,000 periodic jobs on "@every 1m" with a
// worker that does nothing and lets two rounds fire (about 2 minutes of wall
// time per sub-benchmark; run it with -benchtime=1x), on the embedded SQLite
// store and on PostgreSQL, each twice side by side:
//
//   - river: the baseline, River's own periodic timing (the jobs are
//     inserted when the slot comes) and the previous 20 ms fetch cooldown;
//   - opsd: the engine's defaults (inserted EnqueueAhead before the slot,
//     producers woken at the slot, DefaultFetchCooldown).
//
// Workers default to the daemon's (state.workers, config.DefaultWorkers).
// It reports the process CPU per scheduled run and as a share of one core
// over the window (for PostgreSQL also the CPU of the server backends of the
// benchmark's database), and how late runs started after their slot (min,
// p50, p99, max). The audit choke point records into memory here, so the
// figure is the scheduler's own cost (River's periodic enqueuer, job
// fetching and completion, the dispatch middleware), not the audit log's
// fsyncs.
//
// Environment: OPSD_BENCH_WORKERS, OPSD_BENCH_FETCH_COOLDOWN (opsd variant),
// OPSD_BENCH_BACKENDS (e.g. "sqlite"), OPSD_BENCH_SPEC (default @every 1m).
func BenchmarkScheduler1000(b *testing.B) {
	backends := []string{"sqlite", "postgres"}
	if v := os.Getenv("OPSD_BENCH_BACKENDS"); v != "" {
		backends = strings.Split(v, ",")
	}
	for _, backend := range backends {
		for _, timing := range []string{"river", "opsd"} {
			b.Run(backend+"/"+timing, func(b *testing.B) {
				for range b.N {
					benchSchedule(b, backend, timing == "river")
				}
			})
		}
	}
}

func benchSchedule(b *testing.B, backend string, riverTiming bool) {
	const sources, rounds = 1000, 2
	ctx := context.Background()
	spec := cmpEnv("OPSD_BENCH_SPEC", "@every 1m")
	sched, err := ParseSchedule(spec)
	if err != nil {
		b.Fatal(err)
	}
	var store state.Store
	var pg *postgres.Store
	switch backend {
	case "sqlite":
		s, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), sqlite.FileName), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		store = s
	case "postgres":
		pg, err = postgres.Open(ctx, pgtest.DSN(b), nil)
		if err != nil {
			b.Fatal(err)
		}
		defer pg.Close()
		store = pg
	default:
		b.Fatalf("backend %q: want sqlite or postgres", backend)
	}

	w := &noopWorker{}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	var ps []Periodic
	for i := range sources {
		ps = append(ps, Periodic{Name: fmt.Sprintf("backup:s%04d", i), Spec: spec,
			Construct: func() (river.JobArgs, *river.InsertOpts) { return noopArgs{N: i}, nil }})
	}
	opts := Options{Dispatcher: action.NewDispatcher(&recorder{}), Workers: workers, Periodic: ps,
		Concurrency: config.DefaultWorkers}
	if v := os.Getenv("OPSD_BENCH_WORKERS"); v != "" {
		if opts.Concurrency, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	if riverTiming {
		opts.riverPeriodic = true
		opts.FetchCooldown = 20 * time.Millisecond // the default before EnqueueAhead
	} else if v := os.Getenv("OPSD_BENCH_FETCH_COOLDOWN"); v != "" {
		if opts.FetchCooldown, err = time.ParseDuration(v); err != nil {
			b.Fatal(err)
		}
	}
	e, err := New(ctx, store, opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%s, %s timing: %d workers, fetch cooldown %v, enqueue ahead %v", backend,
		map[bool]string{true: "river", false: "opsd"}[riverTiming], opts.Concurrency,
		cmpDur(opts.FetchCooldown, DefaultFetchCooldown), map[bool]time.Duration{true: 0, false: e.ahead}[riverTiming])
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- e.Run(rctx) }()
	for e.Ready() != nil {
		time.Sleep(50 * time.Millisecond)
	}
	// Measure from before the first slot (the schedules were registered
	// when Run started the leader's enqueuer) until both rounds started.
	b.ResetTimer()
	var pg0 map[int]time.Duration
	if pg != nil {
		pg0 = backendCPU(ctx, pg)
	}
	cpu0, t0 := cpuTime(), time.Now()
	deadline := t0.Add(rounds*sched.Next(t0).Sub(t0) + time.Minute)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		n := len(w.late)
		w.mu.Unlock()
		if n >= rounds*sources {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	cpu, wall := cpuTime()-cpu0, time.Since(t0)
	var server time.Duration
	if pg != nil {
		for pid, c := range backendCPU(ctx, pg) {
			server += c - pg0[pid]
		}
	}
	b.StopTimer()
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	w.mu.Lock()
	late := slices.Clone(w.late)
	nslots := len(w.slots)
	w.mu.Unlock()
	if len(late) < rounds*sources {
		b.Fatalf("%d runs in %v, want %d (%d rounds of %d)", len(late), wall, rounds*sources, rounds, sources)
	}
	if nslots != rounds {
		b.Errorf("runs were scheduled for %d distinct slots, want %d (one per round)", nslots, rounds)
	}
	slices.Sort(late)
	pct := func(p float64) time.Duration { return late[int(p*float64(len(late)-1))] }
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(cpu)/float64(len(late)), "cpu-ms/run")
	b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "%core")
	if pg != nil {
		b.ReportMetric(ms(server)/float64(len(late)), "server-cpu-ms/run")
		b.ReportMetric(100*server.Seconds()/wall.Seconds(), "%server-core")
	}
	b.ReportMetric(ms(late[0]), "min-late-ms")
	b.ReportMetric(ms(pct(0.5)), "p50-late-ms")
	b.ReportMetric(ms(pct(0.99)), "p99-late-ms")
	b.ReportMetric(ms(late[len(late)-1]), "max-late-ms")
	b.ReportMetric(float64(len(late)), "runs")
}

func cmpEnv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func cmpDur(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}
