package compliance_test

import (
	"fmt"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/compliance"
)

// A source with policy 3-2-1-1-0 and two targets: a local disk and an
// offsite S3 bucket with object lock, whose canary passed. The S3 copy
// has been read back, but the local one has not been verified yet.
func ExampleEvaluate() {
	now := time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC)
	enforced := true
	targets := map[string]compliance.Target{
		"local":      {Name: "local", Medium: "local:/var/backups/opsd"},
		"offsite-s3": {Name: "offsite-s3", Medium: "s3:aws", Offsite: true, Immutable: true, LockEnforced: &enforced},
	}
	copies := []compliance.Copy{
		{Target: "local", Complete: true},
		{Target: "offsite-s3", Complete: true, ChecksumVerified: true, RetainUntil: now.AddDate(0, 0, 35)},
	}
	r := compliance.Evaluate("3-2-1-1-0", targets, copies, now)
	fmt.Printf("level %q (%v), meets %s: %v\nmissing: %s\n", r.Level, r.Numeric, r.Required, r.Meets, r.Missing)

	copies[0].ChecksumVerified = true
	r = compliance.Evaluate("3-2-1-1-0", targets, copies, now)
	fmt.Printf("level %q (%v), meets %s: %v\n", r.Level, r.Numeric, r.Required, r.Meets)
	for _, rule := range r.Rules {
		fmt.Printf("  %-11s %v  %s\n", rule.Rule, rule.OK, rule.Detail)
	}
	// Output:
	// level "" (0), meets 3-2-1-1-0: false
	// missing: needs a second verified backup copy: only offsite-s3 counts (local: not checksum-verified yet)
	// level "3-2-1-1-0" (5), meets 3-2-1-1-0: true
	//   3 copies    true  2 verified backup copies (local, offsite-s3) and the live data
	//   2 media     true  media: local:/var/backups/opsd, s3:aws
	//   1 offsite   true  offsite: offsite-s3
	//   1 immutable true  offsite-s3 locked until 2026-12-28T08:00:00Z
	//   0 errors    true  no verification errors on 2 copies
}
