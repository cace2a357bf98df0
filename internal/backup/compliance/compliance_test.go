package compliance_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/backup/compliance"
)

var (
	now    = time.Date(2026, 11, 23, 7, 45, 0, 0, time.UTC)
	yes    = true
	no     = false
	locked = now.Add(35 * 24 * time.Hour)
)

// targets is a source's targets: two local disks on different media, one
// on the same filesystem as "local", an object-locked S3 bucket whose
// canary passed, and a GCS bucket without lock.
func targets() map[string]compliance.Target {
	return map[string]compliance.Target{
		"local":  {Name: "local", Medium: "local:/var/backups"},
		"local2": {Name: "local2", Medium: "local:/var/backups"},
		"nas":    {Name: "nas", Medium: "nfs:nas.internal"},
		"s3":     {Name: "s3", Medium: "s3:aws", Offsite: true, Immutable: true, LockEnforced: &yes},
		"gcs":    {Name: "gcs", Medium: "gcs", Offsite: true},
		"tape":   {Name: "tape", Medium: "tape", Offsite: true},
	}
}

func only(names ...string) map[string]compliance.Target {
	all, m := targets(), map[string]compliance.Target{}
	for _, n := range names {
		m[n] = all[n]
	}
	return m
}

func good(target string) compliance.Copy {
	return compliance.Copy{Target: target, Complete: true, ChecksumVerified: true}
}

func goodLocked(target string, until time.Time) compliance.Copy {
	c := good(target)
	c.RetainUntil = until
	return c
}

func TestEvaluate(t *testing.T) {
	withCanary := func(enforced *bool) map[string]compliance.Target {
		m := only("local", "s3")
		s3 := m["s3"]
		s3.LockEnforced = enforced
		m["s3"] = s3
		return m
	}
	unverified := good("s3")
	unverified.ChecksumVerified = false
	incomplete := good("s3")
	incomplete.Complete, incomplete.ChecksumVerified = false, false
	failing := goodLocked("s3", locked)
	failing.VerifyErrors = 2
	badUnverified := good("gcs")
	badUnverified.ChecksumVerified, badUnverified.VerifyErrors = false, 3
	offline := good("tape")
	offline.Offline = true

	tests := []struct {
		name        string
		policy      string
		targets     map[string]compliance.Target
		copies      []compliance.Copy
		wantLevel   string
		wantMeets   bool
		wantMissing string
		wantCounted []string
	}{
		{
			name:      "full",
			policy:    "3-2-1-1-0",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", locked)},
			wantLevel: "3-2-1-1-0", wantMeets: true, wantMissing: "",
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "no copies",
			policy:    "3-2-1",
			targets:   only("local", "s3"),
			wantLevel: "", wantMeets: false,
			wantMissing: "needs 2 verified backup copies, has none (local: no copy; s3: no copy)",
		},
		{
			name:      "unverified copy does not count",
			policy:    "3",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), unverified},
			wantLevel: "", wantMeets: false,
			wantMissing: "needs a second verified backup copy: only local counts (s3: not checksum-verified yet)",
			wantCounted: []string{"local"},
		},
		{
			name:      "incomplete copy does not count",
			policy:    "3",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), incomplete},
			wantLevel: "", wantMeets: false,
			wantMissing: "needs a second verified backup copy: only local counts (s3: copy incomplete)",
			wantCounted: []string{"local"},
		},
		{
			name:      "two copies on one target are one copy",
			policy:    "3",
			targets:   only("local"),
			copies:    []compliance.Copy{good("local"), good("local")},
			wantLevel: "", wantMeets: false,
			wantMissing: "needs a second verified backup copy: only local counts",
			wantCounted: []string{"local"},
		},
		{
			name:      "copy on a target the source does not have",
			policy:    "3",
			targets:   only("local"),
			copies:    []compliance.Copy{good("local"), good("old")},
			wantLevel: "", wantMeets: false,
			wantMissing: "needs a second verified backup copy: only local counts (old: not a target of this source)",
			wantCounted: []string{"local"},
		},
		{
			name:      "one medium",
			policy:    "3-2",
			targets:   only("local", "local2"),
			copies:    []compliance.Copy{good("local"), good("local2")},
			wantLevel: "3", wantMeets: false,
			wantMissing: "needs a second medium: both copies are on local:/var/backups",
			wantCounted: []string{"local", "local2"},
		},
		{
			name:      "one medium, three copies",
			policy:    "3",
			targets:   targets(),
			copies:    []compliance.Copy{good("local"), good("local2"), good("local2")},
			wantLevel: "3", wantMeets: true,
			wantMissing: "needs a second medium: both copies are on local:/var/backups",
			wantCounted: []string{"local", "local2"},
		},
		{
			name:      "no offsite copy",
			policy:    "3-2-1",
			targets:   only("local", "nas", "s3"),
			copies:    []compliance.Copy{good("local"), good("nas"), unverified},
			wantLevel: "3-2", wantMeets: false,
			wantMissing: "needs an offsite copy: none of local, nas is offsite (s3: not checksum-verified yet)",
			wantCounted: []string{"local", "nas"},
		},
		{
			name:      "no lock at all",
			policy:    "3-2-1-1",
			targets:   only("local", "gcs"),
			copies:    []compliance.Copy{good("local"), good("gcs")},
			wantLevel: "3-2-1", wantMeets: false,
			wantMissing: "needs an immutable copy: no copy is under object lock or offline",
			wantCounted: []string{"gcs", "local"},
		},
		{
			name:      "lock configured but not on the copy",
			policy:    "3-2-1-1",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), good("s3")},
			wantLevel: "3-2-1", wantMeets: false,
			wantMissing: "needs an immutable copy: s3 is configured with a lock but the store reports none on the copy",
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "lock expired",
			policy:    "3-2-1-1-0",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", now.Add(-time.Hour))},
			wantLevel: "3-2-1", wantMeets: false,
			wantMissing: "needs an immutable copy: s3's lock expired at 2026-11-23T06:45:00Z",
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "lock ending now is not in force",
			policy:    "3-2-1-1",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", now)},
			wantLevel: "3-2-1", wantMeets: false,
			wantMissing: "needs an immutable copy: s3's lock expired at 2026-11-23T07:45:00Z",
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "canary failed",
			policy:    "3-2-1-1-0",
			targets:   withCanary(&no),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", locked)},
			wantLevel: "3-2-1", wantMeets: false,
			wantMissing: "needs an immutable copy: s3's store let the lock canary be deleted, so its locks are not trusted",
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "canary not run yet",
			policy:    "3-2-1-1-0",
			targets:   withCanary(nil),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", locked)},
			wantLevel: "3-2-1-1-0", wantMeets: true,
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "offline copy is immutable",
			policy:    "3-2-1-1-0",
			targets:   only("local", "tape"),
			copies:    []compliance.Copy{good("local"), offline},
			wantLevel: "3-2-1-1-0", wantMeets: true,
			wantCounted: []string{"local", "tape"},
		},
		{
			name:      "locked copy not verified does not make it immutable",
			policy:    "3-2-1-1",
			targets:   only("local", "gcs", "s3"),
			copies:    []compliance.Copy{good("local"), good("gcs"), {Target: "s3", Complete: true, RetainUntil: locked}},
			wantLevel: "3-2-1", wantMeets: false,
			wantMissing: "needs an immutable copy: no copy is under object lock or offline",
			wantCounted: []string{"gcs", "local"},
		},
		{
			name:      "verification errors",
			policy:    "3-2-1-1-0",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), failing},
			wantLevel: "3-2-1-1", wantMeets: false,
			wantMissing: "needs zero verification errors: s3 has 2 failed verifications",
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "errors on a copy that does not count",
			policy:    "3-2-1-1-0",
			targets:   only("local", "s3", "gcs"),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", locked), badUnverified},
			wantLevel: "3-2-1-1-0", wantMeets: true,
			wantCounted: []string{"local", "s3"},
		},
		{
			name:      "policy below the level reached still names the next rule",
			policy:    "3-2-1",
			targets:   only("local", "gcs"),
			copies:    []compliance.Copy{good("local"), good("gcs")},
			wantLevel: "3-2-1", wantMeets: true,
			wantMissing: "needs an immutable copy: no copy is under object lock or offline",
			wantCounted: []string{"gcs", "local"},
		},
		{
			name:      "no policy",
			policy:    "",
			targets:   only("local"),
			wantLevel: "", wantMeets: true,
			wantMissing: "needs 2 verified backup copies, has none (local: no copy)",
		},
		{
			name:      "invalid policy never meets",
			policy:    "3-2-1-0",
			targets:   only("local", "s3"),
			copies:    []compliance.Copy{good("local"), goodLocked("s3", locked)},
			wantLevel: "3-2-1-1-0", wantMeets: false,
			wantMissing: `"3-2-1-0": policy is not one of "", 3, 3-2, 3-2-1, 3-2-1-1, 3-2-1-1-0`,
			wantCounted: []string{"local", "s3"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := compliance.Evaluate(tt.policy, tt.targets, tt.copies, now)
			if got.Level != tt.wantLevel || got.Meets != tt.wantMeets || got.Missing != tt.wantMissing {
				t.Errorf("Evaluate(%q) = {Level: %q, Meets: %v, Missing: %q}, want {%q, %v, %q}",
					tt.policy, got.Level, got.Meets, got.Missing, tt.wantLevel, tt.wantMeets, tt.wantMissing)
			}
			if diff := cmp.Diff(tt.wantCounted, got.Counted); diff != "" {
				t.Errorf("Evaluate(%q).Counted (-want +got):\n%s", tt.policy, diff)
			}
			if got.Required != tt.policy {
				t.Errorf("Evaluate(%q).Required = %q, want %q", tt.policy, got.Required, tt.policy)
			}
			// Numeric counts the rules met in order, and Level spells it.
			met := 0
			for met < len(got.Rules) && got.Rules[met].OK {
				met++
			}
			if len(got.Rules) != 5 || got.Numeric != float64(met) || strings.Count(got.Level, "-")+btoi(got.Level != "") != met {
				t.Errorf("Evaluate(%q) = {Level: %q, Numeric: %v, %d rules}, inconsistent with rules met %d",
					tt.policy, got.Level, got.Numeric, len(got.Rules), met)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestEvaluateRules checks every rule's outcome and detail, including
// rules after the first one missing.
func TestEvaluateRules(t *testing.T) {
	copies := []compliance.Copy{good("local"), good("local2"), goodLocked("s3", locked)}
	failing := good("local2")
	failing.VerifyErrors = 1
	copies[1] = failing
	s3 := targets()["s3"]
	s3.Medium = "local:/var/backups" // an on-premises store on the same disk
	s3.LockEnforced = nil
	tg := only("local", "local2")
	tg["s3"] = s3

	got := compliance.Evaluate("3-2-1-1-0", tg, copies, now)
	want := compliance.Result{
		Level:    "3",
		Required: "3-2-1-1-0",
		Missing:  "needs a second medium: all 3 copies are on local:/var/backups",
		Rules: []compliance.RuleResult{
			{Rule: compliance.RuleCopies, OK: true, Detail: "3 verified backup copies (local, local2, s3) and the live data"},
			{Rule: compliance.RuleMedia, Detail: "needs a second medium: all 3 copies are on local:/var/backups"},
			{Rule: compliance.RuleOffsite, OK: true, Detail: "offsite: s3"},
			{Rule: compliance.RuleImmutable, OK: true, Detail: "s3 locked until 2026-12-28T07:45:00Z (lock canary not run yet)"},
			{Rule: compliance.RuleErrors, Detail: "needs zero verification errors: local2 has 1 failed verification"},
		},
		Counted: []string{"local", "local2", "s3"},
		Numeric: 1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Evaluate() (-want +got):\n%s", diff)
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		give    string
		want    int
		wantErr bool
	}{
		{give: "", want: 0},
		{give: "3", want: 1},
		{give: "3-2", want: 2},
		{give: "3-2-1", want: 3},
		{give: "3-2-1-1", want: 4},
		{give: "3-2-1-1-0", want: 5},
		{give: "3-2-1-0", wantErr: true},
		{give: "3-2-1-1-0 ", wantErr: true},
		{give: "32110", wantErr: true},
		{give: "3.2.1", wantErr: true},
		{give: "none", wantErr: true},
		{give: "2", wantErr: true},
		{give: "3-2-1-1-0-0", wantErr: true},
	}
	for _, tt := range tests {
		got, err := compliance.ParsePolicy(tt.give)
		if tt.wantErr {
			if !errors.Is(err, compliance.ErrInvalidPolicy) {
				t.Errorf("ParsePolicy(%q) = %d, %v, want ErrInvalidPolicy", tt.give, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParsePolicy(%q) = %d, %v, want %d, nil", tt.give, got, err, tt.want)
		}
	}
}
