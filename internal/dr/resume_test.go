package dr_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/state"
)

// crashBook has a step that blocks; the engine is stopped while it is in
// flight, as a kill would leave it.
const crashBook = `name: crash
steps:
  - id: before
    uses: plugin:rec
    with: {what: before}
  - id: hang
    uses: plugin:block
    idempotent: IDEMPOTENT
  - id: after
    uses: plugin:rec
    with: {what: after}
`

func TestResume(t *testing.T) {
	tests := []struct {
		name       string
		idempotent bool
		decide     string // operator decision when waiting: retry or skip
		wantHang   string
		wantCalls  int32 // calls of the blocking action after the restart
	}{
		{"idempotent reruns", true, "", "succeeded", 1},
		{"not idempotent retried", false, "retry", "succeeded", 1},
		{"not idempotent skipped", false, "skip", "skipped", 0},
		// The API's approve and reject routes on a waiting_operator step.
		{"not idempotent approved", false, "approve", "succeeded", 1},
		{"not idempotent rejected", false, "reject", "skipped", 0},
	}
	for _, tt := range tests {
		for _, backend := range stores {
			t.Run(tt.name+"/"+backend.name, func(t *testing.T) {
				testResume(t, backend.open(t), tt.idempotent, tt.decide, tt.wantHang, tt.wantCalls)
			})
		}
	}
}

func testResume(t *testing.T, store state.Runs, idempotent bool, decideWith, wantHang string, wantCalls int32) {
	rb := parse(t, strings.Replace(crashBook, "IDEMPOTENT", strconv.FormatBool(idempotent), 1))

	h1 := newHarness(t, store)
	rec1, blk1 := &recorder{}, newBlocker()
	h1.reg.Register("plugin:rec", rec1)
	h1.reg.Register("plugin:block", blk1)
	h1.start(rb)
	id, err := h1.e.Start(context.Background(), rb, nil, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	<-blk1.started
	h1.shutdown() // the "kill"
	v, _ := h1.e.Get(context.Background(), id)
	if v.State != state.RunRunning || stepStates(v)["hang"] != state.StepRunning {
		t.Fatalf("after the kill: run %s, steps %v; want running with hang running", v.State, stepStates(v))
	}

	h2 := newHarness(t, store)
	rec2, blk2 := &recorder{}, newBlocker()
	close(blk2.release)
	h2.reg.Register("plugin:rec", rec2)
	h2.reg.Register("plugin:block", blk2)
	h2.start(rb)
	if decideWith != "" {
		w := h2.waitState(id, state.RunWaitingOperator)
		if w.Waiting == nil || w.Waiting.StepID != "hang" {
			t.Fatalf("waiting = %+v, want hang", w.Waiting)
		}
		if err := h2.e.RetryStep(context.Background(), id, "before", operator, ""); !errors.Is(err, dr.ErrNotWaiting) {
			t.Errorf("RetryStep(other step) = %v, want ErrNotWaiting", err)
		}
		if err := h2.e.SkipStep(context.Background(), id, "hang", viewer, ""); !errors.Is(err, dr.ErrForbidden) {
			t.Errorf("SkipStep(viewer) = %v, want ErrForbidden", err)
		}
		decide := map[string]func(context.Context, string, string, dr.Actor, string) error{
			"retry": h2.e.RetryStep, "skip": h2.e.SkipStep, "approve": h2.e.Approve, "reject": h2.e.Reject}[decideWith]
		if err := decide(context.Background(), id, "hang", operator, "checked by hand"); err != nil {
			t.Fatalf("%s = %v", decideWith, err)
		}
	}
	v = h2.wait(id)
	if v.State != state.RunSucceeded || stepStates(v)["hang"] != wantHang {
		t.Errorf("after resume: run %s (%s), steps %v; want succeeded, hang %s", v.State, v.Error, stepStates(v), wantHang)
	}
	if got := blk2.calls.Load(); got != wantCalls {
		t.Errorf("blocking action ran %d times after the restart, want %d", got, wantCalls)
	}
	// Completed steps never run again.
	if got := strings.Join(rec2.calls, " "); got != "after/main/after" {
		t.Errorf("calls after restart = %q, want only after", got)
	}
	wantAction := map[string]string{"approve": "retry", "reject": "skip"}[decideWith]
	if wantAction == "" {
		wantAction = decideWith
	}
	if decideWith != "" && (v.Steps[1].Operator == nil || v.Steps[1].Operator.Action != wantAction) {
		t.Errorf("operator decision = %+v, want %s", v.Steps[1].Operator, decideWith)
	}

}

func TestResumeApprovalAndSecrets(t *testing.T) {
	store := openSQLite(t)
	rb := parse(t, `name: approve-resume
params:
  pw: {type: secret, required: true}
steps:
  - id: gate
    uses: approval
    with: {approvers: [role:operator], timeout: 1h}
  - id: use
    uses: assert
    with: {that: "${{ params.pw == 'hunter2' }}"}
`)
	h1 := newHarness(t, store)
	h1.start(rb)
	id, err := h1.e.Start(context.Background(), rb, map[string]any{"pw": "hunter2"}, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	h1.waitState(id, state.RunWaitingApproval)
	h1.shutdown()

	h2 := newHarness(t, store)
	h2.start(rb)
	h2.waitState(id, state.RunWaitingApproval)
	if err := h2.e.Approve(context.Background(), id, "gate", operator, "go"); err != nil {
		t.Fatalf("Approve after restart = %v", err)
	}
	v := h2.wait(id)
	if v.State != state.RunSucceeded {
		t.Errorf("run = %s (%s), want succeeded (the secret was resumed from the sealed journal)", v.State, v.Error)
	}
}

func TestApproval(t *testing.T) {
	book := `name: approval
steps:
  - id: gate
    uses: approval
    with: {approvers: [APPROVERS], timeout: TIMEOUT, message: cut over}
  - id: after
    uses: assert
    with: {that: "${{ steps.gate.outputs.approver == 'root' }}"}
`
	tests := []struct {
		name, approvers, timeout string
		decide                   func(e *dr.Engine, id string) error
		wantErr                  error
		wantRun                  string
	}{
		{"approved", "role:operator", "1h", func(e *dr.Engine, id string) error {
			return e.Approve(context.Background(), id, "gate", admin, "ok")
		}, nil, state.RunSucceeded},
		{"rejected", "role:operator", "1h", func(e *dr.Engine, id string) error {
			return e.Reject(context.Background(), id, "gate", operator, "not now")
		}, nil, state.RunFailed},
		{"viewer", "role:operator", "1h", func(e *dr.Engine, id string) error {
			return e.Approve(context.Background(), id, "gate", viewer, "")
		}, dr.ErrForbidden, ""},
		{"operator for admin gate", "role:admin", "1h", func(e *dr.Engine, id string) error {
			return e.Approve(context.Background(), id, "gate", operator, "")
		}, dr.ErrForbidden, ""},
		{"token", "token:root", "1h", func(e *dr.Engine, id string) error {
			return e.Approve(context.Background(), id, "gate", admin, "")
		}, nil, state.RunSucceeded},
		{"timeout", "role:operator", "100ms", nil, nil, state.RunFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, openSQLite(t))
			rb := parse(t, strings.NewReplacer("APPROVERS", tt.approvers, "TIMEOUT", tt.timeout).Replace(book))
			h.start(rb)
			id, err := h.e.Start(context.Background(), rb, nil, "", false, operator)
			if err != nil {
				t.Fatal(err)
			}
			if tt.decide != nil {
				h.waitState(id, state.RunWaitingApproval)
				if err := h.e.Approve(context.Background(), id, "after", admin, ""); !errors.Is(err, dr.ErrNotWaiting) {
					t.Errorf("Approve(step not waiting) = %v, want ErrNotWaiting", err)
				}
				err := tt.decide(h.e, id)
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("decision = %v, want %v", err, tt.wantErr)
				}
				if tt.wantErr != nil {
					_ = h.e.Cancel(context.Background(), id, admin, "")
					h.wait(id)
					return
				}
			}
			v := h.wait(id)
			if v.State != tt.wantRun {
				t.Errorf("run = %s (%s), want %s", v.State, v.Error, tt.wantRun)
			}
			switch tt.name {
			case "timeout":
				if !strings.Contains(v.Steps[0].Error, "approval timed out") {
					t.Errorf("gate error = %q, want a timeout", v.Steps[0].Error)
				}
			case "rejected":
				if a := v.Steps[0].Approval; a == nil || a.Approved || a.Actor != "ci" || a.Comment != "not now" {
					t.Errorf("approval = %+v", a)
				}
			case "approved":
				if a := v.Steps[0].Approval; a == nil || !a.Approved || a.Actor != "root" || a.Comment != "ok" {
					t.Errorf("approval = %+v", a)
				}
			}
		})
	}
}

// pidsWithEnv returns the processes whose environment holds kv.
func pidsWithEnv(kv string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, v := range strings.Split(string(b), "\x00") {
			if v == kv {
				out = append(out, pid)
			}
		}
	}
	return out
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestExecKillsGrandchildren(t *testing.T) {
	reg := dr.NewRegistry()
	dr.RegisterBuiltins(reg, dr.Builtins{ExecDir: t.TempDir()})
	exec, _ := reg.Lookup("exec")
	runID := "kill-test-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	found := make(chan []int, 1)
	go func() {
		var pids []int
		for ctx.Err() == nil {
			// sh, and its two sleeps (the first a background grandchild).
			if pids = pidsWithEnv("OPSD_RUN_ID=" + runID); len(pids) >= 3 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		found <- pids
	}()
	start := time.Now()
	_, err := exec.Run(ctx, &dr.StepContext{RunID: runID, StepID: "hang",
		With: map[string]any{"argv": []any{"sh", "-c", "sleep 300 & sleep 300"}}})
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("exec = %v, want killed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("exec returned after %s, want right after the timeout", d)
	}
	pids := <-found
	if len(pids) < 3 {
		t.Fatalf("saw processes %v, want sh and both sleeps", pids)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if alive(pid) {
			t.Errorf("process %d is still alive after the kill", pid)
		}
	}
}

func TestExecOutputCapped(t *testing.T) {
	reg := dr.NewRegistry()
	dr.RegisterBuiltins(reg, dr.Builtins{ExecDir: t.TempDir()})
	exec, _ := reg.Lookup("exec")
	out, err := exec.Run(context.Background(), &dr.StepContext{RunID: "cap", StepID: "big",
		With: map[string]any{"argv": []any{"sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(out["stdout"].(string)); got != dr.MaxExecOutput {
		t.Errorf("stdout kept %d bytes, want %d", got, dr.MaxExecOutput)
	}
}

func TestResumeDuringCompensation(t *testing.T) {
	store := openSQLite(t)
	rb := parse(t, `name: crash-compensate
steps:
  - id: a
    uses: plugin:rec
    with: {what: do-a}
    compensate: {uses: plugin:rec, with: {what: undo-a}}
  - id: b
    uses: plugin:rec
    with: {what: do-b}
    compensate: {uses: plugin:block, idempotent: true}
  - id: c
    uses: plugin:rec
    with: {what: do-c, fail: "yes"}
  - id: f
    uses: plugin:rec
    finally: true
    with: {what: fin}
`)
	h1 := newHarness(t, store)
	rec1, blk1 := &recorder{}, newBlocker()
	h1.reg.Register("plugin:rec", rec1)
	h1.reg.Register("plugin:block", blk1)
	h1.start(rb)
	id, err := h1.e.Start(context.Background(), rb, nil, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	if got := <-blk1.started; got != "b" {
		t.Fatalf("blocked in %s, want b's compensation", got)
	}
	h1.shutdown()

	h2 := newHarness(t, store)
	rec2, blk2 := &recorder{}, newBlocker()
	close(blk2.release)
	h2.reg.Register("plugin:rec", rec2)
	h2.reg.Register("plugin:block", blk2)
	h2.start(rb)
	v := h2.wait(id)
	want := map[string]string{"a": "compensated", "a/compensate": "succeeded", "b": "compensated",
		"b/compensate": "succeeded", "c": "failed", "f": "succeeded"}
	if got := stepStates(v); v.State != state.RunFailed || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("run %s, steps %v; want failed, %v", v.State, got, want)
	}
	if got := strings.Join(rec2.calls, " "); got != "a/compensate/undo-a f/main/fin" || blk2.calls.Load() != 1 {
		t.Errorf("after restart: calls %q, b's compensation ran %d times; want undo-a then fin, and 1", got, blk2.calls.Load())
	}
}
