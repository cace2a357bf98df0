package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/google/go-cmp/cmp"
)

const viewerToken = "test-viewer-token"

// drillRunbook backs up the source, restores that backup into a scratch
// directory, counts the files that came back, asserts, waits for an
// approval and notifies.
const drillRunbook = `name: files-drill
description: back up, restore into scratch, check, approve
objectives: {rto: 1h, rpo: 6h}
params:
  scratch_dir: {type: string, required: true}
  min_files:   {type: int, default: 2}
steps:
  - id: backup
    uses: backup.run
    with: {source: demo}
  - id: restore
    uses: backup.restore
    with: {source: demo, backup: "${{ steps.backup.outputs.backup_id }}", to_dir: "${{ params.scratch_dir }}"}
  - id: count-files
    uses: exec
    with:
      argv: [sh, -c, 'find "$OPSD_PARAM_SCRATCH_DIR" -type f | wc -l']
    marks: recovered
  - id: enough-files
    uses: assert
    with:
      that: ${{ int(trim(steps["count-files"].outputs.stdout)) >= params.min_files }}
      message: the restore brought back fewer files than min_files
  - id: gate
    uses: approval
    with: {approvers: ["role:operator"], timeout: 1m, message: "restore checked; close the drill?"}
  - id: announce
    uses: notify
    with:
      receiver: oncall
      message: "files drill ${{ run.failed ? 'FAILED' : 'done' }} in ${{ run.elapsed }}"
    finally: true
`

// writeDrillConfig writes the backup config of writeBackupConfig plus a
// viewer token, a receiver and runbooks.dir with drillRunbook.
func writeDrillConfig(t *testing.T, dir string) string {
	t.Helper()
	path := writeBackupConfig(t, dir, "@daily")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(viewerToken))
	cfg := strings.Replace(string(raw), "  tokens:\n", fmt.Sprintf("  tokens:\n    - {name: watcher, role: viewer, sha256: %s}\n", hex.EncodeToString(sum[:])), 1)
	// notify steps go through this receiver: a real webhook endpoint.
	hook := httptest.NewServer(&webhookSink{})
	t.Cleanup(hook.Close)
	cfg += fmt.Sprintf(`runbooks: {dir: ./runbooks}
alerts:
  route: {receiver: oncall}
  receivers:
    oncall:
      webhook: {url: %q}
`, hook.URL+"/hook")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "runbooks"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runbooks", "files-drill.yaml"), []byte(drillRunbook), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// callCLI runs one CLI command function in process (the drill commands
// are called directly: run.go's command table lists them separately).
func callCLI(t *testing.T, vars map[string]string, fn func(context.Context, *env, []string) error, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{getenv: func(k string) string { return vars[k] }, stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
	code := exitCode(&errb, "drill", fn(context.Background(), e, args))
	return code, out.String(), errb.String()
}

// post sends a JSON POST as curl would and checks the answer against the
// OpenAPI document.
func (d *daemonProc) post(t *testing.T, path, token, body string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+d.addr+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := openAPI(t).Check(req, resp.StatusCode, resp.Header, b); err != nil {
		t.Error(err)
	}
	return resp, b
}

func TestDrillThroughDaemon(t *testing.T) {
	openapi3filter.RegisterBodyDecoder("text/markdown", openapi3filter.PlainBodyDecoder)
	dir := t.TempDir()
	cfgPath := writeDrillConfig(t, dir)
	d := startDaemon(t, cfgPath, true)
	vars := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}

	code, out, errOut := callCLI(t, vars, runRunbookList)
	if code != 0 || !strings.Contains(out, "files-drill") {
		t.Fatalf("runbook list = %d\n%s%s", code, out, errOut)
	}
	// A dry run followed through the CLI ends at once and succeeds.
	code, out, errOut = callCLI(t, vars, runDrillRun, "files-drill", "--param", "scratch_dir="+filepath.Join(dir, "dry"), "--dry-run", "--follow")
	if code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("drill run --dry-run --follow = %d\n%s%s", code, out, errOut)
	}

	// Start the drill over HTTP, as curl would.
	scratch := filepath.Join(dir, "restored")
	resp, body := d.post(t, "/api/v1/runbooks/files-drill/runs", testToken, fmt.Sprintf(`{"params":{"scratch_dir":%q},"mode":"drill"}`, scratch))
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(loc, "/api/v1/runs/") {
		t.Fatalf("start drill = %d, Location %q: %s", resp.StatusCode, loc, body)
	}
	runID := strings.TrimPrefix(loc, "/api/v1/runs/")

	// Follow it over SSE until it ends.
	events := make(chan string, 1)
	go func() {
		req, _ := http.NewRequest("GET", "http://"+d.addr+loc+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+viewerToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			events <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		var sb strings.Builder
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			sb.WriteString(sc.Text() + "\n")
		}
		events <- sb.String()
	}()

	// Wait for the approval gate.
	deadline := time.Now().Add(20 * time.Second)
	var run struct {
		State string `json:"state"`
		Error string `json:"error"`
	}
	for {
		if code := d.api(t, "GET", loc, viewerToken, &run); code != 200 {
			t.Fatalf("GET run = %d", code)
		}
		if run.State == "waiting_approval" {
			break
		}
		if run.State != "queued" && run.State != "running" || time.Now().After(deadline) {
			t.Fatalf("run state %s (%s), want waiting_approval", run.State, run.Error)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The restored tree holds the source's files wherever the tar put them.
	var restored []string
	_ = filepath.WalkDir(scratch, func(p string, de fs.DirEntry, err error) error {
		if err == nil && !de.IsDir() {
			restored = append(restored, filepath.Base(p))
		}
		return nil
	})
	slices.Sort(restored)
	if diff := cmp.Diff([]string{"a.txt", "b.txt"}, restored); diff != "" {
		t.Errorf("restored files (-want +got):\n%s", diff)
	}

	// A viewer may not approve.
	if resp, body := d.post(t, loc+"/steps/gate/approve", viewerToken, `{"comment":"me too"}`); resp.StatusCode != http.StatusForbidden {
		t.Errorf("approve as viewer = %d, want 403: %s", resp.StatusCode, body)
	}
	code, out, errOut = callCLI(t, vars, runDrillApprove, runID, "gate", "--comment", "restore looks right")
	if code != 0 {
		t.Fatalf("drill approve = %d\n%s%s", code, out, errOut)
	}

	var stream string
	select {
	case stream = <-events:
	case <-time.After(20 * time.Second):
		t.Fatal("event stream did not end with the run")
	}
	for _, want := range []string{"event: step", `"step":"restore"`, `"state":"succeeded"`, "event: approval", `"type":"run","state":"succeeded"`} {
		if !strings.Contains(stream, want) {
			t.Errorf("event stream lacks %q:\n%s", want, stream)
		}
	}
	t.Logf("event stream head:\n%s", head(stream, 12))

	code, out, errOut = callCLI(t, vars, runDrillShow, runID)
	if code != 0 || !strings.Contains(out, "succeeded") || !strings.Contains(out, "approved by") {
		t.Errorf("drill show = %d\n%s%s", code, out, errOut)
	}
	code, out, _ = callCLI(t, vars, runDrillList, "--runbook", "files-drill")
	if code != 0 || !strings.Contains(out, runID) {
		t.Errorf("drill list = %d\n%s", code, out)
	}
	// Ended runs cannot be approved or cancelled again.
	if resp, _ := d.post(t, loc+"/cancel", testToken, `{}`); resp.StatusCode != http.StatusConflict {
		t.Errorf("cancel an ended run = %d, want 409", resp.StatusCode)
	}

	// A second run, rejected at the gate through the CLI, fails; cancelling
	// it afterwards is a conflict (exit 1).
	resp, body = d.post(t, "/api/v1/runbooks/files-drill/runs", testToken, fmt.Sprintf(`{"params":{"scratch_dir":%q}}`, filepath.Join(dir, "restored2")))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start second drill = %d: %s", resp.StatusCode, body)
	}
	loc2 := resp.Header.Get("Location")
	run2 := strings.TrimPrefix(loc2, "/api/v1/runs/")
	waitRunState(t, d, loc2, "waiting_approval")
	if code, out, errOut := callCLI(t, vars, runDrillReject, run2, "gate", "--comment", "not today"); code != 0 {
		t.Fatalf("drill reject = %d\n%s%s", code, out, errOut)
	}
	waitRunState(t, d, loc2, "failed")
	if code, _, errOut := callCLI(t, vars, runDrillCancel, run2); code != 1 || !strings.Contains(errOut, "409") {
		t.Errorf("drill cancel of an ended run = %d (%s), want 1 with 409", code, errOut)
	}

	// The signed report, as Markdown, verifies offline.
	reportFile := filepath.Join(dir, "report.md")
	code, out, errOut = callCLI(t, vars, runDrillReport, runID, "--md", "--out", reportFile)
	if code != 0 {
		t.Fatalf("drill report = %d\n%s%s", code, out, errOut)
	}
	md, err := os.ReadFile(reportFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report head:\n%s", head(string(md), 25))
	for _, want := range []string{runID, "files-drill", "restore looks right"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	code, out, errOut = cli(t, nil, "drill", "verify-report", "--config", cfgPath, reportFile)
	if code != 0 || !strings.Contains(out, "signature OK") || !strings.Contains(out, "succeeded") {
		t.Fatalf("drill verify-report = %d\n%s%s", code, out, errOut)
	}
	t.Logf("verify-report:\n%s", out)
	if code := d.api(t, "GET", loc+"/report?format=md", viewerToken, nil); code != 200 {
		t.Errorf("GET report as viewer = %d", code)
	}
	tampered := bytes.Replace(md, []byte("restore looks right"), []byte("restore looks wrong"), 1)
	if err := os.WriteFile(reportFile, tampered, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := cli(t, nil, "drill", "verify-report", "--config", cfgPath, reportFile); code != 1 {
		t.Errorf("verify-report of a tampered report = %d, want 1", code)
	}
}

// waitRunState polls the run at loc until it is in state want.
func waitRunState(t *testing.T, d *daemonProc, loc, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var run struct {
			State string `json:"state"`
			Error string `json:"error"`
		}
		d.api(t, "GET", loc, testToken, &run)
		if run.State == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s is %s (%s), want %s", loc, run.State, run.Error, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func head(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
