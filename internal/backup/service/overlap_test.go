package service

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
)

func TestNoTwoBackupsOfOneSource(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	// A backup of demo is running (as another replica would hold it).
	running := state.Backup{ID: "20261125T100000Z-00000099", Source: "demo", Type: "files", State: state.BackupRunning,
		Actor: "token:ci", QueuedAt: time.Now().Add(-time.Minute), StartedAt: time.Now().Add(-time.Minute)}
	if err := f.store.CreateBackup(ctx, running); err != nil {
		t.Fatal(err)
	}
	if err := f.store.CreateValue(ctx, sourceLockKey("demo"), running.ID); err != nil {
		t.Fatal(err)
	}

	// A scheduled slot is skipped: no catalog row, no error.
	created := time.Now()
	if err := f.svc.work(ctx, 7, created, Args{Source: "demo"}); err != nil {
		t.Fatalf("scheduled backup while one runs = %v, want skipped (nil)", err)
	}
	items, _, _ := f.store.ListBackups(ctx, state.BackupFilter{Source: "demo"})
	if len(items) != 1 {
		t.Fatalf("catalog has %d backups, want only the running one (the slot was skipped)", len(items))
	}
	// With overlap: queue the slot waits; so does a backup asked for via the API.
	f.svc.opts.Config().Sources["demo"].Overlap = config.OverlapQueue
	var snooze *river.JobSnoozeError
	if err := f.svc.work(ctx, 8, created, Args{Source: "demo"}); !errors.As(err, &snooze) {
		t.Fatalf("queued slot while one runs = %v, want a snooze", err)
	}
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.work(ctx, 9, b.QueuedAt, f.queue.args[len(f.queue.args)-1]); !errors.As(err, &snooze) {
		t.Fatalf("API backup while one runs = %v, want a snooze", err)
	}

	// The holder finishes: the waiting backup takes the stale lock and runs.
	running.State, running.FinishedAt = state.BackupSucceeded, time.Now()
	if err := f.store.UpdateBackup(ctx, running); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.work(ctx, 9, b.QueuedAt, f.queue.args[len(f.queue.args)-1]); err != nil {
		t.Fatalf("API backup after the holder finished = %v", err)
	}
	got, _, _ := f.store.GetBackup(ctx, b.ID)
	if got.State != state.BackupSucceeded {
		t.Errorf("waiting backup = %s, want succeeded", got.State)
	}
	if _, ok, _ := f.store.GetValue(ctx, sourceLockKey("demo")); ok {
		t.Error("source lock still held after the backup ended")
	}
}

// With every backup slot taken (state.backup_concurrency), a backup's job
// starts but the backup stays queued until a slot frees.
func TestBackupWaitsForASlot(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	f.svc.slots = make(chan struct{}, 1)
	f.svc.slots <- struct{}{} // another backup holds the only slot
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0]) }()
	time.Sleep(300 * time.Millisecond)
	got, _, err := f.store.GetBackup(ctx, b.ID)
	if err != nil || got.State != state.BackupQueued {
		t.Fatalf("backup while no slot is free = %s, %v; want queued", got.State, err)
	}
	select {
	case err := <-done:
		t.Fatalf("backup finished without a slot: %v", err)
	default:
	}
	<-f.svc.slots // the other backup ends
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, _, _ := f.store.GetBackup(ctx, b.ID); got.State != state.BackupSucceeded {
		t.Fatalf("backup after a slot freed = %s, want succeeded", got.State)
	}
	if len(f.svc.slots) != 0 {
		t.Errorf("%d slots still held after the backup", len(f.svc.slots))
	}
}

// Failure counters start at 0 for every configured source and target (a
// rule sees the first failure as an increase); after a reload removes a
// source or target, its series are gone.
func TestInitMetricsFollowsConfig(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	f.svc.InitMetrics(ctx)
	count := func(source, target string) int {
		n := 0
		ch := make(chan prometheus.Metric, 1000)
		f.metrics.failures.Collect(ch)
		close(ch)
		for m := range ch {
			var pb dto.Metric
			if err := m.Write(&pb); err != nil {
				t.Fatal(err)
			}
			labels := map[string]string{}
			for _, l := range pb.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["source"] == source && (target == "" || labels["target"] == target) {
				if pb.GetCounter().GetValue() != 0 {
					t.Errorf("%v = %v, want 0", labels, pb.GetCounter().GetValue())
				}
				n++
			}
		}
		return n
	}
	if n := count("demo", "b"); n != len(failureReasons) {
		t.Fatalf("demo/b has %d failure series, want %d (one per reason)", n, len(failureReasons))
	}
	cfg := f.svc.opts.Config()
	cfg.Sources["demo"].Targets = []string{"a"}
	f.svc.InitMetrics(ctx)
	if n := count("demo", "b"); n != 0 {
		t.Errorf("after target b left the config: %d series of demo/b, want 0", n)
	}
	if n := count("demo", "a"); n != len(failureReasons) {
		t.Errorf("demo/a has %d series, want %d", n, len(failureReasons))
	}
	delete(cfg.Sources, "demo")
	f.svc.InitMetrics(ctx)
	if n := count("demo", ""); n != 0 {
		t.Errorf("after demo left the config: %d series, want 0", n)
	}
	if got := testutil.CollectAndCount(f.metrics.lastSuccess); got != 0 {
		t.Errorf("last-success series after demo left = %d, want 0", got)
	}
}
