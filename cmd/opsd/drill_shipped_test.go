package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/state/pgtest"
)

// TestShippedRunbooks runs the three runbooks of runbooks/ end to end
// through a real opsd whose state store is the real PostgreSQL:
// orders-restore-drill restores a pg_dump backup of a real database into a
// scratch database and counts its rows, files-restore-drill restores a
// file tree, failover-example checks two HTTP endpoints as a drill and, as
// a live run approved by an admin, promotes a standby with exec.
// seedOrders creates the table orders, 42 rows, in the database at dsn.
func seedOrders(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `create table orders (id int primary key, item text);
		insert into orders select i, 'item ' || i from generate_series(1, 42) i`); err != nil {
		t.Fatal(err)
	}
}

func TestShippedRunbooks(t *testing.T) {
	stateDSN, ordersDSN, scratchDSN := pgtest.DSN(t), pgtest.DSN(t), pgtest.DSN(t)
	seedOrders(t, ordersDSN)

	dir := t.TempDir()
	uploads := filepath.Join(dir, "uploads")
	for _, f := range []string{"a.jpg", "b/c.png", "b/d/e.pdf"} {
		p := filepath.Join(uploads, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("content of "+f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The failover's scripts, on opsd's PATH: they leave a trace.
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"promote-standby", "demote-standby"} {
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %q\n", s, filepath.Join(dir, "failover.log"))
		if err := os.WriteFile(filepath.Join(bin, s), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) }))
	t.Cleanup(health.Close)
	hook := httptest.NewServer(&webhookSink{})
	t.Cleanup(hook.Close)
	shipped, err := filepath.Abs("../../runbooks")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonYAML("") + fmt.Sprintf(`state:
  postgres: %q
targets:
  local: {type: local, path: ./backups}
audit:
  origin: opsd.test/shipped
  checkpoint_interval: 1s
sources:
  orders-db:
    type: postgres
    dsn: %q
    schedule: "@daily"
    targets: [local]
    encryption: none
  uploads:
    type: files
    paths: [./uploads]
    schedule: "@daily"
    targets: [local]
    encryption: none
plugins:
  dir: ./plugins
  pinned: {dns-failover: "sha256:3b1f000000000000000000000000000000000000000000000000000000000000"}
runbooks: {dir: %q}
alerts:
  route: {receiver: oncall}
  receivers:
    oncall: {webhook: {url: %q}}
`, stateDSN, ordersDSN, shipped, hook.URL+"/hook")
	cfgPath := filepath.Join(dir, "opsd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemonEnv(t, cfgPath, true, "PATH="+bin+":"+os.Getenv("PATH"))
	var list struct{ Items []struct{ Name string } }
	d.api(t, "GET", "/api/v1/runbooks", testToken, &list)
	if len(list.Items) != 3 {
		t.Fatalf("runbooks loaded: %+v, want the three shipped ones\n%s", list.Items, d.stderr.String())
	}
	for _, src := range []string{"orders-db", "uploads"} {
		if b := runAndWait(t, d, src, nil); b.State != "succeeded" {
			t.Fatalf("backup of %s = %s (%s)", src, b.State, b.Error)
		}
	}

	type stepView struct {
		ID, State, Error string
		Outputs          map[string]any
	}
	type runView struct {
		State, Error string
		Steps        []stepView
	}
	// run starts a run, approves its approval steps (the token is an
	// admin) and returns it ended.
	run := func(name, body string) runView {
		t.Helper()
		resp, b := d.post(t, "/api/v1/runbooks/"+name+"/runs", testToken, body)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("start %s = %d: %s", name, resp.StatusCode, b)
		}
		loc := resp.Header.Get("Location")
		for deadline := time.Now().Add(90 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			var r runView
			d.api(t, "GET", loc, testToken, &r)
			switch r.State {
			case "succeeded", "failed", "cancelled":
				steps := map[string]string{}
				for _, s := range r.Steps {
					steps[s.ID] = s.State
					if s.Error != "" {
						steps[s.ID] += " (" + s.Error + ")"
					}
				}
				t.Logf("%s %s: %s %v", name, body, r.State, steps)
				return r
			case "waiting_approval":
				for _, s := range r.Steps {
					if s.State == "running" {
						d.post(t, loc+"/steps/"+s.ID+"/approve", testToken, `{"comment":"shipped runbook test"}`)
					}
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s still %s after 90s", name, r.State)
			}
		}
	}
	state := func(r runView, id string) stepView {
		for _, s := range r.Steps {
			if s.ID == id {
				return s
			}
		}
		t.Fatalf("no step %s", id)
		return stepView{}
	}

	t.Run("orders-restore-drill", func(t *testing.T) {
		r := run("orders-restore-drill", fmt.Sprintf(`{"params":{"scratch_dsn":%q,"min_orders":42}}`, scratchDSN))
		if r.State != "succeeded" {
			t.Fatalf("orders-restore-drill = %s (%s)", r.State, r.Error)
		}
		for id, want := range map[string]string{"verify": "succeeded", "restore": "succeeded", "check": "succeeded",
			"fresh-enough": "succeeded", "approve-cutover": "skipped", "switch-dns": "skipped", "announce": "succeeded"} {
			if got := state(r, id).State; got != want {
				t.Errorf("step %s = %s, want %s", id, got, want)
			}
		}
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, scratchDSN)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, "select count(*) from orders").Scan(&n); err != nil || n != 42 {
			t.Errorf("orders in the scratch database = %d, %v; want 42", n, err)
		}
		// The report measured RTO and RPO against the objectives.
		reportFile := filepath.Join(dir, "orders-report.md")
		vars := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
		var runs struct{ Items []struct{ ID string } }
		d.api(t, "GET", "/api/v1/runs?runbook=orders-restore-drill", testToken, &runs)
		if code, out, errOut := callCLI(t, vars, runDrillReport, runs.Items[0].ID, "--md", "--out", reportFile); code != 0 {
			t.Fatalf("drill report = %d\n%s%s", code, out, errOut)
		}
		code, out, errOut := cli(t, nil, "drill", "verify-report", "--config", cfgPath, reportFile)
		if code != 0 || !strings.Contains(out, "RTO: ") || !strings.Contains(out, "objective 1800s: met") ||
			!strings.Contains(out, "objective 3600s: met") || !strings.Contains(out, "backup ") {
			t.Errorf("verify-report = %d, want RTO and RPO met and the backup:\n%s%s", code, out, errOut)
		}
		if strings.Contains(out+errOut, scratchDSN) {
			t.Errorf("the secret scratch_dsn appears in the verified report")
		}
	})

	t.Run("files-restore-drill", func(t *testing.T) {
		scratch := filepath.Join(dir, "scratch-uploads")
		r := run("files-restore-drill", fmt.Sprintf(`{"params":{"scratch_dir":%q,"min_files":3}}`, scratch))
		if r.State != "succeeded" {
			t.Fatalf("files-restore-drill = %s (%s)", r.State, r.Error)
		}
		if got := strings.TrimSpace(fmt.Sprint(state(r, "count-files").Outputs["stdout"])); got != "3" {
			t.Errorf("count-files = %q, want 3", got)
		}
		// One file too few is a failed drill.
		r = run("files-restore-drill", fmt.Sprintf(`{"params":{"scratch_dir":%q,"min_files":4}}`, filepath.Join(dir, "scratch-2")))
		if r.State != "failed" || state(r, "enough-files").State != "failed" {
			t.Errorf("files-restore-drill with min_files 4 = %s, enough-files %s; want failed", r.State, state(r, "enough-files").State)
		}
	})

	t.Run("failover-example", func(t *testing.T) {
		urls := fmt.Sprintf(`"primary_url":%q,"standby_url":%q`, health.URL, health.URL)
		r := run("failover-example", `{"params":{`+urls+`}}`)
		if r.State != "succeeded" {
			t.Fatalf("failover-example drill = %s (%s)", r.State, r.Error)
		}
		for id, want := range map[string]string{"primary-health": "succeeded", "standby-health": "succeeded",
			"approve": "skipped", "promote": "skipped", "settle": "skipped", "serving": "succeeded", "announce": "succeeded"} {
			if got := state(r, id).State; got != want {
				t.Errorf("drill step %s = %s, want %s", id, got, want)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, "failover.log")); err == nil {
			t.Errorf("a drill promoted the standby")
		}
		// Live: the admin approves, exec promotes, the standby serves.
		r = run("failover-example", `{"mode":"live","params":{`+urls+`,"reason":"test"}}`)
		if r.State != "succeeded" {
			t.Fatalf("failover-example live = %s (%s)", r.State, r.Error)
		}
		for id, want := range map[string]string{"approve": "succeeded", "promote": "succeeded", "settle": "succeeded", "serving": "succeeded"} {
			if got := state(r, id).State; got != want {
				t.Errorf("live step %s = %s, want %s", id, got, want)
			}
		}
		if b, err := os.ReadFile(filepath.Join(dir, "failover.log")); err != nil || string(b) != "promote-standby --wait\n" {
			t.Errorf("failover scripts ran: %q, %v; want promote-standby --wait once", b, err)
		}
	})
}
