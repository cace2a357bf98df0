package deploy_test

import (
	"bytes"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

const (
	rulesPath     = "prometheus/opsd-rules.yaml"
	rulesTestPath = "prometheus/opsd-rules.test.yaml"
)

// ruleFile is the Prometheus rule-file format (SPEC §7), decoded strictly.
type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Alert         string            `yaml:"alert"`
			Record        string            `yaml:"record"`
			Expr          string            `yaml:"expr"`
			For           string            `yaml:"for"`
			KeepFiringFor string            `yaml:"keep_firing_for"`
			Labels        map[string]string `yaml:"labels"`
			Annotations   map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// promDuration is Prometheus' duration syntax, e.g. 5m, 1h30m, 2d.
var promDuration = regexp.MustCompile(`^(\d+(ms|s|m|h|d|w|y))+$`)

// metricName finds opsd metric names in an expression.
var metricName = regexp.MustCompile(`\bopsd_[a-z0-9_]+`)

func TestPrometheusRules(t *testing.T) {
	var rf ruleFile
	if err := decodeStrict([]byte(readFile(t, rulesPath)), &rf); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}

	// Each alert the file promises, with the metric it must watch.
	wantAlerts := map[string]string{
		"OpsdDown":              "up",
		"BackupStale":           "opsd_backup_last_success_timestamp_seconds",
		"BackupNeverSucceeded":  "opsd_backup_last_success_timestamp_seconds",
		"BackupFailures":        "opsd_backup_failures_total",
		"BackupNotVerified":     "opsd_backup_last_verified_timestamp_seconds",
		"ComplianceBelowPolicy": "opsd_backup_compliance_level",
		"DrillFailed":           "opsd_drill_last_success",
		"NotificationsFailing":  "opsd_notifications_total",
		"BudgetForecastOver":    "opsd_cost_forecast",
		"AuditCheckpointStale":  "opsd_audit_checkpoint_age_seconds",
		"AuditAppendFailures":   "opsd_audit_append_failures_total",
	}
	// The metrics opsd exports: SPEC §8, plus the audit append failure
	// counter and the compliance level each source's policy requires,
	// which these rules rely on.
	knownMetrics := []string{
		"opsd_build_info", "opsd_backup_last_success_timestamp_seconds",
		"opsd_backup_last_verified_timestamp_seconds", "opsd_backup_duration_seconds",
		"opsd_backup_bytes_total", "opsd_backup_failures_total", "opsd_backup_compliance_level",
		"opsd_backup_compliance_required",
		"opsd_drill_last_rto_seconds", "opsd_drill_last_rpo_seconds", "opsd_drill_last_success",
		"opsd_alerts", "opsd_notifications_total", "opsd_cost_month_to_date", "opsd_cost_forecast",
		"opsd_budget_limit", "opsd_audit_tree_size", "opsd_audit_append_seconds",
		"opsd_audit_checkpoint_age_seconds", "opsd_audit_append_failures_total",
	}

	var got []string
	for _, g := range rf.Groups {
		if g.Name == "" {
			t.Errorf("a group has no name")
		}
		for _, r := range g.Rules {
			if r.Alert == "" {
				t.Errorf("group %s: a rule has no alert name (recording rules do not belong here)", g.Name)
				continue
			}
			got = append(got, r.Alert)
			if strings.TrimSpace(r.Expr) == "" {
				t.Errorf("%s: no expr", r.Alert)
			}
			if !promDuration.MatchString(r.For) {
				t.Errorf("%s: for = %q, want a duration", r.Alert, r.For)
			}
			if s := r.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
				t.Errorf("%s: severity = %q, want critical, warning or info", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", r.Alert, a)
				}
			}
			wantURL := "https://github.com/opsd-dev/opsd/blob/main/docs/alerts.md#" + strings.ToLower(r.Alert)
			if u := r.Annotations["runbook_url"]; u != wantURL {
				t.Errorf("%s: runbook_url = %q, want %q", r.Alert, u, wantURL)
			}
			if m, ok := wantAlerts[r.Alert]; ok && !regexp.MustCompile(`\b`+m+`\b`).MatchString(r.Expr) {
				t.Errorf("%s: expr %q does not use %s", r.Alert, r.Expr, m)
			}
			for _, m := range metricName.FindAllString(r.Expr, -1) {
				if !slices.Contains(knownMetrics, m) {
					t.Errorf("%s: expr uses %s, which opsd does not export", r.Alert, m)
				}
			}
		}
	}
	var want []string
	for a := range wantAlerts {
		want = append(want, a)
	}
	slices.Sort(want)
	slices.Sort(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("alerts in %s mismatch (-want +got):\n%s", rulesPath, diff)
	}
}

// TestPromtool runs Debian's promtool: `check rules` validates the PromQL and
// templates as Prometheus will load them, `test rules` runs the unit tests in
// opsd-rules.test.yaml, which show every alert firing when it should and
// staying quiet when it should not.
func TestPromtool(t *testing.T) {
	promtool := requireTool(t, "promtool", "apt-get install prometheus")
	for _, args := range [][]string{
		{"check", "rules", rulesPath},
		{"test", "rules", rulesTestPath},
	} {
		cmd := exec.Command(promtool, args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
	}

	// Every alert has a unit test, so a new rule cannot skip one.
	var tf struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(readFile(t, rulesTestPath)), &tf); err != nil {
		t.Fatalf("%s: %v", rulesTestPath, err)
	}
	tested := map[string]bool{}
	for _, tc := range tf.Tests {
		for _, a := range tc.AlertRuleTest {
			tested[a.Alertname] = true
		}
	}
	var rf ruleFile
	if err := yaml.Unmarshal([]byte(readFile(t, rulesPath)), &rf); err != nil {
		t.Fatal(err)
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if !tested[r.Alert] {
				t.Errorf("alert %s has no test in %s", r.Alert, rulesTestPath)
			}
		}
	}
}
