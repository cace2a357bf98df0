// Package deploy_test checks the deployment files under deploy/: the systemd
// unit, the Dockerfile, the Kubernetes manifests and the Prometheus rules. The
// files are data, not code, so these tests are what keeps them honest: each
// property the files promise (hardening, probes, non-root, rule metadata) is
// parsed out and asserted, and the real tools (systemd-analyze, promtool) run
// where they are installed.
package deploy_test

import (
	"os"
	"os/exec"
	"testing"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// drainGraceSeconds is opsd's default SIGTERM drain grace period. Every stop
// timeout in deploy/ must exceed it, or the supervisor kills a draining daemon.
const drainGraceSeconds = 30

// opsdPort is the port opsd listens on in every deployment.
const opsdPort = 8470

// readFile returns the content of a file relative to deploy/.
func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	return string(b)
}

// requireTool returns the path of a tool the test needs. SPEC §9: a missing
// component fails the test under CI=true and skips it loudly otherwise.
func requireTool(t *testing.T, name, install string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	testenv.Missing(t, "%s not found in PATH: install it (%s)", name, install)
	return ""
}
