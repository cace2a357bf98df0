package backup_test

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"go.uber.org/goleak"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/local"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type keys struct {
	signer     note.Signer
	verifier   note.Verifier
	vkey       string
	identity   *age.X25519Identity
	recipients []age.Recipient
}

func newKeys(t testing.TB) keys {
	t.Helper()
	g, err := signing.Generate("opsd.test/backup")
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(g.SignerKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(g.VerifierKey)
	if err != nil {
		t.Fatal(err)
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	return keys{signer: s, verifier: v, vkey: g.VerifierKey, identity: id, recipients: []age.Recipient{id.Recipient()}}
}

func newStores(t testing.TB, names ...string) []*local.Backend {
	t.Helper()
	var out []*local.Backend
	for _, n := range names {
		s, err := local.New(n, filepath.Join(t.TempDir(), n))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func backends[T storage.Backend](bs ...T) []storage.Backend {
	out := make([]storage.Backend, len(bs))
	for i, b := range bs {
		out[i] = b
	}
	return out
}

func options(k keys, source, typ string, targets []storage.Backend) backup.Options {
	return backup.Options{Source: source, Type: typ, Targets: targets, Recipients: k.recipients, Signer: k.signer, ZstdLevel: 3}
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// countObjects counts the objects on a local target.
func countObjects(t testing.TB, s storage.Backend) int {
	t.Helper()
	n := 0
	if err := s.List(context.Background(), "", func(storage.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// genSource is an in-memory source of moderately compressible data.
type genSource struct {
	size int64
	kind string
	fail error // returned by Finish when set
	// block, when set, is served cyclically instead of running the
	// generator (benchmarks: the source must not be the bottleneck).
	block []byte
}

func (g *genSource) Kind() string {
	if g.kind == "" {
		return "bin"
	}
	return g.kind
}

func (g *genSource) Open(ctx context.Context) (source.Stream, error) {
	var r io.Reader = newGenerator()
	if g.block != nil {
		r = &cycle{block: g.block}
	}
	return &genStream{r: io.LimitReader(r, g.size), fail: g.fail}, nil
}

type genStream struct {
	r    io.Reader
	fail error
}

func (s *genStream) Read(p []byte) (int, error) { return s.r.Read(p) }
func (s *genStream) Finish() (source.Result, error) {
	return source.Result{}, s.fail
}

// generator emits text rows like a table of md5 columns, timestamps and
// small numbers: compresses about 2–3:1 with zstd -3.
type generator struct {
	state uint64
	buf   []byte
}

func newGenerator() *generator { return &generator{state: 0x9e3779b97f4a7c15} }

func (g *generator) next() uint64 {
	g.state ^= g.state << 13
	g.state ^= g.state >> 7
	g.state ^= g.state << 17
	return g.state
}

const hexdigits = "0123456789abcdef"

func (g *generator) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(g.buf) == 0 {
			row := make([]byte, 0, 128)
			for range 2 {
				v := g.next()
				for range 16 {
					row = append(row, hexdigits[v&15])
					v >>= 4
				}
				row = append(row, '\t')
			}
			v := g.next()
			row = append(row, "2026-11-23 07:4"...)
			row = append(row, byte('0'+v%6), ':', byte('0'+v/6%6), byte('0'+v/36%10), '\t')
			row = append(row, byte('0'+v/360%10), byte('0'+v/3600%10), '.', byte('0'+v/36000%10), '\t')
			row = append(row, []string{"shipped\n", "pending\n", "paid\n", "cancelled\n"}[v/360000%4]...)
			g.buf = row
		}
		c := copy(p[n:], g.buf)
		g.buf = g.buf[c:]
		n += c
	}
	return n, nil
}

// slowStore does not read Save's input until release is closed, then
// reads it in small pieces: a target far behind the others.
type slowStore struct {
	storage.Backend
	release chan struct{}
}

func (s *slowStore) Save(ctx context.Context, key string, r io.Reader, o storage.SaveOptions) (storage.ObjectInfo, error) {
	if s.release != nil {
		select {
		case <-s.release:
		case <-ctx.Done():
			return storage.ObjectInfo{}, ctx.Err()
		}
	}
	return s.Backend.Save(ctx, key, &slowReader{r: r}, o)
}

type slowReader struct{ r io.Reader }

func (s *slowReader) Read(p []byte) (int, error) { return s.r.Read(p[:min(len(p), 8<<10)]) }

// failingStore fails Save after reading after bytes.
type failingStore struct {
	storage.Backend
	after int64
	read  atomic.Int64
}

var errInjected = errors.New("injected: connection reset by target")

func (f *failingStore) Save(ctx context.Context, key string, r io.Reader, o storage.SaveOptions) (storage.ObjectInfo, error) {
	n, err := io.Copy(io.Discard, io.LimitReader(r, f.after))
	f.read.Add(n)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	return storage.ObjectInfo{}, errInjected
}

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

func idents(k keys) []age.Identity { return []age.Identity{k.identity} }

// cycle repeats block forever.
type cycle struct {
	block []byte
	off   int
}

func (c *cycle) Read(p []byte) (int, error) {
	n := copy(p, c.block[c.off:])
	c.off = (c.off + n) % len(c.block)
	return n, nil
}
