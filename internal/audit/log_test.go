package audit

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsd-dev/opsd/internal/action"
)

func TestCanonical(t *testing.T) {
	type inner struct {
		Z int    `json:"z"`
		A string `json:"a"`
	}
	tests := []struct {
		name string
		give any
		want string
	}{
		{"sorted keys", map[string]any{"b": 1, "a": 2, "B": 3}, `{"B":3,"a":2,"b":1}`},
		{"nested", map[string]any{"x": []any{map[string]any{"k": true, "j": nil}}}, `{"x":[{"j":null,"k":true}]}`},
		{"no html escaping", "<&>", `"<&>"`},
		{"escapes", "a\"b\\c\n\x01", `"a\"b\\c\n\u0001"`},
		{"invalid utf8", "a\xffb", "\"a\uFFFDb\""},
		{"struct through json tags", inner{Z: 1, A: "x"}, `{"a":"x","z":1}`},
		{"floats", []any{1.5, 2.0, 1e21, json.Number("1.50"), json.Number("12")}, `[1.5,2,1e+21,1.5,12]`},
		{"string slice", []string{"b", "a"}, `["b","a"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := normalize(tt.give)
			if err != nil {
				t.Fatal(err)
			}
			got, err := appendCanonical(nil, n)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("canonical(%v) = %s, want %s", tt.give, got, tt.want)
			}
			again, err := Canonicalize(got)
			if err != nil || string(again) != string(got) {
				t.Errorf("Canonicalize(%s) = %s, %v; want it unchanged", got, again, err)
			}
		})
	}
}

func TestEntryEncoding(t *testing.T) {
	key := testKey(t, "opsd.test/a")
	r := testRecord(3)
	r.AcceptedIndex = 2
	r.Outcome, r.Error = action.Failed, "disk \"full\""
	r.Params["dsn"] = "postgres://u:hunter2@db/x"
	r.Params["scratch"] = "s3cr3t-value"
	r.Secrets = []string{"scratch"}
	e, err := entryFromRecord(key.HMACKey, r)
	if err != nil {
		t.Fatal(err)
	}
	e.Index = 7
	raw, err := e.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"hunter2", "s3cr3t-value"} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("entry %s contains secret %q", raw, secret)
		}
	}
	canon, err := Canonicalize(raw)
	if err != nil || string(canon) != string(raw) {
		t.Errorf("entry is not canonical:\n got %s\nwant %s (%v)", raw, canon, err)
	}
	want := `{"accepted_index":2,"action":"backup.run","actor":{"kind":"token","name":"ci"},"error":"disk \"full\"","index":7,"object":"source/db-3","outcome":"failed","params":{"dsn":"` +
		mustHash(t, key.HMACKey, "postgres://u:hunter2@db/x") + `","n":3,"note":"<&> \"quoted\" ü","scratch":"` + mustHash(t, key.HMACKey, "s3cr3t-value") +
		`","wait":false},"request_id":"req-3","time":"2026-11-23T07:45:00.000000003Z","v":1}`
	if diff := cmp.Diff(want, string(raw)); diff != "" {
		t.Errorf("entry JSON (-want +got):\n%s", diff)
	}
	back, err := DecodeEntry(raw)
	if err != nil {
		t.Fatal(err)
	}
	again, err := back.MarshalJSON()
	if err != nil || string(again) != string(raw) {
		t.Errorf("decode+encode = %s, want %s", again, raw)
	}
	if got, err := leafIndex(raw); got != 7 || err != nil {
		t.Errorf("leafIndex = %d, %v; want 7", got, err)
	}
}

func mustHash(t *testing.T, key []byte, v any) string {
	h, err := HashSecret(key, v)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, SecretPrefix) || len(h) != len(SecretPrefix)+64 {
		t.Fatalf("HashSecret = %q", h)
	}
	return h
}

func TestLeafIndexMalformed(t *testing.T) {
	for _, give := range []string{``, `[]`, `{"a":1}`, `{"index":"x"}`, `{"a":"\"index\":4","b":{"index":3}}`} {
		if n, err := leafIndex([]byte(give)); err == nil {
			t.Errorf("leafIndex(%s) = %d, want error", give, n)
		}
	}
	if n, err := leafIndex([]byte(`{"a":{"index":3},"b":[1,{"x":"}"}],"index":9,"z":1}`)); n != 9 || err != nil {
		t.Errorf("leafIndex = %d, %v; want 9", n, err)
	}
}

func TestAppendProveReopen(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, "opsd.test/db-1")
	reg := prometheus.NewRegistry()
	l := openLog(t, dir, key, func(o *Options) { o.Metrics = NewMetrics(reg) })
	var wg sync.WaitGroup
	seen := make([]int64, 0, 200)
	var mu sync.Mutex
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				idx, err := l.Record(context.Background(), testRecord(w*100+i))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen = append(seen, idx)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if got, want := l.Size(), int64(201); got != want {
		t.Fatalf("Size() = %d, want %d", got, want)
	}
	uniq := map[int64]bool{}
	for _, i := range seen {
		if i < 1 || i > 200 || uniq[i] {
			t.Fatalf("index %d duplicated or out of range", i)
		}
		uniq[i] = true
	}
	if got := testutil.ToFloat64(l.metrics.treeSize); got != 201 {
		t.Errorf("opsd_audit_tree_size = %v, want 201", got)
	}
	mustCheckpoint(t, l)
	signed, err := l.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCheckpoint(signed, key.Verifier)
	if err != nil {
		t.Fatal(err)
	}
	if c.Size != 201 || c.Origin != key.Name {
		t.Errorf("checkpoint = %+v", c)
	}
	ents, err := l.Entries(0, 500)
	if err != nil || len(ents) != 201 {
		t.Fatalf("Entries = %d, %v", len(ents), err)
	}
	if ents[0].Entry.Action != ActionGenesis || ents[0].Entry.Params["public_key"] != key.VerifierKey {
		t.Errorf("genesis = %+v", ents[0].Entry)
	}
	for _, i := range []int64{0, 1, 100, 200} {
		p, err := l.ProveRecord(i, c.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckRecord(p, c.Size, c.Root, i, tlog.RecordHash(ents[i].Raw)); err != nil {
			t.Errorf("CheckRecord(%d) = %v", i, err)
		}
	}
	old, _ := l.TreeHash(50)
	tp, err := l.ProveTree(50, 201)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckTree(tp, 201, c.Root, 50, old); err != nil {
		t.Errorf("CheckTree = %v", err)
	}
	if _, err := l.ProveRecord(5, 202); !errors.Is(err, ErrNotFound) {
		t.Errorf("ProveRecord beyond size = %v, want ErrNotFound", err)
	}
	page, err := l.EntriesPage(195, 3)
	if err != nil || len(page.Items) != 3 || page.NextCursor != "198" {
		t.Errorf("EntriesPage = %d items, cursor %q, %v", len(page.Items), page.NextCursor, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Record(context.Background(), testRecord(1)); !errors.Is(err, ErrClosed) {
		t.Errorf("Record after Close = %v, want ErrClosed", err)
	}

	l2 := openLog(t, dir, key)
	if l2.Size() != 201 {
		t.Errorf("reopened Size() = %d", l2.Size())
	}
	fill(t, l2, 1000, 5)
	again, err := l2.Entries(0, 500)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(ents, again[:201]); diff != "" {
		t.Errorf("entries changed across reopen (-before +after):\n%s", diff)
	}
	if err := l2.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(context.Background(), dir, key.Verifier, nil)
	if err != nil || rep.Status() != StatusIntact {
		t.Fatalf("Verify = %+v, %v", rep.Failure, err)
	}
	if rep.EntriesChecked != 206 || rep.CheckpointsChecked < 3 {
		t.Errorf("Verify checked %d entries, %d checkpoints", rep.EntriesChecked, rep.CheckpointsChecked)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, "opsd.test/lock")
	l := openLog(t, dir, key)
	defer l.Close()
	if _, err := Open(context.Background(), dir, Options{Key: key}); !errors.Is(err, ErrLocked) {
		t.Errorf("second Open = %v, want ErrLocked", err)
	}
}

func TestRotation(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, "opsd.test/rot")
	l := openLog(t, dir, key, func(o *Options) { o.SegmentSize = 4096 })
	fill(t, l, 0, 300)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	firsts, err := listSegments(OSFS{}, dir)
	if err != nil || len(firsts) < 5 {
		t.Fatalf("segments = %v, %v; want several", firsts, err)
	}
	// A lost idx file is rebuilt from its segment.
	if err := os.Remove(filepath.Join(dir, idxName(firsts[1]))); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, key, func(o *Options) { o.SegmentSize = 4096 })
	ents, err := l.Entries(0, 1000)
	if err != nil || len(ents) != 301 {
		t.Fatalf("Entries = %d, %v", len(ents), err)
	}
	for i, e := range ents {
		if e.Index != int64(i) || e.Entry.Index != int64(i) {
			t.Fatalf("entry %d has index %d/%d", i, e.Index, e.Entry.Index)
		}
	}
	mid, err := l.Entries(150, 10)
	if err != nil || mid[0].Index != 150 || len(mid) != 10 {
		t.Errorf("Entries(150, 10) = %v, %v", mid, err)
	}
	l.Close()
	rep, _ := Verify(context.Background(), dir, key.Verifier, nil)
	if rep.Status() != StatusIntact || rep.SegmentsChecked != len(firsts) {
		t.Errorf("Verify = %s %+v, segments %d", rep.Status(), rep.Failure, rep.SegmentsChecked)
	}
}

func TestTornTailRecovery(t *testing.T) {
	tests := []struct {
		name string
		tail func(last []byte) []byte
	}{
		{"partial header", func([]byte) []byte { return []byte{0, 0} }},
		{"partial payload", func(last []byte) []byte { return last[:len(last)/2] }},
		{"zeroed record", func(last []byte) []byte { return make([]byte, len(last)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			key := testKey(t, "opsd.test/torn")
			l := openLog(t, dir, key)
			fill(t, l, 0, 20)
			l.Close()
			seg := filepath.Join(dir, segName(0))
			before := fileSize(t, seg)
			raw, _ := os.ReadFile(seg)
			last := appendRecord(nil, raw[len(raw)-100:])
			f, _ := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
			torn := tt.tail(last)
			f.Write(torn)
			f.Close()

			rep, _ := Verify(context.Background(), dir, key.Verifier, nil)
			if rep.Status() != StatusIntact || len(rep.Warnings) == 0 {
				t.Errorf("Verify before recovery = %s %+v %v; want intact with a torn-tail warning", rep.Status(), rep.Failure, rep.Warnings)
			}
			l = openLog(t, dir, key)
			defer l.Close()
			if l.Size() != 22 {
				t.Fatalf("Size() after recovery = %d, want 22 (20 + genesis + recovery entry)", l.Size())
			}
			ents, _ := l.Entries(21, 1)
			e := ents[0].Entry
			if e.Action != ActionRecover || e.Params["offset"] != json.Number(itoa(before)) || e.Params["bytes"] != json.Number(itoa(int64(len(torn)))) {
				t.Errorf("recovery entry = %+v", e)
			}
			q, _ := filepath.Glob(filepath.Join(dir, "quarantine", "*"))
			if len(q) != 1 || fileSize(t, q[0]) != int64(len(torn)) {
				t.Errorf("quarantine = %v", q)
			}
			l.Close()
			if rep, _ := Verify(context.Background(), dir, key.Verifier, nil); rep.Status() != StatusIntact {
				t.Errorf("Verify after recovery = %+v", rep.Failure)
			}
		})
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestDiskFull(t *testing.T) {
	tests := []struct {
		name  string
		fault func(*faultFS, bool)
		errno syscall.Errno
	}{
		{"ENOSPC on write", func(f *faultFS, on bool) { f.full.Store(on) }, syscall.ENOSPC},
		{"EIO on fsync", func(f *faultFS, on bool) { f.eio.Store(on) }, syscall.EIO},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			key := testKey(t, "opsd.test/full")
			ffs := &faultFS{}
			reg := prometheus.NewRegistry()
			l := openLog(t, dir, key, func(o *Options) { o.FS = ffs; o.Metrics = NewMetrics(reg) })
			defer l.Close()
			fill(t, l, 0, 10)
			seg := filepath.Join(dir, segName(0))
			segBefore, hashBefore := fileSize(t, seg), fileSize(t, filepath.Join(dir, hashFileName))

			tt.fault(ffs, true)
			d := action.NewDispatcher(l)
			ran := false
			err := d.Do(context.Background(), testRecord(99).Request, func(context.Context) error { ran = true; return nil })
			if !errors.Is(err, action.ErrAuditUnavailable) || ran {
				t.Fatalf("Do with broken disk = %v (ran %v), want ErrAuditUnavailable and not run", err, ran)
			}
			_, err = l.Record(context.Background(), testRecord(100))
			if !errors.Is(err, tt.errno) {
				t.Errorf("Record = %v, want %v", err, tt.errno)
			}
			if l.Healthy() == nil {
				t.Error("Healthy() = nil after a failed append")
			}
			if got := testutil.ToFloat64(l.metrics.appendFailures); got != 2 {
				t.Errorf("opsd_audit_append_failures_total = %v, want 2", got)
			}
			if got := fileSize(t, seg); got != segBefore {
				t.Errorf("segment size = %d after failure, want %d (nothing half-written)", got, segBefore)
			}
			if got := fileSize(t, filepath.Join(dir, hashFileName)); got != hashBefore {
				t.Errorf("hash store size = %d after failure, want %d", got, hashBefore)
			}
			if l.Size() != 11 {
				t.Errorf("Size() = %d, want 11", l.Size())
			}

			tt.fault(ffs, false)
			idx, err := l.Record(context.Background(), testRecord(101))
			if err != nil || idx != 11 {
				t.Fatalf("Record after recovery = %d, %v; want 11", idx, err)
			}
			if err := l.Healthy(); err != nil {
				t.Errorf("Healthy() after recovery = %v", err)
			}
			l.Close()
			if rep, _ := Verify(context.Background(), dir, key.Verifier, nil); rep.Status() != StatusIntact {
				t.Errorf("Verify = %+v", rep.Failure)
			}
		})
	}
}

func TestRunRecoversHealthAndPushesWitness(t *testing.T) {
	dir, wdir := t.TempDir(), t.TempDir()
	key := testKey(t, "opsd.test/run")
	ffs := &faultFS{}
	w := NewDirWitness(wdir)
	l := openLog(t, dir, key, func(o *Options) {
		o.FS = ffs
		o.CheckpointInterval = 20 * time.Millisecond
		o.Witnesses = []Witness{w}
	})
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- l.Run(ctx) }()
	fill(t, l, 0, 5)
	ffs.full.Store(true)
	if _, err := l.Record(context.Background(), testRecord(9)); err == nil {
		t.Fatal("Record on a full disk succeeded")
	}
	ffs.full.Store(false)
	deadline := time.Now().Add(5 * time.Second)
	for l.Healthy() != nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := l.Healthy(); err != nil {
		t.Errorf("Healthy() = %v; the probe should have recovered the log", err)
	}
	fill(t, l, 10, 3)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	raw, err := w.LatestCheckpoint(context.Background(), key.Name)
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCheckpoint(raw, key.Verifier)
	if err != nil || c.Size != l.Size() {
		t.Errorf("witness checkpoint = %+v, %v; want size %d", c, err, l.Size())
	}
}

func TestGroupCommitSharesFsync(t *testing.T) {
	dir := t.TempDir()
	ffs := &faultFS{}
	l := openLog(t, dir, testKey(t, "opsd.test/gc"), func(o *Options) { o.FS = ffs })
	defer l.Close()
	before := ffs.syncs.Load()
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				if _, err := l.Record(context.Background(), testRecord(w*20+i)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	syncs := ffs.syncs.Load() - before
	if syncs >= 1280/2 {
		t.Errorf("1280 concurrent appends took %d fsyncs; group commit should share them", syncs)
	}
	t.Logf("1280 appends from 64 writers: %d fsyncs", syncs)
}

func TestWait(t *testing.T) {
	l := openLog(t, t.TempDir(), testKey(t, "opsd.test/wait"))
	defer l.Close()
	got := make(chan int64)
	go func() {
		n, _ := l.Wait(context.Background(), 1)
		got <- n
	}()
	time.Sleep(10 * time.Millisecond)
	fill(t, l, 0, 1)
	if n := <-got; n != 2 {
		t.Errorf("Wait = %d, want 2", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := l.Wait(ctx, 5); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait = %v, want deadline", err)
	}
}

func TestCrashWhileCreatingSegment(t *testing.T) {
	dir := t.TempDir()
	key := testKey(t, "opsd.test/newseg")
	l := openLog(t, dir, key)
	fill(t, l, 0, 4)
	l.Close()
	// Sealed segment 0 with its idx, and segment 5 created but its header
	// never written, as a crash during rotation leaves them.
	if err := writeIdx(OSFS{}, dir, 0, l.segs[0].offsets); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, segName(5)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, dir, key)
	fill(t, l, 4, 3)
	if l.Size() != 8 {
		t.Errorf("Size() = %d, want 8", l.Size())
	}
	l.Close()
	if rep, _ := Verify(context.Background(), dir, key.Verifier, nil); rep.Status() != StatusIntact || rep.SegmentsChecked != 2 {
		t.Errorf("Verify = %s %+v (%d segments)", rep.Status(), rep.Failure, rep.SegmentsChecked)
	}
}
