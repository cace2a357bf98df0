package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// auditItem is one entry of GET /api/v1/audit/entries.
type auditItem struct {
	Index int64 `json:"index"`
	Entry struct {
		Action  string `json:"action"`
		Object  string `json:"object"`
		Outcome string `json:"outcome"`
		Actor   struct {
			Kind string `json:"kind"`
			Name string `json:"name"`
		} `json:"actor"`
	} `json:"entry"`
}

// auditEntries reads the whole audit log through the API.
func auditEntries(t *testing.T, d *daemonProc) []auditItem {
	t.Helper()
	var all []auditItem
	for cursor := "0"; cursor != ""; {
		var page struct {
			Items      []auditItem `json:"items"`
			NextCursor string      `json:"next_cursor"`
		}
		if code := d.api(t, "GET", "/api/v1/audit/entries?limit=1000&cursor="+cursor, testToken, &page); code != 200 {
			t.Fatalf("audit entries = %d", code)
		}
		all = append(all, page.Items...)
		cursor = page.NextCursor
	}
	return all
}

// TestDrillReportAuditRange: a drill's signed report names the audit range
// of its run — the HTTP request that started it, the approval and the
// backup actions the run took all lie in it, entries from before the run
// do not — and a checkpoint covering it, which verify-report checks.
func TestDrillReportAuditRange(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeDrillConfig(t, dir)
	d := startDaemon(t, cfgPath, true)
	vars := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}

	resp, body := d.post(t, "/api/v1/runbooks/files-drill/runs", testToken,
		fmt.Sprintf(`{"params":{"scratch_dir":%q}}`, filepath.Join(dir, "restored")))
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start drill = %d: %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")
	runID := strings.TrimPrefix(loc, "/api/v1/runs/")
	waitRunState(t, d, loc, "waiting_approval")
	if resp, body := d.post(t, loc+"/steps/gate/approve", testToken, `{"comment":"audit range test"}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("approve = %d: %s", resp.StatusCode, body)
	}
	waitRunState(t, d, loc, "succeeded")

	reportFile := filepath.Join(dir, "report.json")
	if code, out, errOut := callCLI(t, vars, runDrillReport, runID, "--out", reportFile); code != 0 {
		t.Fatalf("drill report = %d\n%s%s", code, out, errOut)
	}
	code, out, errOut := cli(t, nil, "drill", "verify-report", "--config", cfgPath, "--json", reportFile)
	if code != 0 {
		t.Fatalf("drill verify-report = %d\n%s%s", code, out, errOut)
	}
	var rep struct {
		Audit *struct {
			First      int64  `json:"first"`
			Last       int64  `json:"last"`
			Checkpoint string `json:"checkpoint"`
		} `json:"audit"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Audit == nil || rep.Audit.Checkpoint == "" {
		t.Fatalf("verified report has no audit range with a checkpoint: %s", out)
	}
	a := rep.Audit
	t.Logf("audit range %d..%d, checkpoint:\n%s", a.First, a.Last, a.Checkpoint)
	if code, out, _ := cli(t, nil, "drill", "verify-report", "--config", cfgPath, reportFile); code != 0 ||
		!strings.Contains(out, fmt.Sprintf("audit entries %d..%d", a.First, a.Last)) {
		t.Errorf("verify-report does not show the range:\n%s", out)
	}

	// The run's own entries, found by what they are about.
	var mine []string
	before := 0
	for _, it := range auditEntries(t, d) {
		e := it.Entry
		ours := (e.Action == "runbook.run" && e.Object == "runbook/files-drill") ||
			strings.HasPrefix(e.Object, "run/"+runID+"/") || strings.HasPrefix(e.Actor.Name, "run/"+runID+"/")
		if !ours {
			if it.Index < a.First {
				before++
			}
			continue
		}
		mine = append(mine, fmt.Sprintf("%d %s %s %s by %s", it.Index, e.Action, e.Object, e.Outcome, e.Actor.Name))
		if it.Index < a.First || it.Index > a.Last {
			t.Errorf("audit entry %d (%s %s %s) of the run lies outside the report's range %d..%d",
				it.Index, e.Action, e.Object, e.Outcome, a.First, a.Last)
		}
	}
	t.Logf("the run's audit entries:\n%s", strings.Join(mine, "\n"))
	// Start (accepted, succeeded), approval (accepted, succeeded), and the
	// backup the run took.
	for _, want := range []string{"runbook.run runbook/files-drill accepted", "runbook.run runbook/files-drill succeeded",
		"run.approve run/" + runID + "/step/gate accepted", "by run/" + runID + "/backup"} {
		if !strings.Contains(strings.Join(mine, "\n"), want) {
			t.Errorf("no audit entry %q among the run's", want)
		}
	}
	if before == 0 {
		t.Errorf("no entry before the range: it does not start at the run")
	}
}
