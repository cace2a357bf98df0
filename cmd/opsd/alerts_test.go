package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAlertsTestRules(t *testing.T) {
	const unit = "../../internal/alerts/rules/testdata/unit/"
	tests := []struct {
		name string
		args []string
		want int
		out  string
	}{
		{"pass", []string{unit + "resolution.yaml", unit + "absent.yaml"}, exitOK, "SUCCESS"},
		{"deploy rules", []string{"../../deploy/prometheus/opsd-rules.test.yaml"}, exitOK, "SUCCESS"},
		{"fail", []string{unit + "failing_on_purpose.yaml"}, exitFailure, "FAILED"},
		{"missing file", []string{unit + "nope.yaml"}, exitUsage, "no such file"},
		{"no args", nil, exitUsage, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			e := &env{getenv: func(string) string { return "" }, stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
			err := runAlertsTestRules(context.Background(), e, tt.args)
			if got := exitCode(&stderr, "alerts test-rules", err); got != tt.want {
				t.Errorf("runAlertsTestRules(%v) exit = %d, want %d\nstdout:\n%s\nstderr:\n%s", tt.args, got, tt.want, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.out) {
				t.Errorf("runAlertsTestRules(%v) stdout lacks %q:\n%s", tt.args, tt.out, stdout.String())
			}
		})
	}
}

// A rule file with a PromQL syntax error, an unknown template function and a
// repeated group name: config check and test-rules report all three, each
// with file and line, and exit non-zero.
func TestBadRuleFileReported(t *testing.T) {
	dir := t.TempDir()
	rules := `groups:
  - name: a
    rules:
      - alert: Bad
        expr: rate(foo[5m] > 0
      - alert: BadTmpl
        expr: up == 0
        annotations: {summary: "{{ nosuchfunc $value }}"}
  - name: a
    rules:
      - alert: Dup
        expr: up
`
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("rules.yaml", rules)
	cfg := write("opsd.yaml", "data_dir: ./data\nalerts:\n  rule_files: [./rules.yaml]\n")
	test := write("test.yaml", "rule_files: [rules.yaml]\ntests:\n  - interval: 1m\n    input_series: []\n")
	want := []string{
		`rules.yaml: 5:15: group "a", rule 1, "Bad": could not parse expression`,
		`rules.yaml: 6:9: group "a", rule 2, "BadTmpl": annotation "summary": template: __alert_BadTmpl:1: function "nosuchfunc" not defined`,
		`rules.yaml: 9:11: group name "a" is repeated in the same file (first at line 2)`,
	}
	for _, args := range [][]string{{"config", "check", "--config", cfg}, {"alerts", "test-rules", test}} {
		code, out, errOut := cli(t, nil, args...)
		if code == 0 {
			t.Errorf("%v = 0, want failure", args)
		}
		for _, w := range want {
			if !strings.Contains(out+errOut, w) {
				t.Errorf("%v output lacks %q:\n%s%s", args, w, out, errOut)
			}
		}
	}
}
