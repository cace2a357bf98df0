// Package lockprobe checks that a store really enforces object lock, with a
// canary: it writes a small object under retention and tries to delete it.
// Some S3-compatible stores accept Object Lock headers and ignore them;
// copies on such a store must not count as immutable (package
// backup/compliance reads Result.Enforced as Target.LockEnforced).
//
// # The canary
//
// Probe writes "opsd-canary/<UTC time>-<random>" (a few dozen bytes, in
// the STANDARD storage class where the store has classes, so no minimum
// storage duration applies) with a retention of Prober.Retention
// (DefaultRetention, one hour) in the caller's mode, reads its retention
// back with Stat, then removes it through the Backend like any prune
// would:
//
//   - storage.ErrLocked, and the canary still there: Enforced.
//   - The removal succeeded: not Enforced; the store let a locked object
//     go, so its locks are worth nothing.
//   - Any other error: Probe returns it and the finding stays unknown.
//
// One hour is long enough for the delete attempt to happen inside the lock
// even with minutes of clock skew between host and store, and short enough
// that the next daily probe finds the previous canary expired and removes
// it: at a probe a day, at most two canaries exist at once. In COMPLIANCE
// mode nobody, not even the account root, can delete a canary before its
// hour is up. With mode "" Probe sends no retention of its own, so the
// canary gets the target's default (object_lock days, a bucket default
// retention or a GCS bucket retention policy) and stays that long: at a
// probe a day and 35 days of retention, 35 canaries of a few dozen bytes.
//
// # Leftovers
//
// After probing, Probe sweeps opsd-canary/: every canary whose retention,
// as Stat reports it, has ended by now is removed (Result.Removed); one
// still locked is left for a later probe (Result.Kept). A sweep failure
// does not change the finding; it is reported in Result.SweepErr.
package lockprobe

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/storage"
)

// Prefix is where canaries live on a target.
const Prefix = "opsd-canary/"

// DefaultRetention of a canary; see the package doc for why an hour.
const DefaultRetention = time.Hour

// Result is the finding of one probe.
type Result struct {
	// Enforced: the store refused to delete the locked canary.
	Enforced bool
	// Detail says what happened, for status pages and logs.
	Detail string
	// CheckedAt is the now the probe was given.
	CheckedAt time.Time
	// Key of the canary written.
	Key string
	// RetainUntil is the canary's retention as the store reported it;
	// zero if it reported none.
	RetainUntil time.Time
	// Removed and Kept count the older canaries the sweep removed and
	// left because they are still locked.
	Removed, Kept int
	// SweepErr is the first error of the sweep, nil if it went through.
	SweepErr error
}

// Prober probes with settings other than the defaults.
type Prober struct {
	// Retention of the canary; DefaultRetention if zero. Stores round the
	// retain-until date (S3 to the second), so a few seconds is the
	// shortest that works, and only with clocks in step.
	Retention time.Duration
}

// Probe probes b with the default settings; see Prober.Probe.
func Probe(ctx context.Context, b storage.Backend, mode string, now time.Time) (Result, error) {
	return Prober{}.Probe(ctx, b, mode, now)
}

// Probe writes a canary locked in mode (GOVERNANCE or COMPLIANCE on S3,
// Unlocked or Locked on GCS; "" for the target's default retention), tries
// to remove it and then sweeps expired canaries. An error means the probe
// could not decide: the canary could not be written or read back, the
// backend has no object lock (storage.ErrUnsupported), or the removal
// failed for a reason other than the lock.
func (p Prober) Probe(ctx context.Context, b storage.Backend, mode string, now time.Time) (Result, error) {
	if !b.Capabilities().ObjectLock {
		return Result{}, fmt.Errorf("probe object lock of %q: %w", b.Name(), storage.ErrUnsupported)
	}
	retention := p.Retention
	if retention <= 0 {
		retention = DefaultRetention
	}
	key := canaryKey(now)
	res := Result{CheckedAt: now, Key: key}
	until := now.Add(retention).UTC().Truncate(time.Second)
	opts := storage.SaveOptions{ContentType: "text/plain; charset=utf-8"}
	if b.Capabilities().StorageClasses {
		opts.StorageClass = "STANDARD"
	}
	body := "opsd object lock canary: the store must refuse to delete it while it is locked.\n"
	if mode != "" {
		opts.Retention = &storage.Retention{Mode: mode, Until: until}
		body += "Locked until " + until.Format(time.RFC3339) + "; opsd removes it after that.\n"
	}
	if _, err := b.Save(ctx, key, strings.NewReader(body), opts); err != nil {
		return Result{}, fmt.Errorf("probe object lock of %q: write canary: %w", b.Name(), err)
	}
	fi, err := b.Stat(ctx, key)
	if err != nil {
		return Result{}, fmt.Errorf("probe object lock of %q: stat canary: %w", b.Name(), err)
	}
	reported := "the store reports no retention on it"
	if fi.Retention != nil {
		res.RetainUntil = fi.Retention.Until
		reported = "the store reports it locked until " + fi.Retention.Until.UTC().Format(time.RFC3339)
	}
	rmErr := b.Remove(ctx, key)
	switch {
	case rmErr == nil:
		res.Detail = fmt.Sprintf("not enforced: %s, yet the store let it be deleted", reported)
		if mode != "" {
			res.Detail = fmt.Sprintf("not enforced: the canary was written with %s retention until %s and %s, yet the store let it be deleted",
				mode, until.Format(time.RFC3339), reported)
		}
	case errors.Is(rmErr, storage.ErrLocked):
		if _, err := b.Stat(ctx, key); errors.Is(err, storage.ErrNotFound) {
			res.Detail = "not enforced: the store refused the delete but the canary is gone"
			break
		} else if err != nil {
			return Result{}, fmt.Errorf("probe object lock of %q: stat canary after the refused delete: %w", b.Name(), err)
		}
		res.Enforced = true
		res.Detail = "enforced: the store refused to delete the canary; " + reported
		if fi.Retention == nil {
			res.Detail = "enforced: the store refused to delete the canary, but reports no retention on it, so copies' locks cannot be seen"
		}
	default:
		return Result{}, fmt.Errorf("probe object lock of %q: delete canary: %w", b.Name(), rmErr)
	}
	res.Removed, res.Kept, res.SweepErr = Sweep(ctx, b, now)
	return res, nil
}

// Sweep removes the canaries under Prefix whose retention has ended by
// now, or that have none, and counts those it leaves because they are still
// locked. It carries on past a canary it cannot remove and returns the
// first error.
func Sweep(ctx context.Context, b storage.Backend, now time.Time) (removed, kept int, err error) {
	var keys []string
	if err := b.List(ctx, Prefix, func(fi storage.ObjectInfo) error {
		keys = append(keys, fi.Key)
		return nil
	}); err != nil {
		return 0, 0, fmt.Errorf("sweep canaries of %q: %w", b.Name(), err)
	}
	var first error
	for _, key := range keys {
		if err := ctx.Err(); err != nil {
			return removed, kept, fmt.Errorf("sweep canaries of %q: %w", b.Name(), err)
		}
		fi, err := b.Stat(ctx, key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			continue
		case err != nil:
			first = firstErr(first, fmt.Errorf("sweep canaries: %w", err))
			continue
		case fi.Retention != nil && fi.Retention.Until.After(now):
			kept++
			continue
		}
		switch err := b.Remove(ctx, key); {
		case err == nil:
			removed++
		case errors.Is(err, storage.ErrLocked):
			// The store's clock is behind ours; next time.
			kept++
		default:
			first = firstErr(first, fmt.Errorf("sweep canaries: %w", err))
		}
	}
	return removed, kept, first
}

func firstErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// canaryKey names a canary so keys sort by time and never collide.
func canaryKey(now time.Time) string {
	var r [6]byte
	_, _ = rand.Read(r[:]) // never fails (crypto/rand, Go 1.24+)
	return Prefix + now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(r[:])
}
