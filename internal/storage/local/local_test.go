package local

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/storagetest"
	"github.com/opsd-dev/opsd/internal/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newTestBackend(t *testing.T) *Backend {
	t.Helper()
	be, err := New("local-test", filepath.Join(t.TempDir(), "target"))
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Backend { return newTestBackend(t) })
}

// files lists every regular file under root, temporary ones included.
func files(t *testing.T, root string) []string {
	t.Helper()
	var got []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, p)
			got = append(got, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestCleanupRemovesStaleTempFiles(t *testing.T) {
	be := newTestBackend(t)
	ctx := t.Context()
	if _, err := be.Save(ctx, "src/id/data", strings.NewReader("complete"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	// What a kill -9 during Save leaves: a temporary file beside the key.
	stale := filepath.Join(be.Root(), "src", "id", TempPrefix+"data.2-123")
	fresh := filepath.Join(be.Root(), "src", TempPrefix+"other-456")
	for _, p := range []string{stale, fresh} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(stale, old, old); err != nil {
		t.Fatal(err)
	}

	var listed []string
	if err := be.List(ctx, "", func(fi storage.ObjectInfo) error { listed = append(listed, fi.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"src/id/data"}, listed); diff != "" {
		t.Errorf("List() shows temporary files (-want +got):\n%s", diff)
	}

	n, err := be.Cleanup(ctx, time.Now().Add(-time.Hour))
	if err != nil || n != 1 {
		t.Fatalf("Cleanup(1h ago) = %d, %v, want 1, nil", n, err)
	}
	want := []string{"src/" + TempPrefix + "other-456", "src/id/data"}
	if diff := cmp.Diff(want, files(t, be.Root())); diff != "" {
		t.Errorf("files after Cleanup (-want +got):\n%s", diff)
	}
	if _, err := be.Save(ctx, "x/"+TempPrefix+"y", strings.NewReader("x"), storage.SaveOptions{}); !errors.Is(err, storage.ErrInvalidKey) {
		t.Errorf("Save(temporary name) = %v, want ErrInvalidKey", err)
	}
}

// fullFile fails writes with ENOSPC after limit bytes, like a full disk.
type fullFile struct {
	*os.File
	limit int64
}

func (f *fullFile) Write(p []byte) (int, error) {
	if int64(len(p)) > f.limit {
		n, _ := f.File.Write(p[:f.limit])
		f.limit = 0
		return n, &fs.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	f.limit -= int64(len(p))
	return f.File.Write(p)
}

func checkDiskFull(t *testing.T, be *Backend, err error) {
	t.Helper()
	if !errors.Is(err, ErrDiskFull) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Save() on a full disk = %v, want ErrDiskFull wrapping ENOSPC", err)
	}
	if !storage.IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = false, want true: a quick retry does not free a disk", err)
	}
	if !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "src/big") {
		t.Errorf("error %q should say the disk is full and name the key", err)
	}
	if _, err := be.Stat(t.Context(), "src/big"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat() after a failed Save = %v, want ErrNotFound", err)
	}
	if got := files(t, be.Root()); len(got) != 0 {
		t.Errorf("files after a failed Save = %q, want none: the temporary file must go", got)
	}
}

func TestDiskFull(t *testing.T) {
	be := newTestBackend(t)
	be.createTemp = func(dir, pattern string) (tempFile, error) {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		return &fullFile{File: f, limit: 100 << 10}, nil
	}
	_, err := be.Save(t.Context(), "src/big", strings.NewReader(strings.Repeat("x", 1<<20)), storage.SaveOptions{})
	checkDiskFull(t, be, err)
}

// TestDiskFullTmpfs fills a real 1 MiB tmpfs. It needs root and mount(8).
func TestDiskFullTmpfs(t *testing.T) {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		// CI runs as root on the same kind of machine as development, so
		// a failing mount there is a broken environment, not a skip.
		testenv.Missing(t, "cannot mount a tmpfs to fill (needs root): %v: %s; TestDiskFull covers ENOSPC by injection", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	be, err := New("tmpfs", dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = be.Save(t.Context(), "src/big", strings.NewReader(strings.Repeat("x", 4<<20)), storage.SaveOptions{})
	checkDiskFull(t, be, err)
	// The space is back: a small object still fits.
	if _, err := be.Save(t.Context(), "src/small", strings.NewReader("fits"), storage.SaveOptions{}); err != nil {
		t.Errorf("Save(small) after a full-disk failure = %v", err)
	}
}

func TestOpenNonexistentRoot(t *testing.T) {
	if _, err := New("x", ""); err == nil || !storage.IsPermanent(err) {
		t.Errorf("New(empty path) = %v, want a permanent error", err)
	}
}
