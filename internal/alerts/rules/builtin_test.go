package rules

import (
	"bytes"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/model"

	"github.com/opsd-dev/opsd/internal/config"
)

func TestBuiltinRulesMatchDeployFile(t *testing.T) {
	deploy, err := os.ReadFile("../../../deploy/prometheus/opsd-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(BuiltinRules, deploy) {
		t.Errorf("internal/alerts/rules/builtin.rules.yaml differs from deploy/prometheus/opsd-rules.yaml; copy one over the other")
	}
}

func TestEveryBuiltinKeyTunesARule(t *testing.T) {
	rgs, err := ParseBuiltin(nil)
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, g := range rgs.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
		}
	}
	for _, k := range config.BuiltinAlerts {
		names := BuiltinAlertNames(k)
		if len(names) == 0 {
			t.Errorf("alerts.builtin.%s tunes no rule", k)
		}
		for _, n := range names {
			if !slices.Contains(alerts, n) {
				t.Errorf("alerts.builtin.%s names %s, which is not in builtin.rules.yaml", k, n)
			}
		}
	}
	if len(builtinAlerts) != len(config.BuiltinAlerts) {
		t.Errorf("builtinAlerts has %d keys, config.BuiltinAlerts %d", len(builtinAlerts), len(config.BuiltinAlerts))
	}
}

func TestParseBuiltinTuning(t *testing.T) {
	tests := []struct {
		name    string
		give    map[string]*config.Builtin
		alert   string
		wantFor time.Duration
		wantSev string
		gone    bool
		wantErr bool
	}{
		{name: "default", alert: "BackupStale", wantFor: 10 * time.Minute, wantSev: "critical"},
		{name: "for", give: map[string]*config.Builtin{"backup_stale": {For: 30 * time.Minute}}, alert: "BackupStale", wantFor: 30 * time.Minute, wantSev: "critical"},
		{name: "severity", give: map[string]*config.Builtin{"drill_failed": {Severity: "page"}}, alert: "DrillFailed", wantFor: time.Minute, wantSev: "page"},
		{name: "disabled", give: map[string]*config.Builtin{"notifications_failing": {Disabled: true}}, alert: "NotificationsFailing", gone: true},
		{name: "audit pair", give: map[string]*config.Builtin{"audit_unhealthy": {Disabled: true}}, alert: "AuditAppendFailures", gone: true},
		{name: "aliases agree", give: map[string]*config.Builtin{"drill_failed": {For: 5 * time.Minute}, "rto_breached": {For: 5 * time.Minute}}, alert: "DrillFailed", wantFor: 5 * time.Minute, wantSev: "critical"},
		{name: "aliases contradict", give: map[string]*config.Builtin{"drill_failed": {For: 5 * time.Minute}, "rto_breached": {For: 6 * time.Minute}}, wantErr: true},
		{name: "unknown key", give: map[string]*config.Builtin{"nope": {}}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rgs, err := ParseBuiltin(tt.give)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseBuiltin(%v) error = %v, want error %v", tt.name, err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			found := false
			for _, g := range rgs.Groups {
				for _, r := range g.Rules {
					if r.Alert != tt.alert {
						continue
					}
					found = true
					if r.For != model.Duration(tt.wantFor) {
						t.Errorf("%s for = %v, want %v", tt.alert, r.For, tt.wantFor)
					}
					if r.Labels["severity"] != tt.wantSev {
						t.Errorf("%s severity = %q, want %q", tt.alert, r.Labels["severity"], tt.wantSev)
					}
				}
			}
			if found == tt.gone {
				t.Errorf("%s present = %v, want %v", tt.alert, found, !tt.gone)
			}
		})
	}
}
