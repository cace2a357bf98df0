package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/signing"
)

// cli runs the CLI in process and returns its exit code and output.
func cli(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string { return env[k] }
	code = run(context.Background(), args, getenv, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no command", nil, exitUsage},
		{"help", []string{"help"}, exitOK},
		{"unknown command", []string{"frobnicate"}, exitUsage},
		{"unknown flag", []string{"version", "--bogus"}, exitUsage},
		{"stray argument", []string{"version", "extra"}, exitUsage},
		{"keygen without --out", []string{"keygen"}, exitUsage},
		{"version", []string{"version"}, exitOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, _, stderr := cli(t, nil, tt.args...); code != tt.want {
				t.Errorf("opsd %v = exit %d, want %d; stderr:\n%s", tt.args, code, tt.want, stderr)
			}
		})
	}
}

func TestVersionJSON(t *testing.T) {
	code, out, _ := cli(t, nil, "version", "--json")
	if code != 0 || !strings.Contains(out, `"go_version":"go1.`) {
		t.Errorf("version --json = %d %q", code, out)
	}
}

// TestConfigCheckBroken checks that every problem of a broken config is
// printed as file:line:col and the exit status is 2.
func TestConfigCheckBroken(t *testing.T) {
	code, stdout, stderr := cli(t, nil, "config", "check", "--config", "testdata/broken.yaml")
	if code != exitUsage {
		t.Fatalf("exit = %d, want 2; stderr:\n%s", code, stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
	want := `testdata/broken.yaml:4:3: unknown key "lisen" in server (did you mean "listen"?)
testdata/broken.yaml:6:24: server.tokens[0].role: "superuser" is not one of viewer, operator, admin
testdata/broken.yaml:6:43: server.tokens[0].sha256: want 64 hex digits (the SHA-256 of the token, not the token)
testdata/broken.yaml:12:10: sources.orders-db.dsn: environment variable ORDERS_DSN is not set
testdata/broken.yaml:13:15: sources.orders-db.schedule: invalid schedule "61 * * * *": end of range (61) above maximum (59): 61
testdata/broken.yaml:14:22: sources.orders-db.targets[1]: unknown target "offsite-s3"
opsd config check: 6 problem(s) in the configuration
`
	if diff := cmp.Diff(want, stderr); diff != "" {
		t.Errorf("config check output (-want +got):\n%s", diff)
	}
	if strings.Contains(stderr, "nothex") {
		t.Errorf("stderr echoes the token hash value:\n%s", stderr)
	}
}

func TestConfigCheckGood(t *testing.T) {
	code, stdout, stderr := cli(t, nil, "config", "check", "--config", "../../examples/quickstart.yaml")
	if code != 0 {
		t.Fatalf("exit = %d; stderr:\n%s", code, stderr)
	}
	if !strings.Contains(stdout, "OK") {
		t.Errorf("stdout = %q", stdout)
	}
	// OPSD_CONFIG is the fallback for --config.
	if code, _, stderr := cli(t, map[string]string{"OPSD_CONFIG": "../../examples/quickstart.yaml"}, "config", "check"); code != 0 {
		t.Errorf("with OPSD_CONFIG: exit %d; %s", code, stderr)
	}
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "audit.key")
	code, stdout, stderr := cli(t, nil, "keygen", "--out", key, "--name", "opsd.example/db-1", "--age", filepath.Join(dir, "age.key"))
	if code != 0 {
		t.Fatalf("keygen = %d; %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "opsd.example/db-1+") || !strings.HasPrefix(lines[1], "age1") {
		t.Fatalf("stdout = %q, want the verifier key and the age recipient", stdout)
	}
	k, err := signing.Load(key)
	if err != nil {
		t.Fatalf("load generated key: %v", err)
	}
	if diff := cmp.Diff(lines[0], k.VerifierKey); diff != "" {
		t.Errorf("printed verifier key differs from the key's (-printed +loaded):\n%s", diff)
	}
	for _, f := range []string{key, key + ".hmac", filepath.Join(dir, "age.key")} {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode = %v, want 0600", f, st.Mode().Perm())
		}
	}
	// A second keygen must not replace the key.
	if code, _, stderr := cli(t, nil, "keygen", "--out", key, "--name", "x"); code != exitFailure || !strings.Contains(stderr, "already exists") {
		t.Errorf("keygen over an existing key = %d %q, want 1 and 'already exists'", code, stderr)
	}
	if code, _, _ := cli(t, nil, "keygen", "--out", filepath.Join(dir, "k2"), "--name", "bad name"); code != exitUsage {
		t.Errorf("keygen with a bad name = %d, want 2", code)
	}
}
