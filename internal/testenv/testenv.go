// Package testenv is what tests do when a real component they need (a
// Debian package, a server, root for a tmpfs) is not on the machine: under
// CI=true, where .ci/run installs everything, the test fails; elsewhere it
// skips, loudly, naming what is missing.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// CI reports whether the tests run under CI (CI=true).
func CI() bool { return os.Getenv("CI") == "true" }

// Missing stops tb because something it needs is not here: a failure under
// CI=true, a loud skip elsewhere. The message says what is missing.
func Missing(tb testing.TB, format string, args ...any) {
	tb.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		tb.Fatalf("required under CI=true: %s", msg)
	}
	tb.Skipf("SKIPPING (not run): %s", msg)
}

// LookPath returns the path of command, or stops tb (Missing) naming the
// Debian package that provides it.
func LookPath(tb testing.TB, command, pkg string) string {
	tb.Helper()
	p, err := exec.LookPath(command)
	if err != nil {
		Missing(tb, "%s is not installed (Debian package %s): %v", command, pkg, err)
	}
	return p
}

// Commands stops tb (Missing) unless every command is on PATH.
func Commands(tb testing.TB, names ...string) {
	tb.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			Missing(tb, "the %s command is not installed: %v", n, err)
		}
	}
}
