package verify

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestReportJSON(t *testing.T) {
	rep := Report{
		BackupID: "20260102T030405Z-abcd1234", Source: "orders-db", Target: "local", Level: LevelRestore,
		Scratch: "opsd_verify_orders_db_abcd1234_t0_000000", StartedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Duration: 1500 * time.Millisecond, OK: false, Error: "a check failed",
		Checks: []CheckResult{{SQL: "select count(*) from orders", Expect: "= 42", Got: "3", Error: "got 3, want = 42", Duration: 250 * time.Millisecond}},
	}
	raw, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"backup_id":"20260102T030405Z-abcd1234"`, `"level":"restore"`, `"ok":false`,
		`"duration_seconds":1.5`, `"duration_seconds":0.25`, `"got":"3"`, `"started_at":"2026-01-02T03:04:05Z"`} {
		if !strings.Contains(string(raw), want) {
			t.Errorf("json.Marshal(report) = %s, want it to contain %s", raw, want)
		}
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rep, back); diff != "" {
		t.Errorf("JSON round trip (-want +got):\n%s", diff)
	}
}
