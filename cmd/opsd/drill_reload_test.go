package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// gatedBook waits for an approval, then says which version of the file it
// was started from.
const gatedBook = `name: gated
steps:
  - id: gate
    uses: approval
    with: {timeout: 10m}
  - id: version
    uses: exec
    idempotent: true
    with: {argv: [echo, VERSION]}
`

// runbookSHAs lists the loaded runbooks with their SHA-256.
func runbookSHAs(t *testing.T, d *daemonProc) map[string]string {
	t.Helper()
	var list struct {
		Items []struct{ Name, SHA256 string }
	}
	if code := d.api(t, "GET", "/api/v1/runbooks", testToken, &list); code != 200 {
		t.Fatalf("GET runbooks = %d", code)
	}
	out := map[string]string{}
	for _, it := range list.Items {
		out[it.Name] = it.SHA256
	}
	return out
}

// TestRunbookReload: SIGHUP and POST /api/v1/reload load runbooks.dir
// again, each file whole or not at all: new and changed files are taken,
// a file refused now keeps its previous version, a file that is gone takes
// its runbook away. A run in flight keeps the runbook it started with; a
// run whose runbook changed does not resume after a restart.
func TestRunbookReload(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeDrillConfig(t, dir)
	rbDir := filepath.Join(dir, "runbooks")
	put := func(name, body string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(rbDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	put("gated.yaml", strings.Replace(gatedBook, "VERSION", "v1", 1))
	d := startDaemon(t, cfgPath, true)
	before := runbookSHAs(t, d)
	if before["gated"] == "" || before["files-drill"] == "" {
		t.Fatalf("runbooks at start: %v", before)
	}

	// A run of gated v1, in flight at its approval gate.
	resp, body := d.post(t, "/api/v1/runbooks/gated/runs", testToken, `{}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start gated = %d: %s", resp.StatusCode, body)
	}
	loc1 := resp.Header.Get("Location")
	waitRunState(t, d, loc1, "waiting_approval")

	// Change gated, add one, break files-drill, add a broken new one.
	put("gated.yaml", strings.Replace(gatedBook, "VERSION", "v2", 1))
	put("extra.yaml", "name: extra\nsteps:\n  - {id: w, uses: wait, with: {duration: 1ms}}\n")
	put("files-drill.yaml", "name: files-drill\nsteps:\n  - {id: x, uses: no.such.action}\n")
	put("broken.yaml", "name: broken\nsteps: [\n")
	d.drainNotify()
	if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	d.expectNotify(t, "RELOADING=1")
	d.expectNotify(t, "READY=1")
	after := runbookSHAs(t, d)
	switch {
	case after["gated"] == "" || after["gated"] == before["gated"]:
		t.Errorf("gated after SIGHUP: sha %q, want a new one (was %q)", after["gated"], before["gated"])
	case after["extra"] == "":
		t.Errorf("extra not loaded by SIGHUP: %v", after)
	case after["files-drill"] != before["files-drill"]:
		t.Errorf("files-drill, refused now, is %q, want its previous version %q", after["files-drill"], before["files-drill"])
	}
	if _, ok := after["broken"]; ok {
		t.Errorf("broken runbook loaded: %v", after)
	}
	for _, want := range []string{`"msg":"runbook refused; keeping the version loaded before"`, `"msg":"runbook refused"`} {
		if !strings.Contains(d.stderr.String(), want) {
			t.Errorf("daemon log lacks %s", want)
		}
	}

	// The run in flight finishes with the runbook it started with.
	if resp, body := d.post(t, loc1+"/steps/gate/approve", testToken, `{}`); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("approve = %d: %s", resp.StatusCode, body)
	}
	waitRunState(t, d, loc1, "succeeded")
	var run1 struct {
		RunbookSHA256 string `json:"runbook_sha256"`
		Steps         []struct {
			ID      string         `json:"id"`
			Outputs map[string]any `json:"outputs"`
		} `json:"steps"`
	}
	d.api(t, "GET", loc1, testToken, &run1)
	if run1.RunbookSHA256 != before["gated"] || fmt.Sprint(run1.Steps[1].Outputs["stdout"]) != "v1\n" {
		t.Errorf("run in flight over the reload: sha %s, version step %v; want the v1 runbook (%s) and v1",
			run1.RunbookSHA256, run1.Steps[1].Outputs, before["gated"])
	}

	// A new run uses v2; the runbook changes again (POST /api/v1/reload,
	// which also drops extra), and after a restart the run cannot resume.
	resp, body = d.post(t, "/api/v1/runbooks/gated/runs", testToken, `{}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("start gated v2 = %d: %s", resp.StatusCode, body)
	}
	loc2 := resp.Header.Get("Location")
	waitRunState(t, d, loc2, "waiting_approval")
	put("gated.yaml", strings.Replace(gatedBook, "VERSION", "v3", 1))
	if err := os.Remove(filepath.Join(rbDir, "extra.yaml")); err != nil {
		t.Fatal(err)
	}
	if code := d.api(t, "POST", "/api/v1/reload", testToken, nil); code != 200 && code != 204 {
		t.Fatalf("POST reload = %d", code)
	}
	latest := runbookSHAs(t, d)
	if _, ok := latest["extra"]; ok || latest["gated"] == after["gated"] {
		t.Errorf("after POST reload: %v; want extra gone and gated changed", latest)
	}
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	d = startDaemon(t, cfgPath, true)
	var run2 struct{ State, Error string }
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		d.api(t, "GET", loc2, testToken, &run2)
		if run2.State == "failed" || time.Now().After(deadline) {
			break
		}
	}
	if run2.State != "failed" || !strings.Contains(run2.Error, "changed since the run started") {
		t.Errorf("run of a runbook changed before a restart = %s (%s), want failed: changed", run2.State, run2.Error)
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range runbookSHAs(t, d) {
			if !yield(n) {
				return
			}
		}
	})
	t.Logf("runbooks after the restart: %v", names)
}
