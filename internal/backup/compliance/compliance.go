package compliance

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Rule names, in the order the rules apply; RuleResult.Rule is one of them.
const (
	RuleCopies    = "3 copies"
	RuleMedia     = "2 media"
	RuleOffsite   = "1 offsite"
	RuleImmutable = "1 immutable"
	RuleErrors    = "0 errors"
)

// levels[n] is the level reached when the first n rules are met; it is also
// the policy that requires exactly n rules.
var levels = [...]string{"", "3", "3-2", "3-2-1", "3-2-1-1", "3-2-1-1-0"}

// ErrInvalidPolicy is returned by ParsePolicy for anything but a level.
var ErrInvalidPolicy = errors.New(`policy is not one of "", 3, 3-2, 3-2-1, 3-2-1-1, 3-2-1-1-0`)

// ParsePolicy returns how many rules, in order, policy requires: 0 for ""
// (no policy) up to 5 for "3-2-1-1-0". Anything else, including spaces or
// other separators, is ErrInvalidPolicy.
func ParsePolicy(policy string) (int, error) {
	for n, l := range levels {
		if policy == l {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%q: %w", policy, ErrInvalidPolicy)
}

// Copy is one copy of the backup being evaluated, as it stands at check
// time.
type Copy struct {
	// Target is the name of the target holding the copy.
	Target string
	// Complete: the data object and its manifest are all there.
	Complete bool
	// ChecksumVerified: a checksum verification of this copy passed (it
	// was read back and its SHA-256 matched the manifest).
	ChecksumVerified bool
	// VerifyErrors counts failed verifications of this copy (checksum or
	// restore).
	VerifyErrors int
	// RetainUntil is when the copy's object lock ends, as the store
	// reported it at check time; zero if it has none.
	RetainUntil time.Time
	// Offline: the copy is out of reach of the host (e.g. an ejected tape
	// or disk), so it cannot be deleted from here.
	Offline bool
}

// Target is what the rules need to know about a target.
type Target struct {
	Name string
	// Medium names the storage medium (config.Target.Medium).
	Medium string
	// Offsite (config.Target.IsOffsite).
	Offsite bool
	// Immutable: the target is configured with object lock or retention.
	// It only explains a missing rule; the lock has to be in force on the
	// copy to count.
	Immutable bool
	// LockEnforced is the latest lock canary's finding (package
	// storage/lockprobe): nil if unknown, false if the store accepted lock
	// headers but let a locked object be deleted. Copies on a target whose
	// canary failed are never immutable.
	LockEnforced *bool
}

// RuleResult is the outcome of one rule.
type RuleResult struct {
	// Rule is one of the Rule constants.
	Rule string
	OK   bool
	// Detail says why: what satisfied the rule, or a sentence starting
	// "needs" that says what is missing.
	Detail string
}

// Result is the compliance of one backup.
type Result struct {
	// Level reached: "", "3", "3-2", "3-2-1", "3-2-1-1" or "3-2-1-1-0".
	Level string
	// Required is the policy evaluated against.
	Required string
	// Meets: Level is at least Required. False for an invalid policy.
	Meets bool
	// Missing is the Detail of the first rule not met, "" when all five
	// are; for an invalid policy, the policy error.
	Missing string
	// Rules holds all five rules in order, met or not.
	Rules []RuleResult
	// Counted are the targets whose copies count, sorted.
	Counted []string
	// Numeric is the number of rules met in order, 0 to 5, for the
	// opsd_backup_compliance_level metric.
	Numeric float64
}

// perTarget is what the copies on one target add up to.
type perTarget struct {
	name     string
	target   Target
	known    bool
	counted  bool
	copies   int
	complete bool // some copy is complete (only matters when not counted)
	errors   int  // over counted copies
	until    time.Time
	offline  bool
}

// Evaluate computes the level the copies reach against targets at now and
// compares it with policy. targets should hold the source's targets,
// including those without a copy, so a missing rule can name them.
func Evaluate(policy string, targets map[string]Target, copies []Copy, now time.Time) Result {
	byName := map[string]*perTarget{}
	get := func(name string) *perTarget {
		p := byName[name]
		if p == nil {
			t, ok := targets[name]
			if t.Name == "" {
				t.Name = name
			}
			p = &perTarget{name: name, target: t, known: ok}
			byName[name] = p
		}
		return p
	}
	for name := range targets {
		get(name)
	}
	for _, c := range copies {
		p := get(c.Target)
		p.copies++
		if c.Complete {
			p.complete = true
		}
		if !c.Complete || !c.ChecksumVerified || !p.known {
			continue
		}
		p.counted = true
		p.errors += c.VerifyErrors
		if c.RetainUntil.After(p.until) {
			p.until = c.RetainUntil
		}
		p.offline = p.offline || c.Offline
	}
	all := make([]*perTarget, 0, len(byName))
	for _, p := range byName {
		all = append(all, p)
	}
	slices.SortFunc(all, func(a, b *perTarget) int { return strings.Compare(a.name, b.name) })
	var counted []*perTarget
	for _, p := range all {
		if p.counted {
			counted = append(counted, p)
		}
	}

	res := Result{Required: policy}
	for _, p := range counted {
		res.Counted = append(res.Counted, p.name)
	}
	res.Rules = []RuleResult{
		ruleCopies(all, counted),
		ruleMedia(counted),
		ruleOffsite(all, counted),
		ruleImmutable(counted, now),
		ruleErrors(counted),
	}
	n := 0
	for n < len(res.Rules) && res.Rules[n].OK {
		n++
	}
	res.Level, res.Numeric = levels[n], float64(n)
	if n < len(res.Rules) {
		res.Missing = res.Rules[n].Detail
	}
	required, err := ParsePolicy(policy)
	if err != nil {
		res.Missing = err.Error()
		return res
	}
	res.Meets = n >= required
	return res
}

func names(ps []*perTarget) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.name
	}
	return strings.Join(s, ", ")
}

// uncounted says why the targets in ps that are not counted are not, as
// "(a: no copy; b: not checksum-verified yet)", or "".
func uncounted(ps []*perTarget) string {
	var why []string
	for _, p := range ps {
		switch {
		case p.counted:
			continue
		case !p.known:
			why = append(why, p.name+": not a target of this source")
		case p.complete:
			why = append(why, p.name+": not checksum-verified yet")
		case p.copies == 0:
			why = append(why, p.name+": no copy")
		default:
			why = append(why, p.name+": copy incomplete")
		}
	}
	if len(why) == 0 {
		return ""
	}
	return " (" + strings.Join(why, "; ") + ")"
}

func ruleCopies(all, counted []*perTarget) RuleResult {
	r := RuleResult{Rule: RuleCopies}
	switch len(counted) {
	case 0:
		r.Detail = "needs 2 verified backup copies, has none" + uncounted(all)
	case 1:
		r.Detail = "needs a second verified backup copy: only " + counted[0].name + " counts" + uncounted(all)
	default:
		r.OK = true
		r.Detail = fmt.Sprintf("%d verified backup copies (%s) and the live data", len(counted), names(counted))
	}
	return r
}

func ruleMedia(counted []*perTarget) RuleResult {
	r := RuleResult{Rule: RuleMedia}
	var media []string
	for _, p := range counted {
		if !slices.Contains(media, p.target.Medium) {
			media = append(media, p.target.Medium)
		}
	}
	switch {
	case len(counted) == 0:
		r.Detail = "needs copies on 2 distinct media: no verified copy"
	case len(media) >= 2:
		r.OK = true
		r.Detail = "media: " + strings.Join(media, ", ")
	case len(counted) == 1:
		r.Detail = "needs a second medium: the only copy is on " + media[0]
	case len(counted) == 2:
		r.Detail = "needs a second medium: both copies are on " + media[0]
	default:
		r.Detail = fmt.Sprintf("needs a second medium: all %d copies are on %s", len(counted), media[0])
	}
	return r
}

func ruleOffsite(all, counted []*perTarget) RuleResult {
	r := RuleResult{Rule: RuleOffsite}
	var offsite, waiting []*perTarget
	for _, p := range all {
		switch {
		case p.counted && p.target.Offsite:
			offsite = append(offsite, p)
		case !p.counted && p.known && p.target.Offsite:
			waiting = append(waiting, p)
		}
	}
	switch {
	case len(offsite) > 0:
		r.OK = true
		r.Detail = "offsite: " + names(offsite)
		return r
	case len(counted) == 0:
		r.Detail = "needs an offsite copy: no verified copy"
	case len(counted) == 1:
		r.Detail = "needs an offsite copy: " + counted[0].name + " is not offsite"
	default:
		r.Detail = "needs an offsite copy: none of " + names(counted) + " is offsite"
	}
	r.Detail += uncounted(waiting)
	return r
}

func ruleImmutable(counted []*perTarget, now time.Time) RuleResult {
	r := RuleResult{Rule: RuleImmutable}
	var ok, why []string
	for _, p := range counted {
		locked := p.until.After(now)
		distrusted := p.target.LockEnforced != nil && !*p.target.LockEnforced
		switch {
		case (locked || p.offline) && distrusted:
			why = append(why, p.name+"'s store let the lock canary be deleted, so its locks are not trusted")
		case p.offline:
			ok = append(ok, p.name+" offline")
		case locked:
			s := p.name + " locked until " + p.until.UTC().Format(time.RFC3339)
			if p.target.LockEnforced == nil {
				s += " (lock canary not run yet)"
			}
			ok = append(ok, s)
		case !p.until.IsZero():
			why = append(why, p.name+"'s lock expired at "+p.until.UTC().Format(time.RFC3339))
		case p.target.Immutable:
			why = append(why, p.name+" is configured with a lock but the store reports none on the copy")
		}
	}
	switch {
	case len(ok) > 0:
		r.OK = true
		r.Detail = strings.Join(ok, "; ")
	case len(counted) == 0:
		r.Detail = "needs an immutable copy: no verified copy"
	case len(why) == 0:
		r.Detail = "needs an immutable copy: no copy is under object lock or offline"
	default:
		r.Detail = "needs an immutable copy: " + strings.Join(why, "; ")
	}
	return r
}

func ruleErrors(counted []*perTarget) RuleResult {
	r := RuleResult{Rule: RuleErrors}
	var bad []string
	for _, p := range counted {
		switch {
		case p.errors == 1:
			bad = append(bad, p.name+" has 1 failed verification")
		case p.errors > 1:
			bad = append(bad, fmt.Sprintf("%s has %d failed verifications", p.name, p.errors))
		}
	}
	switch {
	case len(counted) == 0:
		r.Detail = "needs zero verification errors: no verified copy"
	case len(bad) > 0:
		r.Detail = "needs zero verification errors: " + strings.Join(bad, "; ")
	default:
		r.OK = true
		r.Detail = fmt.Sprintf("no verification errors on %d copies", len(counted))
	}
	return r
}
