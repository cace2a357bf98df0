package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupVerifyThroughDaemon: every backup is checksum-verified right
// after it is made; `backup verify` re-reads the copies and restores one,
// and a flipped byte in a stored copy fails the checksum level (exit 1).
func TestBackupVerifyThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeBackupConfig(t, dir, "@daily")
	d := startDaemon(t, cfgPath, true)
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}
	code, out, errOut := cli(t, env, "backup", "run", "demo", "--wait", "--json")
	if code != 0 {
		t.Fatalf("backup run = %d %s %s", code, out, errOut)
	}
	var b backupView
	if err := json.Unmarshal([]byte(out), &b); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = cli(t, env, "backup", "verify", b.ID, "--wait")
	if code != 0 || strings.Count(out, " ok ") != 2 {
		t.Fatalf("backup verify = %d\n%s\n%s; want two ok rows", code, out, errOut)
	}
	code, out, errOut = cli(t, env, "backup", "verify", b.ID, "--level", "restore", "--wait", "--json")
	var vs []struct {
		Target string `json:"target"`
		OK     bool   `json:"ok"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &vs) != nil || len(vs) != 1 || !vs[0].OK {
		t.Fatalf("backup verify --level restore = %d %s %s", code, out, errOut)
	}

	var data string
	_ = filepath.Walk(filepath.Join(dir, "target-a", "demo", b.ID), func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), "data.") {
			data = p
		}
		return nil
	})
	raw, err := os.ReadFile(data)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)-20] ^= 0xff
	if err := os.WriteFile(data, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = cli(t, env, "backup", "verify", b.ID, "--target", "a", "--wait")
	if code != 1 || !strings.Contains(out, "FAILED") {
		t.Fatalf("verify of the corrupted copy = %d\n%s\n%s; want exit 1 with FAILED", code, out, errOut)
	}
	var got backupView
	d.api(t, "GET", "/api/v1/backups/"+b.ID, testToken, &got)
	// after the backup (2) + checksum (2) + restore (1) + the failed one (1)
	if n := len(got.Verifications); n != 6 {
		t.Errorf("recorded verifications = %d, want 6: %+v", n, got.Verifications)
	}
	code, _, errOut = cli(t, env, "backup", "verify", b.ID, "--target", "nope")
	if code != 1 || !strings.Contains(errOut, "no complete copy") {
		t.Errorf("verify of a copy that is not there = %d %s, want a clear refusal", code, errOut)
	}
}
