package verify

import (
	"encoding/json"
	"time"
)

// LevelRestore is the verification level this package performs.
const LevelRestore = "restore"

// Report is the outcome of one restore verification. In JSON durations
// are seconds (duration_seconds), like the rest of the API.
type Report struct {
	BackupID string `json:"backup_id"`
	Source   string `json:"source"`
	// Target whose copy was restored; "" when no copy could be.
	Target string `json:"target"`
	// Level is always LevelRestore.
	Level string `json:"level"`
	// Scratch is the temporary database or directory used (and removed).
	Scratch   string        `json:"scratch"`
	StartedAt time.Time     `json:"started_at"`
	Duration  time.Duration `json:"-"`
	// OK: the backup is proven restorable — restored without error and
	// every check passed.
	OK     bool          `json:"ok"`
	Checks []CheckResult `json:"checks"`
	// Error says why OK is false when no single check does (the restore
	// failed, the scratch space could not be cleaned up, ...).
	Error string `json:"error,omitempty"`
}

// CheckResult is the outcome of one check.
type CheckResult struct {
	// Name labels a built-in check (files: "index_digest"); "" for SQL checks.
	Name   string `json:"name,omitempty"`
	SQL    string `json:"sql,omitempty"`
	Expect string `json:"expect"`
	// Got is the value returned, as PostgreSQL printed it ("NULL" for
	// NULL); "" when the query failed.
	Got      string        `json:"got"`
	OK       bool          `json:"ok"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"-"`
}

type reportJSON Report

// MarshalJSON adds duration_seconds.
func (r Report) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		reportJSON
		DurationSeconds float64 `json:"duration_seconds"`
	}{reportJSON(r), r.Duration.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Report) UnmarshalJSON(b []byte) error {
	var v struct {
		reportJSON
		DurationSeconds float64 `json:"duration_seconds"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*r = Report(v.reportJSON)
	r.Duration = seconds(v.DurationSeconds)
	return nil
}

type checkJSON CheckResult

// MarshalJSON adds duration_seconds.
func (c CheckResult) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		checkJSON
		DurationSeconds float64 `json:"duration_seconds"`
	}{checkJSON(c), c.Duration.Seconds()})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (c *CheckResult) UnmarshalJSON(b []byte) error {
	var v struct {
		checkJSON
		DurationSeconds float64 `json:"duration_seconds"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*c = CheckResult(v.checkJSON)
	c.Duration = seconds(v.DurationSeconds)
	return nil
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
