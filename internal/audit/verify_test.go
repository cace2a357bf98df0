package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsd-dev/opsd/internal/signing"
)

// testLog is a closed log of 31 entries with checkpoints #1..#4 of sizes
// 1, 11, 21, 31, each pushed to a directory witness, and a copy of the log
// taken at size 21.
type testLog struct {
	dir, witness, at21 string
	key                *signing.Key
}

func buildTestLog(t *testing.T) testLog {
	t.Helper()
	tl := testLog{dir: t.TempDir(), witness: t.TempDir(), at21: filepath.Join(t.TempDir(), "at21"), key: testKey(t, "opsd.test/verify")}
	l := openLog(t, tl.dir, tl.key)
	w := NewDirWitness(tl.witness)
	push := func() {
		mustCheckpoint(t, l)
		signed, _ := l.Checkpoint()
		if err := w.PutCheckpoint(context.Background(), tl.key.Name, l.Size(), signed); err != nil {
			t.Fatal(err)
		}
	}
	push()
	for round := range 3 {
		fill(t, l, round*10, 10)
		push()
		if round == 1 {
			// Snapshot while the log is quiescent (committer idle, fsynced).
			copyDir(t, tl.dir, tl.at21)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return tl
}

// readRecords returns the payloads of a framed file after its header.
func readRecords(t *testing.T, path string, header int64) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rr := newRecordReader(io.NewSectionReader(f, header, 1<<40), header, 4096)
	var out [][]byte
	for {
		p, _, err := rr.next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, bytes.Clone(p))
	}
}

// writeRecords rewrites a framed file with fresh, valid framing.
func writeRecords(t *testing.T, path string, header []byte, recs [][]byte) {
	t.Helper()
	buf := bytes.Clone(header)
	for _, r := range recs {
		buf = appendRecord(buf, r)
	}
	if err := os.WriteFile(path, buf, 0o600); err != nil {
		t.Fatal(err)
	}
}

// rebuildHashes rewrites the hash store to match recs, as a careful
// attacker would.
func rebuildHashes(t *testing.T, dir string, recs [][]byte) {
	t.Helper()
	var all []tlog.Hash
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = all[x]
		}
		return out, nil
	})
	for i, rec := range recs {
		hs, err := tlog.StoredHashes(int64(i), rec, r)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, hs...)
	}
	buf := []byte(hashHeader)
	for _, h := range all {
		buf = append(buf, h[:]...)
	}
	if err := os.WriteFile(filepath.Join(dir, hashFileName), buf, 0o600); err != nil {
		t.Fatal(err)
	}
}

func segPath(dir string) string { return filepath.Join(dir, segName(0)) }
func ckPath(dir string) string  { return filepath.Join(dir, ckFileName) }

func editEntries(t *testing.T, dir string, edit func([][]byte) [][]byte) {
	t.Helper()
	recs := edit(readRecords(t, segPath(dir), segHeaderSize))
	writeRecords(t, segPath(dir), segHeader(0), recs)
}

func editCheckpoints(t *testing.T, dir string, edit func([][]byte) [][]byte) {
	t.Helper()
	recs := edit(readRecords(t, ckPath(dir), int64(len(ckMagic))))
	writeRecords(t, ckPath(dir), []byte(ckMagic), recs)
}

// where is the part of a Failure a test pins down.
type where struct {
	Status     Status
	Index      int64 // -1: none
	Checkpoint int   // 0: none
	Witness    bool
	Reason     string // substring
}

func whereOf(f *Failure) where {
	if f == nil {
		return where{Status: StatusIntact, Index: -1}
	}
	w := where{Status: f.Status, Index: -1, Witness: f.Witness != "", Reason: f.Reason}
	if f.Index != nil {
		w.Index = *f.Index
	}
	if f.Checkpoint != nil {
		w.Checkpoint = *f.Checkpoint
	}
	return w
}

func TestVerifyTampering(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(t *testing.T, tl *testLog) (dir string)
		want   where
	}{
		{
			name:   "intact",
			tamper: func(t *testing.T, tl *testLog) string { return tl.dir },
			want:   where{Status: StatusIntact, Index: -1},
		},
		{
			name: "flip one byte of an entry",
			tamper: func(t *testing.T, tl *testLog) string {
				raw, _ := os.ReadFile(segPath(tl.dir))
				i := bytes.Index(raw, []byte(`"index":5,`))
				raw[i+20] ^= 0x01
				os.WriteFile(segPath(tl.dir), raw, 0o600)
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 5, Reason: "checksum mismatch"},
		},
		{
			name: "flip one byte, checksum recomputed",
			tamper: func(t *testing.T, tl *testLog) string {
				editEntries(t, tl.dir, func(r [][]byte) [][]byte {
					r[5] = bytes.Replace(r[5], []byte("backup.run"), []byte("backup.rum"), 1)
					return r
				})
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 5, Reason: "differs from the stored hash"},
		},
		{
			name: "flip one byte, checksum and stored hashes recomputed",
			tamper: func(t *testing.T, tl *testLog) string {
				var recs [][]byte
				editEntries(t, tl.dir, func(r [][]byte) [][]byte {
					r[5] = bytes.Replace(r[5], []byte("backup.run"), []byte("backup.rum"), 1)
					recs = r
					return r
				})
				rebuildHashes(t, tl.dir, recs)
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 1, Checkpoint: 2, Reason: "an entry in 1..10 was changed"},
		},
		{
			name: "delete an entry",
			tamper: func(t *testing.T, tl *testLog) string {
				editEntries(t, tl.dir, func(r [][]byte) [][]byte { return append(r[:5], r[6:]...) })
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 5, Reason: "says index 6"},
		},
		{
			name: "swap two entries",
			tamper: func(t *testing.T, tl *testLog) string {
				editEntries(t, tl.dir, func(r [][]byte) [][]byte { r[5], r[6] = r[6], r[5]; return r })
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 5, Reason: "says index 6"},
		},
		{
			name: "insert an entry",
			tamper: func(t *testing.T, tl *testLog) string {
				editEntries(t, tl.dir, func(r [][]byte) [][]byte {
					return append(r[:6], append([][]byte{bytes.Clone(r[5])}, r[6:]...)...)
				})
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 6, Reason: "says index 5"},
		},
		{
			name: "truncate the tail below the last checkpoint",
			tamper: func(t *testing.T, tl *testLog) string {
				editEntries(t, tl.dir, func(r [][]byte) [][]byte { return r[:25] })
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: 25, Checkpoint: 4, Reason: "entries 25..30 were removed"},
		},
		{
			name: "log replaced by one signed with another key",
			tamper: func(t *testing.T, tl *testLog) string {
				dir := t.TempDir()
				l := openLog(t, dir, testKey(t, tl.key.Name))
				fill(t, l, 0, 30)
				l.Close()
				return dir
			},
			want: where{Status: StatusTampered, Index: 0, Reason: "not the trusted key"},
		},
		{
			name: "checkpoints re-signed with another key",
			tamper: func(t *testing.T, tl *testLog) string {
				other := testKey(t, tl.key.Name)
				editCheckpoints(t, tl.dir, func(r [][]byte) [][]byte {
					for i, raw := range r {
						n, err := note.Open(raw, note.VerifierList(tl.key.Verifier))
						if err != nil {
							t.Fatal(err)
						}
						if r[i], err = note.Sign(&note.Note{Text: n.Text}, other.Signer); err != nil {
							t.Fatal(err)
						}
					}
					return r
				})
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: -1, Checkpoint: 1, Reason: "not signed by the trusted key"},
		},
		{
			name: "checkpoint with a bad signature",
			tamper: func(t *testing.T, tl *testLog) string {
				editCheckpoints(t, tl.dir, func(r [][]byte) [][]byte {
					r[2][len(r[2])-5] ^= 0x04 // inside the base64 signature
					return r
				})
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: -1, Checkpoint: 3, Reason: "signature"},
		},
		{
			name: "checkpoint smaller than an earlier one (rollback)",
			tamper: func(t *testing.T, tl *testLog) string {
				editCheckpoints(t, tl.dir, func(r [][]byte) [][]byte { return append(r, r[1]) })
				return tl.dir
			},
			want: where{Status: StatusTampered, Index: -1, Checkpoint: 5, Reason: "rollback"},
		},
		{
			name: "witness holds a newer checkpoint than the log",
			tamper: func(t *testing.T, tl *testLog) string {
				return tl.at21
			},
			want: where{Status: StatusTampered, Index: 21, Witness: true, Reason: "rolled back"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := buildTestLog(t)
			dir := tt.tamper(t, &tl)
			rep, err := Verify(context.Background(), dir, tl.key.Verifier, []Witness{NewDirWitness(tl.witness)})
			if err != nil {
				t.Fatal(err)
			}
			got := whereOf(rep.Failure)
			if !strings.Contains(got.Reason, tt.want.Reason) {
				t.Errorf("Verify reason = %q, want it to contain %q", got.Reason, tt.want.Reason)
			}
			got.Reason = tt.want.Reason
			if diff := cmp.Diff(tt.want, got); diff != "" {
				var b strings.Builder
				rep.WriteText(&b)
				t.Errorf("Verify (-want +got):\n%s\nreport:\n%s", diff, b.String())
			}
			if rep.Status().ExitCode() != map[Status]int{StatusIntact: 0, StatusTampered: 1}[tt.want.Status] {
				t.Errorf("exit code = %d", rep.Status().ExitCode())
			}
		})
	}
}

func TestVerifyReport(t *testing.T) {
	tl := buildTestLog(t)
	rep, err := Verify(context.Background(), tl.dir, tl.key.Verifier, []Witness{NewDirWitness(tl.witness)})
	if err != nil {
		t.Fatal(err)
	}
	want := WitnessResult{Name: "dir:" + tl.witness, Size: 31, Result: "consistent"}
	if diff := cmp.Diff([]WitnessResult{want}, rep.Witnesses); diff != "" {
		t.Errorf("witnesses (-want +got):\n%s", diff)
	}
	if rep.EntriesChecked != 31 || rep.CheckpointsChecked != 4 || rep.LatestCheckpoint != 31 || rep.FirstTime == nil || rep.LastTime == nil {
		t.Errorf("report = %+v", rep)
	}
	var b strings.Builder
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"31/31 entries valid", "4 checkpoints valid", "Result: INTACT", "consistent"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("text report lacks %q:\n%s", s, b.String())
		}
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	json.Unmarshal(raw, &back)
	if back["status"] != "intact" || back["entries_checked"] != 31.0 {
		t.Errorf("JSON report = %s", raw)
	}

	// Without a pinned key the genesis key is used, with a warning.
	rep, _ = Verify(context.Background(), tl.dir, nil, nil)
	if rep.Status() != StatusIntact || len(rep.Warnings) == 0 {
		t.Errorf("Verify(nil key) = %s, warnings %v", rep.Status(), rep.Warnings)
	}
	rep, _ = Verify(context.Background(), t.TempDir(), tl.key.Verifier, nil)
	if rep.Status() != StatusCannotVerify || rep.Status().ExitCode() != 2 {
		t.Errorf("Verify(empty dir) = %s", rep.Status())
	}
}

func TestOpenRefusesTruncatedLog(t *testing.T) {
	tl := buildTestLog(t)
	editEntries(t, tl.dir, func(r [][]byte) [][]byte { return r[:25] })
	if _, err := Open(context.Background(), tl.dir, Options{Key: tl.key}); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("Open(truncated) = %v, want ErrCorrupt", err)
	}
}

func TestCheckpointText(t *testing.T) {
	c := Checkpoint{Origin: "opsd.example/db-host-1", Size: 12345, Root: tlog.RecordHash([]byte("x"))}
	text := FormatCheckpoint(c)
	want := "opsd.example/db-host-1\n12345\n" + c.Root.String() + "\n"
	if string(text) != want {
		t.Errorf("FormatCheckpoint = %q, want %q", text, want)
	}
	back, err := ParseCheckpoint(string(text) + "extension line\n")
	if err != nil || back != c {
		t.Errorf("ParseCheckpoint = %+v, %v", back, err)
	}
	for _, bad := range []string{"o\n1\n", "o\n01\n" + c.Root.String() + "\n", "o\n-1\n" + c.Root.String() + "\n", "o\n1\nxx\n", "o\n1\n" + c.Root.String()} {
		if _, err := ParseCheckpoint(bad); err == nil {
			t.Errorf("ParseCheckpoint(%q) succeeded", bad)
		}
	}
	if k, err := WitnessKey("opsd.example/db-host-1", 7); err != nil || k != "audit/opsd.example/db-host-1/checkpoint.7" {
		t.Errorf("WitnessKey = %q, %v", k, err)
	}
	for _, bad := range []string{"../x", "a//b", "/abs"} {
		if _, err := WitnessKey(bad, 1); err == nil {
			t.Errorf("WitnessKey(%q) succeeded", bad)
		}
	}
}
