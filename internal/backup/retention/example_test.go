package retention_test

import (
	"fmt"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/retention"
	"github.com/opsd-dev/opsd/internal/config"
)

// The worked example of docs/RETENTION.md: twelve daily backups, a policy
// of 2 last, 3 daily and 3 weekly, one backup proven restorable, one under
// object lock, and a storage class with a 10-day minimum storage duration.
func ExampleApply() {
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		panic(err)
	}
	var backups []retention.Backup
	for day := 13; day <= 24; day++ {
		t := time.Date(2026, 11, day, 3, 0, 0, 0, time.UTC)
		b := retention.Backup{
			ID:              fmt.Sprintf("b%d", day),
			Time:            t,
			MinStorageUntil: t.AddDate(0, 0, 10),
		}
		switch day {
		case 14:
			b.RetainUntil = time.Date(2026, 12, 30, 0, 0, 0, 0, time.UTC)
		case 16:
			b.ProvenGood = true
		}
		backups = append(backups, b)
	}
	policy := config.Keep{Last: 2, Daily: 3, Weekly: 3}
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

	decisions, err := retention.Apply(policy, backups, now, loc)
	if err != nil {
		panic(err)
	}
	for _, d := range decisions {
		action := "delete"
		if d.Keep {
			action = "keep"
		}
		if d.EarlyDeletion {
			action = "delete early"
		}
		line := fmt.Sprintf("%s %-12s %s", d.ID, action, strings.Join(d.Reasons, ", "))
		fmt.Println(strings.TrimSpace(line))
	}
	// Output:
	// b24 keep         last 1/2, daily 2026-11-24, weekly 2026-W48
	// b23 keep         last 2/2, daily 2026-11-23
	// b22 keep         daily 2026-11-22, weekly 2026-W47
	// b21 delete early
	// b20 delete early
	// b19 delete early
	// b18 delete early
	// b17 delete early
	// b16 keep         newest verified
	// b15 keep         weekly 2026-W46
	// b14 keep         object lock until 2026-12-30T00:00:00Z
	// b13 delete
}
