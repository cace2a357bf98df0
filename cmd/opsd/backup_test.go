package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/state/pgtest"
)

// writeBackupConfig writes a config with a files source "demo" backed up to
// two local targets, with a generated age identity.
func writeBackupConfig(t *testing.T, dir, schedule string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "src", "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"a.txt": "alpha\n", "sub/b.txt": strings.Repeat("bravo ", 1000)} {
		if err := os.WriteFile(filepath.Join(dir, "src", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := testDaemonYAML("") + fmt.Sprintf(`targets:
  a: {type: local, path: ./target-a}
  b: {type: local, path: ./target-b}
audit:
  origin: opsd.test/backup
  checkpoint_interval: 1s
sources:
  demo:
    type: files
    paths: [./src]
    schedule: %q
    targets: [a, b]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`, schedule)
	path := filepath.Join(dir, "opsd.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestBackupThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeBackupConfig(t, dir, "@daily")
	d := startDaemon(t, cfgPath, true)
	if st, err := os.Stat(filepath.Join(dir, "keys", "age.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("generated age identity: %v, %v", st, err)
	}
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}

	code, out, errOut := cli(t, env, "backup", "run", "demo", "--wait")
	if code != 0 {
		t.Fatalf("backup run --wait = %d\n%s\n%s", code, out, errOut)
	}
	if strings.Count(out, "complete") != 2 || !strings.Contains(out, "succeeded") {
		t.Errorf("backup run --wait output lacks two complete copies:\n%s", out)
	}
	code, out, errOut = cli(t, env, "backup", "list", "--json")
	if code != 0 {
		t.Fatalf("backup list = %d: %s", code, errOut)
	}
	var list struct {
		Items []backupView `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list.Items) != 1 || list.Items[0].State != "succeeded" {
		t.Fatalf("backup list = %v, %s", err, out)
	}
	id := list.Items[0].ID

	code, out, errOut = cli(t, env, "backup", "show", id, "--json")
	if code != 0 {
		t.Fatalf("backup show = %d: %s", code, errOut)
	}
	var shown backupView
	if err := json.Unmarshal([]byte(out), &shown); err != nil {
		t.Fatal(err)
	}
	if len(shown.Copies) != 2 || shown.Copies[0].State != "complete" || shown.Copies[1].State != "complete" {
		t.Errorf("backup show copies = %+v, want two complete", shown.Copies)
	}
	var m struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(shown.Manifest, &m); err != nil || m.ID != id {
		t.Errorf("manifest id = %q (%v), want %s", m.ID, err, id)
	}
	var got backupView
	if code := d.api(t, "GET", "/api/v1/backups/"+id, testToken, &got); code != 200 {
		t.Fatalf("GET backup = %d", code)
	}
	if code := d.api(t, "GET", "/api/v1/backups/20200101T000000Z-0000", testToken, nil); code != 404 {
		t.Errorf("GET unknown backup = %d, want 404", code)
	}
	if code := d.api(t, "GET", "/api/v1/backups?source=demo&limit=10", testToken, nil); code != 200 {
		t.Errorf("GET backups = %d", code)
	}
	if code, _, _ := cli(t, env, "backup", "run", "nope"); code != 1 {
		t.Errorf("backup run of an unknown source = %d, want 1", code)
	}

	req, _ := http.NewRequest("GET", "http://"+d.addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`opsd_backup_last_success_timestamp_seconds{source="demo"}`, `opsd_backup_bytes_total{source="demo",target="a"}`,
		`opsd_backup_duration_seconds_count{source="demo"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// The audit log has the request, the job run and one entry per copy.
	counts := map[string]int{}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		counts = map[string]int{}
		for _, it := range auditEntries(t, d) {
			if it.Entry.Outcome == "succeeded" {
				counts[it.Entry.Action]++
			}
		}
		if counts["job.backup"] >= 1 {
			break
		}
	}
	if counts["backup.run"] != 1 || counts["job.backup"] != 1 || counts["backup.copy"] != 2 {
		t.Errorf("audit outcomes = %v, want backup.run 1, job.backup 1, backup.copy 2", counts)
	}

	// Without its state, the daemon rebuilds the catalog from the targets.
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if code := d.wait(t); code != 0 {
		t.Fatalf("daemon exit = %d", code)
	}
	if err := os.RemoveAll(filepath.Join(dir, "data", "state")); err != nil {
		t.Fatal(err)
	}
	d2 := startDaemon(t, cfgPath, true)
	env["OPSD_ADDR"] = d2.addr
	code, out, errOut = cli(t, env, "backup", "list")
	if code != 0 || !strings.Contains(out, id) {
		t.Errorf("backup list after rebuild = %d, %s %s; want %s", code, out, errOut, id)
	}
	if code := d2.api(t, "GET", "/api/v1/backups/"+id, testToken, &got); code != 200 || len(got.Copies) != 2 {
		t.Errorf("GET rebuilt backup = %d, %d copies", code, len(got.Copies))
	}
}

func TestPeriodicBackup(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, writeBackupConfig(t, dir, "@every 1s"), true)
	deadline := time.Now().Add(45 * time.Second)
	for {
		var list struct {
			Items []struct {
				State string `json:"state"`
				Actor string `json:"actor"`
			} `json:"items"`
		}
		if code := d.api(t, "GET", "/api/v1/backups?state=succeeded", testToken, &list); code != 200 {
			t.Fatalf("GET backups = %d", code)
		}
		if len(list.Items) > 0 {
			if list.Items[0].Actor != "scheduler:backup:demo" {
				t.Errorf("actor = %q, want scheduler:backup:demo", list.Items[0].Actor)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic backup within 45s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestSourcesAPI(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, writeBackupConfig(t, dir, "@daily"), true)
	var list struct {
		Items []struct {
			Name       string          `json:"name"`
			NextRun    string          `json:"next_run"`
			LastBackup json.RawMessage `json:"last_backup"`
		} `json:"items"`
	}
	if code := d.api(t, "GET", "/api/v1/sources", testToken, &list); code != 200 || len(list.Items) != 1 || list.Items[0].Name != "demo" || list.Items[0].NextRun == "" {
		t.Errorf("GET sources = %d, %+v", code, list)
	}
	if code := d.api(t, "GET", "/api/v1/sources/demo", testToken, nil); code != 200 {
		t.Errorf("GET sources/demo = %d", code)
	}
	if code := d.api(t, "GET", "/api/v1/sources/nope", testToken, nil); code != 404 {
		t.Errorf("GET sources/nope = %d, want 404", code)
	}
}

// TestBackupKill9 kills a real opsd in the middle of a backup: after a
// restart no copy of that backup is visible on any target (the storage
// lists nothing), and the catalog still says running until River rescues
// the job, whose re-run starts clean.
func TestBackupKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping the kill -9 test")
	}
	dir := t.TempDir()
	cfgPath := writeBackupConfig(t, dir, "@daily")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	slow := `  slow:
    type: command
    command: [sh, -c, "head -c 3000000 /dev/urandom; sleep 10"]
    extension: bin
    schedule: "@daily"
    targets: [a, b]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`
	if err := os.WriteFile(cfgPath, append(cfg, slow...), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, true)
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	code, out, errOut := cli(t, env, "backup", "run", "slow", "--json")
	if code != 0 {
		t.Fatalf("backup run = %d %s %s", code, out, errOut)
	}
	var b backupView
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		var got backupView
		d.api(t, "GET", "/api/v1/backups/"+b.ID, testToken, &got)
		if got.State == "running" && len(got.Copies) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backup not running after 20s: %+v", got)
		}
	}
	time.Sleep(time.Second) // data is flowing into the targets
	if err := d.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-d.exited

	d2 := startDaemon(t, cfgPath, true)
	var got backupView
	if code := d2.api(t, "GET", "/api/v1/backups/"+b.ID, testToken, &got); code != 200 || got.State != "failed" || !strings.Contains(got.Error, "interrupted") {
		t.Errorf("after kill -9 and restart: backup = %d %+v, want failed as interrupted", code, got)
	}
	for _, target := range []string{"a", "b"} {
		code, out, errOut := cli(t, nil, "backup", "list", "--target", target, "--config", cfgPath, "--json")
		if code != 0 || strings.Contains(out, b.ID) {
			t.Errorf("offline list of %s after kill -9 = %d %s %s; want no trace of %s", target, code, out, errOut, b.ID)
		}
		if _, err := os.Stat(filepath.Join(dir, "target-"+target, "slow", b.ID, "manifest.json")); err == nil {
			t.Errorf("manifest of the killed backup exists on %s", target)
		}
	}
}

// restoreVia asks the daemon to restore backup id (POST
// /api/v1/backups/{id}/restore) and returns the status and the restore's
// Location with the response body.
func restoreVia(t *testing.T, d *daemonProc, id, body string) (code int, location, resp string) {
	t.Helper()
	r, b := d.post(t, "/api/v1/backups/"+id+"/restore", testToken, body)
	return r.StatusCode, r.Header.Get("Location"), string(b)
}

// waitRestore polls an API restore until it is no longer running.
func waitRestore(t *testing.T, d *daemonProc, location string) map[string]any {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var r map[string]any
		if code := d.api(t, "GET", location, testToken, &r); code != 200 {
			t.Fatalf("GET %s = %d", location, code)
		}
		if r["state"] != "running" {
			return r
		}
	}
	t.Fatalf("restore %s still running after 60s", location)
	return nil
}

// auditOutcomes counts the outcomes of action in the daemon's audit log,
// polling until want outcomes (accepted excluded) are there or 5 s passed.
func auditOutcomes(t *testing.T, d *daemonProc, action string, want int) map[string]int {
	t.Helper()
	var outcomes map[string]int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		outcomes = map[string]int{}
		n := 0
		for _, it := range auditEntries(t, d) {
			if it.Entry.Action == action && it.Entry.Outcome != "accepted" {
				outcomes[it.Entry.Outcome]++
				n++
			}
		}
		if n >= want {
			break
		}
	}
	return outcomes
}

// TestRestoreThroughAPI: POST /api/v1/backups/{id}/restore restores on the
// daemon's host, followed at its Location; a non-empty destination fails
// the restore without force; bad requests are refused before anything
// starts; every outcome is audited as backup.restored.
func TestRestoreThroughAPI(t *testing.T) {
	dir := t.TempDir()
	d := startDaemon(t, writeBackupConfig(t, dir, "@daily"), true)
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	if code, out, errOut := cli(t, env, "backup", "run", "demo", "--wait", "--json"); code != 0 {
		t.Fatalf("backup run --wait = %d\n%s\n%s", code, out, errOut)
	}
	var list struct {
		Items []backupView `json:"items"`
	}
	if code := d.api(t, "GET", "/api/v1/backups", testToken, &list); code != 200 || len(list.Items) != 1 {
		t.Fatalf("GET backups = %d, %d items", code, len(list.Items))
	}
	id := list.Items[0].ID
	dest := filepath.Join(t.TempDir(), "restored")

	code, loc, resp := restoreVia(t, d, id, `{"to_dir": "`+dest+`"}`)
	if code != 202 {
		t.Fatalf("restore = %d %s", code, resp)
	}
	r := waitRestore(t, d, loc)
	if r["state"] != "succeeded" || r["target"] == "" || r["destination"] != dest {
		t.Fatalf("restore = %v, want succeeded into %s", r, dest)
	}
	for name, want := range map[string]string{"a.txt": "alpha\n", "sub/b.txt": strings.Repeat("bravo ", 1000)} {
		got, err := os.ReadFile(filepath.Join(dest, dir, "src", name))
		if err != nil || string(got) != want {
			t.Errorf("restored %s = %q (%v)", name, got, err)
		}
	}

	// Again into the same, now non-empty, directory: refused by the restore.
	code, loc, resp = restoreVia(t, d, id, `{"to_dir": "`+dest+`"}`)
	if code != 202 {
		t.Fatalf("second restore = %d %s", code, resp)
	}
	if r := waitRestore(t, d, loc); r["state"] != "failed" || !strings.Contains(fmt.Sprint(r["error"]), "not empty") {
		t.Errorf("restore into a non-empty directory = %v, want failed: not empty", r)
	}

	for _, tc := range []struct {
		body string
		want int
	}{
		{`{"to_dir": "relative/dir"}`, 400},
		{`{}`, 400},
		{`{"to_dir": "/tmp/x", "target": "nope"}`, 409},
		{`{"to_postgres": "postgres://u:s3cret@127.0.0.1:1/db?sslmode=disable", "to_dir": "/tmp/x"}`, 400},
	} {
		if code, _, resp := restoreVia(t, d, id, tc.body); code != tc.want || strings.Contains(resp, "s3cret") {
			t.Errorf("restore %s = %d %s, want %d (and no password)", tc.body, code, resp, tc.want)
		}
	}
	if code := d.api(t, "GET", "/api/v1/restores/20200101T000000Z-00000000", testToken, nil); code != 404 {
		t.Errorf("GET unknown restore = %d, want 404", code)
	}

	// The audit log has both outcomes.
	if got := auditOutcomes(t, d, "backup.restored", 2); got["succeeded"] != 1 || got["failed"] != 1 {
		t.Errorf("backup.restored outcomes = %v, want one succeeded, one failed", got)
	}
}

// TestRestoreToPostgresThroughAPI: a pg_dump backup restored through the
// API into an empty database of the real PostgreSQL; the DSN's password
// appears nowhere (response, restore, audit log); restoring into the now
// non-empty database fails without force.
func TestRestoreToPostgresThroughAPI(t *testing.T) {
	srcDSN, intoDSN := pgtest.DSN(t), pgtest.DSN(t)
	seedOrders(t, srcDSN)
	dir := t.TempDir()
	cfg := testDaemonYAML("") + fmt.Sprintf(`targets:
  local: {type: local, path: ./backups}
sources:
  orders-db:
    type: postgres
    dsn: %q
    schedule: "@daily"
    targets: [local]
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`, srcDSN)
	cfgPath := filepath.Join(dir, "opsd.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, true)
	b := runAndWait(t, d, "orders-db", nil)
	if b.State != "succeeded" {
		t.Fatalf("backup = %s (%s)", b.State, b.Error)
	}
	// Trust auth accepts any password: enough to see where it goes.
	u, err := url.Parse(intoDSN)
	if err != nil {
		t.Fatal(err)
	}
	const password = "Pa55-restore-s3cret"
	u.User = url.UserPassword(u.User.Username(), password)
	body := `{"to_postgres": "` + u.String() + `"}`

	code, loc, resp := restoreVia(t, d, b.ID, body)
	if code != 202 || strings.Contains(resp, password) {
		t.Fatalf("restore = %d %s", code, resp)
	}
	r := waitRestore(t, d, loc)
	if r["state"] != "succeeded" || strings.Contains(fmt.Sprint(r), password) {
		t.Fatalf("restore = %v, want succeeded and no password", r)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, intoDSN)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = conn.QueryRow(ctx, "select count(*) from orders").Scan(&n)
	conn.Close(ctx)
	if err != nil || n != 42 {
		t.Fatalf("restored orders = %d (%v), want 42", n, err)
	}

	code, loc, _ = restoreVia(t, d, b.ID, body)
	if code != 202 {
		t.Fatalf("second restore = %d", code)
	}
	if r := waitRestore(t, d, loc); r["state"] != "failed" || !strings.Contains(fmt.Sprint(r["error"]), "not empty") {
		t.Errorf("restore into a non-empty database = %v, want failed: not empty", r)
	}
	if got := auditOutcomes(t, d, "backup.restored", 2); got["succeeded"] != 1 || got["failed"] != 1 {
		t.Errorf("backup.restored outcomes = %v, want one succeeded, one failed", got)
	}
	files := 0
	err = filepath.WalkDir(filepath.Join(dir, "data", "audit"), func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		if bytes.Contains(raw, []byte(password)) {
			t.Errorf("audit file %s holds the DSN's password", p)
		}
		return nil
	})
	if err != nil || files == 0 {
		t.Errorf("read the audit log under %s: %d files, %v", filepath.Join(dir, "data", "audit"), files, err)
	}
	if strings.Contains(d.stderr.String(), password) {
		t.Error("the daemon's log holds the DSN's password")
	}
}
