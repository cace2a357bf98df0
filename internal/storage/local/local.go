// Package local is a storage.Backend on a local filesystem directory.
//
// Save writes to a temporary file in the object's own directory, fsyncs it,
// renames it over the key (or links it, for NoOverwrite, so an existing
// object is never replaced) and fsyncs the directory, so after a crash an
// object is either complete or absent. Temporary files are named
// ".opsd-tmp-*"; List never shows them and Cleanup removes stale ones. Keys
// whose last segment starts with that prefix are invalid here.
//
// A full disk (ENOSPC, EDQUOT) is reported as a permanent error: retrying
// within seconds does not free space, and the temporary file is removed so
// the failed write gives back what it took. The next scheduled run tries
// again.
package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/storage"
)

// TempPrefix starts the name of every temporary file.
const TempPrefix = ".opsd-tmp-"

// ErrDiskFull is wrapped by Save errors caused by a full disk or quota.
var ErrDiskFull = errors.New("disk full")

// Backend stores objects as files under a root directory.
type Backend struct {
	name string
	root string
	// createTemp is os.CreateTemp; tests replace it to simulate a full disk.
	createTemp func(dir, pattern string) (tempFile, error)
}

// tempFile is the part of *os.File Save uses.
type tempFile interface {
	io.Writer
	Sync() error
	Close() error
	Name() string
}

var _ storage.Backend = (*Backend)(nil)

// New opens (creating if needed) the directory root as target name.
func New(name, root string) (*Backend, error) {
	if root == "" {
		return nil, storage.Permanent(fmt.Errorf("open local target %q: empty path", name))
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, storage.Permanent(fmt.Errorf("open local target %q: %w", name, err))
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		return nil, storage.Permanent(fmt.Errorf("open local target %q: %w", name, err))
	}
	return &Backend{
		name: name,
		root: abs,
		createTemp: func(dir, pattern string) (tempFile, error) {
			return os.CreateTemp(dir, pattern)
		},
	}, nil
}

// Name implements storage.Backend.
func (b *Backend) Name() string { return b.name }

// Root is the absolute directory objects live under.
func (b *Backend) Root() string { return b.root }

// Capabilities: no object lock, no storage classes.
func (b *Backend) Capabilities() storage.Capabilities { return storage.Capabilities{} }

// Close implements storage.Backend.
func (b *Backend) Close() error { return nil }

func (b *Backend) path(key string) (string, error) {
	if err := storage.CheckKey(key); err != nil {
		return "", err
	}
	if strings.HasPrefix(path.Base(key), TempPrefix) {
		return "", fmt.Errorf("%w: %q: reserved for temporary files", storage.ErrInvalidKey, key)
	}
	return filepath.Join(b.root, filepath.FromSlash(key)), nil
}

func (b *Backend) errorf(op, key string, err error) error {
	return fmt.Errorf("%s %s in %q: %w", op, key, b.name, err)
}

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, b.errorf("save", key, err)
	}
	p, err := b.path(key)
	if err != nil {
		return storage.ObjectInfo{}, b.errorf("save", key, err)
	}
	if opts.Retention != nil {
		return storage.ObjectInfo{}, b.errorf("save", key, fmt.Errorf("retention: %w", storage.ErrUnsupported))
	}
	if opts.NoOverwrite {
		if _, err := os.Lstat(p); err == nil {
			return storage.ObjectInfo{}, b.errorf("save", key, storage.ErrExists)
		}
	}
	n, err := b.save(ctx, p, r, opts.NoOverwrite)
	if err != nil {
		return storage.ObjectInfo{}, b.errorf("save", key, err)
	}
	return storage.ObjectInfo{Key: key, Size: n, ModTime: time.Now()}, nil
}

func (b *Backend) save(ctx context.Context, p string, r io.Reader, noOverwrite bool) (n int64, err error) {
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return 0, classify(err)
	}
	f, err := b.createTemp(dir, TempPrefix+filepath.Base(p)+"-*")
	if err != nil {
		return 0, classify(err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// Plain Write calls with a large buffer: fewer syscalls than the 32 KiB
	// default, and no ReadFrom shortcut that would bypass ctx checks.
	n, err = io.CopyBuffer(struct{ io.Writer }{f}, ctxReader{ctx, r}, make([]byte, 1<<20))
	if err != nil {
		return n, classify(err)
	}
	if err = f.Sync(); err != nil {
		return n, classify(err)
	}
	if err = f.Close(); err != nil {
		return n, classify(err)
	}
	if err = ctx.Err(); err != nil {
		return n, err
	}
	failpoint.Hit("local.temp-written")
	if noOverwrite {
		// link fails if p exists, atomically; rename would replace it.
		if err = os.Link(tmp, p); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return n, storage.ErrExists
			}
			return n, classify(err)
		}
		_ = os.Remove(tmp)
	} else if err = os.Rename(tmp, p); err != nil {
		return n, classify(err)
	}
	if err = syncDir(dir); err != nil {
		return n, classify(err)
	}
	return n, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// classify marks errors that retrying will not fix.
func classify(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return storage.Permanent(fmt.Errorf("%w: %w", ErrDiskFull, err))
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS), errors.Is(err, syscall.ENOTDIR):
		return storage.Permanent(err)
	}
	return err
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, b.errorf("open", key, err)
	}
	p, err := b.path(key)
	if err != nil {
		return nil, b.errorf("open", key, err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, b.errorf("open", key, notFound(err))
	}
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, b.errorf("open", key, storage.ErrNotFound)
	}
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return nil, b.errorf("open", key, err)
		}
	}
	if length < 0 {
		return f, nil
	}
	return limitedFile{io.LimitReader(f, length), f}, nil
}

type limitedFile struct {
	io.Reader
	io.Closer
}

func notFound(err error) error {
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
	}
	return classify(err)
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, b.errorf("stat", key, err)
	}
	p, err := b.path(key)
	if err != nil {
		return storage.ObjectInfo{}, b.errorf("stat", key, err)
	}
	fi, err := os.Lstat(p)
	if err != nil {
		return storage.ObjectInfo{}, b.errorf("stat", key, notFound(err))
	}
	if !fi.Mode().IsRegular() {
		return storage.ObjectInfo{}, b.errorf("stat", key, storage.ErrNotFound)
	}
	return storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List walks the tree in lexical key order. A directory's entries are
// sorted as keys would be: a subdirectory "a" as "a/", so "a-b" < "a/x".
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q in %q: %w", prefix, b.name, err)
	}
	// Start at the deepest directory the prefix names in full.
	dirKey := ""
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		dirKey = prefix[:i+1]
	}
	err := b.walk(ctx, dirKey, func(key string, fi fs.FileInfo) (bool, error) {
		if fi == nil { // a directory: descend only if it can hold matches
			return strings.HasPrefix(key, prefix) || strings.HasPrefix(prefix, key), nil
		}
		if !strings.HasPrefix(key, prefix) || strings.HasPrefix(path.Base(key), TempPrefix) {
			return false, nil
		}
		return false, fn(storage.ObjectInfo{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	var cb callbackError
	if errors.As(err, &cb) {
		return cb.err
	}
	if err != nil {
		return fmt.Errorf("list %q in %q: %w", prefix, b.name, err)
	}
	return nil
}

// callbackError carries an error from the List callback through walk
// unchanged, so List can return it as is.
type callbackError struct{ err error }

func (c callbackError) Error() string { return c.err.Error() }

// walk visits regular files under dirKey (a "" or "/"-terminated key) in
// key order. visit gets fi == nil for directories (key ends in "/") and
// returns whether to descend; for files its error stops the walk.
func (b *Backend) walk(ctx context.Context, dirKey string, visit func(key string, fi fs.FileInfo) (bool, error)) error {
	entries, err := os.ReadDir(filepath.Join(b.root, filepath.FromSlash(dirKey)))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil
		}
		return err
	}
	sortKey := func(e fs.DirEntry) string {
		if e.IsDir() {
			return e.Name() + "/"
		}
		return e.Name()
	}
	sort.Slice(entries, func(i, j int) bool { return sortKey(entries[i]) < sortKey(entries[j]) })
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := dirKey + e.Name()
		if e.IsDir() {
			descend, _ := visit(key+"/", nil)
			if descend {
				if err := b.walk(ctx, key+"/", visit); err != nil {
					return err
				}
			}
			continue
		}
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed while we walked
		}
		if err != nil {
			return err
		}
		if _, err := visit(key, fi); err != nil {
			return callbackError{err}
		}
	}
	return nil
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return b.errorf("remove", key, err)
	}
	p, err := b.path(key)
	if err != nil {
		return b.errorf("remove", key, err)
	}
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		return nil // not an object
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return b.errorf("remove", key, classify(err))
	}
	return nil
}

// Cleanup removes temporary files last modified before olderThan: those
// of Saves that crashed or were killed. A Save in progress keeps its file's
// mtime current, so pass a time well before any Save still running.
func (b *Backend) Cleanup(ctx context.Context, olderThan time.Time) (int, error) {
	removed := 0
	err := b.walk(ctx, "", func(key string, fi fs.FileInfo) (bool, error) {
		if fi == nil {
			return true, nil
		}
		if strings.HasPrefix(path.Base(key), TempPrefix) && fi.ModTime().Before(olderThan) {
			err := os.Remove(filepath.Join(b.root, filepath.FromSlash(key)))
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return false, err
			}
			if err == nil {
				removed++
			}
		}
		return false, nil
	})
	var cb callbackError
	if errors.As(err, &cb) {
		err = cb.err
	}
	if err != nil {
		return removed, fmt.Errorf("cleanup %q: %w", b.name, err)
	}
	return removed, nil
}

// ctxReader stops a copy when ctx ends.
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
