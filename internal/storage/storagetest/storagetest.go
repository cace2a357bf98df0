// Package storagetest is the conformance suite every storage.Backend runs.
//
// A backend's test calls Run (and RunLock when the store enforces object
// lock) with a function that returns a fresh, empty backend for each
// subtest; the function registers its own cleanup with t.Cleanup.
package storagetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/storage"
)

// LargeSize is the size of the streaming Save test: big enough to take the
// multipart and resumable paths of the object stores, produced by a reader
// that is neither seekable nor sized so no backend can buffer it whole by
// accident of its type. In -short mode the suite uses 8 MiB.
const LargeSize = 64 << 20

// errBrokenReader is what a reader that fails midway returns.
var errBrokenReader = errors.New("storagetest: reader broke midway")

// Run runs the conformance suite against backends made by newBackend.
func Run(t *testing.T, newBackend func(t *testing.T) storage.Backend) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, be storage.Backend)
	}{
		{"SaveOpen", testSaveOpen},
		{"RangedOpen", testRangedOpen},
		{"Stat", testStat},
		{"ListOrderAndPrefix", testList},
		{"ListStopsOnCallbackError", testListCallbackError},
		{"Remove", testRemove},
		{"Overwrite", testOverwrite},
		{"NoOverwrite", testNoOverwrite},
		{"InvalidKeys", testInvalidKeys},
		{"LargeStreamingSave", testLargeSave},
		{"BrokenReaderLeavesNothing", testBrokenReader},
		{"CancelledContext", testCancelled},
		{"CancelDuringSave", testCancelDuringSave},
		{"RetentionWithoutLock", testRetentionWithoutLock},
		{"EmptyObject", testEmptyObject},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.fn(t, newBackend(t))
		})
	}
}

// RunLock runs the object-lock suite: the backend must report
// Capabilities().ObjectLock and refuse to remove a locked object.
func RunLock(t *testing.T, mode string, newBackend func(t *testing.T) storage.Backend) {
	t.Helper()
	t.Run("LockedObjectCannotBeRemoved", func(t *testing.T) { testLocked(t, mode, newBackend(t)) })
	t.Run("LockExpires", func(t *testing.T) { testLockExpires(t, mode, newBackend(t)) })
}

func save(t *testing.T, be storage.Backend, key, data string) storage.ObjectInfo {
	t.Helper()
	fi, err := be.Save(t.Context(), key, strings.NewReader(data), storage.SaveOptions{})
	if err != nil {
		t.Fatalf("Save(%q) = %v", key, err)
	}
	return fi
}

func read(t *testing.T, be storage.Backend, key string, off, n int64) string {
	t.Helper()
	rc, err := be.Open(t.Context(), key, off, n)
	if err != nil {
		t.Fatalf("Open(%q, %d, %d) = %v", key, off, n, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	return string(b)
}

func keys(t *testing.T, be storage.Backend, prefix string) []string {
	t.Helper()
	var got []string
	err := be.List(t.Context(), prefix, func(fi storage.ObjectInfo) error {
		got = append(got, fi.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q) = %v", prefix, err)
	}
	return got
}

func wantNotFound(t *testing.T, be storage.Backend, key string) {
	t.Helper()
	_, err := be.Stat(t.Context(), key)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
	if !storage.IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = false, want true", err)
	}
	if got := keys(t, be, ""); len(got) != 0 {
		t.Fatalf("List() = %q, want nothing", got)
	}
}

func testSaveOpen(t *testing.T, be storage.Backend) {
	const data = "hello, backup"
	fi := save(t, be, "src/id1/manifest.json", data)
	if fi.Key != "src/id1/manifest.json" || fi.Size != int64(len(data)) {
		t.Errorf("Save() = {Key: %q, Size: %d}, want {%q, %d}", fi.Key, fi.Size, "src/id1/manifest.json", len(data))
	}
	if got := read(t, be, "src/id1/manifest.json", 0, -1); got != data {
		t.Errorf("Open() read %q, want %q", got, data)
	}
	_, err := be.Open(t.Context(), "src/id1/missing", 0, -1)
	if !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Open(missing) = %v, want ErrNotFound", err)
	}
}

func testRangedOpen(t *testing.T, be storage.Backend) {
	const data = "0123456789abcdef"
	save(t, be, "r/obj", data)
	tests := []struct {
		name      string
		off, n    int64
		wantBytes string
	}{
		{"all", 0, -1, data},
		{"head", 0, 5, "01234"},
		{"middle", 3, 4, "3456"},
		{"tail", 10, -1, "abcdef"},
		{"last byte", 15, 1, "f"},
		{"past end clipped", 12, 100, "cdef"},
		{"zero length", 4, 0, ""},
		{"at end", 16, -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := read(t, be, "r/obj", tt.off, tt.n); got != tt.wantBytes {
				t.Errorf("Open(%d, %d) read %q, want %q", tt.off, tt.n, got, tt.wantBytes)
			}
		})
	}
}

func testStat(t *testing.T, be storage.Backend) {
	before := time.Now().Add(-time.Minute)
	save(t, be, "s/a", "12345")
	fi, err := be.Stat(t.Context(), "s/a")
	if err != nil {
		t.Fatalf("Stat() = %v", err)
	}
	if fi.Key != "s/a" || fi.Size != 5 {
		t.Errorf("Stat() = {Key: %q, Size: %d}, want {s/a, 5}", fi.Key, fi.Size)
	}
	if fi.ModTime.Before(before) || fi.ModTime.After(time.Now().Add(time.Minute)) {
		t.Errorf("Stat().ModTime = %v, want about now", fi.ModTime)
	}
	if fi.Retention != nil {
		t.Errorf("Stat().Retention = %+v for an unlocked object, want nil", fi.Retention)
	}
	_, err = be.Stat(t.Context(), "s/b")
	if !errors.Is(err, storage.ErrNotFound) || !storage.IsPermanent(err) {
		t.Errorf("Stat(missing) = %v, want permanent ErrNotFound", err)
	}
	// A "directory" is not an object.
	_, err = be.Stat(t.Context(), "s")
	if !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(directory) = %v, want ErrNotFound", err)
	}
}

func testList(t *testing.T, be storage.Backend) {
	// Chosen so that directory-order walks get it wrong: '-' < '/' < '0' < 'b'.
	all := []string{"a-c", "a/b", "a/c/d", "a/c0", "ab", "b"}
	for _, k := range []string{"b", "a/c0", "ab", "a/b", "a-c", "a/c/d"} {
		save(t, be, k, "x"+k)
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", all},
		{"a", all[:5]},
		{"a/", []string{"a/b", "a/c/d", "a/c0"}},
		{"a/c", []string{"a/c/d", "a/c0"}},
		{"a/c/", []string{"a/c/d"}},
		{"b", []string{"b"}},
		{"zzz", nil},
		{"a/x/", nil},
	}
	for _, tt := range tests {
		if diff := cmp.Diff(tt.want, keys(t, be, tt.prefix)); diff != "" {
			t.Errorf("List(%q) mismatch (-want +got):\n%s", tt.prefix, diff)
		}
	}
	err := be.List(t.Context(), "", func(fi storage.ObjectInfo) error {
		if fi.Size != int64(len(fi.Key)+1) {
			return fmt.Errorf("List(): %s has size %d, want %d", fi.Key, fi.Size, len(fi.Key)+1)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func testListCallbackError(t *testing.T, be storage.Backend) {
	save(t, be, "l/1", "a")
	save(t, be, "l/2", "b")
	stop := errors.New("stop here")
	calls := 0
	err := be.List(t.Context(), "l/", func(storage.ObjectInfo) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List() = %v after %d calls, want %v after 1", err, calls, stop)
	}
}

func testRemove(t *testing.T, be storage.Backend) {
	save(t, be, "rm/a", "a")
	save(t, be, "rm/b", "b")
	if err := be.Remove(t.Context(), "rm/a"); err != nil {
		t.Fatalf("Remove() = %v", err)
	}
	if _, err := be.Stat(t.Context(), "rm/a"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(removed) = %v, want ErrNotFound", err)
	}
	if diff := cmp.Diff([]string{"rm/b"}, keys(t, be, "")); diff != "" {
		t.Errorf("List() after Remove mismatch (-want +got):\n%s", diff)
	}
	if err := be.Remove(t.Context(), "rm/a"); err != nil {
		t.Errorf("Remove(already removed) = %v, want nil", err)
	}
	if err := be.Remove(t.Context(), "never/was"); err != nil {
		t.Errorf("Remove(missing) = %v, want nil", err)
	}
}

func testOverwrite(t *testing.T, be storage.Backend) {
	save(t, be, "o/k", "first version, longer")
	fi := save(t, be, "o/k", "second")
	if fi.Size != 6 {
		t.Errorf("Save(overwrite).Size = %d, want 6", fi.Size)
	}
	if got := read(t, be, "o/k", 0, -1); got != "second" {
		t.Errorf("Open() after overwrite read %q, want %q", got, "second")
	}
	if diff := cmp.Diff([]string{"o/k"}, keys(t, be, "")); diff != "" {
		t.Errorf("List() after overwrite mismatch (-want +got):\n%s", diff)
	}
	// Removing an overwritten object removes it for good, not just its
	// newest version.
	if err := be.Remove(t.Context(), "o/k"); err != nil {
		t.Fatalf("Remove() = %v", err)
	}
	wantNotFound(t, be, "o/k")
}

func testNoOverwrite(t *testing.T, be storage.Backend) {
	opts := storage.SaveOptions{NoOverwrite: true}
	if _, err := be.Save(t.Context(), "n/k", strings.NewReader("one"), opts); err != nil {
		t.Fatalf("Save(new key, NoOverwrite) = %v", err)
	}
	_, err := be.Save(t.Context(), "n/k", strings.NewReader("two"), opts)
	if !errors.Is(err, storage.ErrExists) || !storage.IsPermanent(err) {
		t.Errorf("Save(existing key, NoOverwrite) = %v, want permanent ErrExists", err)
	}
	if got := read(t, be, "n/k", 0, -1); got != "one" {
		t.Errorf("Open() after refused overwrite read %q, want %q", got, "one")
	}
}

func testInvalidKeys(t *testing.T, be storage.Backend) {
	ctx := t.Context()
	for _, key := range []string{"", "/abs", "dir/", "a//b", "./a", "a/./b", "a/../b", "..", `a\b`, "a\x00b"} {
		_, err := be.Save(ctx, key, strings.NewReader("x"), storage.SaveOptions{})
		if !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Save(%q) = %v, want ErrInvalidKey", key, err)
		}
		if _, err := be.Open(ctx, key, 0, -1); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Open(%q) = %v, want ErrInvalidKey", key, err)
		}
		if _, err := be.Stat(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Stat(%q) = %v, want ErrInvalidKey", key, err)
		}
		if err := be.Remove(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Remove(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
	if got := keys(t, be, ""); len(got) != 0 {
		t.Errorf("List() after invalid saves = %q, want nothing", got)
	}
}

// patternReader yields n deterministic, incompressible-looking bytes with
// no Seek, Len, Size or WriteTo: a stream of unknown size. It copies from a
// 64 KiB random block, rotated differently for every block-sized span, so
// no two spans repeat and generation stays cheap under the race detector.
type patternReader struct {
	n     int64
	block []byte
	// failAt, if > 0, makes Read fail with errBrokenReader after that many bytes.
	failAt int64
	read   int64
	// onRead, if set, runs after each Read with the bytes read so far.
	onRead func(read int64)
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.failAt > 0 && p.read >= p.failAt {
		return 0, errBrokenReader
	}
	if p.read >= p.n {
		return 0, io.EOF
	}
	if rem := p.n - p.read; int64(len(b)) > rem {
		b = b[:rem]
	}
	if p.failAt > 0 && int64(len(b)) > p.failAt-p.read {
		b = b[:p.failAt-p.read]
	}
	size := int64(len(p.block))
	done := 0
	for done < len(b) {
		pos := p.read + int64(done)
		span, off := pos/size, pos%size
		src := (off + span*7919) % size
		n := copy(b[done:], p.block[src:])
		if rest := size - off; int64(n) > rest {
			n = int(rest) // stay within this span so the next one rotates
		}
		done += n
	}
	p.read += int64(len(b))
	if p.onRead != nil {
		p.onRead(p.read)
	}
	return len(b), nil
}

func newPattern(n int64) *patternReader {
	block := make([]byte, 64<<10)
	state := uint64(0x9E3779B97F4A7C15)
	for i := 0; i < len(block); i += 8 {
		// xorshift64: cheap and not compressible.
		state ^= state << 13
		state ^= state >> 7
		state ^= state << 17
		binary.LittleEndian.PutUint64(block[i:], state)
	}
	return &patternReader{n: n, block: block}
}

func testLargeSave(t *testing.T, be storage.Backend) {
	size := int64(LargeSize)
	if testing.Short() {
		size = 8 << 20
	}
	want := sha256.New()
	if _, err := io.Copy(want, newPattern(size)); err != nil {
		t.Fatal(err)
	}
	fi, err := be.Save(t.Context(), "big/data.bin", newPattern(size), storage.SaveOptions{})
	if err != nil {
		t.Fatalf("Save(%d bytes) = %v", size, err)
	}
	if fi.Size != size {
		t.Errorf("Save().Size = %d, want %d", fi.Size, size)
	}
	st, err := be.Stat(t.Context(), "big/data.bin")
	if err != nil || st.Size != size {
		t.Fatalf("Stat() = %+v, %v, want size %d", st, err, size)
	}
	rc, err := be.Open(t.Context(), "big/data.bin", 0, -1)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	defer rc.Close()
	got := sha256.New()
	n, err := io.Copy(got, rc)
	if err != nil || n != size {
		t.Fatalf("read back %d bytes, %v, want %d", n, err, size)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Errorf("read back SHA-256 differs from what was saved")
	}
	// A range deep inside, across any part boundary.
	off := size/2 - 3
	rc2, err := be.Open(t.Context(), "big/data.bin", off, 6)
	if err != nil {
		t.Fatalf("Open(%d, 6) = %v", off, err)
	}
	defer rc2.Close()
	part, _ := io.ReadAll(rc2)
	whole := newPattern(size)
	if _, err := io.CopyN(io.Discard, whole, off); err != nil {
		t.Fatal(err)
	}
	wantPart := make([]byte, 6)
	if _, err := io.ReadFull(whole, wantPart); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(part, wantPart) {
		t.Errorf("Open(%d, 6) = %x, want %x", off, part, wantPart)
	}
}

func testBrokenReader(t *testing.T, be storage.Backend) {
	// 7 MiB before the failure: past an S3 part and a GCS chunk if the
	// backend uses 5 MiB/4 MiB pieces, so uploads are really under way.
	r := newPattern(32 << 20)
	r.failAt = 7 << 20
	_, err := be.Save(t.Context(), "broken/data", r, storage.SaveOptions{})
	if err == nil {
		t.Fatal("Save(broken reader) = nil, want an error")
	}
	wantNotFound(t, be, "broken/data")
	if _, err := be.Cleanup(t.Context(), time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("Cleanup() = %v", err)
	}
	if n, err := be.Cleanup(t.Context(), time.Now().Add(time.Hour)); err != nil || n != 0 {
		t.Errorf("second Cleanup() = %d, %v, want 0, nil", n, err)
	}
	wantNotFound(t, be, "broken/data")
	// The key is still usable.
	save(t, be, "broken/data", "fine now")
	if got := read(t, be, "broken/data", 0, -1); got != "fine now" {
		t.Errorf("Open() = %q, want %q", got, "fine now")
	}
}

func testCancelled(t *testing.T, be storage.Backend) {
	save(t, be, "c/exists", "x")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := be.Save(ctx, "c/new", strings.NewReader("data"), storage.SaveOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("Save(cancelled ctx) = %v, want context.Canceled", err)
	}
	if err := be.List(ctx, "", func(storage.ObjectInfo) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("List(cancelled ctx) = %v, want context.Canceled", err)
	}
	if _, err := be.Stat(ctx, "c/exists"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat(cancelled ctx) = %v, want context.Canceled", err)
	}
	if err := be.Remove(ctx, "c/exists"); !errors.Is(err, context.Canceled) {
		t.Errorf("Remove(cancelled ctx) = %v, want context.Canceled", err)
	}
	if _, err := be.Stat(t.Context(), "c/new"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(c/new) after cancelled Save = %v, want ErrNotFound", err)
	}
	if _, err := be.Stat(t.Context(), "c/exists"); err != nil {
		t.Errorf("Stat(c/exists) after cancelled Remove = %v, want it still there", err)
	}
}

func testCancelDuringSave(t *testing.T, be storage.Backend) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	r := newPattern(32 << 20)
	r.onRead = func(n int64) {
		if n >= 6<<20 {
			cancel()
		}
	}
	_, err := be.Save(ctx, "cd/data", r, storage.SaveOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Save(cancelled midway) = %v, want context.Canceled", err)
	}
	if !storage.IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = false, want true", err)
	}
	wantNotFound(t, be, "cd/data")
}

func testRetentionWithoutLock(t *testing.T, be storage.Backend) {
	if be.Capabilities().ObjectLock {
		t.Skip("backend supports object lock; RunLock covers it")
	}
	opts := storage.SaveOptions{Retention: &storage.Retention{Mode: "GOVERNANCE", Until: time.Now().Add(time.Hour)}}
	_, err := be.Save(t.Context(), "ret/k", strings.NewReader("x"), opts)
	if !errors.Is(err, storage.ErrUnsupported) {
		t.Errorf("Save(with retention) = %v, want ErrUnsupported", err)
	}
	wantNotFound(t, be, "ret/k")
}

func testEmptyObject(t *testing.T, be storage.Backend) {
	fi := save(t, be, "e/empty", "")
	if fi.Size != 0 {
		t.Errorf("Save(empty).Size = %d, want 0", fi.Size)
	}
	if got := read(t, be, "e/empty", 0, -1); got != "" {
		t.Errorf("Open(empty) read %q, want nothing", got)
	}
	if diff := cmp.Diff([]string{"e/empty"}, keys(t, be, "e/")); diff != "" {
		t.Errorf("List() mismatch (-want +got):\n%s", diff)
	}
}

func testLocked(t *testing.T, mode string, be storage.Backend) {
	if !be.Capabilities().ObjectLock {
		t.Fatal("Capabilities().ObjectLock = false, want true")
	}
	until := time.Now().Add(24 * time.Hour).Truncate(time.Second)
	opts := storage.SaveOptions{Retention: &storage.Retention{Mode: mode, Until: until}}
	if _, err := be.Save(t.Context(), "lock/k", strings.NewReader("immutable"), opts); err != nil {
		t.Fatalf("Save(with retention) = %v", err)
	}
	fi, err := be.Stat(t.Context(), "lock/k")
	if err != nil {
		t.Fatalf("Stat() = %v", err)
	}
	if fi.Retention == nil || !strings.EqualFold(fi.Retention.Mode, mode) || !fi.Retention.Until.Equal(until) {
		t.Errorf("Stat().Retention = %+v, want {%s %v}", fi.Retention, mode, until)
	}
	err = be.Remove(t.Context(), "lock/k")
	if !errors.Is(err, storage.ErrLocked) || !storage.IsPermanent(err) {
		t.Errorf("Remove(locked) = %v, want permanent ErrLocked", err)
	}
	if got := read(t, be, "lock/k", 0, -1); got != "immutable" {
		t.Errorf("Open() after refused Remove read %q, want %q", got, "immutable")
	}
	var listed []storage.ObjectInfo
	if err := be.List(t.Context(), "lock/", func(fi storage.ObjectInfo) error {
		listed = append(listed, fi)
		return nil
	}); err != nil || len(listed) != 1 {
		t.Fatalf("List() = %v, %v, want one object", listed, err)
	}
	// An unlocked neighbour is removable.
	save(t, be, "lock/free", "x")
	if err := be.Remove(t.Context(), "lock/free"); err != nil {
		t.Errorf("Remove(unlocked) = %v", err)
	}
}

func testLockExpires(t *testing.T, mode string, be storage.Backend) {
	until := time.Now().Add(3 * time.Second).Truncate(time.Second).Add(time.Second)
	opts := storage.SaveOptions{Retention: &storage.Retention{Mode: mode, Until: until}}
	if _, err := be.Save(t.Context(), "exp/k", strings.NewReader("briefly immutable"), opts); err != nil {
		t.Fatalf("Save(with retention) = %v", err)
	}
	if err := be.Remove(t.Context(), "exp/k"); !errors.Is(err, storage.ErrLocked) {
		t.Errorf("Remove(before retain-until) = %v, want ErrLocked", err)
	}
	select {
	case <-time.After(time.Until(until) + 1500*time.Millisecond):
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
	if err := be.Remove(t.Context(), "exp/k"); err != nil {
		t.Fatalf("Remove(after retain-until) = %v, want nil", err)
	}
	wantNotFound(t, be, "exp/k")
}
