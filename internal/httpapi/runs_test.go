package httpapi

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/state"
)

// fakeRuns knows runbook "drill" and three runs: "done" (succeeded),
// "waiting" (waiting for approval of step "gate") and "live" (running;
// its subscription delivers events 2 and 3, the run's end).
type fakeRuns struct {
	signer   note.Signer
	verifier note.Verifier
	started  []string // mode/dry_run/actor of each Start
}

func newFakeRuns(t *testing.T) *fakeRuns {
	t.Helper()
	skey, vkey, err := note.GenerateKey(rand.Reader, "opsd.test/runs")
	if err != nil {
		t.Fatal(err)
	}
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return &fakeRuns{signer: s, verifier: v}
}

var fakeRunbook = &runbook.Runbook{Name: "drill", Description: "a drill", File: "runbooks/drill.yaml", SHA256: "ab12",
	Objectives: runbook.Objectives{RTO: time.Hour},
	Params:     []*runbook.Param{{Name: "dir", Type: runbook.TypeString, Default: "/tmp/x"}, {Name: "dsn", Type: runbook.TypeSecret, Required: true}},
	Steps: []*runbook.Step{{ID: "restore", Uses: "backup.restore", Timeout: time.Minute, Retry: runbook.Retry{MaxAttempts: 2}, Marks: []runbook.Mark{runbook.MarkRecovered}},
		{ID: "gate", Uses: "approval"}, {ID: "announce", Uses: "notify", Finally: true}}}

func (f *fakeRuns) Runbooks() []*runbook.Runbook { return []*runbook.Runbook{fakeRunbook} }

func (f *fakeRuns) Runbook(name string) (*runbook.Runbook, bool) {
	return fakeRunbook, name == fakeRunbook.Name
}

func (f *fakeRuns) Start(_ context.Context, rb *runbook.Runbook, params map[string]any, mode string, dryRun bool, actor dr.Actor) (string, error) {
	if mode == runbook.ModeLive && actor.Role != dr.RoleAdmin {
		return "", fmt.Errorf("%w: live runs need the admin role", dr.ErrForbidden)
	}
	if _, ok := params["dsn"]; !ok {
		return "", fmt.Errorf("%w: parameter dsn is required", dr.ErrInvalid)
	}
	f.started = append(f.started, fmt.Sprintf("%s/%v/%s", mode, dryRun, actor))
	return "waiting", nil
}

func (f *fakeRuns) view(id string) (*dr.RunView, error) {
	st := map[string]string{"done": state.RunSucceeded, "waiting": state.RunWaitingApproval, "live": state.RunRunning}[id]
	if st == "" {
		return nil, fmt.Errorf("run %s: %w", id, state.ErrNotFound)
	}
	return &dr.RunView{ID: id, Runbook: "drill", RunbookSHA256: "ab12", Mode: "drill", State: st, Actor: "token:operator (operator)",
		Params: map[string]any{"dir": "/tmp/x", "dsn": dr.Redacted}, CreatedAt: fakeTime, StartedAt: fakeTime,
		Steps: []dr.StepView{{ID: "restore", Uses: "backup.restore", State: state.StepSucceeded, StartedAt: fakeTime, FinishedAt: fakeTime.Add(time.Second),
			Attempts: []dr.Attempt{{N: 1, StartedAt: fakeTime, FinishedAt: fakeTime.Add(time.Second)}}, Outputs: map[string]any{"backup_id": "b1"}},
			{ID: "gate", Uses: "approval", State: state.StepRunning}}}, nil
}

func (f *fakeRuns) Get(_ context.Context, id string) (*dr.RunView, error) { return f.view(id) }

func (f *fakeRuns) List(_ context.Context, rf state.RunFilter) ([]*dr.RunView, string, error) {
	v, _ := f.view("done")
	v.Steps = nil
	return []*dr.RunView{v}, "", nil
}

func fakeEvent(seq int64, typ, step, st string) state.RunEvent {
	return state.RunEvent{Seq: seq, Time: fakeTime.Add(time.Duration(seq) * time.Second), Type: typ, StepID: step, State: st, Data: `{"n":1}`}
}

func (f *fakeRuns) Events(_ context.Context, id string, after int64, limit int) ([]state.RunEvent, error) {
	all := []state.RunEvent{fakeEvent(1, "run", "", state.RunRunning), fakeEvent(2, "step", "restore", state.StepRunning)}
	if id == "done" {
		all = append(all, fakeEvent(3, "step", "restore", state.StepSucceeded), fakeEvent(4, "run", "", state.RunSucceeded))
	}
	var out []state.RunEvent
	for _, ev := range all {
		if ev.Seq > after {
			out = append(out, ev)
		}
	}
	return out, nil
}

func (f *fakeRuns) Subscribe(id string) (<-chan state.RunEvent, func()) {
	ch := make(chan state.RunEvent, 4)
	if id == "live" {
		ch <- fakeEvent(2, "step", "restore", state.StepRunning) // also replayed: sent once
		ch <- fakeEvent(3, "run", "", state.RunSucceeded)
	}
	return ch, func() {}
}

func (f *fakeRuns) decide(runID, stepID string) error {
	if _, err := f.view(runID); err != nil {
		return err
	}
	if runID != "waiting" || stepID != "gate" {
		return fmt.Errorf("%w: step %s", dr.ErrNotWaiting, stepID)
	}
	return nil
}

func (f *fakeRuns) Approve(_ context.Context, runID, stepID string, _ dr.Actor, _ string) error {
	return f.decide(runID, stepID)
}

func (f *fakeRuns) Reject(_ context.Context, runID, stepID string, _ dr.Actor, _ string) error {
	return f.decide(runID, stepID)
}

func (f *fakeRuns) RetryStep(_ context.Context, runID, stepID string, _ dr.Actor, _ string) error {
	return f.decide(runID, stepID)
}

func (f *fakeRuns) SkipStep(_ context.Context, runID, stepID string, _ dr.Actor, _ string) error {
	return f.decide(runID, stepID)
}

func (f *fakeRuns) Cancel(_ context.Context, runID string, _ dr.Actor, _ string) error {
	v, err := f.view(runID)
	if err != nil {
		return err
	}
	if !state.RunActive(v.State) {
		return fmt.Errorf("run %s: %w", runID, dr.ErrNotActive)
	}
	return nil
}

func (f *fakeRuns) Report(_ context.Context, id string) (*dr.Report, error) {
	v, err := f.view(id)
	if err != nil {
		return nil, err
	}
	return &dr.Report{Format: dr.ReportFormat, RunID: id, Runbook: v.Runbook, RunbookSHA256: v.RunbookSHA256, Mode: v.Mode, State: v.State,
		StartedBy: v.Actor, StartedAt: fakeTime, Params: v.Params, Steps: v.Steps, DisruptionStart: fakeTime, DisruptionStartSource: "run_start",
		GeneratedAt: fakeTime}, nil
}

func (f *fakeRuns) SignReport(r *dr.Report, markdown bool) ([]byte, error) {
	return dr.SignReport(r, f.signer, markdown)
}

func newRunsFixture(t *testing.T) (*fixture, *fakeRuns) {
	t.Helper()
	// The validator decodes these bodies as plain text.
	openapi3filter.RegisterBodyDecoder("text/markdown", openapi3filter.PlainBodyDecoder)
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
	f := newFixture(t, nil)
	runs := newFakeRuns(t)
	f.srv.deps.Runs = runs
	return f, runs
}

func TestRunRoutes(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		body     string
		wantCode int
	}{
		{"list runbooks", "GET", "/api/v1/runbooks", "viewer", "", 200},
		{"get runbook", "GET", "/api/v1/runbooks/drill", "viewer", "", 200},
		{"get unknown runbook", "GET", "/api/v1/runbooks/nope", "viewer", "", 404},
		{"start drill", "POST", "/api/v1/runbooks/drill/runs", "operator", `{"params":{"dsn":"postgres://x"},"mode":"drill"}`, 202},
		{"start dry run", "POST", "/api/v1/runbooks/drill/runs", "operator", `{"params":{"dsn":"x"},"dry_run":true}`, 202},
		{"start as viewer", "POST", "/api/v1/runbooks/drill/runs", "viewer", `{"params":{"dsn":"x"}}`, 403},
		{"start live as operator", "POST", "/api/v1/runbooks/drill/runs", "operator", `{"params":{"dsn":"x"},"mode":"live"}`, 403},
		{"start live as admin", "POST", "/api/v1/runbooks/drill/runs", "root", `{"params":{"dsn":"x"},"mode":"live"}`, 202},
		{"start bad mode", "POST", "/api/v1/runbooks/drill/runs", "operator", `{"params":{"dsn":"x"},"mode":"chaos"}`, 400},
		{"start missing param", "POST", "/api/v1/runbooks/drill/runs", "operator", `{}`, 400},
		{"start unknown field", "POST", "/api/v1/runbooks/drill/runs", "operator", `{"parms":{}}`, 400},
		{"start unknown runbook", "POST", "/api/v1/runbooks/nope/runs", "operator", `{}`, 404},
		{"list runs", "GET", "/api/v1/runs?runbook=drill&state=succeeded,failed&limit=5", "viewer", "", 200},
		{"list runs bad state", "GET", "/api/v1/runs?state=weird", "viewer", "", 400},
		{"list runs bad limit", "GET", "/api/v1/runs?limit=0", "viewer", "", 400},
		{"get run", "GET", "/api/v1/runs/waiting", "viewer", "", 200},
		{"get unknown run", "GET", "/api/v1/runs/nope", "viewer", "", 404},
		{"approve", "POST", "/api/v1/runs/waiting/steps/gate/approve", "operator", `{"comment":"go"}`, 202},
		{"approve as viewer", "POST", "/api/v1/runs/waiting/steps/gate/approve", "viewer", `{}`, 403},
		{"approve not waiting", "POST", "/api/v1/runs/done/steps/gate/approve", "operator", "", 409},
		{"approve unknown run", "POST", "/api/v1/runs/nope/steps/gate/approve", "operator", "", 404},
		{"reject", "POST", "/api/v1/runs/waiting/steps/gate/reject", "operator", `{"comment":"no"}`, 202},
		{"reject wrong step", "POST", "/api/v1/runs/waiting/steps/restore/reject", "operator", "", 409},
		{"cancel", "POST", "/api/v1/runs/waiting/cancel", "operator", `{}`, 202},
		{"cancel ended", "POST", "/api/v1/runs/done/cancel", "operator", "", 409},
		{"report", "GET", "/api/v1/runs/done/report", "viewer", "", 200},
		{"report md", "GET", "/api/v1/runs/done/report?format=md", "viewer", "", 200},
		{"report bad format", "GET", "/api/v1/runs/done/report?format=pdf", "viewer", "", 400},
		{"report unknown", "GET", "/api/v1/runs/nope/report", "viewer", "", 404},
		{"events unknown", "GET", "/api/v1/runs/nope/events", "viewer", "", 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := newRunsFixture(t)
			w := f.do(t, tt.method, tt.path, tt.token, tt.body)
			if w.Code != tt.wantCode {
				t.Fatalf("%s %s = %d, want %d\n%s", tt.method, tt.path, w.Code, tt.wantCode, w.Body.String())
			}
			if w.Code == 202 && w.Header().Get("Location") == "" {
				t.Errorf("202 without Location")
			}
		})
	}
}

func TestRunRoutesAudited(t *testing.T) {
	f, runs := newRunsFixture(t)
	f.do(t, "POST", "/api/v1/runbooks/drill/runs", "operator", `{"params":{"dsn":"postgres://secret@db"}}`)
	f.do(t, "POST", "/api/v1/runs/waiting/steps/gate/approve", "operator", `{"comment":"go"}`)
	f.do(t, "POST", "/api/v1/runs/waiting/steps/gate/approve", "viewer", `{"comment":"go"}`)
	f.do(t, "POST", "/api/v1/runs/done/cancel", "operator", "")
	want := []string{
		"token:operator runbook.run accepted", "token:operator runbook.run succeeded",
		"token:operator run.approve accepted", "token:operator run.approve succeeded",
		"token:viewer run.approve refused",
		"token:operator run.cancel accepted", "token:operator run.cancel failed",
	}
	if diff := cmp.Diff(want, f.rec.summary()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	// The audit log replaces the keys named in Secrets by a keyed hash.
	for _, rec := range f.rec.records {
		if strings.Contains(fmt.Sprint(rec.Params), "secret@db") && !slices.Contains(rec.Secrets, "params") {
			t.Errorf("audit record %s holds the params without marking them secret: %v", rec.Action, rec.Params)
		}
	}
	if diff := cmp.Diff([]string{"drill/false/token:operator (operator)"}, runs.started); diff != "" {
		t.Errorf("Start calls (-want +got):\n%s", diff)
	}
}

func TestRunReportSigned(t *testing.T) {
	for _, format := range []string{"", "md"} {
		f, runs := newRunsFixture(t)
		w := f.do(t, "GET", "/api/v1/runs/done/report?format="+format, "viewer", "")
		if w.Code != 200 {
			t.Fatalf("report %q = %d: %s", format, w.Code, w.Body.String())
		}
		rep, err := dr.VerifyReport(w.Body.Bytes(), runs.verifier)
		if err != nil {
			t.Fatalf("VerifyReport(%q) = %v\n%s", format, err, w.Body.String())
		}
		if rep.RunID != "done" || rep.State != state.RunSucceeded {
			t.Errorf("report %q = run %s %s, want done succeeded", format, rep.RunID, rep.State)
		}
		if format == "md" && !strings.HasPrefix(w.Header().Get("Content-Type"), "text/markdown") {
			t.Errorf("md Content-Type = %q", w.Header().Get("Content-Type"))
		}
	}
}

// sseIDs returns the id: lines of an event stream.
func sseIDs(body string) []string {
	var ids []string
	for _, line := range strings.Split(body, "\n") {
		if id, ok := strings.CutPrefix(line, "id: "); ok {
			ids = append(ids, id)
		}
	}
	return ids
}

func TestRunEventsSSE(t *testing.T) {
	tests := []struct {
		name    string
		run     string
		lastID  string
		wantIDs []string
	}{
		{"ended run replays the journal", "done", "", []string{"1", "2", "3", "4"}},
		{"resumes after Last-Event-ID", "done", "2", []string{"3", "4"}},
		{"live run: replay then live, no duplicates", "live", "", []string{"1", "2", "3"}},
		{"live run resumed", "live", "1", []string{"2", "3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, _ := newRunsFixture(t)
			req := httptest.NewRequest("GET", "/api/v1/runs/"+tt.run+"/events", nil)
			req.Header.Set("Authorization", "Bearer viewer-secret")
			if tt.lastID != "" {
				req.Header.Set("Last-Event-ID", tt.lastID)
			}
			w := httptest.NewRecorder()
			done := make(chan struct{})
			go func() {
				defer close(done)
				f.srv.ServeHTTP(w, req)
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("event stream did not end with the run")
			}
			f.checkOpenAPI(t, req, w)
			if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/event-stream" {
				t.Fatalf("events = %d %q", w.Code, w.Header().Get("Content-Type"))
			}
			if diff := cmp.Diff(tt.wantIDs, sseIDs(w.Body.String())); diff != "" {
				t.Errorf("event ids (-want +got):\n%s\n%s", diff, w.Body.String())
			}
			if !strings.Contains(w.Body.String(), "event: step\ndata: {") {
				t.Errorf("no step event with JSON data:\n%s", w.Body.String())
			}
		})
	}
}

func TestRunsUnavailable(t *testing.T) {
	f := newFixture(t, nil)
	if w := f.do(t, "GET", "/api/v1/runbooks", "viewer", ""); w.Code != http.StatusServiceUnavailable {
		t.Errorf("GET /api/v1/runbooks without an engine = %d, want 503", w.Code)
	}
}
