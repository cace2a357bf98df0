package main

import (
	"bytes"
	"context"
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
