package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/state"
)

// fakeBackups is a catalog of one finished backup of source "demo" and
// one running (runningID), which ends when finished is set and changed
// closed.
type fakeBackups struct {
	finished *atomic.Bool
	changed  chan struct{}
}

func (f fakeBackups) Changed() <-chan struct{} { return f.changed }

func (fakeBackups) StartRestore(ctx context.Context, id string, req backup.RestoreRequest) (backup.RestoreJob, error) {
	switch {
	case id != "20261125T060000Z-abcd":
		return backup.RestoreJob{}, fmt.Errorf("backup %s: %w", id, state.ErrNotFound)
	case (req.ToDir == "") == (req.ToPostgres == ""):
		return backup.RestoreJob{}, fmt.Errorf("%w: give exactly one of to_dir and to_postgres", state.ErrInvalid)
	}
	return backup.RestoreJob{ID: "20261125T070000Z-0a0b0c0d", BackupID: id, Source: "demo", Actor: action.ActorFrom(ctx).String(),
		Destination: req.ToDir, Force: req.Force, State: backup.RestoreRunning, StartedAt: fakeTime}, nil
}

func (fakeBackups) GetRestore(id string) (backup.RestoreJob, error) {
	if id != "20261125T070000Z-0a0b0c0d" {
		return backup.RestoreJob{}, fmt.Errorf("restore %s: %w", id, state.ErrNotFound)
	}
	return backup.RestoreJob{ID: id, BackupID: "20261125T060000Z-abcd", Source: "demo", Actor: "token:operator", Destination: "/srv/restored",
		Target: "a", State: backup.RestoreSucceeded, Bytes: 10, StartedAt: fakeTime, FinishedAt: fakeTime.Add(time.Second)}, nil
}

var fakeTime = time.Date(2026, 11, 25, 7, 0, 0, 0, time.UTC)

func (fakeBackups) Enqueue(ctx context.Context, source string) (state.Backup, error) {
	if source != "demo" {
		return state.Backup{}, fmt.Errorf("source %q: %w", source, state.ErrNotFound)
	}
	return state.Backup{ID: "20261125T070000Z-abcd", Source: source, Type: "files", State: state.BackupQueued,
		Actor: action.ActorFrom(ctx).String(), QueuedAt: fakeTime}, nil
}

func (f fakeBackups) ListBackups(_ context.Context, bf state.BackupFilter) ([]state.Backup, string, error) {
	if _, err := state.CheckBackupFilter(bf); err != nil {
		return nil, "", err
	}
	b, _, _ := f.GetBackup(context.Background(), "20261125T060000Z-abcd")
	return []state.Backup{b}, "", nil
}

const runningID = "20261125T080000Z-live"

func (fakeBackups) EnqueueVerify(_ context.Context, id, level, target string) (string, error) {
	switch {
	case id != "20261125T060000Z-abcd":
		return "", fmt.Errorf("backup %s: %w", id, state.ErrNotFound)
	case level != state.LevelChecksum && level != state.LevelRestore:
		return "", fmt.Errorf("%w: level %q", state.ErrInvalid, level)
	case target != "" && target != "a":
		return "", fmt.Errorf("%w: no complete copy on %s", backup.ErrNotVerifiable, target)
	}
	return "20261125T070000Z-0a0b0c0d", nil
}

func (fakeBackups) PruneDocument(_ context.Context, source string, dryRun bool) (any, error) {
	if source != "" && source != "demo" {
		return nil, fmt.Errorf("source %q: %w", source, state.ErrNotFound)
	}
	return map[string]any{"dry_run": dryRun, "freed_bytes": 5, "items": []map[string]any{{"source": "demo", "backup_id": "20261125T060000Z-abcd",
		"time": "2026-11-25T06:00:00Z", "keep": false, "reasons": []string{}, "stored_bytes": 5, "deleted": !dryRun}}}, nil
}

func (fakeBackups) Verifications(_ context.Context, id string) ([]state.Verification, error) {
	if id != "20261125T060000Z-abcd" {
		return nil, nil
	}
	return []state.Verification{{BackupID: id, Target: "a", Level: state.LevelChecksum, OK: true, StartedAt: fakeTime.Add(time.Minute),
		FinishedAt: fakeTime.Add(61 * time.Second)}, {BackupID: id, Target: "a", Level: state.LevelRestore, OK: false,
		StartedAt: fakeTime.Add(2 * time.Minute), FinishedAt: fakeTime.Add(3 * time.Minute), Error: "check \"select 1\" expected = 2, got 1",
		Report: []byte(`{"ok":false}`)}}, nil
}

func (fakeBackups) Progress(id string) (backup.Progress, bool) {
	if id != runningID {
		return backup.Progress{}, false
	}
	return backup.Progress{Phase: "backup", Bytes: 3 << 20, Total: 12 << 20, Rate: 1 << 20, ETA: 9 * time.Second}, true
}

func (f fakeBackups) GetBackup(_ context.Context, id string) (state.Backup, []state.Copy, error) {
	if id == runningID && f.finished != nil && f.finished.Load() {
		return state.Backup{ID: id, Source: "demo", Type: "files", State: state.BackupSucceeded, Actor: "token:ci",
			QueuedAt: fakeTime, StartedAt: fakeTime, FinishedAt: fakeTime.Add(time.Second)}, nil, nil
	}
	if id == runningID {
		return state.Backup{ID: id, Source: "demo", Type: "files", State: state.BackupRunning, Actor: "token:ci",
			QueuedAt: fakeTime, StartedAt: fakeTime}, nil, nil
	}
	if id != "20261125T060000Z-abcd" {
		return state.Backup{}, nil, fmt.Errorf("backup %s: %w", id, state.ErrNotFound)
	}
	b := state.Backup{ID: id, Source: "demo", Type: "files", State: state.BackupSucceeded, Actor: "scheduler:backup:demo",
		QueuedAt: fakeTime, StartedAt: fakeTime, FinishedAt: fakeTime.Add(2 * time.Second), RawBytes: 10, StoredBytes: 5,
		Manifest: []byte(`{"id":"` + id + `"}`)}
	copies := []state.Copy{{BackupID: id, Target: "a", State: state.CopyComplete, Key: "demo/" + id + "/data.tar.zst.age", Bytes: 5,
		SHA256: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", StartedAt: fakeTime, FinishedAt: fakeTime.Add(time.Second)}}
	return b, copies, nil
}

func TestBackupRoutes(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		wantCode int
	}{
		{"run as operator", "POST", "/api/v1/sources/demo/backups", "operator", 202},
		{"run as viewer", "POST", "/api/v1/sources/demo/backups", "viewer", 403},
		{"run unknown source", "POST", "/api/v1/sources/nope/backups", "operator", 404},
		{"list", "GET", "/api/v1/backups?source=demo&limit=5", "viewer", 200},
		{"list bad state", "GET", "/api/v1/backups?state=weird", "viewer", 400},
		{"list bad limit", "GET", "/api/v1/backups?limit=-1", "viewer", 400},
		{"get", "GET", "/api/v1/backups/20261125T060000Z-abcd", "viewer", 200},
		{"get unknown", "GET", "/api/v1/backups/20261125T060000Z-ffff", "viewer", 404},
		{"verify as operator", "POST", "/api/v1/backups/20261125T060000Z-abcd/verify", "operator", 202},
		{"verify as viewer", "POST", "/api/v1/backups/20261125T060000Z-abcd/verify", "viewer", 403},
		{"prune as operator", "POST", "/api/v1/prune", "operator", 403},
		{"prune as admin", "POST", "/api/v1/prune", "root", 200},
		{"verify unknown backup", "POST", "/api/v1/backups/20261125T060000Z-ffff/verify", "operator", 404},
		{"get restore", "GET", "/api/v1/restores/20261125T070000Z-0a0b0c0d", "viewer", 200},
		{"get unknown restore", "GET", "/api/v1/restores/20261125T070000Z-ffffffff", "viewer", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			w := f.do(t, tt.method, tt.path, tt.token, "")
			if w.Code != tt.wantCode {
				t.Fatalf("%s %s = %d, want %d; body %s", tt.method, tt.path, w.Code, tt.wantCode, w.Body.String())
			}
		})
	}
}

func TestRunBackupResponse(t *testing.T) {
	f := newFixture(t, nil)
	w := f.do(t, "POST", "/api/v1/sources/demo/backups", "operator", "")
	if got := w.Header().Get("Location"); got != "/api/v1/backups/20261125T070000Z-abcd" {
		t.Errorf("Location = %q", got)
	}
	var b struct{ ID, State, Actor string }
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil || b.State != "queued" || b.Actor != "token:operator" {
		t.Errorf("body = %+v, %v", b, err)
	}
	want := []string{"token:operator backup.run accepted", "token:operator backup.run succeeded"}
	if diff := cmp.Diff(want, f.rec.summary()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	w = f.do(t, "GET", "/api/v1/backups/20261125T060000Z-abcd", "viewer", "")
	var got struct {
		DurationSeconds float64 `json:"duration_seconds"`
		Copies          []struct {
			Target string `json:"target"`
		} `json:"copies"`
		Manifest map[string]any `json:"manifest"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.DurationSeconds != 2 || len(got.Copies) != 1 || got.Manifest["id"] == nil {
		t.Errorf("GET backup = %s (%v)", w.Body.String(), err)
	}
}

func TestRunningBackupShowsProgress(t *testing.T) {
	f := newFixture(t, nil)
	w := f.do(t, "GET", "/api/v1/backups/"+runningID, "viewer", "")
	var got struct {
		State    string            `json:"state"`
		Progress *ProgressResource `json:"progress"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.Progress == nil {
		t.Fatalf("GET running backup = %s (%v); want a progress object", w.Body.String(), err)
	}
	p := got.Progress
	if p.Bytes != 3<<20 || p.TotalBytes != 12<<20 || p.RateBytesPerSecond != 1<<20 || p.ETASeconds == nil || *p.ETASeconds != 9 {
		t.Errorf("progress = %+v", *p)
	}
	w = f.do(t, "GET", "/api/v1/backups/20261125T060000Z-abcd", "viewer", "")
	if strings.Contains(w.Body.String(), `"progress"`) {
		t.Errorf("a finished backup shows progress: %s", w.Body.String())
	}
}

// GET /api/v1/backups/{id}?wait= answers as soon as a queued or running
// backup changes state, at the end of the wait if it does not, and at
// once for a finished backup.
func TestGetBackupWaitsForChange(t *testing.T) {
	f := newFixture(t, nil)
	fb := &fakeBackups{finished: new(atomic.Bool), changed: make(chan struct{})}
	f.srv.deps.Backups = fb
	getState := func(path string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		w := f.do(t, "GET", path, "viewer", "")
		var got struct{ State string }
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 {
			t.Fatalf("GET %s = %d %s (%v)", path, w.Code, w.Body.String(), err)
		}
		return got.State, time.Since(start)
	}

	if st, took := getState("/api/v1/backups/20261125T060000Z-abcd?wait=30s"); st != "succeeded" || took > 10*time.Second {
		t.Errorf("finished backup with wait=30s: %s after %s, want succeeded at once", st, took)
	}
	if st, took := getState("/api/v1/backups/" + runningID + "?wait=300ms"); st != "running" || took < 300*time.Millisecond {
		t.Errorf("running backup, no change, wait=300ms: %s after %s, want running after the wait", st, took)
	}
	// A shutdown answers every long poll at once with what it has.
	stopped := newFixture(t, nil)
	stopped.srv.deps.Backups = &fakeBackups{finished: new(atomic.Bool), changed: make(chan struct{})}
	go func() {
		time.Sleep(200 * time.Millisecond)
		stopped.srv.Stopping()
	}()
	start := time.Now()
	w := stopped.do(t, "GET", "/api/v1/backups/"+runningID+"?wait=30s", "viewer", "")
	var got struct{ State string }
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 || got.State != "running" || time.Since(start) > 10*time.Second {
		t.Errorf("long poll during shutdown: %d %s after %s, want the running backup at once", w.Code, w.Body.String(), time.Since(start))
	}

	go func() {
		time.Sleep(200 * time.Millisecond)
		fb.finished.Store(true)
		close(fb.changed)
	}()
	if st, took := getState("/api/v1/backups/" + runningID + "?wait=30s"); st != "succeeded" || took > 10*time.Second {
		t.Errorf("running backup that ends after 200ms, wait=30s: %s after %s, want succeeded when it ends", st, took)
	}
	for _, bad := range []string{"forever", "-1s", "31s", "10"} {
		if w := f.do(t, "GET", "/api/v1/backups/"+runningID+"?wait="+bad, "viewer", ""); w.Code != 400 ||
			!strings.Contains(w.Body.String(), "wait must be a duration") {
			t.Errorf("wait=%s: %d %s, want 400 naming wait", bad, w.Code, w.Body.String())
		}
	}
}

// POST /api/v1/backups/{id}/restore: operators restore into empty
// destinations; restoring over data (force) takes an admin.
func TestRestoreBackupRoute(t *testing.T) {
	const path = "/api/v1/backups/20261125T060000Z-abcd/restore"
	for _, tc := range []struct {
		name, token, body string
		want              int
	}{
		{"operator into a directory", "operator", `{"to_dir": "/srv/restored"}`, 202},
		{"viewer", "viewer", `{"to_dir": "/srv/restored"}`, 403},
		{"operator with force", "operator", `{"to_dir": "/srv/restored", "force": true}`, 403},
		{"admin with force", "root", `{"to_dir": "/srv/restored", "force": true}`, 202},
		{"two destinations", "operator", `{"to_dir": "/srv/restored", "to_postgres": "postgres://h/db"}`, 400},
		{"unknown field", "operator", `{"to": "/srv/restored"}`, 400},
		{"unknown backup", "operator", `{"to_dir": "/srv/restored"}`, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, nil)
			p := path
			if tc.name == "unknown backup" {
				p = "/api/v1/backups/20261125T060000Z-ffff/restore"
			}
			w := f.do(t, "POST", p, tc.token, tc.body)
			if w.Code != tc.want {
				t.Fatalf("POST %s %s as %s = %d, want %d: %s", p, tc.body, tc.token, w.Code, tc.want, w.Body.String())
			}
			if tc.want != 202 {
				return
			}
			if loc := w.Header().Get("Location"); loc != "/api/v1/restores/20261125T070000Z-0a0b0c0d" {
				t.Errorf("Location = %q", loc)
			}
			var got RestoreResource
			if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || got.State != "running" || got.Destination != "/srv/restored" {
				t.Errorf("body = %s (%v)", w.Body.String(), err)
			}
			want := []string{"token:" + tc.token + " backup.restore accepted", "token:" + tc.token + " backup.restore succeeded"}
			if diff := cmp.Diff(want, f.rec.summary()); diff != "" {
				t.Errorf("audit records (-want +got):\n%s", diff)
			}
		})
	}
}

func TestVerifyBackupRoute(t *testing.T) {
	tests := []struct {
		name, body string
		want       int
	}{
		{"default level", "", 202},
		{"restore", `{"level":"restore"}`, 202},
		{"one copy", `{"level":"checksum","target":"a"}`, 202},
		{"bad level", `{"level":"eyeball"}`, 400},
		{"copy that is not there", `{"target":"zz"}`, 409},
		{"unknown field", `{"levle":"restore"}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			w := f.do(t, "POST", "/api/v1/backups/20261125T060000Z-abcd/verify", "operator", tt.body)
			if w.Code != tt.want {
				t.Fatalf("verify %s = %d, want %d: %s", tt.body, w.Code, tt.want, w.Body.String())
			}
			if tt.want == 409 && !strings.Contains(w.Body.String(), "not-verifiable") {
				t.Errorf("409 body = %s, want problem type not-verifiable", w.Body.String())
			}
		})
	}
	f := newFixture(t, nil)
	w := f.do(t, "GET", "/api/v1/backups/20261125T060000Z-abcd", "viewer", "")
	var got struct {
		Verifications []VerificationResource `json:"verifications"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got.Verifications) != 2 {
		t.Fatalf("GET backup verifications = %s (%v)", w.Body.String(), err)
	}
	if v := got.Verifications[1]; v.OK || v.Level != "restore" || v.Error == "" || !strings.Contains(string(v.Report), `"ok": false`) || v.DurationSeconds != 60 {
		t.Errorf("second verification = %+v", v)
	}
}
