package rules

import (
	"context"
	"encoding/gob"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// instantAt runs an instant query over the Evaluator's local TSDB with its
// engine and returns the single sample's value (ok false if none).
func instantAt(t *testing.T, e *Evaluator, q string, at time.Time) (float64, bool) {
	t.Helper()
	ctx := context.Background()
	qry, err := e.Engine().NewInstantQuery(ctx, e.Storage(), nil, q, at)
	if err != nil {
		t.Fatal(err)
	}
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		t.Fatalf("%s: %v", q, res.Err)
	}
	v, err := res.Vector()
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	if len(v) != 1 {
		return 0, false
	}
	return v[0].F, true
}

// copyDir copies a directory tree as it is on disk at this moment.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		return errors.Join(err, out.Close())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLocalTSDBSurvivesKill appends through the Collector, as the daemon
// does, and opens a second Evaluator on the files exactly as they are on
// disk while the first is still open (what a kill -9 leaves: no Close, no
// last flush): every committed sample is back, replayed from the WAL. A
// clean Close and reopen of the original directory keeps them as well.
func TestLocalTSDBSurvivesKill(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "alerts", "tsdb")
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "opsd_test_value"})
	reg.MustRegister(g)

	e, err := New(Options{Dir: dir, DisableBuiltin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	c := NewCollector(reg, e.Storage(), map[string]string{"job": "opsd", "instance": "h1"}, nil)
	base := time.Now().Add(-10 * time.Minute).Truncate(time.Second)
	const n = 60
	var last time.Time
	for i := range n {
		last = base.Add(time.Duration(i) * 5 * time.Second)
		c.now = func() time.Time { return last }
		g.Set(float64(i))
		if err := c.Collect(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, e *Evaluator) {
		t.Helper()
		if got, ok := instantAt(t, e, `count_over_time(opsd_test_value{job="opsd",instance="h1"}[10m])`, last); !ok || got != n {
			t.Errorf("%s: %d samples collected, %v back (found: %v)", name, n, got, ok)
		}
		if got, ok := instantAt(t, e, `opsd_test_value`, last); !ok || got != n-1 {
			t.Errorf("%s: last value %v (found: %v), want %d", name, got, ok, n-1)
		}
		if got, ok := instantAt(t, e, `sum_over_time(up[10m])`, last); !ok || got != n {
			t.Errorf("%s: up samples %v (found: %v), want %d", name, got, ok, n)
		}
	}
	check("before the kill", e)

	killed := filepath.Join(t.TempDir(), "tsdb")
	copyDir(t, dir, killed)
	if _, err := os.Stat(filepath.Join(killed, "wal")); err != nil {
		t.Fatalf("no WAL in the local TSDB: %v", err)
	}
	e2, err := New(Options{Dir: killed, DisableBuiltin: true})
	if err != nil {
		t.Fatalf("reopen after kill -9: %v", err)
	}
	check("after kill -9", e2)
	if err := e2.Close(); err != nil {
		t.Fatal(err)
	}

	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	e3, err := New(Options{Dir: dir, DisableBuiltin: true})
	if err != nil {
		t.Fatalf("reopen after Close: %v", err)
	}
	defer e3.Close()
	check("after a clean restart", e3)
}

// TestLegacySnapshotImported: the snapshot.gob the local store of older
// opsd versions left in data_dir/alerts/tsdb does not stop tsdb.Open, its
// samples (the `for` state among them) are imported once, and the file is
// removed.
func TestLegacySnapshotImported(t *testing.T) {
	dir := t.TempDir()
	now := time.Now().Truncate(time.Second)
	f, err := os.Create(filepath.Join(dir, legacySnapshot))
	if err != nil {
		t.Fatal(err)
	}
	enc := gob.NewEncoder(f)
	for _, ls := range []legacySeries{
		{Labels: []string{"__name__", "ALERTS_FOR_STATE", "alertname", "Held"},
			T: []int64{now.Add(-2 * time.Minute).UnixMilli(), now.Add(-time.Minute).UnixMilli()},
			V: []float64{float64(now.Add(-time.Hour).Unix()), float64(now.Add(-time.Hour).Unix())}},
		{Labels: []string{"__name__", "opsd_test_value", "job", "opsd"},
			T: []int64{now.Add(-3 * time.Minute).UnixMilli(), now.Add(-2 * time.Minute).UnixMilli(), now.Add(-time.Minute).UnixMilli()},
			V: []float64{1, 2, 3}},
	} {
		if err := enc.Encode(&ls); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, legacySnapshot+".tmp"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}

	e, err := New(Options{Dir: dir, DisableBuiltin: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if got, ok := instantAt(t, e, `count_over_time(opsd_test_value[10m])`, now); !ok || got != 3 {
		t.Errorf("imported samples of opsd_test_value: %v (found: %v), want 3", got, ok)
	}
	if got, ok := instantAt(t, e, `ALERTS_FOR_STATE{alertname="Held"}`, now); !ok || got != float64(now.Add(-time.Hour).Unix()) {
		t.Errorf("imported ALERTS_FOR_STATE: %v (found: %v)", got, ok)
	}
	for _, name := range []string{legacySnapshot, legacySnapshot + ".tmp"} {
		if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after the import (%v)", name, err)
		}
	}
}
