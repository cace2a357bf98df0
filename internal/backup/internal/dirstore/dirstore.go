// Package dirstore is a minimal storage.Backend over a directory, for the
// backup package's tests and benchmarks while the real backends live in
// internal/storage. It follows the Backend contract: temp file + fsync +
// rename, temporary names never listed.
package dirstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/storage"
)

// Store keeps objects as files under Dir.
type Store struct {
	name string
	dir  string
}

var _ storage.Backend = (*Store)(nil)

// New returns a store named name over dir (created if missing).
func New(name, dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return &Store{name: name, dir: dir}, nil
}

const tmpSuffix = ".opsd-tmp"

// Name returns the target name.
func (s *Store) Name() string { return s.name }

// Dir returns the root directory.
func (s *Store) Dir() string { return s.dir }

func (s *Store) path(key string) (string, error) {
	if err := storage.CheckKey(key); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

// Save writes r to key via a temporary file.
func (s *Store) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	if opts.NoOverwrite {
		if _, err := os.Stat(p); err == nil {
			return storage.ObjectInfo{}, fmt.Errorf("%w: %s", storage.ErrExists, key)
		}
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return storage.ObjectInfo{}, err
	}
	f, err := os.CreateTemp(filepath.Dir(p), filepath.Base(p)+".*"+tmpSuffix)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	n, err := io.Copy(f, ctxReader{ctx, r})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		_ = os.Remove(f.Name())
		return storage.ObjectInfo{}, err
	}
	return storage.ObjectInfo{Key: key, Size: n, ModTime: time.Now()}, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Open reads a range of key.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", storage.ErrNotFound, key)
	} else if err != nil {
		return nil, err
	}
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		f.Close()
		return nil, err
	}
	if length < 0 {
		return f, nil
	}
	return struct {
		io.Reader
		io.Closer
	}{io.LimitReader(f, length), f}, nil
}

// Stat describes key.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	st, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return storage.ObjectInfo{}, fmt.Errorf("%w: %s", storage.ErrNotFound, key)
	} else if err != nil {
		return storage.ObjectInfo{}, err
	}
	return storage.ObjectInfo{Key: key, Size: st.Size(), ModTime: st.ModTime()}, nil
}

// List walks the directory in lexical order.
func (s *Store) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	return filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.HasSuffix(p, tmpSuffix) {
			return nil
		}
		rel, _ := filepath.Rel(s.dir, p)
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		return fn(storage.ObjectInfo{Key: key, Size: info.Size(), ModTime: info.ModTime()})
	})
}

// Remove deletes key.
func (s *Store) Remove(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Cleanup removes temporary files older than olderThan.
func (s *Store) Cleanup(ctx context.Context, olderThan time.Time) (int, error) {
	n := 0
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, tmpSuffix) {
			return err
		}
		if info, err := d.Info(); err == nil && info.ModTime().Before(olderThan) {
			if os.Remove(p) == nil {
				n++
			}
		}
		return nil
	})
	return n, err
}

// Capabilities: none.
func (s *Store) Capabilities() storage.Capabilities { return storage.Capabilities{} }

// Close does nothing.
func (s *Store) Close() error { return nil }
