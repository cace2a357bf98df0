package rules

import (
	_ "embed"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/opsd-dev/opsd/internal/config"
)

// BuiltinRules is the rule file opsd evaluates on its own signals. It is
// byte for byte deploy/prometheus/opsd-rules.yaml, the file users load into
// their own Prometheus (a test keeps the two identical), so the alerts a
// team sees from opsd and from Prometheus are the same alerts.
//
//go:embed builtin.rules.yaml
var BuiltinRules []byte

// BuiltinIdentifier is the file name the built-in groups carry in rule
// health (`rules.Group.File()`), since they come from no file on disk.
const BuiltinIdentifier = "builtin:opsd-rules.yaml"

// builtinAlerts maps each key of alerts.builtin (config.BuiltinAlerts) to
// the alerts of BuiltinRules it tunes. Several keys share one alert where
// the metric already covers both cases: a
// target that cannot be reached shows as opsd_backup_failures_total
// {reason="target"}, so BackupFailures fires with the target label.
var builtinAlerts = map[string][]string{
	"backup_stale":            {"BackupStale"},
	"backup_never_succeeded":  {"BackupNeverSucceeded"},
	"backup_failed":           {"BackupFailures"},
	"target_unreachable":      {"BackupFailures"},
	"verification_failed":     {"BackupNotVerified"},
	"compliance_below_policy": {"ComplianceBelowPolicy"},
	"drill_failed":            {"DrillFailed"},
	"rto_breached":            {"DrillFailed"},
	"rpo_breached":            {"DrillFailed"},
	"budget_threshold":        {"BudgetForecastOver"},
	"audit_unhealthy":         {"AuditCheckpointStale", "AuditAppendFailures"},
	"notifications_failing":   {"NotificationsFailing"},
}

// BuiltinAlertNames returns the alerts a key of alerts.builtin tunes, nil
// for an unknown key.
func BuiltinAlertNames(key string) []string {
	return slices.Clone(builtinAlerts[key])
}

// tuning is what alerts.builtin asks of one alert, merged over every key
// that names it.
type tuning struct {
	forDur   time.Duration
	severity string
	disabled bool
	labels   map[string]string
	keys     []string // the keys that set forDur / severity, for errors
}

// ParseBuiltin parses BuiltinRules and applies alerts.builtin: `for` and
// `severity` replace the rule's, `labels` are added, `disabled` drops the
// rule. Keys that share an alert must not contradict each other.
func ParseBuiltin(tune map[string]*config.Builtin) (*rulefmt.RuleGroups, error) {
	merged := map[string]*tuning{}
	keys := make([]string, 0, len(tune))
	for k := range tune {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b := tune[k]
		alerts, ok := builtinAlerts[k]
		if !ok {
			return nil, fmt.Errorf("alerts.builtin.%s: unknown built-in rule (known: %s)", k, strings.Join(config.BuiltinAlerts, ", "))
		}
		if b == nil {
			continue
		}
		for _, a := range alerts {
			t := merged[a]
			if t == nil {
				t = &tuning{labels: map[string]string{}}
				merged[a] = t
			}
			if b.For != 0 {
				if t.forDur != 0 && t.forDur != b.For {
					return nil, fmt.Errorf("alerts.builtin.%s: for %s contradicts %s, which tunes the same alert %s", k, b.For, strings.Join(t.keys, ", "), a)
				}
				t.forDur = b.For
			}
			if b.Severity != "" {
				if t.severity != "" && t.severity != b.Severity {
					return nil, fmt.Errorf("alerts.builtin.%s: severity %q contradicts %s, which tunes the same alert %s", k, b.Severity, strings.Join(t.keys, ", "), a)
				}
				t.severity = b.Severity
			}
			if b.Disabled {
				t.disabled = true
			}
			for n, v := range b.Labels {
				t.labels[n] = v
			}
			t.keys = append(t.keys, k)
		}
	}

	rgs, errs := rulefmt.Parse(BuiltinRules, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return nil, fmt.Errorf("built-in rules: %w", errs[0])
	}
	for gi := range rgs.Groups {
		g := &rgs.Groups[gi]
		kept := g.Rules[:0]
		for _, r := range g.Rules {
			t := merged[r.Alert]
			if t == nil {
				kept = append(kept, r)
				continue
			}
			if t.disabled {
				continue
			}
			if t.forDur != 0 {
				r.For = model.Duration(t.forDur)
			}
			if len(t.labels) > 0 || t.severity != "" {
				ls := make(map[string]string, len(r.Labels)+len(t.labels)+1)
				for n, v := range r.Labels {
					ls[n] = v
				}
				for n, v := range t.labels {
					ls[n] = v
				}
				if t.severity != "" {
					ls["severity"] = t.severity
				}
				r.Labels = ls
			}
			kept = append(kept, r)
		}
		g.Rules = kept
	}
	return rgs, nil
}
