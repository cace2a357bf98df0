package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/local"
)

func TestSlowAndFailingTargets(t *testing.T) {
	const size = 8 << 20
	tests := []struct {
		name      string
		spool     bool
		wantState string
		wantSlow  string
	}{
		{"slow target spills to the spool", true, backup.StatePartial, backup.CopyComplete},
		{"slow target dropped without a spool", false, backup.StatePartial, backup.CopyFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			k := newKeys(t)
			st := newStores(t, "fast", "slow", "dead")
			slow := &slowStore{Backend: st[1], release: make(chan struct{})}
			dead := &failingStore{Backend: st[2], after: 1 << 20}
			opts := options(k, "gen", "command", []storage.Backend{st[0], slow, dead})
			opts.MaxLag = 256 << 10
			opts.CompressionChunk = 128 << 10
			opts.MaxStall = 300 * time.Millisecond
			// The slow target starts reading once the source is exhausted.
			// Progress may report the final byte count more than once.
			var once sync.Once
			opts.Progress = func(p backup.Progress) {
				if p.Bytes == size {
					once.Do(func() { close(slow.release) })
				}
			}
			if tt.spool {
				opts.SpoolDir = t.TempDir()
			}
			res, err := backup.Run(ctx, &genSource{size: size}, opts)
			if err != nil {
				t.Fatalf("Run: %v (a partial backup is not an error)", err)
			}
			if res.State != tt.wantState {
				t.Errorf("state = %s, want %s", res.State, tt.wantState)
			}
			byName := map[string]backup.Copy{}
			for _, c := range res.Copies {
				byName[c.Target] = c
			}
			if c := byName["fast"]; c.State != backup.CopyComplete {
				t.Errorf("fast copy = %+v, want complete", c)
			}
			if c := byName["dead"]; c.State != backup.CopyFailed || !errors.Is(c.Err, errInjected) {
				t.Errorf("dead copy = %+v, want failed with the injected error", c)
			}
			if c := byName["slow"]; c.State != tt.wantSlow {
				t.Errorf("slow copy = %+v, want %s", c, tt.wantSlow)
			} else if tt.spool && c.Spilled == 0 {
				t.Errorf("slow copy spilled 0 bytes; the test did not exercise the spool")
			}
			// Nothing is visible on a failed target; the others list it.
			if n := countObjects(t, st[2]); n != 0 {
				t.Errorf("dead target holds %d objects, want 0", n)
			}
			wantSlowObjects := 0
			if tt.wantSlow == backup.CopyComplete {
				wantSlowObjects = 3
			}
			if n := countObjects(t, st[1]); n != wantSlowObjects {
				t.Errorf("slow target holds %d objects, want %d", n, wantSlowObjects)
			}
			if tt.spool {
				if ents, _ := os.ReadDir(opts.SpoolDir); len(ents) != 0 {
					t.Errorf("spool dir not empty after the backup: %v", ents)
				}
			}
			// The spilled copy restores to the generator's bytes.
			var out bytes.Buffer
			if _, err := backup.Restore(ctx, backup.RestoreOptions{Targets: []storage.Backend{slow}, ID: res.ID, Source: "gen", Verifier: k.verifier, Identities: idents(k), ToWriter: &out}); tt.spool && err != nil {
				t.Fatalf("Restore from slow: %v", err)
			}
			if tt.spool {
				want := sha256.New()
				io.Copy(want, io.LimitReader(newGenerator(), size))
				if got := sha256.Sum256(out.Bytes()); !bytes.Equal(got[:], want.Sum(nil)) {
					t.Errorf("restored data differs from the source")
				}
			}
		})
	}
}

func TestEveryTargetFails(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	st := newStores(t, "a", "b")
	opts := options(k, "gen", "command", []storage.Backend{&failingStore{Backend: st[0], after: 1 << 16}, &failingStore{Backend: st[1], after: 1 << 16}})
	res, err := backup.Run(ctx, &genSource{size: 1 << 30}, opts)
	if err == nil || res.State != backup.StateFailed {
		t.Fatalf("Run = %v, %v; want failed", res.State, err)
	}
	if !strings.Contains(err.Error(), "every target failed") {
		t.Errorf("err = %v, want 'every target failed'", err)
	}
}

func TestSourceFailureFailsEveryCopy(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	st := newStores(t, "a", "b")
	tests := []struct {
		name string
		src  source.Source
		want string
	}{
		{"generator error", &genSource{size: 4 << 20, fail: errors.New("producer broke")}, "producer broke"},
		{"command exits non-zero", &source.Command{Argv: []string{"sh", "-c", "head -c 3000000 /dev/zero; echo 'disk on fire' >&2; exit 3"}, Extension: "raw"}, "exit status 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := backup.Run(ctx, tt.src, options(k, "src", "command", backends(st...)))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run err = %v, want one containing %q", err, tt.want)
			}
			if res.State != backup.StateFailed {
				t.Errorf("state = %s, want failed", res.State)
			}
			for _, c := range res.Copies {
				if c.State != backup.CopyFailed {
					t.Errorf("copy %s = %s, want failed", c.Target, c.State)
				}
			}
			for _, s := range st {
				if n := countObjects(t, s); n != 0 {
					t.Errorf("%s holds %d objects after a failed source, want 0", s.Name(), n)
				}
			}
			if tt.name == "command exits non-zero" && !strings.Contains(res.SourceLog, "disk on fire") {
				t.Errorf("SourceLog = %q, want the command's stderr", res.SourceLog)
			}
		})
	}
}

func TestCommandSourceUnencrypted(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	st := newStores(t, "a")
	opts := options(k, "cmd", "command", backends(st...))
	opts.NoEncryption, opts.Recipients = true, nil
	src := &source.Command{Argv: []string{"sh", "-c", `printf 'hello %s' "$WHO"`}, Env: []string{"WHO=world"}, Extension: "txt"}
	res, err := backup.Run(ctx, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Manifest.Objects[0].Name; got != "data.txt.zst" {
		t.Errorf("data object = %s, want data.txt.zst (no .age without encryption)", got)
	}
	if c := res.Manifest.SourceMeta.Command; c == nil || c.ExitCode != 0 {
		t.Errorf("command meta = %+v", c)
	}
	var out bytes.Buffer
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: res.ID, Verifier: k.verifier, ToWriter: &out}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello world" {
		t.Errorf("restored %q, want %q", out.String(), "hello world")
	}
}

func TestRunRefusesBadOptions(t *testing.T) {
	k := newKeys(t)
	st := newStores(t, "a")
	opts := options(k, "x", "files", backends(st...))
	opts.Recipients = nil
	if _, err := backup.Run(ctxT(t), &genSource{size: 1}, opts); err == nil || !strings.Contains(err.Error(), "encryption: none") {
		t.Errorf("Run without recipients = %v, want a refusal naming encryption: none", err)
	}
}

// backupGen makes a small backup to the given stores.
func backupGen(t *testing.T, k keys, st []storage.Backend) *backup.Result {
	t.Helper()
	res, err := backup.Run(ctxT(t), &genSource{size: 3 << 20}, options(k, "gen", "command", st))
	if err != nil || res.State != backup.StateSucceeded {
		t.Fatalf("Run: %v, %v", res, err)
	}
	return res
}

// unseekable hides that a backend's readers can seek (as an object
// store's cannot), so a restore spools or reads twice.
type unseekable struct{ storage.Backend }

func (u unseekable) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := u.Backend.Open(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	return struct{ io.ReadCloser }{rc}, nil
}

// The three ways a restore verifies a copy before applying it: a local
// file is read, rewound and read again; an object store's copy is spooled,
// or with NoSpool read twice.
func TestFlippedByteFallsBackToNextCopy(t *testing.T) {
	for _, mode := range []string{"rewind", "spool", "no spool"} {
		t.Run(mode, func(t *testing.T) {
			ctx := ctxT(t)
			k := newKeys(t)
			st := newStores(t, "first", "second")
			res := backupGen(t, k, backends(st...))
			noSpool := mode == "no spool"
			targets := backends(st...)
			if mode != "rewind" {
				targets = []storage.Backend{unseekable{st[0]}, unseekable{st[1]}}
			}
			backends := func(bs ...*local.Backend) []storage.Backend { return targets[:len(bs)] }
			p := filepath.Join(st[0].Root(), filepath.FromSlash(res.Copies[0].Key))
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0x01
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := backup.VerifyCopy(ctx, st[0], res.Manifest); !errors.Is(err, backup.ErrChecksum) {
				t.Errorf("VerifyCopy(flipped) = %v, want ErrChecksum", err)
			}
			var out bytes.Buffer
			rr, err := backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: res.ID, Verifier: k.verifier, Identities: idents(k), ToWriter: &out, NoSpool: noSpool})
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if rr.Target != "second" || len(rr.Rejected) != 1 || !errors.Is(rr.Rejected[0], backup.ErrChecksum) {
				t.Errorf("Restore used %s, rejected %v; want second after a checksum refusal of first", rr.Target, rr.Rejected)
			}
			if int64(out.Len()) != res.Manifest.Size.Raw {
				t.Errorf("restored %d bytes, want %d (and nothing from the bad copy)", out.Len(), res.Manifest.Size.Raw)
			}

			// With only the bad copy: a clear error and nothing written.
			out.Reset()
			_, err = backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st[0]), ID: res.ID, Verifier: k.verifier, Identities: idents(k), ToWriter: &out, NoSpool: noSpool})
			if !errors.Is(err, backup.ErrNoCopy) || !errors.Is(err, backup.ErrChecksum) || out.Len() != 0 {
				t.Errorf("Restore(bad copy only) = %v with %d bytes written; want ErrNoCopy/ErrChecksum and nothing", err, out.Len())
			}
		})
	}
}

// seekHook runs onSeek when a restore rewinds the local copy it has just
// verified: between the verification and the apply.
type seekHook struct {
	storage.Backend
	onSeek func()
}

func (h seekHook) Open(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	rc, err := h.Backend.Open(ctx, key, off, n)
	if err != nil {
		return nil, err
	}
	return &hookedFile{rc.(*os.File), h.onSeek}, nil
}

type hookedFile struct {
	*os.File
	onSeek func()
}

func (f *hookedFile) Seek(off int64, whence int) (int64, error) {
	f.onSeek()
	return f.File.Seek(off, whence)
}

// A local copy changed in place after it was verified (between the two
// reads) fails the restore; it is never restored as if it were good.
func TestCopyChangedAfterVerification(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	st := newStores(t, "a")
	opts := options(k, "gen", "command", backends(st...))
	opts.NoEncryption, opts.Recipients = true, nil // no AEAD: the second read's hash must catch it
	res, err := backup.Run(ctx, &genSource{size: 3 << 20}, opts)
	if err != nil || res.State != backup.StateSucceeded {
		t.Fatalf("Run: %v, %v", res, err)
	}
	p := filepath.Join(st[0].Root(), filepath.FromSlash(res.Copies[0].Key))
	flip := func() {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		b := make([]byte, 1)
		off := res.Manifest.Size.Stored - 10 // inside the last frame's checksum
		if _, err := f.ReadAt(b, off); err != nil {
			t.Error(err)
		}
		b[0] ^= 0x01
		if _, err := f.WriteAt(b, off); err != nil {
			t.Error(err)
		}
	}
	var out bytes.Buffer
	_, err = backup.Restore(ctx, backup.RestoreOptions{Targets: []storage.Backend{seekHook{st[0], flip}}, ID: res.ID, Verifier: k.verifier, ToWriter: &out})
	if err == nil {
		t.Fatalf("Restore of a copy changed after verification succeeded (%d bytes)", out.Len())
	}
	if !strings.Contains(err.Error(), "the copy changed between verification and restore") || !errors.Is(err, backup.ErrChecksum) {
		t.Errorf("Restore = %v; want the change named", err)
	}
}

func TestRestoreRefusals(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	st := newStores(t, "a")
	res := backupGen(t, k, backends(st...))
	dir := st[0].Root()
	mpath := filepath.Join(dir, "gen", res.ID, manifest.ManifestName)
	spath := mpath + ".sig"
	origM, _ := os.ReadFile(mpath)
	origS, _ := os.ReadFile(spath)
	restoreFiles := func() {
		os.WriteFile(mpath, origM, 0o644)
		os.WriteFile(spath, origS, 0o644)
	}
	other := newKeys(t)
	otherSigner := other.signer
	resign := func(mutate func(*manifest.Manifest), signer note.Signer) {
		m, err := manifest.Unmarshal(origM)
		if err != nil {
			t.Fatal(err)
		}
		mutate(m)
		raw, sig, err := manifest.Sign(m, signer)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(mpath, raw, 0o644)
		os.WriteFile(spath, sig, 0o644)
	}
	wrongID, _ := age.GenerateX25519Identity()

	tests := []struct {
		name     string
		setup    func()
		identity age.Identity
		want     error
		wantText string
	}{
		{"wrong age identity", func() {}, wrongID, nil, "decrypt"},
		{"unknown major version", func() {
			resign(func(m *manifest.Manifest) { m.FormatVersion = "2.0" }, k.signer)
		}, k.identity, manifest.ErrUnsupportedVersion, "manifest format 2.0"},
		{"manifest edited after signing", func() {
			os.WriteFile(mpath, bytes.Replace(origM, []byte(`"raw":`), []byte(`"raw":1`), 1), 0o644)
		}, k.identity, manifest.ErrBadSignature, "modified after signing"},
		{"signed by another key", func() { resign(func(*manifest.Manifest) {}, otherSigner) }, k.identity, manifest.ErrBadSignature, "not signed by"},
		{"signature missing", func() { os.Remove(spath) }, k.identity, manifest.ErrBadSignature, "missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer restoreFiles()
			tt.setup()
			into := filepath.Join(t.TempDir(), "out")
			var out bytes.Buffer
			_, err := backup.Restore(ctx, backup.RestoreOptions{Targets: backends(st...), ID: res.ID, Verifier: k.verifier,
				Identities: []age.Identity{tt.identity}, ToWriter: &out})
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) || !strings.Contains(err.Error(), tt.wantText) {
				t.Fatalf("Restore = %v, want %v containing %q", err, tt.want, tt.wantText)
			}
			if out.Len() != 0 {
				t.Errorf("%d bytes written despite the error", out.Len())
			}
			if _, err := os.Stat(into); !os.IsNotExist(err) {
				t.Errorf("destination created despite the error")
			}
			if tt.want != nil {
				list, lerr := backup.List(ctx, st[0], k.verifier)
				if len(list) != 0 || !errors.Is(lerr, tt.want) {
					t.Errorf("List = %d manifests, %v; want none and %v", len(list), lerr, tt.want)
				}
			}
		})
	}
}

func TestSignatureForAnotherBackupRefused(t *testing.T) {
	k := newKeys(t)
	st := newStores(t, "a")
	a := backupGen(t, k, backends(st...))
	b := backupGen(t, k, backends(st...))
	// Copy b's manifest and signature over a's: a valid signature, wrong place.
	for _, name := range []string{manifest.ManifestName, manifest.SignatureName} {
		data, _ := os.ReadFile(filepath.Join(st[0].Root(), "gen", b.ID, name))
		os.WriteFile(filepath.Join(st[0].Root(), "gen", a.ID, name), data, 0o644)
	}
	list, err := backup.List(ctxT(t), st[0], k.verifier)
	if len(list) != 1 || list[0].ID != b.ID || !errors.Is(err, manifest.ErrBadSignature) {
		t.Errorf("List = %v, %v; want only %s and a signature error for %s", list, err, b.ID, a.ID)
	}
	_ = signing.CheckName
}
