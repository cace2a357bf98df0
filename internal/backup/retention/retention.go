package retention

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/config"
)

// Unlimited as a keep_* count keeps one backup of every bucket (every
// backup, for keep_last). It matches restic's `--keep-* unlimited` (-1).
const Unlimited = -1

// ErrInvalidPolicy is returned, wrapped, for a policy Apply cannot apply.
var ErrInvalidPolicy = errors.New("invalid retention policy")

// Backup is one backup of a source as retention sees it.
type Backup struct {
	ID   string
	Time time.Time
	// ProvenGood reports that a verification of this backup passed (a copy
	// read back and matched, or a restore whose checks passed). The newest
	// such backup is never deleted.
	ProvenGood bool
	// RetainUntil is the latest object lock retain-until date over all
	// copies of the backup; zero means no lock. Nothing is deleted before it.
	RetainUntil time.Time
	// MinStorageUntil is the earliest time the backup can be deleted without
	// an early-deletion charge (storage classes with a minimum storage
	// duration); zero means none.
	MinStorageUntil time.Time
}

// Decision is what Apply decided for one backup.
type Decision struct {
	Backup
	// Keep is true if the backup stays.
	Keep bool
	// Reasons says why a kept backup stays, one entry per rule that keeps it,
	// in the order: keep_within, keep_last, hourly, daily, weekly, monthly,
	// yearly, then the overrides. For example "within 36h", "last 1/3",
	// "daily 2026-11-24", "weekly 2026-W48", "newest verified",
	// "object lock until 2026-12-30T00:00:00Z". Empty for a deleted backup.
	Reasons []string
	// DeletableAt is when the object lock on the backup ends, if that is
	// after now; zero otherwise.
	DeletableAt time.Time
	// EarlyDeletion is true if the backup is deleted before
	// MinStorageUntil, so deleting it costs an early-deletion charge.
	EarlyDeletion bool
}

// Validate checks that policy can be applied: counts are zero, positive or
// Unlimited, keep_within is not negative. It reports every problem at once.
func Validate(policy config.Keep) error {
	var errs []error
	for _, r := range countRules(policy) {
		if r.count < 0 && r.count != Unlimited {
			errs = append(errs, fmt.Errorf("%w: %s is %d; want 0 or more, or %d for unlimited",
				ErrInvalidPolicy, r.key, r.count, Unlimited))
		}
	}
	if policy.Within < 0 {
		errs = append(errs, fmt.Errorf("%w: keep_within is %v; want 0 or more", ErrInvalidPolicy, policy.Within))
	}
	return errors.Join(errs...)
}

// Apply decides for every backup whether policy keeps it, as restic's
// `forget` would for one group of snapshots, then applies opsd's overrides
// (see the package documentation). Buckets are taken in loc; now decides
// which backups are in the future (ignored when finding the newest backup
// for keep_within) and which locks are still in force.
//
// The order of backups does not matter: the decisions come back sorted
// newest first, backups with equal times by ID. IDs must be unique.
func Apply(policy config.Keep, backups []Backup, now time.Time, loc *time.Location) ([]Decision, error) {
	return apply(policy, backups, now, loc, true)
}

func apply(policy config.Keep, backups []Backup, now time.Time, loc *time.Location, keepOldest bool) ([]Decision, error) {
	if err := Validate(policy); err != nil {
		return nil, err
	}
	if loc == nil {
		return nil, errors.New("retention: nil time zone")
	}
	ds := make([]Decision, len(backups))
	for i, b := range backups {
		ds[i] = Decision{Backup: b}
	}
	slices.SortFunc(ds, func(a, b Decision) int {
		if c := b.Time.Compare(a.Time); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	})
	seen := make(map[string]bool, len(ds))
	for _, d := range ds {
		if seen[d.ID] {
			return nil, fmt.Errorf("retention: duplicate backup ID %q", d.ID)
		}
		seen[d.ID] = true
	}

	applyPolicy(policy, ds, now, loc, keepOldest)
	applyOverrides(ds, now)
	return ds, nil
}

// applyPolicy sets Keep and Reasons on ds, sorted newest first, by the
// rules of restic's forget. keepOldest enables the rule restic added in
// 0.17 (the oldest backup is kept by a rule with slots left); the oracle
// test turns it off to compare with older restic binaries.
func applyPolicy(policy config.Keep, ds []Decision, now time.Time, loc *time.Location, keepOldest bool) {
	if policy == (config.Keep{}) {
		for i := range ds {
			ds[i].Keep = true
			ds[i].Reasons = append(ds[i].Reasons, "empty policy keeps all")
		}
		return
	}

	// keep_within counts back from the newest backup that is not in the
	// future, like restic; a clock skewed into the future on one backup
	// must not make every other backup old.
	var newest time.Time
	for _, d := range ds {
		if d.Time.After(newest) && d.Time.Before(now) {
			newest = d.Time
		}
	}
	withinFrom := newest.Add(-policy.Within)

	rules := countRules(policy)
	type state struct {
		left   int // slots left; Unlimited never runs out
		used   int
		last   string
		active bool
	}
	st := make([]state, len(rules))
	for i, r := range rules {
		st[i] = state{left: r.count, active: r.count != 0}
	}

	for n := range ds {
		d := &ds[n]
		if policy.Within > 0 && d.Time.After(withinFrom) {
			d.Keep = true
			d.Reasons = append(d.Reasons, "within "+shortDuration(policy.Within))
		}
		local := d.Time.In(loc)
		oldest := keepOldest && n == len(ds)-1
		for i, r := range rules {
			s := &st[i]
			if !s.active || s.left == 0 {
				continue
			}
			b := r.bucket(local, n)
			if b == s.last && !oldest {
				continue
			}
			reason := r.name + " " + b
			if r.name == "last" {
				reason = "last " + strconv.Itoa(s.used+1) + "/" + countString(r.count)
			}
			if b == s.last {
				// Only the oldest backup gets here: the rule has slots
				// left but no older bucket to spend them on.
				reason = r.name + " " + b + " oldest"
			}
			d.Keep = true
			d.Reasons = append(d.Reasons, reason)
			s.last = b
			s.used++
			if s.left > 0 {
				s.left--
			}
		}
	}
}

// applyOverrides applies opsd's rules that keep backups the policy would
// delete and flags early deletions.
func applyOverrides(ds []Decision, now time.Time) {
	for i := range ds {
		if ds[i].ProvenGood {
			ds[i].Keep = true
			ds[i].Reasons = append(ds[i].Reasons, "newest verified")
			break
		}
	}
	for i := range ds {
		d := &ds[i]
		if now.Before(d.RetainUntil) {
			d.Keep = true
			d.DeletableAt = d.RetainUntil
			d.Reasons = append(d.Reasons, "object lock until "+d.RetainUntil.UTC().Format(time.RFC3339))
		}
		d.EarlyDeletion = !d.Keep && now.Before(d.MinStorageUntil)
	}
}

// countRule is one keep_* count of a policy and the bucket it counts.
type countRule struct {
	key   string // config key, for errors
	name  string // reason prefix
	count int
	// bucket names the bucket of t, already in the policy's location; n is
	// the backup's position, newest first, which makes every backup its own
	// bucket for keep_last.
	bucket func(t time.Time, n int) string
}

func countRules(p config.Keep) []countRule {
	return []countRule{
		{"keep_last", "last", p.Last, func(_ time.Time, n int) string { return "#" + strconv.Itoa(n) }},
		{"keep_hourly", "hourly", p.Hourly, func(t time.Time, _ int) string { return t.Format("2006-01-02 15h") }},
		{"keep_daily", "daily", p.Daily, func(t time.Time, _ int) string { return t.Format(time.DateOnly) }},
		{"keep_weekly", "weekly", p.Weekly, func(t time.Time, _ int) string {
			y, w := t.ISOWeek()
			return fmt.Sprintf("%04d-W%02d", y, w)
		}},
		{"keep_monthly", "monthly", p.Monthly, func(t time.Time, _ int) string { return t.Format("2006-01") }},
		{"keep_yearly", "yearly", p.Yearly, func(t time.Time, _ int) string { return t.Format("2006") }},
	}
}

func countString(n int) string {
	if n == Unlimited {
		return "unlimited"
	}
	return strconv.Itoa(n)
}

// shortDuration formats d as time.Duration.String without trailing zero
// units: "36h", "1h30m".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
