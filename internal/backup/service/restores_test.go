package service

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/state"
)

// StartRestore refuses what cannot work before starting anything, never
// lets two restores write to one destination, and a started restore ends
// recorded (state, bytes, copy used) and audited as backup.restored.
func TestStartRestore(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	b := backupOnce(t, f)
	ctx := action.WithActor(context.Background(), action.Actor{Kind: action.ActorToken, Name: "ops"})
	dest := filepath.Join(t.TempDir(), "restored")

	for _, tc := range []struct {
		name string
		id   string
		req  backup.RestoreRequest
		want error
	}{
		{"no destination", b.ID, backup.RestoreRequest{}, state.ErrInvalid},
		{"two destinations", b.ID, backup.RestoreRequest{ToDir: dest, ToPostgres: "postgres://h/db"}, state.ErrInvalid},
		{"relative directory", b.ID, backup.RestoreRequest{ToDir: "restored"}, state.ErrInvalid},
		{"bad DSN", b.ID, backup.RestoreRequest{ToPostgres: "postgres://u:pw@h:notaport/db"}, state.ErrInvalid},
		{"unknown backup", "20261125T000000Z-00000000", backup.RestoreRequest{ToDir: dest}, state.ErrNotFound},
		{"no copy on the target", b.ID, backup.RestoreRequest{ToDir: dest, Target: "nope"}, ErrNotVerifiable},
	} {
		if _, err := f.svc.StartRestore(ctx, tc.id, tc.req); !errors.Is(err, tc.want) || strings.Contains(err.Error(), "pw@") {
			t.Errorf("%s: StartRestore = %v, want %v (and no password)", tc.name, err, tc.want)
		}
	}

	// A restore this daemon is running into dest holds it.
	f.svc.restores.init()
	f.svc.restores.mu.Lock()
	f.svc.restores.byID["busy"] = &backup.RestoreJob{ID: "busy", Destination: dest, State: backup.RestoreRunning}
	f.svc.restores.mu.Unlock()
	if _, err := f.svc.StartRestore(ctx, b.ID, backup.RestoreRequest{ToDir: dest}); !errors.Is(err, backup.ErrRestoreBusy) {
		t.Errorf("StartRestore into a destination being written = %v, want ErrRestoreBusy", err)
	}
	f.svc.restores.update("busy", func(j *backup.RestoreJob) { j.State = backup.RestoreFailed })

	j, err := f.svc.StartRestore(ctx, b.ID, backup.RestoreRequest{ToDir: dest})
	if err != nil || j.State != backup.RestoreRunning || j.Actor != "token:ops" || j.Destination != dest {
		t.Fatalf("StartRestore = %+v, %v", j, err)
	}
	var got backup.RestoreJob
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got, err = f.svc.GetRestore(j.ID); err != nil || got.State != backup.RestoreRunning {
			break
		}
	}
	if err != nil || got.State != backup.RestoreSucceeded || got.Target == "" || got.Bytes == 0 || got.FinishedAt.Before(got.StartedAt) {
		t.Fatalf("GetRestore = %+v, %v", got, err)
	}
	data, err := os.ReadFile(filepath.Join(dest, dir, "src", "f.txt"))
	if err != nil || string(data) != strings.Repeat("data ", 500) {
		t.Errorf("restored f.txt = %d bytes, %v", len(data), err)
	}
	if _, err := f.svc.GetRestore("20261125T000000Z-ffffffff"); !errors.Is(err, state.ErrNotFound) {
		t.Errorf("GetRestore(unknown) = %v", err)
	}
	f.svc.StopRestores() // the restore's audit record is written once it returns
	var audited []string
	f.rec.mu.Lock()
	for _, r := range f.rec.recs {
		if r.Action == "backup.restored" && r.Outcome != action.Accepted {
			audited = append(audited, string(r.Outcome)+" by "+r.Actor.Name)
		}
	}
	f.rec.mu.Unlock()
	if len(audited) != 1 || audited[0] != "succeeded by ops" {
		t.Errorf("backup.restored audit outcomes = %v, want one succeeded by ops", audited)
	}
}

// StopRestores cancels a running restore and waits for it: it fails, and
// says why.
func TestStopRestoresCancels(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir)
	b := backupOnce(t, f)
	j, err := f.svc.StartRestore(context.Background(), b.ID, backup.RestoreRequest{ToDir: filepath.Join(t.TempDir(), "r")})
	if err != nil {
		t.Fatal(err)
	}
	f.svc.StopRestores()
	got, err := f.svc.GetRestore(j.ID)
	if err != nil || got.State == backup.RestoreRunning {
		t.Fatalf("after StopRestores: %+v, %v", got, err)
	}
	if got.State == backup.RestoreFailed && !strings.Contains(got.Error, "context canceled") {
		t.Errorf("cancelled restore error = %q, want it to say it was cancelled", got.Error)
	}
}
