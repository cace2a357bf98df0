// Package retry is a storage.Backend decorator that retries transient
// errors with exponential backoff and full jitter.
//
// It returns ctx.Err() before every attempt, never retries an error
// storage.IsPermanent reports, and never logs: Options.Report and
// Options.Success are how the caller learns about retries.
//
// Save is retried only when its reader is an io.Seeker: the reader is
// rewound to where it started before each new attempt. A plain io.Reader
// (a pipe from a running pg_dump) cannot be replayed, so such a Save gets
// one attempt and its error is returned as is; callers that want retries
// for streams spool them or restart the stream themselves. Open retries
// opening, not reads from the returned stream. List resumes after the last
// key it delivered, relying on the lexical order every backend guarantees,
// so fn never sees a key twice.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/opsd-dev/opsd/internal/storage"
)

// Options tune the backoff. The zero value of each field picks its default.
type Options struct {
	// MaxAttempts per operation, the first included; default 5.
	MaxAttempts int
	// Initial delay before the second attempt; default 500ms.
	Initial time.Duration
	// Max caps a single delay; default 30s.
	Max time.Duration
	// Multiplier grows the delay per attempt; default 2.
	Multiplier float64
	// Report, if set, is called before each retry with the operation
	// ("save", "open", ...), the key or prefix, the attempt that failed
	// (1-based), its error and the delay before the next attempt.
	Report func(op, key string, attempt int, err error, delay time.Duration)
	// Success, if set, is called when an operation succeeds after at least
	// one retry, with the number of attempts it took.
	Success func(op, key string, attempts int)
	// Rand returns a float in [0, 1) for jitter; default math/rand/v2.
	// Tests set it to make delays deterministic.
	Rand func() float64
	// Sleep waits d or until ctx ends; tests replace it to run instantly.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Backend retries the operations of the backend it wraps.
type Backend struct {
	storage.Backend
	opts Options
}

var _ storage.Backend = (*Backend)(nil)

// New wraps be.
func New(be storage.Backend, opts Options) *Backend {
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if opts.Initial <= 0 {
		opts.Initial = 500 * time.Millisecond
	}
	if opts.Max <= 0 {
		opts.Max = 30 * time.Second
	}
	if opts.Multiplier < 1 {
		opts.Multiplier = 2
	}
	if opts.Rand == nil {
		opts.Rand = rand.Float64
	}
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	return &Backend{Backend: be, opts: opts}
}

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() storage.Backend { return b.Backend }

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// delay is the full-jitter backoff before attempt+1: a random duration up
// to Initial * Multiplier^(attempt-1), capped at Max.
func (b *Backend) delay(attempt int) time.Duration {
	d := float64(b.opts.Initial)
	for i := 1; i < attempt && d < float64(b.opts.Max); i++ {
		d *= b.opts.Multiplier
	}
	d = min(d, float64(b.opts.Max))
	return time.Duration(d * b.opts.Rand())
}

// do runs fn until it succeeds, fails permanently, runs out of attempts or
// ctx ends. before, if set, runs ahead of every attempt after the first.
func (b *Backend) do(ctx context.Context, op, key string, before func() error, fn func() error) error {
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if attempt > 1 && before != nil {
			if err := before(); err != nil {
				return err
			}
		}
		err := fn()
		if err == nil {
			if attempt > 1 && b.opts.Success != nil {
				b.opts.Success(op, key, attempt)
			}
			return nil
		}
		if storage.IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		if attempt >= b.opts.MaxAttempts {
			return fmt.Errorf("%w (gave up after %d attempts)", err, attempt)
		}
		d := b.delay(attempt)
		if b.opts.Report != nil {
			b.opts.Report(op, key, attempt, err, d)
		}
		if err := b.opts.Sleep(ctx, d); err != nil {
			return err
		}
	}
}

// Save retries only if r can be rewound; see the package doc.
func (b *Backend) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	seeker, ok := r.(io.Seeker)
	if !ok {
		if err := ctx.Err(); err != nil {
			return storage.ObjectInfo{}, err
		}
		return b.Backend.Save(ctx, key, r, opts)
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil {
		// Claims to seek but cannot: one attempt, like a plain reader.
		return b.Backend.Save(ctx, key, r, opts)
	}
	var fi storage.ObjectInfo
	rewind := func() error {
		if _, err := seeker.Seek(start, io.SeekStart); err != nil {
			return fmt.Errorf("save %s to %q: rewind for retry: %w", key, b.Name(), err)
		}
		return nil
	}
	err = b.do(ctx, "save", key, rewind, func() (err error) {
		fi, err = b.Backend.Save(ctx, key, r, opts)
		return err
	})
	return fi, err
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := b.do(ctx, "open", key, nil, func() (err error) {
		rc, err = b.Backend.Open(ctx, key, offset, length)
		return err
	})
	return rc, err
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	var fi storage.ObjectInfo
	err := b.do(ctx, "stat", key, nil, func() (err error) {
		fi, err = b.Backend.Stat(ctx, key)
		return err
	})
	return fi, err
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, key string) error {
	return b.do(ctx, "remove", key, nil, func() error { return b.Backend.Remove(ctx, key) })
}

// Cleanup implements storage.Backend.
func (b *Backend) Cleanup(ctx context.Context, olderThan time.Time) (int, error) {
	total := 0
	err := b.do(ctx, "cleanup", "", nil, func() error {
		n, err := b.Backend.Cleanup(ctx, olderThan)
		total += n
		return err
	})
	return total, err
}

// fnError carries an error from the List callback, which is never retried.
type fnError struct{ err error }

func (f fnError) Error() string { return f.err.Error() }
func (f fnError) Unwrap() error { return f.err }

// List resumes after the last delivered key when it retries.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	last, delivered := "", false
	err := b.do(ctx, "list", prefix, nil, func() error {
		return b.Backend.List(ctx, prefix, func(fi storage.ObjectInfo) error {
			if delivered && fi.Key <= last {
				return nil
			}
			if err := fn(fi); err != nil {
				return storage.Permanent(fnError{err})
			}
			last, delivered = fi.Key, true
			return nil
		})
	})
	var fe fnError
	if errors.As(err, &fe) {
		return fe.err
	}
	return err
}
