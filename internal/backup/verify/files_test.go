package verify

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/source"
)

// writeFile writes a file with mode and mtime.
func writeFile(t testing.TB, p, data string, mode os.FileMode, mtime time.Time) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(p, mtime, mtime); err != nil {
		t.Fatal(err)
	}
}

// makeTree builds a tree with modes, mtimes, a symlink and a read-only
// directory (which the cleanup must still be able to remove).
func makeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "srv", "uploads")
	mt := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	writeFile(t, filepath.Join(root, "a.txt"), "alpha\n", 0o640, mt)
	writeFile(t, filepath.Join(root, "bin", "run.sh"), "#!/bin/sh\necho hi\n", 0o755, mt)
	writeFile(t, filepath.Join(root, "deep", "x", "z.dat"), strings.Repeat("zz", 100000), 0o600, mt)
	writeFile(t, filepath.Join(root, "ro", "frozen.txt"), "frozen", 0o444, mt)
	if err := os.Symlink("a.txt", filepath.Join(root, "link-to-a")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"deep/x", "deep", "bin", "ro", ""} {
		if err := os.Chtimes(filepath.Join(root, d), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	ro := filepath.Join(root, "ro")
	if err := os.Chmod(ro, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(ro, 0o755) })
	return root
}

// assertEmpty fails unless dir has no entries.
func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("%s holds %v, want the temporary directory removed", dir, entries)
	}
}

func TestRestoreFiles(t *testing.T) {
	k := newKeys(t)
	st := newStore(t, "local")
	res := makeBackup(t, k, &source.Files{Paths: []string{makeTree(t)}}, "uploads", "files", st)
	scratch := t.TempDir()
	rep, err := RestoreFiles(ctxT(t), FilesOptions{Restore: restoreOpts(k, st, "uploads", res), ScratchDir: scratch})
	if err != nil {
		t.Fatalf("RestoreFiles: %v", err)
	}
	digest := res.Manifest.SourceMeta.Files.IndexDigest
	if !rep.OK || rep.Error != "" || rep.Target != "local" || rep.Source != "uploads" || rep.Level != LevelRestore || rep.BackupID != res.ID {
		t.Errorf("report = %+v, want OK from local", rep)
	}
	if len(rep.Checks) != 1 || rep.Checks[0].Name != CheckIndexDigest || !rep.Checks[0].OK || rep.Checks[0].Got != digest || rep.Checks[0].Expect != "= "+digest {
		t.Errorf("checks = %+v, want one passing index_digest check with got %s", rep.Checks, digest)
	}
	if !strings.HasPrefix(rep.Scratch, filepath.Join(scratch, ScratchPrefix+"uploads_")) {
		t.Errorf("report.Scratch = %q, want a directory %suploads_* under %s", rep.Scratch, ScratchPrefix, scratch)
	}
	assertEmpty(t, scratch)
}

// digestSource makes the manifest record a file index digest other than
// the one of the data: a signed manifest that disagrees with its backup.
type digestSource struct {
	source.Source
	digest string
}

func (s digestSource) Open(ctx context.Context) (source.Stream, error) {
	st, err := s.Source.Open(ctx)
	return digestStream{st, s.digest}, err
}

type digestStream struct {
	source.Stream
	digest string
}

func (s digestStream) Finish() (source.Result, error) {
	r, err := s.Stream.Finish()
	if r.Meta.Files != nil {
		m := *r.Meta.Files
		m.IndexDigest = s.digest
		r.Meta.Files = &m
	}
	return r, err
}

func TestRestoreFilesDigestMismatch(t *testing.T) {
	tests := []struct {
		name    string
		digest  string
		wantErr string
	}{
		{"other digest", "sha256:" + strings.Repeat("0", 64), "the manifest says sha256:000"},
		{"no digest", "", "records no file index digest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k := newKeys(t)
			st := newStore(t, "local")
			res := makeBackup(t, k, digestSource{&source.Files{Paths: []string{makeTree(t)}}, tt.digest}, "uploads", "files", st)
			scratch := t.TempDir()
			rep, err := RestoreFiles(ctxT(t), FilesOptions{Restore: restoreOpts(k, st, "uploads", res), ScratchDir: scratch})
			if err != nil {
				t.Fatalf("RestoreFiles: %v", err)
			}
			if rep.OK || len(rep.Checks) != 1 || rep.Checks[0].OK || !strings.Contains(rep.Checks[0].Error, tt.wantErr) {
				t.Errorf("report = %+v, want OK=false with %q", rep, tt.wantErr)
			}
			if tt.digest != "" && (rep.Checks[0].Got == "" || rep.Checks[0].Got == tt.digest) {
				t.Errorf("check got = %q, want the restored tree's digest", rep.Checks[0].Got)
			}
			assertEmpty(t, scratch)
		})
	}
}

func TestRestoreFilesCorruptCopy(t *testing.T) {
	k := newKeys(t)
	st := newStore(t, "local")
	res := makeBackup(t, k, &source.Files{Paths: []string{makeTree(t)}}, "uploads", "files", st)
	p := filepath.Join(st.Root(), filepath.FromSlash(res.Manifest.Key(res.Manifest.Objects[0].Name)))
	if err := os.WriteFile(p, []byte("not the backup"), 0o600); err != nil {
		t.Fatal(err)
	}
	scratch := t.TempDir()
	rep, err := RestoreFiles(ctxT(t), FilesOptions{Restore: restoreOpts(k, st, "uploads", res), ScratchDir: scratch})
	if err != nil {
		t.Fatalf("RestoreFiles: %v", err)
	}
	if rep.OK || !strings.Contains(rep.Error, "does not match") || len(rep.Checks) != 1 || rep.Checks[0].OK {
		t.Errorf("report = %+v, want OK=false with the checksum error", rep)
	}
	assertEmpty(t, scratch)
}

func TestRestoreFilesCancelled(t *testing.T) {
	k := newKeys(t)
	st := newStore(t, "local")
	res := makeBackup(t, k, &source.Files{Paths: []string{makeTree(t)}}, "uploads", "files", st)
	scratch := t.TempDir()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	opts := FilesOptions{Restore: restoreOpts(k, st, "uploads", res), ScratchDir: scratch}
	opts.Restore.Progress = func(backup.Progress) { cancel() }
	rep, err := RestoreFiles(ctx, opts)
	if err == nil || rep == nil || rep.OK {
		t.Fatalf("RestoreFiles(cancelled) = %+v, %v; want a report and an error", rep, err)
	}
	assertEmpty(t, scratch)
}

// blobSource is a command-like source producing a non-tar backup.
type blobSource struct{}

func (blobSource) Kind() string { return "sql" }
func (blobSource) Open(context.Context) (source.Stream, error) {
	return blobStream{strings.NewReader("select 1;\n")}, nil
}

type blobStream struct{ *strings.Reader }

func (blobStream) Finish() (source.Result, error) { return source.Result{}, nil }

func TestRestoreFilesWrongKind(t *testing.T) {
	k := newKeys(t)
	st := newStore(t, "local")
	res := makeBackup(t, k, blobSource{}, "dump", "command", st)
	scratch := t.TempDir()
	rep, err := RestoreFiles(ctxT(t), FilesOptions{Restore: restoreOpts(k, st, "dump", res), ScratchDir: scratch})
	if err == nil || !strings.Contains(err.Error(), "sql backup") {
		t.Errorf("RestoreFiles(sql backup) = %+v, %v; want an error", rep, err)
	}
	assertEmpty(t, scratch)
}

func TestCleanupStaleDirs(t *testing.T) {
	parent := t.TempDir()
	now := time.Now()
	old := scratchName("uploads", "20260101T000000Z-aaaa1111", now.Add(-2*time.Hour))
	young := scratchName("uploads", "20260101T000000Z-bbbb2222", now)
	for _, name := range []string{old, young, "opsd_verify_by_hand", "unrelated"} {
		writeFile(t, filepath.Join(parent, name, "ro", "f"), "x", 0o444, now)
		if err := os.Chmod(filepath.Join(parent, name, "ro"), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = removeTree(parent) })
	removed, err := CleanupStaleDirs(parent, time.Hour)
	if err != nil {
		t.Fatalf("CleanupStaleDirs: %v", err)
	}
	if len(removed) != 1 || removed[0] != filepath.Join(parent, old) {
		t.Errorf("CleanupStaleDirs removed %v, want [%s]", removed, old)
	}
	entries, _ := os.ReadDir(parent)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if len(left) != 3 {
		t.Errorf("left %v, want the young, hand-made and unrelated directories", left)
	}
	if got, err := CleanupStaleDirs(filepath.Join(parent, "missing"), time.Hour); err != nil || got != nil {
		t.Errorf("CleanupStaleDirs(missing) = %v, %v; want nothing", got, err)
	}
}
