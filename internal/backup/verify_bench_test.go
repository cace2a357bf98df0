package backup_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/storage/local"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// BenchmarkVerifyCopy re-reads a stored copy on a local target and checks
// its SHA-256 (level checksum), beside `sha256sum` of the same file in the
// same run. OPSD_BENCH_VERIFY_BYTES sets the size (default 1 GiB). The
// file is read from the page cache in both, so this measures hashing and
// I/O overhead, not the disk.
func BenchmarkVerifyCopy(b *testing.B) {
	size := int64(1 << 30)
	if v := os.Getenv("OPSD_BENCH_VERIFY_BYTES"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		size = n
	}
	dir := b.TempDir()
	be, err := local.New("bench", dir)
	if err != nil {
		b.Fatal(err)
	}
	m := &manifest.Manifest{ID: "20261125T000000Z-00000001", Source: "bench"}
	name := manifest.DataName("out", true)
	path := filepath.Join(dir, filepath.FromSlash(m.Key(name)))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rand.Reader, size)); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	m.Objects = []manifest.Object{{Name: name, Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}}

	b.Run("opsd-verify-checksum", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if err := backup.VerifyCopy(b.Context(), be, m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-sha256sum", func(b *testing.B) {
		testenv.Commands(b, "sha256sum")
		b.SetBytes(size)
		for b.Loop() {
			if out, err := exec.Command("sha256sum", path).CombinedOutput(); err != nil {
				b.Fatalf("sha256sum: %v %s", err, out)
			}
		}
	})
}
