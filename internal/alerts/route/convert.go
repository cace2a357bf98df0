package route

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	amconfig "github.com/prometheus/alertmanager/config"
	"github.com/prometheus/alertmanager/pkg/labels"
	"github.com/prometheus/common/model"

	"github.com/opsd-dev/opsd/internal/config"
)

// noReceiver is the root receiver used when the config has no alerts.route:
// alerts are then kept and listed, and notify nobody.
const noReceiver = "opsd-no-receiver"

// amRoute is Alertmanager's route in its own YAML (here JSON, a subset)
// spelling, so that amconfig.Load applies every default and check of
// Alertmanager itself.
type amRoute struct {
	Receiver       string     `json:"receiver,omitempty"`
	GroupBy        []string   `json:"group_by,omitempty"`
	GroupWait      string     `json:"group_wait,omitempty"`
	GroupInterval  string     `json:"group_interval,omitempty"`
	RepeatInterval string     `json:"repeat_interval,omitempty"`
	Matchers       []string   `json:"matchers,omitempty"`
	Continue       bool       `json:"continue,omitempty"`
	Routes         []*amRoute `json:"routes,omitempty"`
}

type amInhibitRule struct {
	SourceMatchers []string `json:"source_matchers,omitempty"`
	TargetMatchers []string `json:"target_matchers,omitempty"`
	Equal          []string `json:"equal,omitempty"`
}

type amReceiver struct {
	Name string `json:"name"`
}

type amConfigDoc struct {
	Route        *amRoute        `json:"route"`
	InhibitRules []amInhibitRule `json:"inhibit_rules,omitempty"`
	Receivers    []amReceiver    `json:"receivers"`
}

// ConfigError lists every problem found converting alerts config to
// Alertmanager's; each problem names its config path.
type ConfigError struct {
	Problems []string
}

func (e *ConfigError) Error() string {
	if len(e.Problems) == 1 {
		return "alerts config: " + e.Problems[0]
	}
	msg := fmt.Sprintf("alerts config: %d problems:", len(e.Problems))
	for _, p := range e.Problems {
		msg += "\n  " + p
	}
	return msg
}

// Convert translates opsd's alerts route, inhibit rules and receiver names
// into an Alertmanager configuration, validated by Alertmanager's own
// loader (config.Load), which also fills in its defaults (group_wait 30s,
// group_interval 5m, repeat_interval 4h at the root, inherited below).
// Problems are reported all at once, each with its config path, in a
// *ConfigError.
func Convert(a config.Alerts) (*amconfig.Config, error) {
	var problems []string
	bad := func(path, format string, args ...any) {
		problems = append(problems, path+": "+fmt.Sprintf(format, args...))
	}
	doc := amConfigDoc{Receivers: []amReceiver{}}
	for _, name := range slices.Sorted(maps.Keys(a.Receivers)) {
		doc.Receivers = append(doc.Receivers, amReceiver{Name: name})
	}
	if a.Route == nil {
		doc.Route = &amRoute{Receiver: noReceiver}
		doc.Receivers = append(doc.Receivers, amReceiver{Name: noReceiver})
	} else {
		if a.Route.Receiver == "" {
			bad("alerts.route.receiver", "the root route needs a receiver")
		}
		if len(a.Route.Matchers) > 0 {
			bad("alerts.route.matchers", "the root route must not have matchers: it receives every alert")
		}
		if a.Route.Continue {
			bad("alerts.route.continue", "the root route cannot continue: it has no siblings")
		}
		doc.Route = convertRoute("alerts.route", a.Route, a.Receivers, bad)
	}
	for i, ir := range a.InhibitRules {
		p := fmt.Sprintf("alerts.inhibit_rules[%d]", i)
		if len(ir.SourceMatchers) == 0 {
			bad(p+".source_matchers", "at least one matcher is required")
		}
		if len(ir.TargetMatchers) == 0 {
			bad(p+".target_matchers", "at least one matcher is required")
		}
		checkMatchers(p+".source_matchers", ir.SourceMatchers, bad)
		checkMatchers(p+".target_matchers", ir.TargetMatchers, bad)
		for j, l := range ir.Equal {
			if !model.UTF8Validation.IsValidLabelName(l) {
				bad(fmt.Sprintf("%s.equal[%d]", p, j), "invalid label name %q", l)
			}
		}
		doc.InhibitRules = append(doc.InhibitRules, amInhibitRule{
			SourceMatchers: ir.SourceMatchers,
			TargetMatchers: ir.TargetMatchers,
			Equal:          ir.Equal,
		})
	}
	if len(problems) > 0 {
		return nil, &ConfigError{Problems: problems}
	}
	// JSON is YAML; Alertmanager decodes it strictly.
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode alertmanager config: %w", err)
	}
	c, err := amconfig.Load(string(b))
	if err != nil {
		return nil, &ConfigError{Problems: []string{"alertmanager rejected the routing config: " + err.Error()}}
	}
	return c, nil
}

func convertRoute(p string, r *config.Route, receivers map[string]*config.Receiver, bad func(string, string, ...any)) *amRoute {
	out := &amRoute{
		Receiver: r.Receiver,
		GroupBy:  r.GroupBy,
		Matchers: r.Matchers,
		Continue: r.Continue,
	}
	if r.Receiver != "" && receivers[r.Receiver] == nil {
		bad(p+".receiver", "unknown receiver %q%s", r.Receiver, known(receivers))
	}
	seen := map[string]bool{}
	for i, g := range r.GroupBy {
		switch {
		case g == "...":
			if len(r.GroupBy) > 1 {
				bad(fmt.Sprintf("%s.group_by[%d]", p, i), `"..." groups by all labels and must be the only entry`)
			}
		case !model.UTF8Validation.IsValidLabelName(g):
			bad(fmt.Sprintf("%s.group_by[%d]", p, i), "invalid label name %q", g)
		case seen[g]:
			bad(fmt.Sprintf("%s.group_by[%d]", p, i), "duplicate label %q", g)
		}
		seen[g] = true
	}
	dur := func(key string, d time.Duration) string {
		switch {
		case d < 0:
			bad(p+"."+key, "must not be negative")
		case d > 0 && d < time.Millisecond:
			bad(p+"."+key, "must be at least 1ms")
		case d > 0:
			return model.Duration(d).String()
		}
		return ""
	}
	out.GroupWait = dur("group_wait", r.GroupWait)
	out.GroupInterval = dur("group_interval", r.GroupInterval)
	out.RepeatInterval = dur("repeat_interval", r.RepeatInterval)
	checkMatchers(p+".matchers", r.Matchers, bad)
	for i, child := range r.Routes {
		cp := fmt.Sprintf("%s.routes[%d]", p, i)
		if child == nil {
			bad(cp, "empty route")
			continue
		}
		out.Routes = append(out.Routes, convertRoute(cp, child, receivers, bad))
	}
	return out
}

func checkMatchers(p string, ms []string, bad func(string, string, ...any)) {
	for i, m := range ms {
		if _, err := labels.ParseMatcher(m); err != nil {
			bad(fmt.Sprintf("%s[%d]", p, i), "invalid matcher %q: %v", m, err)
		}
	}
}

func known(receivers map[string]*config.Receiver) string {
	if len(receivers) == 0 {
		return " (alerts.receivers is empty)"
	}
	return fmt.Sprintf(" (known: %v)", slices.Sorted(maps.Keys(receivers)))
}

// parseMatchers parses silence matchers, one per string, in Alertmanager's
// syntax (`name="value"`, `name=~"regex"`, `!=`, `!~`).
func parseMatchers(ms []string) (labels.Matchers, error) {
	if len(ms) == 0 {
		return nil, errors.New("at least one matcher is required")
	}
	out := make(labels.Matchers, 0, len(ms))
	for _, s := range ms {
		m, err := labels.ParseMatcher(s)
		if err != nil {
			return nil, fmt.Errorf("invalid matcher %q: %w", s, err)
		}
		out = append(out, m)
	}
	return out, nil
}
