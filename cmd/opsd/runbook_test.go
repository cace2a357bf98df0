package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// runbookCheck calls the command function directly, as run would once the
// command is in the table, and returns the exit code run would return.
func runbookCheck(t *testing.T, getenv map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{getenv: func(k string) string { return getenv[k] }, stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
	err := runRunbookCheck(context.Background(), e, args)
	code = exitCode(&errb, "runbook check", err)
	return code, out.String(), errb.String()
}

const runbookTestConfig = "../../internal/dr/runbook/testdata/opsd.yaml"

func TestRunbookCheckShipped(t *testing.T) {
	code, stdout, stderr := runbookCheck(t, nil, "--config", runbookTestConfig, "../../runbooks")
	if code != exitOK {
		t.Fatalf("exit = %d, want 0; stderr:\n%s", code, stderr)
	}
	want := `../../runbooks/failover-example.yaml: OK (runbook failover-example, 7 steps)
../../runbooks/files-restore-drill.yaml: OK (runbook files-restore-drill, 5 steps)
../../runbooks/orders-restore-drill.yaml: OK (runbook orders-restore-drill, 7 steps)
`
	if diff := cmp.Diff(want, stdout); diff != "" {
		t.Errorf("stdout (-want +got):\n%s", diff)
	}
}

func TestRunbookCheckWithoutConfig(t *testing.T) {
	code, stdout, stderr := runbookCheck(t, nil, "../../runbooks/orders-restore-drill.yaml")
	if code != exitOK {
		t.Fatalf("exit = %d, want 0; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "not checked") {
		t.Errorf("stdout = %q, want a note that references were not checked", stdout)
	}
	// OPSD_CONFIG stands in for --config.
	code, stdout, stderr = runbookCheck(t, map[string]string{"OPSD_CONFIG": runbookTestConfig}, "../../runbooks/orders-restore-drill.yaml")
	if code != exitOK || strings.Contains(stdout, "not checked") {
		t.Errorf("with OPSD_CONFIG: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}

func TestRunbookCheckProblems(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	writeFile(t, bad, `name: bad
steps:
  - id: restore
    uses: backup.restore
    with: {source: orders, to_postgres: "${{ params.dsn }}"}
  - id: run
    uses: exec
    with: {argv: [psql, "${{ params.dsn }}"]}
`)
	dup := filepath.Join(dir, "dup.yaml")
	writeFile(t, dup, "name: bad\nsteps: [{id: pause, uses: wait, with: {duration: 1s}}]\n")
	code, stdout, stderr := runbookCheck(t, nil, "--config", runbookTestConfig, bad, dup)
	if code != exitUsage {
		t.Fatalf("exit = %d, want 2; stderr:\n%s", code, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	want := bad + `:5:20: steps[0].with.source: unknown source "orders" (the config defines orders-db, uploads)
` + bad + `:5:46: steps[0].with.to_postgres: unknown parameter "dsn"
` + bad + `:8:26: steps[1].with.argv[1]: expressions are not allowed in exec argv; parameters reach the command only as environment variables OPSD_PARAM_<NAME>
` + dup + `:1:7: name: runbook "bad" is also defined in ` + bad + `
opsd runbook check: 4 problem(s) in runbooks
`
	if diff := cmp.Diff(want, stderr); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

func TestRunbookCheckUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no file", nil, exitUsage},
		{"unknown flag", []string{"--bogus", "x.yaml"}, exitUsage},
		{"missing file", []string{"does-not-exist.yaml"}, exitUsage},
		{"bad config", []string{"--config", "does-not-exist.yaml", "../../runbooks"}, exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, _, stderr := runbookCheck(t, nil, tt.args...); code != tt.want {
				t.Errorf("runbook check %v = exit %d, want %d; stderr:\n%s", tt.args, code, tt.want, stderr)
			}
		})
	}
}

func writeFile(t *testing.T, name, data string) {
	t.Helper()
	if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}
