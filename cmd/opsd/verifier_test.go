package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestIndependentVerifierAgainstDaemon runs the independent verifier of
// docs/AUDIT.md (docs/audit-verifier, only x/mod's tlog and note) against
// a log made by a real opsd, through its HTTP API.
func TestIndependentVerifierAgainstDaemon(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeConfig(t, dir, "")
	d := startDaemon(t, cfgPath, true)
	// Make some history: audited reloads.
	for range 20 {
		if code := d.api(t, "POST", "/api/v1/reload", testToken, nil); code != 200 {
			t.Fatalf("reload = %d", code)
		}
	}
	verifier := filepath.Join(t.TempDir(), "audit-verifier")
	if out, err := exec.Command("go", "build", "-o", verifier, "../../docs/audit-verifier").CombinedOutput(); err != nil {
		t.Fatalf("build the verifier: %v\n%s", err, out)
	}
	pub, err := os.ReadFile(filepath.Join(dir, "data", "keys", "audit.key.pub"))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	// Wait for a checkpoint that covers the reloads (interval 1s).
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		out, err = exec.Command(verifier, "-url", "http://"+d.addr, "-token", testToken, "-key", strings.TrimSpace(string(pub))).CombinedOutput()
		if err == nil && !strings.Contains(string(out), "OK: 1 entries") {
			break
		}
	}
	if err != nil || !strings.HasPrefix(string(out), "OK: ") {
		t.Fatalf("independent verifier = %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// The wrong key must fail.
	other := "opsd.test/daemon+00000000+AZsnXkTxMkn3M5YNvca5Jk7nQ8ZSytXLMXiuibzR6I4s"
	if out, err := exec.Command(verifier, "-url", "http://"+d.addr, "-token", testToken, "-key", other).CombinedOutput(); err == nil {
		t.Errorf("verifier with another key succeeded:\n%s", out)
	}
}
