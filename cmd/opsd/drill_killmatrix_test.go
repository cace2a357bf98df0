package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/failpoint"
)

// killBook is the runbook of the drill kill -9 matrix. Every exec step
// appends its name to the file in param log, so the file counts how often
// each step (and compensation) really ran. two is not idempotent (exec's
// default): in flight at a crash, it waits for an operator. flaky fails its
// first attempt and succeeds at its second. boom fails the run when fail
// is set, so the compensations of two and one run.
const killBook = `name: km
description: the drill kill -9 matrix
params:
  log:  {type: string, required: true}
  fail: {type: bool, default: false}
steps:
  - id: one
    uses: exec
    idempotent: true
    with: {argv: [sh, -c, 'echo one >> "$OPSD_PARAM_LOG"']}
    compensate: {uses: exec, idempotent: true, with: {argv: [sh, -c, 'echo undo-one >> "$OPSD_PARAM_LOG"']}}
  - id: two
    uses: exec
    with:
      argv:
        - sh
        - -c
        - |
          echo two >> "$OPSD_PARAM_LOG"
          if [ -e "$OPSD_PARAM_LOG.hold" ]; then rm "$OPSD_PARAM_LOG.hold"; echo $$ > "$OPSD_PARAM_LOG.pid"; sleep 60; fi
    compensate: {uses: exec, idempotent: true, with: {argv: [sh, -c, 'echo undo-two >> "$OPSD_PARAM_LOG"']}}
  - id: flaky
    uses: exec
    idempotent: true
    retry: {max_attempts: 3, backoff: {initial: 1s}}
    with: {argv: [sh, -c, 'echo flaky >> "$OPSD_PARAM_LOG"; [ "$(grep -c flaky "$OPSD_PARAM_LOG")" -ge 2 ]']}
  - id: gate
    uses: approval
    with: {timeout: 10m}
  - id: boom
    uses: exec
    if: ${{ params.fail }}
    with: {argv: [sh, -c, 'echo boom >> "$OPSD_PARAM_LOG"; exit 3']}
  - id: cleanup
    uses: exec
    idempotent: true
    finally: true
    with: {argv: [sh, -c, 'echo cleanup >> "$OPSD_PARAM_LOG"']}
`

// drillKillPoint is one row of the drill kill -9 matrix.
type drillKillPoint struct {
	point string // OPSD_FAILPOINT; "" when the test kills opsd itself mid-exec
	fail  bool   // the run fails at boom and compensates
	what  string
	// atRestart is the state the run must be in right after the restart
	// ("" for any).
	atRestart string
	// decide answers waiting_operator: api-approve (retry through the
	// API), cli-retry (opsd drill retry), cli-skip
	// (opsd drill skip).
	decide string
	// killWaiting kills opsd once more while the run waits for the
	// operator, to show that the wait survives too.
	killWaiting bool
	// more counts runs beyond one per step that the row expects (an
	// idempotent step in flight runs again; a retried one too).
	more map[string]int
	// steps are final step states that differ from the normal ones.
	steps map[string]string
	// ranBefore is what the step log holds when opsd dies ("one=1
	// two=1"): it shows where the kill came.
	ranBefore string
}

// drillKillMatrix: docs/RESILIENCE.md ("Runs") describes each row; keep
// the two in step. Failpoints named dr.step-*, dr.compensation-* and
// dr.finally-* count hits over the run's steps in order: one, two, flaky
// (two attempts), gate, boom, then the compensations of two and one, then
// cleanup.
var drillKillMatrix = []drillKillPoint{
	{ranBefore: "", point: "dr.run-started", what: "run journaled, no step started"},
	{ranBefore: "", point: "dr.step-running:1", what: "idempotent step journaled running, its command not started"},
	{ranBefore: "one=1", point: "dr.step-ran:1", what: "idempotent step's command done, its end not journaled", more: map[string]int{"one": 1}},
	{ranBefore: "one=1", point: "dr.step-ended:1", what: "between steps: a step's end journaled, the next not started"},
	{ranBefore: "one=1", point: "dr.step-running:2", what: "non-idempotent step journaled running, command not started; killed again while waiting for the operator",
		atRestart: "waiting_operator", decide: "api-approve", killWaiting: true},
	{ranBefore: "one=1 two=1", point: "dr.step-ran:2", what: "non-idempotent step's command done, its end not journaled",
		atRestart: "waiting_operator", decide: "cli-skip", steps: map[string]string{"two": "skipped"}},
	{ranBefore: "one=1 two=1", point: "", what: "inside a non-idempotent exec: the test's own SIGKILL while the command runs",
		atRestart: "waiting_operator", decide: "cli-retry", more: map[string]int{"two": 1}},
	{ranBefore: "one=1 two=1 flaky=1", point: "dr.retry-backoff:1", what: "first attempt failed and journaled, waiting out the retry backoff"},
	{ranBefore: "one=1 two=1 flaky=2", point: "dr.approval-waiting:1", what: "waiting for approval", atRestart: "waiting_approval"},
	{ranBefore: "one=1 two=1 flaky=2", point: "dr.step-ended:4", what: "approval decided and journaled, the next step not started"},
	{ranBefore: "one=1 two=1 flaky=2", point: "dr.phase:1", what: "all main steps done, finally phase journaled"},
	{ranBefore: "one=1 two=1 flaky=2 cleanup=1", point: "dr.finally-ran:1", what: "finally step's command done, its end not journaled", more: map[string]int{"cleanup": 1}},
	{ranBefore: "one=1 two=1 flaky=2 cleanup=1", point: "dr.run-finishing", what: "after the last step, before the run is marked done"},
	{ranBefore: "one=1 two=1 flaky=2 boom=1", point: "dr.step-ended:5", fail: true, what: "failed step journaled, compensation not started"},
	{ranBefore: "one=1 two=1 flaky=2 boom=1", point: "dr.phase:1", fail: true, what: "compensate phase journaled, no compensation run"},
	{ranBefore: "one=1 two=1 flaky=2 boom=1 undo-two=1", point: "dr.compensation-ran:1", fail: true, what: "during compensation: a compensation's command done, not journaled", more: map[string]int{"undo-two": 1}},
	{ranBefore: "one=1 two=1 flaky=2 boom=1 undo-two=1", point: "dr.compensation-ended:1", fail: true, what: "a compensation journaled, its step not yet marked compensated"},
	{ranBefore: "one=1 two=1 flaky=2 boom=1 undo-two=1 undo-one=1", point: "dr.phase:2", fail: true, what: "compensations done, finally phase journaled"},
}

// alive reports whether process pid runs (a zombie does not).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i < 0 || !strings.HasPrefix(string(b[i+1:]), " Z")
}

// TestDrillKillMatrix kills a real opsd with SIGKILL at each point of
// drillKillMatrix during a run of killBook, restarts it without the
// failpoint, drives the run to its end (approving, deciding retry or
// skip) and checks item 3 of the DR issue: completed steps never ran
// again, an in-flight idempotent step ran again, an in-flight
// non-idempotent one waited for the operator, the run ended as it should
// and its signed report verifies.
func TestDrillKillMatrix(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the drill kill -9 matrix")
	}
	outcomes := make([]string, len(drillKillMatrix))
	start := time.Now()
	for i, kp := range drillKillMatrix {
		name := kp.point
		if name == "" {
			name = "external-kill-in-exec"
		}
		if kp.fail {
			name += "/failing-run"
		}
		t.Run(name, func(t *testing.T) {
			outcomes[i] = "FAILED"
			got := runDrillKillPoint(t, kp)
			if t.Failed() {
				outcomes[i] = "FAILED: " + got
			} else {
				outcomes[i] = got
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "drill kill -9 matrix, %d points, %s:\n", len(drillKillMatrix), time.Since(start).Round(time.Second))
	fmt.Fprintf(&b, "| point | run | simulates | outcome |\n|---|---|---|---|\n")
	for i, kp := range drillKillMatrix {
		p, run := "`"+kp.point+"`", "succeeds"
		if kp.point == "" {
			p = "(test's SIGKILL)"
		}
		if kp.fail {
			run = "fails at boom"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", p, run, kp.what, outcomes[i])
	}
	t.Log(b.String())
}

// kmRun is the part of a run the matrix reads.
type kmRun struct {
	ID      string `json:"id"`
	State   string `json:"state"`
	Error   string `json:"error"`
	Waiting *struct {
		Step string `json:"step"`
	} `json:"waiting"`
	Steps []struct {
		ID       string            `json:"id"`
		State    string            `json:"state"`
		Attempts []json.RawMessage `json:"attempts"`
		Operator *struct {
			Action string `json:"action"`
		} `json:"operator"`
		Compensation *struct {
			State string `json:"state"`
		} `json:"compensation"`
	} `json:"steps"`
}

// kmHTTP calls the daemon and tolerates it dying under the request (the
// armed phase): ok is false when no answer came.
func kmHTTP(addr, method, path, body string, out any) (code int, ok bool) {
	req, _ := http.NewRequest(method, "http://"+addr+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, false
	}
	if out != nil && json.Unmarshal(b, out) != nil {
		return resp.StatusCode, false
	}
	return resp.StatusCode, true
}

func runDrillKillPoint(t *testing.T, kp drillKillPoint) string {
	dir := t.TempDir()
	cfgPath := writeDrillConfig(t, dir)
	if err := os.WriteFile(filepath.Join(dir, "runbooks", "km.yaml"), []byte(killBook), 0o644); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(dir, "steps.log")
	if kp.point == "" {
		if err := os.WriteFile(logFile+".hold", nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Armed: start the run and drive it into the failpoint.
	var env []string
	if kp.point != "" {
		env = append(env, failpoint.Env+"="+kp.point)
	}
	d := startDaemonEnv(t, cfgPath, true, env...)
	var started kmRun
	kmHTTP(d.addr, "POST", "/api/v1/runbooks/km/runs", fmt.Sprintf(`{"params":{"log":%q,"fail":%v}}`, logFile, kp.fail), &started)
	orphan := 0
	deadline := time.Now().Add(60 * time.Second)
armed:
	for {
		select {
		case <-d.exited:
			break armed
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("opsd did not reach %q within 60s", kp.point)
		}
		if kp.point == "" {
			if b, err := os.ReadFile(logFile + ".pid"); err == nil && len(b) > 0 {
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					orphan = pid
					_ = d.cmd.Process.Signal(syscall.SIGKILL)
					<-d.exited
					break armed
				}
			}
		}
		var r kmRun
		if started.ID != "" {
			if _, ok := kmHTTP(d.addr, "GET", "/api/v1/runs/"+started.ID, "", &r); ok && r.State == "waiting_approval" {
				kmHTTP(d.addr, "POST", "/api/v1/runs/"+started.ID+"/steps/gate/approve", `{"comment":"armed"}`, nil)
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ws, ok := d.cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("opsd exit at %q = %v, want killed by SIGKILL\n%s", kp.point, d.exitErr, d.stderr.String())
	}
	note := ""
	if orphan != 0 {
		// The kill of opsd leaves the command running (its own process
		// group); the restart must kill it before the run resumes.
		if !alive(orphan) {
			t.Errorf("the exec command died with opsd: the row proves nothing")
		}
		t.Cleanup(func() { _ = syscall.Kill(-orphan, syscall.SIGKILL) })
	}
	before := countLines(t, logFile)
	if got := fmtCounts(before); got != fmtCounts(parseCounts(kp.ranBefore)) {
		t.Errorf("step log when opsd died = %q, want %q: the kill came elsewhere", got, kp.ranBefore)
	}

	// After: restart without the failpoint and drive the run to its end.
	d = startDaemon(t, cfgPath, true)
	if orphan != 0 {
		if alive(orphan) {
			t.Errorf("the exec command the kill left running (pid %d) still runs after the restart", orphan)
		} else {
			note = "; the exec command the kill left running was killed at restart, before the run resumed"
		}
	}
	id := started.ID
	if id == "" {
		// The kill came before the API answered: the run is in the journal.
		var list struct{ Items []kmRun }
		d.api(t, "GET", "/api/v1/runs?runbook=km", testToken, &list)
		if len(list.Items) != 1 {
			t.Fatalf("runs of km after restart: %d, want 1", len(list.Items))
		}
		id = list.Items[0].ID
	}
	loc := "/api/v1/runs/" + id
	if kp.atRestart != "" {
		waitRunState(t, d, loc, kp.atRestart)
		if kp.atRestart == "waiting_operator" {
			var r kmRun
			d.api(t, "GET", loc, testToken, &r)
			if r.Waiting == nil || r.Waiting.Step != "two" {
				t.Errorf("run waits for the operator on %+v, want two", r.Waiting)
			}
			if got := countLines(t, logFile); fmt.Sprint(got) != fmt.Sprint(before) {
				t.Errorf("steps ran while the run waited for the operator: %v, before %v", got, before)
			}
		}
		if kp.killWaiting {
			_ = d.cmd.Process.Signal(syscall.SIGKILL)
			<-d.exited
			d = startDaemon(t, cfgPath, true)
			waitRunState(t, d, loc, kp.atRestart)
			note += "; still " + kp.atRestart + " after a second kill -9"
		}
	}
	vars := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	var r kmRun
	decided := ""
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if code := d.api(t, "GET", loc, testToken, &r); code != 200 {
			t.Fatalf("GET run = %d", code)
		}
		if r.State == "succeeded" || r.State == "failed" || r.State == "cancelled" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("run still %s 60s after the restart", r.State)
		}
		switch r.State {
		case "waiting_approval":
			if resp, body := d.post(t, loc+"/steps/gate/approve", testToken, `{"comment":"after restart"}`); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("approve after restart = %d: %s", resp.StatusCode, body)
			}
		case "waiting_operator":
			if kp.decide == "" {
				t.Fatalf("run waits for the operator on %+v; the row expects no wait", r.Waiting)
			}
			if decided != "" {
				continue // the decision is on its way
			}
			decided = kp.decide
			var code int
			var out, errOut string
			switch kp.decide {
			case "api-approve":
				resp, body := d.post(t, loc+"/steps/two/approve", testToken, `{"comment":"checked: run it again"}`)
				code, out = map[bool]int{true: 0, false: 1}[resp.StatusCode == http.StatusAccepted], string(body)
			case "cli-retry":
				code, out, errOut = callCLI(t, vars, runDrillRetry, id, "two", "--comment", "checked: run it again")
			case "cli-skip":
				code, out, errOut = callCLI(t, vars, runDrillSkip, id, "two", "--comment", "it ran: skip it")
			}
			if code != 0 {
				t.Fatalf("operator decision %s = %d\n%s%s", kp.decide, code, out, errOut)
			}
		}
	}
	if kp.decide != "" && decided == "" {
		t.Errorf("the run never waited for the operator")
	}

	// Each step ran once, plus what the row expects.
	want := map[string]int{"one": 1, "two": 1, "flaky": 2, "cleanup": 1}
	wantState := "succeeded"
	steps := map[string]string{"one": "succeeded", "two": "succeeded", "flaky": "succeeded", "gate": "succeeded", "boom": "skipped", "cleanup": "succeeded"}
	if kp.fail {
		want["boom"], want["undo-two"], want["undo-one"] = 1, 1, 1
		wantState = "failed"
		steps["one"], steps["two"], steps["boom"] = "compensated", "compensated", "failed"
	}
	for k, n := range kp.more {
		want[k] += n
	}
	for k, v := range kp.steps {
		steps[k] = v
	}
	got := countLines(t, logFile)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("step runs (from the log file) = %v, want %v", got, want)
	}
	if r.State != wantState {
		t.Errorf("run = %s (%s), want %s", r.State, r.Error, wantState)
	}
	gotSteps := map[string]string{}
	for _, s := range r.Steps {
		gotSteps[s.ID] = s.State
		if s.ID == "flaky" && len(s.Attempts) != 2 {
			t.Errorf("flaky: %d attempts journaled, want 2", len(s.Attempts))
		}
		if s.ID == "two" && kp.decide != "" {
			wantOp := map[string]string{"api-approve": "retry", "cli-retry": "retry", "cli-skip": "skip"}[kp.decide]
			if s.Operator == nil || s.Operator.Action != wantOp {
				t.Errorf("two: operator decision %+v, want %s", s.Operator, wantOp)
			}
		}
	}
	if fmt.Sprint(gotSteps) != fmt.Sprint(steps) {
		t.Errorf("step states = %v, want %v", gotSteps, steps)
	}

	// The signed report of the resumed run verifies offline.
	reportFile := filepath.Join(dir, "report.md")
	if code, out, errOut := callCLI(t, vars, runDrillReport, id, "--md", "--out", reportFile); code != 0 {
		t.Fatalf("drill report = %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := cli(t, nil, "drill", "verify-report", "--config", cfgPath, reportFile); code != 0 || !strings.Contains(out, wantState) {
		t.Errorf("drill verify-report = %d\n%s%s", code, out, errOut)
	}

	out := fmt.Sprintf("run %s after restart", r.State)
	if kp.atRestart != "" {
		out = fmt.Sprintf("%s at restart, then %s", kp.atRestart, out)
	}
	if kp.decide != "" {
		out += " (operator: " + map[string]string{"api-approve": "retry via API", "cli-retry": "retry via opsd drill retry", "cli-skip": "skip via opsd drill skip"}[kp.decide] + ")"
	}
	var again []string
	for k, n := range kp.more {
		again = append(again, fmt.Sprintf("%s ran %d more time(s)", k, n))
	}
	if len(again) > 0 {
		out += "; " + strings.Join(again, ", ")
	} else {
		out += "; every step ran once"
	}
	return out + note + "; report verifies"
}

// countLines counts the lines of the step log by content.
func countLines(t *testing.T, path string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, l := range strings.Fields(string(b)) {
		out[l]++
	}
	return out
}

func parseCounts(s string) map[string]int {
	out := map[string]int{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.Atoi(v)
		out[k] = n
	}
	return out
}

func fmtCounts(m map[string]int) string { return fmt.Sprint(m) }
