package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// TestDocExamplesRun runs the shell examples of README.md and docs/API.md
// that talk to the quickstart daemon, against a real daemon started from a
// copy of examples/quickstart.yaml.
func TestDocExamplesRun(t *testing.T) {
	testenv.LookPath(t, "curl", "curl") // the doc examples use it
	var blocks []string
	fence := regexp.MustCompile("(?s)```sh\n(.*?)```")
	for _, doc := range []string{"../../README.md", "../../docs/API.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range fence.FindAllStringSubmatch(string(b), -1) {
			if strings.Contains(m[1], "opsd-quickstart-token") && strings.Contains(m[1], "127.0.0.1:8470") {
				blocks = append(blocks, m[1])
			}
		}
	}
	if len(blocks) < 2 {
		t.Fatalf("found %d runnable examples, want the README quickstart and the API examples", len(blocks))
	}

	// A copy of examples/ on a free port, so the test never meets a
	// daemon a developer is running.
	root := t.TempDir()
	if out, err := exec.Command("cp", "-r", "../../examples", root).CombinedOutput(); err != nil {
		t.Fatalf("copy examples: %v %s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfgPath := filepath.Join(root, "examples", "quickstart.yaml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), "127.0.0.1:8470") {
		t.Fatal("quickstart.yaml no longer listens on 127.0.0.1:8470 as the docs say")
	}
	if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(cfg), "127.0.0.1:8470", addr, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, true)

	bin := opsdBinary(t)
	for i, block := range blocks {
		script := strings.NewReplacer("127.0.0.1:8470", d.addr, "./bin/opsd", bin).Replace(block)
		cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "OPSD_ADDR=http://"+d.addr)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("example %d failed: %v\n--- script\n%s--- output\n%s", i, err, script, out)
		}
	}
}
