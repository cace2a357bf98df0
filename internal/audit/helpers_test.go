package audit

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/signing"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testKey makes a signing key named origin.
func testKey(tb testing.TB, origin string) *signing.Key {
	tb.Helper()
	g, err := signing.Generate(origin)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := note.NewSigner(g.SignerKey)
	if err != nil {
		tb.Fatal(err)
	}
	v, err := note.NewVerifier(g.VerifierKey)
	if err != nil {
		tb.Fatal(err)
	}
	return &signing.Key{Name: origin, Signer: s, Verifier: v, VerifierKey: g.VerifierKey, HMACKey: g.HMACKey}
}

func openLog(tb testing.TB, dir string, key *signing.Key, mod ...func(*Options)) *Log {
	tb.Helper()
	opts := Options{Key: key, Version: "test", CheckpointInterval: time.Hour}
	for _, f := range mod {
		f(&opts)
	}
	l, err := Open(context.Background(), dir, opts)
	if err != nil {
		tb.Fatalf("Open(%s) = %v", dir, err)
	}
	return l
}

func testRecord(i int) action.Record {
	return action.Record{
		Request: action.Request{
			Actor:     action.Actor{Kind: action.ActorToken, Name: "ci"},
			Action:    "backup.run",
			Object:    fmt.Sprintf("source/db-%d", i%7),
			RequestID: fmt.Sprintf("req-%d", i),
			Params:    map[string]any{"n": i, "wait": i%2 == 0, "note": "<&> \"quoted\" ü"},
		},
		Time:          time.Date(2026, 11, 23, 7, 45, 0, i, time.UTC),
		Outcome:       action.Accepted,
		AcceptedIndex: -1,
	}
}

func fill(tb testing.TB, l *Log, from, n int) {
	tb.Helper()
	for i := from; i < from+n; i++ {
		if _, err := l.Record(context.Background(), testRecord(i)); err != nil {
			tb.Fatalf("Record(%d) = %v", i, err)
		}
	}
}

func mustCheckpoint(tb testing.TB, l *Log) {
	tb.Helper()
	if _, err := l.makeCheckpoint(); err != nil {
		tb.Fatalf("makeCheckpoint() = %v", err)
	}
}

// faultFS injects ENOSPC on writes (after writing half the bytes, like a
// disk that filled mid-write) and EIO on fsync, and counts fsyncs.
type faultFS struct {
	OSFS
	full  atomic.Bool
	eio   atomic.Bool
	syncs atomic.Int64
}

func (f *faultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	ff, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: ff, fs: f, name: name}, nil
}

type faultFile struct {
	File
	fs   *faultFS
	name string
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if f.fs.full.Load() {
		n, _ := f.File.WriteAt(p[:len(p)/2], off)
		return n, &fs.PathError{Op: "write", Path: f.name, Err: syscall.ENOSPC}
	}
	return f.File.WriteAt(p, off)
}

func (f *faultFile) Sync() error {
	f.fs.syncs.Add(1)
	if f.fs.eio.Load() {
		return &fs.PathError{Op: "fsync", Path: f.name, Err: syscall.EIO}
	}
	return f.File.Sync()
}

func fileSize(tb testing.TB, path string) int64 {
	tb.Helper()
	st, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	return st.Size()
}

func copyDir(tb testing.TB, src, dst string) {
	tb.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), raw, 0o600)
	})
	if err != nil {
		tb.Fatal(err)
	}
}
