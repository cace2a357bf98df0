package state

import (
	"fmt"
	"time"
)

// Verification levels (SPEC §3 `backup verify --level`).
const (
	LevelChecksum = "checksum" // the copy was read back and its SHA-256 matched the manifest
	LevelRestore  = "restore"  // the copy was restored into scratch and the checks passed
)

// Verification is one check of one copy of a backup. A backup whose
// restore-level verification passed is proven restorable.
type Verification struct {
	ID         int64 // assigned by AddVerification
	BackupID   string
	Target     string
	Level      string // LevelChecksum | LevelRestore
	OK         bool
	StartedAt  time.Time
	FinishedAt time.Time
	Error      string // why it failed; empty when OK
	Report     []byte // JSON details (restore checks); nil if none
	// Request identifies the verify request that produced it (one request
	// checks several copies); empty for scheduled ones.
	Request string
}

// CheckVerification validates v before AddVerification stores it.
func CheckVerification(v Verification) error {
	if err := CheckBackupID(v.BackupID); err != nil {
		return err
	}
	if err := checkName("target", v.Target); err != nil {
		return err
	}
	if v.Level != LevelChecksum && v.Level != LevelRestore {
		return fmt.Errorf("%w: verification level %q is not %s or %s", ErrInvalid, v.Level, LevelChecksum, LevelRestore)
	}
	if v.StartedAt.IsZero() || v.FinishedAt.Before(v.StartedAt) {
		return fmt.Errorf("%w: verification needs started_at <= finished_at", ErrInvalid)
	}
	if err := CheckText("verification request", v.Request); err != nil {
		return err
	}
	return CheckText("verification error", v.Error)
}
