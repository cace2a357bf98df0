package statetest

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/state"
)

func testVerifications(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	b1, b2, other := newBackup(1, "orders"), newBackup(2, "orders"), newBackup(3, "uploads")
	mustCreate(t, s, b1, b2, other)
	at := func(min int) time.Time { return catalogBase.Add(time.Duration(min) * time.Minute) }
	vs := []state.Verification{
		{BackupID: b1.ID, Target: "local", Level: state.LevelChecksum, OK: true, StartedAt: at(10), FinishedAt: at(11), Request: "r-1"},
		{BackupID: b1.ID, Target: "s3", Level: state.LevelChecksum, OK: false, StartedAt: at(10), FinishedAt: at(12),
			Error: "sha256 mismatch: got 00ff, manifest says 11aa"},
		{BackupID: b1.ID, Target: "local", Level: state.LevelRestore, OK: true, StartedAt: at(20), FinishedAt: at(25),
			Report: []byte(`{"checks":[{"sql":"select 1","ok":true}]}`)},
		{BackupID: b2.ID, Target: "local", Level: state.LevelChecksum, OK: false, StartedAt: at(30), FinishedAt: at(31), Error: "unreadable"},
		{BackupID: other.ID, Target: "local", Level: state.LevelRestore, OK: true, StartedAt: at(40), FinishedAt: at(41)},
	}
	for i := range vs {
		id, err := s.AddVerification(ctx, vs[i])
		if err != nil {
			t.Fatalf("AddVerification %d: %v", i, err)
		}
		if id <= 0 || (i > 0 && id <= vs[i-1].ID) {
			t.Errorf("AddVerification %d: id %d, want increasing positive ids", i, id)
		}
		vs[i].ID = id
		vs[i].StartedAt, vs[i].FinishedAt = state.Timestamp(vs[i].StartedAt), state.Timestamp(vs[i].FinishedAt)
	}
	got, err := s.ListVerifications(ctx, b1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(vs[:3], got); diff != "" {
		t.Errorf("ListVerifications (-want +got):\n%s", diff)
	}
	if got, err := s.ListVerifications(ctx, backupID(99)); err != nil || len(got) != 0 {
		t.Errorf("ListVerifications of an unknown backup = %v, %v; want none", got, err)
	}

	// The newest checksum verification of orders failed (b2); the newest
	// passed one is b1's on local.
	latest, err := s.LatestVerification(ctx, "orders", state.LevelChecksum, false)
	if err != nil || latest.ID != vs[3].ID {
		t.Errorf("LatestVerification(orders, checksum) = %+v, %v; want id %d", latest, err, vs[3].ID)
	}
	latest, err = s.LatestVerification(ctx, "orders", state.LevelChecksum, true)
	if err != nil || latest.ID != vs[0].ID {
		t.Errorf("LatestVerification(orders, checksum, ok) = %+v, %v; want id %d", latest, err, vs[0].ID)
	}
	latest, err = s.LatestVerification(ctx, "orders", state.LevelRestore, true)
	if err != nil || latest.ID != vs[2].ID || string(latest.Report) != string(vs[2].Report) {
		t.Errorf("LatestVerification(orders, restore, ok) = %+v, %v; want id %d with its report", latest, err, vs[2].ID)
	}
	if _, err := s.LatestVerification(ctx, "nothing", state.LevelRestore, false); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("LatestVerification of a source without any = %v, want ErrNotFound", err)
	}

	bad := []state.Verification{
		{BackupID: backupID(99), Target: "local", Level: state.LevelChecksum, StartedAt: at(1), FinishedAt: at(2)},
		{BackupID: b1.ID, Target: "local", Level: "eyeballed", StartedAt: at(1), FinishedAt: at(2)},
		{BackupID: b1.ID, Target: "", Level: state.LevelChecksum, StartedAt: at(1), FinishedAt: at(2)},
		{BackupID: b1.ID, Target: "local", Level: state.LevelChecksum, StartedAt: at(2), FinishedAt: at(1)},
	}
	wantErr := []error{state.ErrNotFound, state.ErrInvalid, state.ErrInvalid, state.ErrInvalid}
	for i, v := range bad {
		if _, err := s.AddVerification(ctx, v); !errors.Is(err, wantErr[i]) {
			t.Errorf("AddVerification(bad %d) = %v, want %v", i, err, wantErr[i])
		}
	}
}

func testDeleteBackup(t *testing.T, s state.Store) {
	ctx := ctxT(t)
	b1, b2 := newBackup(1, "orders"), newBackup(2, "orders")
	mustCreate(t, s, b1, b2)
	at := catalogBase.Add(time.Hour)
	if err := s.PutCopy(ctx, state.Copy{BackupID: b1.ID, Target: "local", State: state.CopyComplete, Key: "k", StartedAt: at, FinishedAt: at}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddVerification(ctx, state.Verification{BackupID: b1.ID, Target: "local", Level: state.LevelChecksum, OK: true,
		StartedAt: at, FinishedAt: at}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteBackup(ctx, b1.ID); err != nil {
		t.Fatalf("DeleteBackup: %v", err)
	}
	if _, _, err := s.GetBackup(ctx, b1.ID); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetBackup after delete = %v, want ErrNotFound", err)
	}
	if vs, err := s.ListVerifications(ctx, b1.ID); err != nil || len(vs) != 0 {
		t.Errorf("verifications after delete = %v, %v; want none", vs, err)
	}
	if _, _, err := s.GetBackup(ctx, b2.ID); err != nil {
		t.Errorf("the other backup: %v", err)
	}
	if err := s.DeleteBackup(ctx, b1.ID); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("second DeleteBackup = %v, want ErrNotFound", err)
	}
	// A copy recorded again for the deleted id must not resurrect it.
	if err := s.PutCopy(ctx, state.Copy{BackupID: b1.ID, Target: "local", State: state.CopyComplete, Key: "k"}); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("PutCopy of a deleted backup = %v, want ErrNotFound", err)
	}
}
