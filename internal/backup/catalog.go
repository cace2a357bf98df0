package backup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/storage"
)

// maxManifestSize bounds what is read as a manifest or signature.
const maxManifestSize = 4 << 20

// List reads every <source>/<id>/manifest.json on a target with its
// signature and returns the manifests that verify, sorted by source and id
// (oldest first). The storage is the catalog (SPEC §1.2): this needs
// nothing but the target and the verifier key. Backups whose manifest is
// unsigned, badly signed, malformed or of an unknown format version are
// left out and reported together in the error, which is non-nil alongside
// the good manifests.
func List(ctx context.Context, b storage.Backend, verifier note.Verifier) ([]manifest.Manifest, error) {
	var dirs []string
	err := b.List(ctx, "", func(oi storage.ObjectInfo) error {
		parts := strings.Split(oi.Key, "/")
		if len(parts) == 3 && parts[2] == manifest.ManifestName {
			dirs = append(dirs, parts[0]+"/"+parts[1])
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", b.Name(), err)
	}
	var out []manifest.Manifest
	var errs []error
	for _, dir := range dirs {
		m, err := readManifest(ctx, b, dir, verifier)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Source != out[j].Source {
			return out[i].Source < out[j].Source
		}
		return out[i].ID < out[j].ID
	})
	return out, errors.Join(errs...)
}

// ReadManifest reads and verifies the manifest of backup id of source on
// a target.
func ReadManifest(ctx context.Context, b storage.Backend, source, id string, verifier note.Verifier) (*manifest.Manifest, error) {
	if err := manifest.CheckID(id); err != nil {
		return nil, err
	}
	return readManifest(ctx, b, source+"/"+id, verifier)
}

func readManifest(ctx context.Context, b storage.Backend, dir string, verifier note.Verifier) (*manifest.Manifest, error) {
	raw, err := readSmall(ctx, b, dir+"/"+manifest.ManifestName)
	if err != nil {
		return nil, fmt.Errorf("%s on %s: %w", dir, b.Name(), err)
	}
	sig, err := readSmall(ctx, b, dir+"/"+manifest.SignatureName)
	if err != nil {
		if errors.Is(err, storage.ErrNotFound) {
			// Written last: without it the backup never finished.
			return nil, fmt.Errorf("%s on %s: %w: manifest.json.sig is missing (backup incomplete)", dir, b.Name(), manifest.ErrBadSignature)
		}
		return nil, fmt.Errorf("%s on %s: %w", dir, b.Name(), err)
	}
	m, err := manifest.Verify(dir, raw, sig, verifier)
	if err != nil {
		return nil, fmt.Errorf("on %s: %w", b.Name(), err)
	}
	return m, nil
}

func readSmall(ctx context.Context, b storage.Backend, key string) ([]byte, error) {
	rc, err := b.Open(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if len(data) > maxManifestSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", key, maxManifestSize)
	}
	return data, nil
}

// ErrChecksum: a stored copy does not match its manifest.
var ErrChecksum = errors.New("copy does not match its manifest")

// ErrNotVerifiable: a backup has no manifest, or no complete copy (on the
// target asked for), so there is nothing to verify.
var ErrNotVerifiable = errors.New("backup cannot be verified")

// VerifyCopy re-reads the data object of m on a target and checks its size
// and SHA-256 against the manifest (SPEC §1.1: a backup counts once a copy
// has been read back and matched).
func VerifyCopy(ctx context.Context, b storage.Backend, m *manifest.Manifest) error {
	obj, err := m.DataObject()
	if err != nil {
		return err
	}
	rc, err := b.Open(ctx, m.Key(obj.Name), 0, -1)
	if err != nil {
		return fmt.Errorf("verify %s on %s: %w", m.Key(obj.Name), b.Name(), err)
	}
	defer rc.Close()
	h := sha256.New()
	// Large reads: hashing, not syscalls, should bound the rate.
	n, err := io.CopyBuffer(h, struct{ io.Reader }{rc}, make([]byte, 1<<20))
	if err != nil {
		return fmt.Errorf("verify %s on %s: %w", m.Key(obj.Name), b.Name(), err)
	}
	return checkDigest(b.Name(), m.Key(obj.Name), obj, n, hex.EncodeToString(h.Sum(nil)))
}

func checkDigest(target, key string, obj manifest.Object, n int64, sum string) error {
	if n != obj.Size {
		return fmt.Errorf("%w: %s on %s has %d bytes, manifest says %d", ErrChecksum, key, target, n, obj.Size)
	}
	if sum != obj.SHA256 {
		return fmt.Errorf("%w: %s on %s has SHA-256 %s, manifest says %s", ErrChecksum, key, target, sum, obj.SHA256)
	}
	return nil
}
