package storage

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// Backend stores objects under keys.
//
// Retry contract: methods return errors classified with IsPermanent. A
// permanent error (ErrNotFound, ErrLocked, ErrInvalidKey, access denied, a
// bucket that does not exist, a checksum mismatch reported by the store)
// will not go away by retrying; every other error may be transient, and the
// retry decorator retries it with backoff. Implementations never retry on
// their own beyond what their SDK does by default.
type Backend interface {
	// Name is the target's name from the config, for errors and metrics.
	Name() string

	// Save streams r to key; the size need not be known in advance. The
	// object becomes visible under key only once complete: written under a
	// temporary name and renamed (local), or as a multipart/resumable upload
	// that is completed last (S3, GCS). On error nothing is visible under
	// key; temporary objects or incomplete uploads may remain until Cleanup.
	// Save replaces an existing object unless opts.NoOverwrite is set, in
	// which case it fails with ErrExists.
	Save(ctx context.Context, key string, r io.Reader, opts SaveOptions) (ObjectInfo, error)

	// Open returns length bytes of key starting at offset; length < 0 reads
	// to the end. ErrNotFound if there is no such object.
	Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)

	// Stat describes key, including its retention where the store has one.
	Stat(ctx context.Context, key string) (ObjectInfo, error)

	// List calls fn for every complete object whose key starts with prefix,
	// in lexical key order. Temporary objects are never listed. An error
	// from fn stops the listing and is returned.
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error

	// Remove deletes key. ErrLocked if retention forbids it now (the store
	// refused, or RetainUntil is in the future); removing a key that does
	// not exist is not an error.
	Remove(ctx context.Context, key string) error

	// Cleanup removes temporary objects and aborts incomplete uploads that
	// were started before olderThan, returning how many it removed. Stores
	// call it at start and before each backup so a crash leaves nothing
	// behind for long.
	Cleanup(ctx context.Context, olderThan time.Time) (int, error)

	// Capabilities says what the store supports.
	Capabilities() Capabilities

	// Close releases the backend's resources.
	Close() error
}

// SaveOptions tune one Save.
type SaveOptions struct {
	// StorageClass overrides the target's default storage class.
	StorageClass string
	// Retention, when set, locks the object until Retention.Until (S3
	// Object Lock, GCS object retention). Backends without the capability
	// fail with ErrUnsupported rather than silently store it unlocked.
	Retention *Retention
	// ContentType of the object; default application/octet-stream.
	ContentType string
	// NoOverwrite makes Save fail with ErrExists if key exists.
	NoOverwrite bool
	// SizeHint is the expected size (e.g. the previous backup's), 0 if
	// unknown. Stores that upload in a bounded number of parts size their
	// parts from it; the actual size may differ either way.
	SizeHint int64
}

// Retention is an object's lock.
type Retention struct {
	Mode  string // GOVERNANCE | COMPLIANCE (S3); "locked" or "unlocked" (GCS)
	Until time.Time
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key          string
	Size         int64
	ModTime      time.Time
	StorageClass string
	// Retention is the object's lock as the store reports it, nil if none.
	Retention *Retention
	// VersionID where the store versions objects (S3 with Object Lock).
	VersionID string
}

// Capabilities of a backend.
type Capabilities struct {
	// ObjectLock: the store can lock objects (SaveOptions.Retention works).
	ObjectLock bool
	// StorageClasses: SaveOptions.StorageClass is honoured.
	StorageClasses bool
	// DefaultStorageClass of new objects.
	DefaultStorageClass string
}

// Errors. All are permanent.
var (
	ErrNotFound    = errors.New("object not found")
	ErrExists      = errors.New("object exists")
	ErrLocked      = errors.New("object is locked by retention")
	ErrInvalidKey  = errors.New("invalid object key")
	ErrUnsupported = errors.New("not supported by this storage")
)

// permanentError marks an error as not worth retrying.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks err as permanent. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err will not go away by retrying.
func IsPermanent(err error) bool {
	var p permanentError
	switch {
	case err == nil:
		return false
	case errors.As(err, &p),
		errors.Is(err, ErrNotFound), errors.Is(err, ErrExists), errors.Is(err, ErrLocked),
		errors.Is(err, ErrInvalidKey), errors.Is(err, ErrUnsupported),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	return false
}

// CheckKey validates a key.
func CheckKey(key string) error {
	if key == "" || strings.HasPrefix(key, "/") || strings.HasSuffix(key, "/") || strings.ContainsRune(key, 0) || strings.Contains(key, "\\") {
		return fmt.Errorf("%w: %q", ErrInvalidKey, key)
	}
	for _, seg := range strings.Split(key, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q", ErrInvalidKey, key)
		}
	}
	return nil
}
