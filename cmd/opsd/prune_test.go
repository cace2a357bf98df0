package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/service"
)

// TestPruneHonoursObjectLock: on Versity Gateway with Object Lock, the
// backups retention would drop are kept while their copies are locked —
// prune neither deletes nor tries to delete them and says when they go —
// while a source without locks is pruned after each backup.
func TestPruneHonoursObjectLock(t *testing.T) {
	v, bucket := versityForDaemon(t, true)
	dir := t.TempDir()
	cfgPath := faultConfig(t, dir, fmt.Sprintf(`  a:     {type: local, path: ./target-a}
  b:     {type: local, path: ./target-b}
  vault: {type: s3, bucket: %s, endpoint: %q, path_style: true, region: us-east-1, object_lock: {mode: GOVERNANCE, days: 1}}
`, bucket, v.Endpoint), `  locked:
    type: files
    paths: [./src]
    schedule: "@daily"
    targets: [a, vault]
    retention: {keep_last: 1}
    encryption: {age_identity_file: ./keys/age.key, generate: true}
  plain:
    type: files
    paths: [./src]
    schedule: "@daily"
    targets: [a, b]
    retention: {keep_last: 1}
    encryption: {age_identity_file: ./keys/age.key, generate: true}
`)
	d := startDaemon(t, cfgPath, true)
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	var ids = map[string][]string{}
	for range 3 {
		for _, src := range []string{"locked", "plain"} {
			code, out, errOut := cli(t, env, "backup", "run", src, "--wait", "--json")
			if code != 0 {
				t.Fatalf("backup run %s = %d %s %s", src, code, out, errOut)
			}
			var b backupView
			if err := json.Unmarshal([]byte(out), &b); err != nil {
				t.Fatal(err)
			}
			ids[src] = append(ids[src], b.ID)
		}
		time.Sleep(1100 * time.Millisecond)
	}
	code, out, errOut := cli(t, env, "backup", "prune", "--dry-run", "--json")
	if code != 0 {
		t.Fatalf("prune --dry-run = %d %s %s", code, out, errOut)
	}
	var res service.PruneResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	got := map[string]service.PruneDecision{}
	for _, dd := range res.Items {
		got[dd.BackupID] = dd
	}
	for i, id := range ids["locked"] {
		dd, ok := got[id]
		switch {
		case !ok:
			t.Errorf("locked backup %d (%s) missing from prune: it was deleted", i, id)
		case !dd.Keep:
			t.Errorf("locked backup %d = %+v, want kept", i, dd)
		case i < 2 && (dd.DeletableAt == nil || !strings.Contains(strings.Join(dd.Reasons, ";"), "object lock until")):
			t.Errorf("locked backup %d = %+v, want kept by the object lock with its deletable time", i, dd)
		}
	}
	code, out, errOut = cli(t, env, "backup", "prune")
	if code != 0 || !strings.Contains(out, "object lock until") {
		t.Errorf("prune = %d\n%s\n%s", code, out, errOut)
	}
	t.Logf("opsd backup prune:\n%s", out)
	var list struct {
		Items []backupView `json:"items"`
	}
	d.api(t, "GET", "/api/v1/backups?source=plain", testToken, &list)
	if len(list.Items) != 1 || list.Items[0].ID != ids["plain"][2] {
		t.Errorf("plain backups after prune = %+v, want only the newest %s", list.Items, ids["plain"][2])
	}
	// Nothing of the locked source was deleted, or even attempted.
	code, tail, errOut := cli(t, env, "audit", "tail", "-n", "1000")
	if code != 0 {
		t.Fatalf("audit tail = %d %s", code, errOut)
	}
	for _, line := range strings.Split(tail, "\n") {
		if strings.Contains(line, "backup.delete") {
			for _, id := range ids["locked"] {
				if strings.Contains(line, id) {
					t.Errorf("prune tried to delete a locked backup: %s", line)
				}
			}
		}
	}
	if !strings.Contains(tail, "backup.delete") {
		t.Error("no backup.delete in the audit log: the plain source was not pruned")
	}
}
