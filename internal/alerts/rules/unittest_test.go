package rules

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// requirePromtool returns Debian's promtool; absent, the test fails under
// CI=true and skips loudly otherwise (SPEC §9).
func requirePromtool(t *testing.T) string {
	t.Helper()
	return testenv.LookPath(t, "promtool", "prometheus")
}

// corpus is every unit-test file the oracle compares.
func corpus(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/unit/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if filepath.Base(f) != "rules.yaml" {
			out = append(out, f)
		}
	}
	return append(out, "../../../deploy/prometheus/opsd-rules.test.yaml")
}

// promtoolFailedGroups runs `promtool test rules` on one file and returns
// whether it passed and the names of the failing groups it printed.
func promtoolFailedGroups(t *testing.T, promtool, file string) (bool, []string) {
	t.Helper()
	cmd := exec.Command(promtool, "test", "rules", filepath.Base(file))
	cmd.Dir = filepath.Dir(file)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("promtool test rules %s: %v", file, err)
	}
	return err == nil, failedNames(out.String())
}

var groupName = regexp.MustCompile(`(?m)^\s+name: (\S+),$`)

func failedNames(out string) []string {
	seen := map[string]bool{}
	var names []string
	for _, m := range groupName.FindAllStringSubmatch(out, -1) {
		if !seen[m[1]] {
			seen[m[1]] = true
			names = append(names, m[1])
		}
	}
	sort.Strings(names)
	return names
}

// TestUnitTestsMatchPromtool is the oracle: opsd's runner and Debian's
// promtool give every file of the corpus the same verdict, and name the
// same failing test groups.
func TestUnitTestsMatchPromtool(t *testing.T) {
	promtool := requirePromtool(t)
	files := corpus(t)
	if len(files) < 10 {
		t.Fatalf("corpus has %d files, want at least 10", len(files))
	}
	var failing int
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			wantPass, wantFailed := promtoolFailedGroups(t, promtool, f)
			r := TestRuleFile(context.Background(), f)
			if r.Err != nil {
				t.Fatalf("TestRuleFile(%s): %v", f, r.Err)
			}
			var gotFailed []string
			var msgs []string
			for _, g := range r.Groups {
				if len(g.Failures) > 0 && !strings.HasPrefix(g.Name, "unnamed#") {
					gotFailed = append(gotFailed, g.Name)
				}
				msgs = append(msgs, g.Failures...)
			}
			sort.Strings(gotFailed)
			if r.Passed() != wantPass {
				t.Errorf("TestRuleFile(%s).Passed() = %v, promtool says %v\n%s", f, r.Passed(), wantPass, strings.Join(msgs, "\n"))
			}
			if diff := cmp.Diff(wantFailed, gotFailed); diff != "" {
				t.Errorf("failing groups of %s differ from promtool's (-promtool +opsd):\n%s", f, diff)
			}
			if !wantPass {
				failing++
			}
		})
	}
	if failing == 0 {
		t.Errorf("no file of the corpus fails; the oracle would not notice a runner that passes everything")
	}
}

func TestRunUnitTestsExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("rule_files: [nope.yaml]\ntests: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	badExpr := filepath.Join(dir, "badexpr.yaml")
	if err := os.WriteFile(filepath.Join(dir, "r.yaml"), []byte("groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up ==\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(badExpr, []byte("rule_files: [r.yaml]\ntests:\n  - input_series: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unknown := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknown, []byte("rule_files: []\ntestz: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		files []string
		want  int
		out   string
	}{
		{"pass", []string{"testdata/unit/resolution.yaml"}, 0, "SUCCESS"},
		{"fail", []string{"testdata/unit/failing_on_purpose.yaml"}, 1, "name: wrong,"},
		{"missing rule file", []string{bad}, 2, "matches no file"},
		{"syntax error in rule", []string{badExpr}, 2, "r.yaml"},
		{"unknown key", []string{unknown}, 2, "testz"},
		{"no such file", []string{filepath.Join(dir, "absent.yaml")}, 2, "no such file"},
		{"fail and bad", []string{"testdata/unit/failing_on_purpose.yaml", bad}, 2, "FAILED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if got := RunUnitTests(context.Background(), &out, tt.files...); got != tt.want {
				t.Errorf("RunUnitTests(%v) = %d, want %d\n%s", tt.files, got, tt.want, out.String())
			}
			if !strings.Contains(out.String(), tt.out) {
				t.Errorf("RunUnitTests(%v) output lacks %q:\n%s", tt.files, tt.out, out.String())
			}
		})
	}
}
