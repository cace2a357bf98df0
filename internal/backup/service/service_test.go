package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/riverqueue/river"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/jobs"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/local"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	mu   sync.Mutex
	recs []action.Record
}

func (r *recorder) Record(_ context.Context, rec action.Record) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, rec)
	return int64(len(r.recs) - 1), nil
}

type fakeQueue struct {
	args     []Args
	verifies []VerifyArgs
	copies   []CopyArgs
}

func (q *fakeQueue) Insert(_ context.Context, a river.JobArgs, _ *river.InsertOpts) (jobs.JobInfo, error) {
	switch a := a.(type) {
	case Args:
		q.args = append(q.args, a)
		return jobs.JobInfo{ID: int64(len(q.args))}, nil
	case VerifyArgs:
		q.verifies = append(q.verifies, a)
		return jobs.JobInfo{ID: int64(1000 + len(q.verifies))}, nil
	case CopyArgs:
		q.copies = append(q.copies, a)
		return jobs.JobInfo{ID: int64(2000 + len(q.copies))}, nil
	}
	return jobs.JobInfo{}, fmt.Errorf("unexpected job %T", a)
}

type fixture struct {
	svc     *Service
	store   state.Store
	rec     *recorder
	queue   *fakeQueue
	metrics *Metrics
	dir     string
	targets map[string]storage.Backend
}

func newFixture(t *testing.T, dir string) *fixture {
	t.Helper()
	ctx := context.Background()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "f.txt"), []byte(strings.Repeat("data ", 500)), 0o644); err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "keys", "age.key")
	cfg := &config.Config{
		Targets: map[string]*config.Target{"a": {Type: "local"}, "b": {Type: "local"}},
		Sources: map[string]*config.Source{"demo": {Type: "files", Paths: []string{src}, Targets: []string{"a", "b"},
			Schedule: "@every 1m", Encryption: &config.Encryption{AgeIdentityFile: idFile, Generate: true}}},
	}
	if err := GenerateIdentities(cfg, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(idFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("identity file: %v %v", st, err)
	}
	store, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	targets := map[string]storage.Backend{}
	for _, name := range []string{"a", "b"} {
		b, err := local.New(name, filepath.Join(dir, "target-"+name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		targets[name] = b
	}
	g, err := signing.Generate("opsd.test/service")
	if err != nil {
		t.Fatal(err)
	}
	kp := filepath.Join(t.TempDir(), "audit.key")
	if err := signing.WriteFiles(kp, g, false); err != nil {
		t.Fatal(err)
	}
	key, err := signing.Load(kp)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	m, err := NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(Options{
		Config: func() *config.Config { return cfg }, Store: store,
		Target: func(_ context.Context, name string) (storage.Backend, error) { return targets[name], nil },
		Signer: key.Signer, Verifier: key.Verifier, SpoolDir: filepath.Join(dir, "spool"), Metrics: m,
		Dispatcher: action.NewDispatcher(rec),
	})
	if err != nil {
		t.Fatal(err)
	}
	q := &fakeQueue{}
	svc.Attach(q)
	return &fixture{svc: svc, store: store, rec: rec, queue: q, metrics: m, dir: dir, targets: targets}
}

func TestBackupLifecycle(t *testing.T) {
	ctx := action.WithActor(context.Background(), action.Actor{Kind: action.ActorToken, Name: "ci"})
	f := newFixture(t, t.TempDir())
	f.svc.InitMetrics(ctx)
	if got := testutil.ToFloat64(f.metrics.lastSuccess.WithLabelValues("demo")); got != 0 {
		t.Errorf("last success before any backup = %v, want 0", got)
	}
	if _, err := f.svc.Enqueue(ctx, "nope"); err == nil {
		t.Error("Enqueue(nope) = nil error, want unknown source")
	}
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if b.State != state.BackupQueued || b.Actor != "token:ci" || len(f.queue.args) != 1 || f.queue.args[0].BackupID != b.ID {
		t.Fatalf("Enqueue = %+v, queued %+v", b, f.queue.args)
	}
	if err := f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0]); err != nil {
		t.Fatalf("work = %v", err)
	}
	got, copies, err := f.store.GetBackup(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != state.BackupSucceeded || len(got.Manifest) == 0 || got.StoredBytes == 0 {
		t.Errorf("backup = %+v, want succeeded with a manifest", got)
	}
	if len(copies) != 2 {
		t.Fatalf("copies = %+v", copies)
	}
	for _, c := range copies {
		if c.State != state.CopyComplete || c.SHA256 == "" || !strings.HasPrefix(c.Key, "demo/"+b.ID+"/") {
			t.Errorf("copy = %+v, want complete under demo/%s/", c, b.ID)
		}
		if n := testutil.ToFloat64(f.metrics.bytes.WithLabelValues("demo", c.Target)); n != float64(c.Bytes) {
			t.Errorf("bytes_total{%s} = %v, want %d", c.Target, n, c.Bytes)
		}
	}
	if testutil.ToFloat64(f.metrics.lastSuccess.WithLabelValues("demo")) == 0 {
		t.Error("last success not set")
	}
	n := 0
	for _, r := range f.rec.recs {
		if r.Action == "backup.copy" && r.Outcome == action.Succeeded && r.Actor.Name == "ci" {
			n++
		}
	}
	if n != 2 {
		t.Errorf("backup.copy successes = %d, want 2", n)
	}

	// An interrupted run (row still running) runs again, clean.
	got.State = state.BackupRunning
	if err := f.store.UpdateBackup(ctx, got); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0]); err != nil {
		t.Fatalf("re-run = %v", err)
	}
	if again, _, _ := f.store.GetBackup(ctx, b.ID); again.State != state.BackupSucceeded {
		t.Errorf("re-run state = %s, want succeeded", again.State)
	}
	// A finished one is not run again.
	if err := f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0]); err != nil {
		t.Fatalf("third run = %v", err)
	}

	// A periodic job (no id) gets one derived from the job.
	if err := f.svc.work(ctx, 7, b.QueuedAt, Args{Source: "demo"}); err != nil {
		t.Fatalf("periodic work = %v", err)
	}
	items, _, err := f.store.ListBackups(ctx, state.BackupFilter{})
	if err != nil || len(items) != 2 {
		t.Fatalf("ListBackups = %d items, %v", len(items), err)
	}

	// A new, empty catalog is rebuilt from the targets.
	g := newFixture(t, f.dir)
	imported, err := g.svc.Rebuild(ctx)
	if err != nil || imported != 0 {
		// Another signing key: nothing verifies.
		t.Logf("Rebuild with a foreign key = %d, %v", imported, err)
	}
	f2, err := New(Options{Config: f.svc.opts.Config, Store: g.store, Target: f.svc.opts.Target, Signer: f.svc.opts.Signer,
		Verifier: f.svc.opts.Verifier, Dispatcher: f.svc.opts.Dispatcher})
	if err != nil {
		t.Fatal(err)
	}
	imported, err = f2.Rebuild(ctx)
	if err != nil || imported != 2 {
		t.Fatalf("Rebuild = %d, %v, want 2", imported, err)
	}
	rb, rcopies, err := g.store.GetBackup(ctx, b.ID)
	if err != nil || rb.State != state.BackupSucceeded || len(rcopies) != 2 {
		t.Errorf("rebuilt backup = %+v %+v %v", rb, rcopies, err)
	}
}

func TestBackupSourceFails(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	f.svc.opts.Config().Sources["demo"].Paths = []string{filepath.Join(f.dir, "does-not-exist")}
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	err = f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0])
	if err == nil || !strings.Contains(err.Error(), "failed") {
		t.Errorf("work = %v, want the job cancelled with the failure", err)
	}
	got, copies, err := f.store.GetBackup(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != state.BackupFailed || got.Error == "" || got.FinishedAt.IsZero() {
		t.Errorf("backup = %+v, want failed with an error", got)
	}
	for _, c := range copies {
		if c.State != state.CopyFailed {
			t.Errorf("copy %s = %s, want failed", c.Target, c.State)
		}
		if n := testutil.ToFloat64(f.metrics.failures.WithLabelValues("demo", c.Target, "source")); n != 1 {
			t.Errorf("failures_total{%s,source} = %v, want 1", c.Target, n)
		}
	}
	for _, target := range []string{"a", "b"} {
		if err := f.targets[target].List(ctx, "demo/", func(oi storage.ObjectInfo) error {
			t.Errorf("object %s left on %s by a failed backup", oi.Key, target)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestSourceTimeout: a source that runs past its timeout fails the
// backup with a reason that says so, and leaves nothing on the targets.
func TestSourceTimeout(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	sc := f.svc.opts.Config().Sources["demo"]
	*sc = config.Source{Type: "command", Command: []string{"sh", "-c", "echo start; sleep 30"}, Targets: []string{"a", "b"},
		Schedule: sc.Schedule, Encryption: sc.Encryption, Timeout: 300 * time.Millisecond}
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0])
	if err == nil {
		t.Fatal("work succeeded; want the job cancelled after the timeout")
	}
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("the backup ran %v; the timeout did not stop the source", el)
	}
	got, _, err := f.store.GetBackup(ctx, b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != state.BackupFailed || !strings.Contains(got.Error, "timeout") {
		t.Errorf("backup = %s %q, want failed naming the timeout", got.State, got.Error)
	}
	if _, ok := f.svc.Progress(b.ID); ok {
		t.Error("progress still tracked after the backup ended")
	}
	for _, target := range []string{"a", "b"} {
		if err := f.targets[target].List(ctx, "demo/", func(oi storage.ObjectInfo) error {
			t.Errorf("object %s left on %s by a timed-out backup", oi.Key, target)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
}

// backupOnce runs one backup of demo through the fixture and returns it.
func backupOnce(t *testing.T, f *fixture) state.Backup {
	t.Helper()
	ctx := context.Background()
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[len(f.queue.args)-1]); err != nil {
		t.Fatalf("work = %v", err)
	}
	got, _, err := f.store.GetBackup(ctx, b.ID)
	if err != nil || got.State != state.BackupSucceeded {
		t.Fatalf("backup = %+v, %v", got, err)
	}
	return got
}

func TestVerifyChecksumAndRestore(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	b := backupOnce(t, f)
	if len(f.queue.verifies) != 1 || f.queue.verifies[0] != (VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum}) {
		t.Fatalf("after the backup queued %+v, want one checksum verification of %s", f.queue.verifies, b.ID)
	}

	vs, err := f.svc.Verify(ctx, VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum})
	if err != nil || len(vs) != 2 {
		t.Fatalf("Verify checksum = %+v, %v; want two results", vs, err)
	}
	for _, v := range vs {
		if !v.OK || v.Error != "" {
			t.Errorf("checksum of %s = %+v, want ok", v.Target, v)
		}
		if testutil.ToFloat64(f.metrics.lastVerified.WithLabelValues("demo", v.Target)) == 0 {
			t.Errorf("last_verified{%s} not set", v.Target)
		}
	}

	// Flip one byte of the data object on target a.
	var key string
	if err := f.targets["a"].List(ctx, "demo/"+b.ID+"/data", func(oi storage.ObjectInfo) error { key = oi.Key; return nil }); err != nil || key == "" {
		t.Fatalf("data object on a: %q %v", key, err)
	}
	path := filepath.Join(f.dir, "target-a", filepath.FromSlash(key))
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	vs, err = f.svc.Verify(ctx, VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum})
	if err != nil || len(vs) != 2 {
		t.Fatalf("Verify after the flip = %+v, %v", vs, err)
	}
	for _, v := range vs {
		switch {
		case v.Target == "a" && (v.OK || !strings.Contains(v.Error, "SHA-256") && !strings.Contains(strings.ToLower(v.Error), "sha256")):
			t.Errorf("checksum of the corrupted copy = %+v, want a SHA-256 mismatch", v)
		case v.Target == "b" && !v.OK:
			t.Errorf("checksum of the intact copy = %+v, want ok", v)
		}
	}
	if n := testutil.ToFloat64(f.metrics.failures.WithLabelValues("demo", "a", state.LevelChecksum)); n != 1 {
		t.Errorf("failures_total{a,checksum} = %v, want 1", n)
	}

	// Restore level: the corrupted copy is refused, the good one restored
	// into scratch and its file index compared.
	vs, err = f.svc.Verify(ctx, VerifyArgs{BackupID: b.ID, Level: state.LevelRestore})
	if err != nil || len(vs) != 1 {
		t.Fatalf("Verify restore = %+v, %v", vs, err)
	}
	if v := vs[0]; !v.OK || v.Target != "b" || len(v.Report) == 0 {
		t.Errorf("restore verification = %+v (report %s), want ok from b with a report", v, v.Report)
	}
	all, err := f.store.ListVerifications(ctx, b.ID)
	if err != nil || len(all) != 5 {
		t.Errorf("recorded verifications = %d, %v; want 5", len(all), err)
	}
	if proven, err := f.store.LatestVerification(ctx, "demo", state.LevelRestore, true); err != nil || proven.BackupID != b.ID {
		t.Errorf("latest proven restore = %+v, %v", proven, err)
	}
	audited := 0
	for _, r := range f.rec.recs {
		if r.Action == "backup.verify" {
			audited++
		}
	}
	if audited != 2*5 { // accepted + outcome per verification
		t.Errorf("backup.verify audit records = %d, want 10", audited)
	}

	// A verify of a copy that does not exist, and of an unknown backup.
	if _, err := f.svc.EnqueueVerify(ctx, b.ID, state.LevelChecksum, "nope"); !errors.Is(err, ErrNotVerifiable) {
		t.Errorf("verify of a missing copy = %v, want ErrNotVerifiable", err)
	}
	if _, err := f.svc.EnqueueVerify(ctx, "20261125T000000Z-00000000", state.LevelChecksum, ""); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("verify of an unknown backup = %v, want not found", err)
	}
	if _, err := f.svc.EnqueueVerify(ctx, b.ID, "eyeball", ""); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("verify at an unknown level = %v, want invalid", err)
	}
}

// TestVerifyRestoreOfCommandSourceFails: there is no restore check for a
// command's output, and saying so is a failed verification, not a pass.
func TestVerifyRestoreOfCommandSourceFails(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	sc := f.svc.opts.Config().Sources["demo"]
	*sc = config.Source{Type: "command", Command: []string{"echo", "hello"}, Targets: []string{"a", "b"},
		Schedule: sc.Schedule, Encryption: sc.Encryption}
	b := backupOnce(t, f)
	vs, err := f.svc.Verify(ctx, VerifyArgs{BackupID: b.ID, Level: state.LevelRestore})
	if err != nil || len(vs) != 1 {
		t.Fatalf("Verify = %+v, %v", vs, err)
	}
	if vs[0].OK || !strings.Contains(vs[0].Error, "no restore check") {
		t.Errorf("restore verification of a command source = %+v, want a failure saying why", vs[0])
	}
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	var ids []string
	for range 4 {
		ids = append(ids, backupOnce(t, f).ID)
		time.Sleep(1100 * time.Millisecond) // distinct times, as real schedules have
	}
	if _, err := f.svc.Prune(ctx, "demo", true); !errors.Is(err, ErrNoRetention) {
		t.Fatalf("Prune without a policy = %v, want ErrNoRetention", err)
	}
	// The second backup is the newest one that passed a verification.
	if vs, err := f.svc.Verify(ctx, VerifyArgs{BackupID: ids[1], Level: state.LevelChecksum}); err != nil || !vs[0].OK {
		t.Fatalf("verify: %+v %v", vs, err)
	}
	f.svc.opts.Config().Sources["demo"].Retention = config.Keep{Last: 1}

	dry, err := f.svc.Prune(ctx, "demo", true)
	if err != nil {
		t.Fatal(err)
	}
	keep := map[string]string{}
	for _, d := range dry {
		if d.Deleted {
			t.Errorf("dry run deleted %s", d.BackupID)
		}
		if d.Keep {
			keep[d.BackupID] = strings.Join(d.Reasons, "; ")
		}
	}
	want := map[string]string{ids[3]: "last 1/1", ids[1]: "newest verified"}
	if len(keep) != 2 || !strings.Contains(keep[ids[3]], want[ids[3]]) || !strings.Contains(keep[ids[1]], want[ids[1]]) {
		t.Fatalf("dry run keeps %v, want %v", keep, want)
	}
	if n := countObjects(t, f, "a"); n != 4*3 {
		t.Fatalf("objects on a after the dry run = %d, want 12", n)
	}

	ds, err := f.svc.Prune(ctx, "demo", false)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		if d.Keep == d.Deleted || d.Error != "" {
			t.Errorf("decision %+v: kept backups stay, the others are deleted without error", d)
		}
	}
	for _, target := range []string{"a", "b"} {
		if n := countObjects(t, f, target); n != 2*3 {
			t.Errorf("objects on %s after prune = %d, want 6 (two backups)", target, n)
		}
	}
	for i, id := range ids {
		_, _, err := f.store.GetBackup(ctx, id)
		if gone := errors.Is(err, state.ErrNotFound); gone != (i == 0 || i == 2) {
			t.Errorf("backup %d in the catalog after prune: err %v", i, err)
		}
	}
	deletes := 0
	for _, r := range f.rec.recs {
		if r.Action == "backup.delete" {
			deletes++
		}
	}
	if deletes != 2*2 {
		t.Errorf("backup.delete audit records = %d, want 4 (accepted + outcome, twice)", deletes)
	}
}

func countObjects(t *testing.T, f *fixture, target string) int {
	t.Helper()
	n := 0
	if err := f.targets[target].List(context.Background(), "demo/", func(storage.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestScheduledVerification(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	cfg := f.svc.opts.Config()
	cfg.Sources["demo"].Verify = config.Verify{Checksum: "@daily", Restore: &config.VerifyRestore{Schedule: "0 4 * * 0"}}
	byName := map[string]river.JobArgs{}
	for _, p := range Periodic(cfg) {
		args, _ := p.Construct()
		byName[p.Name] = args
	}
	if len(byName) != 3 || byName["backup:demo"] == nil || byName["verify-checksum:demo"] == nil || byName["verify-restore:demo"] == nil {
		t.Fatalf("periodic jobs = %v, want backup, checksum and restore verification of demo", byName)
	}
	if _, err := f.svc.Verify(ctx, byName["verify-checksum:demo"].(VerifyArgs)); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("scheduled verification with no backup yet = %v, want not found", err)
	}
	backupOnce(t, f)
	time.Sleep(1100 * time.Millisecond) // ids order by time to the second
	newest := backupOnce(t, f)
	vs, err := f.svc.Verify(ctx, byName["verify-checksum:demo"].(VerifyArgs))
	if err != nil || len(vs) != 2 || vs[0].BackupID != newest.ID || !vs[0].OK {
		t.Fatalf("scheduled checksum verification = %+v, %v; want both copies of %s ok", vs, err, newest.ID)
	}
	vs, err = f.svc.Verify(ctx, byName["verify-restore:demo"].(VerifyArgs))
	if err != nil || len(vs) != 1 || vs[0].BackupID != newest.ID || !vs[0].OK {
		t.Fatalf("scheduled restore verification = %+v, %v", vs, err)
	}
}

func TestCatchUpMissed(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	now := time.Now()
	f.svc.opts.Now = func() time.Time { return now }
	sc := f.svc.opts.Config().Sources["demo"]
	sc.Schedule = "0 * * * *" // hourly
	if q, err := f.svc.CatchUpMissed(ctx); err != nil || len(q) != 0 {
		t.Fatalf("no backup yet: queued %v, %v; want nothing (the schedule starts now)", q, err)
	}
	b := backupOnce(t, f)
	if q, _ := f.svc.CatchUpMissed(ctx); len(q) != 0 {
		t.Fatalf("right after a backup: queued %v, want nothing", q)
	}
	// Three hours later: slots passed while "down"; one backup, not three.
	now = b.QueuedAt.Add(3 * time.Hour)
	before := len(f.queue.args)
	q, err := f.svc.CatchUpMissed(ctx)
	if err != nil || len(q) != 1 || len(f.queue.args) != before+1 {
		t.Fatalf("after missed slots: queued %v (%d jobs), %v; want one backup of demo", q, len(f.queue.args)-before, err)
	}
	got, _, _ := f.store.GetBackup(ctx, f.queue.args[len(f.queue.args)-1].BackupID)
	if got.Actor != "scheduler:missed:backup:demo" {
		t.Errorf("actor = %q, want scheduler:missed:backup:demo", got.Actor)
	}
	// The queued one is pending: a second start does not queue another.
	if q, _ := f.svc.CatchUpMissed(ctx); len(q) != 0 {
		t.Errorf("with a backup queued: queued %v again", q)
	}
	sc.Missed = config.MissedSkip
	if err := f.store.UpdateBackup(ctx, func() state.Backup { got.State = state.BackupFailed; got.FinishedAt = now; return got }()); err != nil {
		t.Fatal(err)
	}
	now = now.Add(5 * time.Hour)
	if q, _ := f.svc.CatchUpMissed(ctx); len(q) != 0 {
		t.Errorf("missed: skip queued %v", q)
	}
}

func TestCatchUpCopy(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, t.TempDir())
	realTarget := f.svc.opts.Target
	down := true
	f.svc.opts.Target = func(ctx context.Context, name string) (storage.Backend, error) {
		if name == "b" && down {
			return nil, errors.New("target b unreachable")
		}
		return realTarget(ctx, name)
	}
	b, err := f.svc.Enqueue(ctx, "demo")
	if err != nil {
		t.Fatal(err)
	}
	_ = f.svc.work(ctx, 1, b.QueuedAt, f.queue.args[0])
	got, _, _ := f.store.GetBackup(ctx, b.ID)
	if got.State != state.BackupPartial {
		t.Fatalf("backup with b down = %s, want partial", got.State)
	}
	down = false
	if err := f.svc.CatchUpCopy(ctx, CopyArgs{BackupID: b.ID, Target: "b"}); !errors.Is(err, ErrNoGoodCopy) {
		t.Fatalf("catch-up before any verification = %v, want ErrNoGoodCopy (only verified copies are copied)", err)
	}
	if _, err := f.svc.Verify(ctx, VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum}); err != nil {
		t.Fatal(err)
	}
	f.queue.verifies = nil
	f.svc.queueCatchUps(ctx, "demo")
	if len(f.queue.copies) != 1 || f.queue.copies[0] != (CopyArgs{BackupID: b.ID, Target: "b"}) {
		t.Fatalf("maintenance queued %+v, want one copy of %s to b", f.queue.copies, b.ID)
	}
	if err := f.svc.CatchUpCopy(ctx, CopyArgs{BackupID: b.ID, Target: "b"}); err != nil {
		t.Fatalf("catch-up copy = %v", err)
	}
	_, copies, _ := f.store.GetBackup(ctx, b.ID)
	var cb state.Copy
	for _, c := range copies {
		if c.Target == "b" {
			cb = c
		}
	}
	if cb.State != state.CopyComplete || cb.SHA256 == "" || cb.Bytes == 0 {
		t.Fatalf("copy on b = %+v, want complete", cb)
	}
	if len(f.queue.verifies) != 1 || f.queue.verifies[0].Target != "b" {
		t.Errorf("after the copy queued %+v, want a checksum verification of b", f.queue.verifies)
	}
	ms, err := backup.List(ctx, f.targets["b"], f.svc.opts.Verifier)
	if err != nil || len(ms) != 1 || ms[0].ID != b.ID {
		t.Fatalf("signed manifests on b = %v, %v; want the caught-up backup", ms, err)
	}
	if vs, err := f.svc.Verify(ctx, VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum, Target: "b"}); err != nil || !vs[0].OK {
		t.Fatalf("checksum of the caught-up copy = %+v, %v", vs, err)
	}
	h, err := f.svc.Health(ctx, "demo")
	// Both targets are on one medium here: two verified copies make "3".
	if err != nil || h.Compliance.Level != "3" || len(h.Compliance.Counted) != 2 {
		t.Errorf("grading after catch-up = %+v, %v; want level 3 counting both copies", h.Compliance, err)
	}
}

func TestScheduleJitter(t *testing.T) {
	cfg := &config.Config{Sources: map[string]*config.Source{
		"even":   {Schedule: "@hourly"},
		"spread": {Schedule: "@hourly", Jitter: 30 * time.Second},
	}}
	for _, p := range Periodic(cfg) {
		for range 20 {
			_, opts := p.Construct()
			switch p.Name {
			case "backup:even":
				if opts != nil {
					t.Fatalf("no jitter: insert options %+v, want none", opts)
				}
			case "backup:spread":
				if opts == nil {
					t.Fatal("jitter 30s: no scheduled time")
				}
				if d := time.Until(opts.ScheduledAt); d < -time.Second || d > 30*time.Second {
					t.Fatalf("jitter 30s scheduled the run %v from now", d)
				}
			}
		}
	}
}
