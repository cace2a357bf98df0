// Package mem is an in-memory storage.Backend for tests. With Options.Lock
// it enforces object retention like a store with object lock, so code that
// relies on retention can be tested without a real store.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/opsd-dev/opsd/internal/storage"
)

// Options configure a Backend.
type Options struct {
	// Lock makes the backend accept SaveOptions.Retention and refuse to
	// remove or overwrite an object before its retain-until time.
	Lock bool
	// Now is the clock retention is checked against; default time.Now.
	Now func() time.Time
}

// Backend keeps objects in memory.
type Backend struct {
	name string
	opts Options

	mu      sync.Mutex
	objects map[string]object
}

type object struct {
	data      []byte
	modTime   time.Time
	class     string
	retention *storage.Retention
}

var _ storage.Backend = (*Backend)(nil)

// New returns an empty backend named name.
func New(name string, opts Options) *Backend {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Backend{name: name, opts: opts, objects: map[string]object{}}
}

// Name implements storage.Backend.
func (b *Backend) Name() string { return b.name }

// Capabilities implements storage.Backend.
func (b *Backend) Capabilities() storage.Capabilities {
	return storage.Capabilities{ObjectLock: b.opts.Lock, StorageClasses: true, DefaultStorageClass: "STANDARD"}
}

// Save reads r completely before the object becomes visible.
func (b *Backend) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	if err := b.check(ctx, key); err != nil {
		return storage.ObjectInfo{}, b.errorf("save", key, err)
	}
	if opts.Retention != nil && !b.opts.Lock {
		return storage.ObjectInfo{}, b.errorf("save", key, fmt.Errorf("retention: %w", storage.ErrUnsupported))
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, ctxReader{ctx, r}); err != nil {
		return storage.ObjectInfo{}, b.errorf("save", key, err)
	}
	class := opts.StorageClass
	if class == "" {
		class = "STANDARD"
	}
	o := object{data: buf.Bytes(), modTime: b.opts.Now(), class: class}
	if opts.Retention != nil {
		ret := *opts.Retention
		o.retention = &ret
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if old, ok := b.objects[key]; ok {
		if opts.NoOverwrite {
			return storage.ObjectInfo{}, b.errorf("save", key, storage.ErrExists)
		}
		if b.locked(old) {
			return storage.ObjectInfo{}, b.errorf("save", key, storage.ErrLocked)
		}
	}
	b.objects[key] = o
	return info(key, o), nil
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := b.check(ctx, key); err != nil {
		return nil, b.errorf("open", key, err)
	}
	b.mu.Lock()
	o, ok := b.objects[key]
	b.mu.Unlock()
	if !ok {
		return nil, b.errorf("open", key, storage.ErrNotFound)
	}
	data := o.data
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	data = data[offset:]
	if length >= 0 && length < int64(len(data)) {
		data = data[:length]
	}
	return io.NopCloser(bytes.NewReader(data)), nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := b.check(ctx, key); err != nil {
		return storage.ObjectInfo{}, b.errorf("stat", key, err)
	}
	b.mu.Lock()
	o, ok := b.objects[key]
	b.mu.Unlock()
	if !ok {
		return storage.ObjectInfo{}, b.errorf("stat", key, storage.ErrNotFound)
	}
	return info(key, o), nil
}

// List implements storage.Backend; fn runs without the lock held.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q in %q: %w", prefix, b.name, err)
	}
	b.mu.Lock()
	var infos []storage.ObjectInfo
	for k, o := range b.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, info(k, o))
		}
	}
	b.mu.Unlock()
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	for _, fi := range infos {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("list %q in %q: %w", prefix, b.name, err)
		}
		if err := fn(fi); err != nil {
			return err
		}
	}
	return nil
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, key string) error {
	if err := b.check(ctx, key); err != nil {
		return b.errorf("remove", key, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	o, ok := b.objects[key]
	if !ok {
		return nil
	}
	if b.locked(o) {
		return b.errorf("remove", key, fmt.Errorf("%w until %s", storage.ErrLocked, o.retention.Until.UTC().Format(time.RFC3339)))
	}
	delete(b.objects, key)
	return nil
}

// Cleanup has nothing to do: a Save is never half visible.
func (b *Backend) Cleanup(ctx context.Context, _ time.Time) (int, error) {
	return 0, ctx.Err()
}

// Close implements storage.Backend.
func (b *Backend) Close() error { return nil }

func (b *Backend) locked(o object) bool {
	return b.opts.Lock && o.retention != nil && b.opts.Now().Before(o.retention.Until)
}

func (b *Backend) check(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return storage.CheckKey(key)
}

func (b *Backend) errorf(op, key string, err error) error {
	return fmt.Errorf("%s %s in %q: %w", op, key, b.name, err)
}

func info(key string, o object) storage.ObjectInfo {
	fi := storage.ObjectInfo{Key: key, Size: int64(len(o.data)), ModTime: o.modTime, StorageClass: o.class}
	if o.retention != nil {
		ret := *o.retention
		fi.Retention = &ret
	}
	return fi
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
