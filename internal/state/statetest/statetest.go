// Package statetest is the conformance suite every state.Store
// implementation runs, so that the SQLite and PostgreSQL stores behave the
// same way to their callers.
package statetest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/state"
)

// Run exercises every method of state.Store. open must return a new, empty,
// migrated store for each call and arrange for it to be closed (t.Cleanup);
// the suite may close it earlier itself.
func Run(t *testing.T, open func(t *testing.T) state.Store) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, s state.Store)
	}{
		{"Basics", testBasics},
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"InvalidInput", testInvalidInput},
		{"CreateValue", testCreateValue},
		{"CompareAndSwap", testCompareAndSwap},
		{"CompareAndSwapConcurrent", testCompareAndSwapConcurrent},
		{"DeleteValue", testDeleteValue},
		{"Replicas", testReplicas},
		{"PruneReplicas", testPruneReplicas},
		{"BackupCreateGet", testBackupCreateGet},
		{"BackupZeroTimes", testBackupZeroTimes},
		{"BackupUpdate", testBackupUpdate},
		{"ListBackups", testListBackups},
		{"ListBackupsPagination", testListBackupsPagination},
		{"PutCopy", testPutCopy},
		{"PutCopyConcurrent", testPutCopyConcurrent},
		{"LatestBackup", testLatestBackup},
		{"BackupInvalidInput", testBackupInvalidInput},
		{"Verifications", testVerifications},
		{"DeleteBackup", testDeleteBackup},
		{"Closed", testClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, open(t))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func testBasics(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	if k := s.Kind(); k != state.KindSQLite && k != state.KindPostgres {
		t.Errorf("Kind() = %q, want %q or %q", k, state.KindSQLite, state.KindPostgres)
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping() = %v, want nil", err)
	}
	v, err := s.SchemaVersion(ctx)
	if err != nil || v < 1 {
		t.Errorf("SchemaVersion() = %d, %v, want >= 1, nil", v, err)
	}
}

func testGetMissing(t *testing.T, s state.Store) {
	v, ok, err := s.GetValue(ctxT(t), "missing")
	if v != "" || ok || err != nil {
		t.Errorf(`GetValue("missing") = %q, %v, %v, want "", false, nil`, v, ok, err)
	}
}

func mustGet(t *testing.T, s state.Store, key string) string {
	t.Helper()
	v, ok, err := s.GetValue(ctxT(t), key)
	if err != nil || !ok {
		t.Fatalf("GetValue(%q) = %q, %v, %v, want a value", key, v, ok, err)
	}
	return v
}

func testPutGet(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	tests := []struct{ name, key, value string }{
		{"simple", "jobs.ping.last", "1 hello 2026-01-02T03:04:05Z"},
		{"empty value", "empty", ""},
		{"unicode", "clé/ünïcode ☃", "välue\nwith\ttabs and 'quotes' and \"dq\" and \\"},
		{"long key", strings.Repeat("k", state.MaxKeyLen), "v"},
		{"large value", "large", strings.Repeat("0123456789abcdef", 1<<16)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := s.PutValue(ctx, tt.key, tt.value); err != nil {
				t.Fatalf("PutValue(%q) = %v", tt.key, err)
			}
			if got := mustGet(t, s, tt.key); got != tt.value {
				t.Errorf("GetValue(%q) = %.40q, want %.40q", tt.key, got, tt.value)
			}
		})
	}
	// Overwrite.
	if err := s.PutValue(ctx, "simple", "one"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutValue(ctx, "simple", "two"); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, s, "simple"); got != "two" {
		t.Errorf("GetValue after overwrite = %q, want %q", got, "two")
	}
	// Keys are case-sensitive and exact.
	if _, ok, _ := s.GetValue(ctx, "SIMPLE"); ok {
		t.Errorf(`GetValue("SIMPLE") found a value; keys must be case-sensitive`)
	}
}

func testInvalidInput(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	badKeys := []struct{ name, key string }{
		{"empty", ""},
		{"nul", "a\x00b"},
		{"invalid utf8", "a\xffb"},
		{"too long", strings.Repeat("k", state.MaxKeyLen+1)},
	}
	for _, tt := range badKeys {
		t.Run("key "+tt.name, func(t *testing.T) {
			calls := map[string]error{
				"PutValue":    s.PutValue(ctx, tt.key, "v"),
				"CreateValue": s.CreateValue(ctx, tt.key, "v"),
				"CAS":         s.CompareAndSwapValue(ctx, tt.key, "a", "b"),
				"DeleteValue": s.DeleteValue(ctx, tt.key),
			}
			_, _, calls["GetValue"] = s.GetValue(ctx, tt.key)
			for name, err := range calls {
				if !errors.Is(err, state.ErrInvalid) {
					t.Errorf("%s(%q) = %v, want ErrInvalid", name, tt.key, err)
				}
			}
		})
	}
	for _, v := range []string{"a\x00b", "a\xffb"} {
		if err := s.PutValue(ctx, "k", v); !errors.Is(err, state.ErrInvalid) {
			t.Errorf("PutValue(value %q) = %v, want ErrInvalid", v, err)
		}
	}
	if err := s.Heartbeat(ctx, state.Replica{Hostname: "h"}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("Heartbeat(replica without ID) = %v, want ErrInvalid", err)
	}
	if err := s.Heartbeat(ctx, state.Replica{ID: "r", Hostname: "h\x00"}); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("Heartbeat(hostname with NUL) = %v, want ErrInvalid", err)
	}
}

func testCreateValue(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	if err := s.CreateValue(ctx, "k", "first"); err != nil {
		t.Fatalf("CreateValue(new key) = %v, want nil", err)
	}
	if err := s.CreateValue(ctx, "k", "second"); !errors.Is(err, state.ErrConflict) {
		t.Errorf("CreateValue(existing key) = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "k"); got != "first" {
		t.Errorf("GetValue = %q, want %q (CreateValue must not overwrite)", got, "first")
	}
}

func testCompareAndSwap(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	if err := s.CompareAndSwapValue(ctx, "k", "", "x"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("CompareAndSwapValue(missing) = %v, want ErrNotFound", err)
	}
	if _, ok, _ := s.GetValue(ctx, "k"); ok {
		t.Errorf("CompareAndSwapValue(missing) created the key")
	}
	if err := s.PutValue(ctx, "k", "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.CompareAndSwapValue(ctx, "k", "b", "c"); !errors.Is(err, state.ErrConflict) {
		t.Errorf("CompareAndSwapValue(wrong old) = %v, want ErrConflict", err)
	}
	if got := mustGet(t, s, "k"); got != "a" {
		t.Errorf("value after failed swap = %q, want %q", got, "a")
	}
	if err := s.CompareAndSwapValue(ctx, "k", "a", "c"); err != nil {
		t.Errorf("CompareAndSwapValue(right old) = %v, want nil", err)
	}
	if got := mustGet(t, s, "k"); got != "c" {
		t.Errorf("value after swap = %q, want %q", got, "c")
	}
	// Swapping in the same value is a successful no-op.
	if err := s.CompareAndSwapValue(ctx, "k", "c", "c"); err != nil {
		t.Errorf("CompareAndSwapValue(same) = %v, want nil", err)
	}
}

// testCompareAndSwapConcurrent increments a counter from several goroutines
// with CAS loops; no increment may be lost.
func testCompareAndSwapConcurrent(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	const workers, each = 6, 10
	if err := s.PutValue(ctx, "counter", "0"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Go(func() {
			for range each {
				for {
					cur, _, err := s.GetValue(ctx, "counter")
					if err != nil {
						errs <- err
						return
					}
					n, _ := strconv.Atoi(cur)
					err = s.CompareAndSwapValue(ctx, "counter", cur, strconv.Itoa(n+1))
					if errors.Is(err, state.ErrConflict) {
						continue
					}
					if err != nil {
						errs <- err
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("CAS loop: %v", err)
	}
	if got, want := mustGet(t, s, "counter"), strconv.Itoa(workers*each); got != want {
		t.Errorf("counter = %s, want %s (lost updates)", got, want)
	}
}

func testDeleteValue(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	if err := s.PutValue(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteValue(ctx, "k"); err != nil {
		t.Errorf("DeleteValue(existing) = %v", err)
	}
	if _, ok, err := s.GetValue(ctx, "k"); ok || err != nil {
		t.Errorf("GetValue after delete = _, %v, %v, want false, nil", ok, err)
	}
	if err := s.DeleteValue(ctx, "k"); err != nil {
		t.Errorf("DeleteValue(missing) = %v, want nil", err)
	}
	if err := s.CreateValue(ctx, "k", "again"); err != nil {
		t.Errorf("CreateValue after delete = %v, want nil", err)
	}
}

func testReplicas(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	got, err := s.Replicas(ctx)
	if err != nil || len(got) != 0 {
		t.Fatalf("Replicas(empty store) = %v, %v, want none", got, err)
	}
	// Times with sub-microsecond parts and a non-UTC zone come back in UTC,
	// truncated to microseconds.
	zone := time.FixedZone("X", 3*3600)
	started := time.Date(2026, 3, 4, 5, 6, 7, 123456789, zone)
	b := state.Replica{ID: "b-replica", Hostname: "host-b", Version: "v1.2.3", ConfigHash: "sha256:bb",
		StartedAt: started, SeenAt: started.Add(time.Minute)}
	a := state.Replica{ID: "a-replica", Hostname: "host-a", Version: "v1.2.3", ConfigHash: "sha256:aa",
		StartedAt: started, SeenAt: started.Add(2 * time.Minute)}
	for _, r := range []state.Replica{b, a} {
		if err := s.Heartbeat(ctx, r); err != nil {
			t.Fatalf("Heartbeat(%s) = %v", r.ID, err)
		}
	}
	norm := func(r state.Replica) state.Replica {
		r.StartedAt, r.SeenAt = state.Timestamp(r.StartedAt), state.Timestamp(r.SeenAt)
		return r
	}
	got, err = s.Replicas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]state.Replica{norm(a), norm(b)}, got); diff != "" {
		t.Errorf("Replicas() mismatch (-want +got):\n%s", diff)
	}
	for _, r := range got {
		if r.SeenAt.Location() != time.UTC || r.StartedAt.Location() != time.UTC {
			t.Errorf("Replicas() %s times not in UTC: %v %v", r.ID, r.StartedAt, r.SeenAt)
		}
	}

	// A later heartbeat updates the row; a zero SeenAt means now.
	b.Version, b.ConfigHash, b.SeenAt = "v1.3.0", "sha256:b2", time.Time{}
	before := time.Now().Add(-time.Second)
	if err := s.Heartbeat(ctx, b); err != nil {
		t.Fatal(err)
	}
	got, err = s.Replicas(ctx)
	if err != nil || len(got) != 2 {
		t.Fatalf("Replicas() = %v, %v, want 2 replicas", got, err)
	}
	gb := got[1]
	if gb.Version != "v1.3.0" || gb.ConfigHash != "sha256:b2" {
		t.Errorf("after heartbeat, replica = %+v, want version v1.3.0, config hash sha256:b2", gb)
	}
	if gb.SeenAt.Before(before) || gb.SeenAt.After(time.Now().Add(time.Second)) {
		t.Errorf("heartbeat with zero SeenAt stored %v, want about now", gb.SeenAt)
	}
}

func testPruneReplicas(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range 5 {
		r := state.Replica{ID: fmt.Sprintf("r%d", i), Hostname: "h", StartedAt: base, SeenAt: base.Add(time.Duration(i) * time.Minute)}
		if err := s.Heartbeat(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneReplicas(ctx, base.Add(2*time.Minute))
	if err != nil || n != 2 {
		t.Errorf("PruneReplicas(base+2m) = %d, %v, want 2, nil", n, err)
	}
	got, err := s.Replicas(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range got {
		ids = append(ids, r.ID)
	}
	if diff := cmp.Diff([]string{"r2", "r3", "r4"}, ids); diff != "" {
		t.Errorf("replicas after prune (-want +got):\n%s", diff)
	}
}

func testClosed(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close() = %v, want nil", err)
	}
	_, _, gerr := s.GetValue(ctx, "k")
	_, verr := s.SchemaVersion(ctx)
	_, rerr := s.Replicas(ctx)
	_, prerr := s.PruneReplicas(ctx, time.Now())
	_, _, gberr := s.GetBackup(ctx, backupID(1))
	_, _, lberr := s.ListBackups(ctx, state.BackupFilter{})
	_, latesterr := s.LatestBackup(ctx, "db")
	calls := map[string]error{
		"Ping":          s.Ping(ctx),
		"SchemaVersion": verr,
		"GetValue":      gerr,
		"PutValue":      s.PutValue(ctx, "k", "v"),
		"CreateValue":   s.CreateValue(ctx, "k", "v"),
		"CAS":           s.CompareAndSwapValue(ctx, "k", "v", "w"),
		"DeleteValue":   s.DeleteValue(ctx, "k"),
		"Heartbeat":     s.Heartbeat(ctx, state.Replica{ID: "r"}),
		"Replicas":      rerr,
		"PruneReplicas": prerr,
		"CreateBackup":  s.CreateBackup(ctx, newBackup(1, "db")),
		"UpdateBackup":  s.UpdateBackup(ctx, newBackup(1, "db")),
		"GetBackup":     gberr,
		"ListBackups":   lberr,
		"PutCopy":       s.PutCopy(ctx, state.Copy{BackupID: backupID(1), Target: "s3", State: state.CopyWriting}),
		"LatestBackup":  latesterr,
	}
	for name, err := range calls {
		if !errors.Is(err, state.ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
}
