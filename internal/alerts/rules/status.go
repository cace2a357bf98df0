package rules

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	promrules "github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/util/strutil"
)

// GroupStatus is a rule group as GET /api/v1/rules shows it, in the shape
// of Prometheus's own /api/v1/rules (so its tooling reads it), plus the
// query path the group runs on.
type GroupStatus struct {
	Name           string       `json:"name"`
	File           string       `json:"file"`
	Path           string       `json:"path"` // "local" or "remote"
	Interval       float64      `json:"interval"`
	Rules          []RuleStatus `json:"rules"`
	LastEvaluation time.Time    `json:"lastEvaluation"`
	EvaluationTime float64      `json:"evaluationTime"`
}

// RuleStatus is one rule with its health and, for alerting rules, its
// state and active alerts.
type RuleStatus struct {
	Type           string            `json:"type"` // "alerting" or "recording"
	Name           string            `json:"name"`
	Query          string            `json:"query"`
	Duration       float64           `json:"duration,omitempty"`      // for, seconds
	KeepFiringFor  float64           `json:"keepFiringFor,omitempty"` // seconds
	Labels         map[string]string `json:"labels"`
	Annotations    map[string]string `json:"annotations,omitempty"`
	State          string            `json:"state,omitempty"` // inactive | pending | firing
	Alerts         []AlertStatus     `json:"alerts,omitempty"`
	Health         string            `json:"health"` // ok | err | unknown
	LastError      string            `json:"lastError,omitempty"`
	LastEvaluation time.Time         `json:"lastEvaluation"`
	EvaluationTime float64           `json:"evaluationTime"`
}

// AlertStatus is one active (pending or firing) alert of a rule.
type AlertStatus struct {
	Labels          map[string]string `json:"labels"`
	Annotations     map[string]string `json:"annotations"`
	State           string            `json:"state"` // pending | firing
	ActiveAt        time.Time         `json:"activeAt"`
	FiredAt         *time.Time        `json:"firedAt,omitempty"`
	KeepFiringSince *time.Time        `json:"keepFiringSince,omitempty"`
	Value           string            `json:"value"`
}

// Status returns every rule group with its rules, sorted by path, file and
// group name; empty before Run.
func (e *Evaluator) Status() []GroupStatus {
	e.mu.Lock()
	managers := append([]*promrules.Manager(nil), e.managers...)
	paths := append([]string(nil), e.paths...)
	e.mu.Unlock()
	var out []GroupStatus
	for i, m := range managers {
		for _, g := range m.RuleGroups() {
			out = append(out, groupStatus(g, paths[i]))
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Path != b.Path {
			return a.Path < b.Path
		}
		if a.File != b.File {
			return a.File < b.File
		}
		return a.Name < b.Name
	})
	return out
}

// ActiveAlerts returns the pending and firing alerts of every alerting
// rule, the alertname label included.
func (e *Evaluator) ActiveAlerts() []AlertStatus {
	var out []AlertStatus
	for _, g := range e.Status() {
		for _, r := range g.Rules {
			out = append(out, r.Alerts...)
		}
	}
	return out
}

// Counts returns the number of active alerts per state (pending, firing).
func (e *Evaluator) Counts() map[string]int {
	n := map[string]int{promrules.StatePending.String(): 0, promrules.StateFiring.String(): 0}
	e.mu.Lock()
	managers := append([]*promrules.Manager(nil), e.managers...)
	e.mu.Unlock()
	for _, m := range managers {
		for _, r := range m.AlertingRules() {
			r.ForEachActiveAlert(func(a *promrules.Alert) { n[a.State.String()]++ })
		}
	}
	return n
}

func groupStatus(g *promrules.Group, path string) GroupStatus {
	gs := GroupStatus{
		Name: g.Name(), File: g.File(), Path: path, Interval: g.Interval().Seconds(),
		LastEvaluation: g.GetLastEvaluation(), EvaluationTime: g.GetEvaluationTime().Seconds(),
		Rules: []RuleStatus{},
	}
	if gs.File == BuiltinIdentifier {
		gs.File = "builtin"
	}
	for _, r := range g.Rules() {
		rs := RuleStatus{
			Name: r.Name(), Query: r.Query().String(), Labels: r.Labels().Map(),
			Health: string(r.Health()), LastEvaluation: r.GetEvaluationTimestamp(),
			EvaluationTime: r.GetEvaluationDuration().Seconds(),
		}
		if err := r.LastError(); err != nil {
			rs.LastError = err.Error()
		}
		switch ar := r.(type) {
		case *promrules.AlertingRule:
			rs.Type = "alerting"
			rs.Duration = ar.HoldDuration().Seconds()
			rs.KeepFiringFor = ar.KeepFiringFor().Seconds()
			rs.Annotations = ar.Annotations().Map()
			rs.State = ar.State().String()
			for _, a := range ar.ActiveAlerts() {
				rs.Alerts = append(rs.Alerts, alertStatus(a))
			}
		default:
			rs.Type = "recording"
		}
		gs.Rules = append(gs.Rules, rs)
	}
	return gs
}

func alertStatus(a *promrules.Alert) AlertStatus {
	as := AlertStatus{
		Labels: a.Labels.Map(), Annotations: a.Annotations.Map(), State: a.State.String(),
		ActiveAt: a.ActiveAt, Value: fmt.Sprint(a.Value),
	}
	if !a.FiredAt.IsZero() {
		t := a.FiredAt
		as.FiredAt = &t
	}
	if !a.KeepFiringSince.IsZero() {
		t := a.KeepFiringSince
		as.KeepFiringSince = &t
	}
	return as
}

// SentAlert is an alert as the rules manager sends it to routing: the
// mapping of Prometheus's own sendAlerts (cmd/prometheus): EndsAt is the
// resolution time, or ValidUntil while it fires, so a receiver that stops
// hearing about it resolves it by itself.
type SentAlert struct {
	Labels       map[string]string
	Annotations  map[string]string
	StartsAt     time.Time
	EndsAt       time.Time
	GeneratorURL string
}

// NotifyTo adapts a function receiving SentAlerts to the rules manager's
// NotifyFunc, as Prometheus adapts its notifier. Each alert's generator URL
// links to where its expression can be looked at: the remote datasource's
// graph page for the remote path, opsd's rule list for the local path.
func NotifyTo(externalURL string, send func(ctx context.Context, alerts []SentAlert)) promrules.NotifyFunc {
	return func(ctx context.Context, expr string, alerts ...*promrules.Alert) {
		if len(alerts) == 0 {
			return
		}
		gen := generatorURL(ctx, externalURL, expr)
		out := make([]SentAlert, 0, len(alerts))
		for _, a := range alerts {
			s := SentAlert{
				Labels: a.Labels.Map(), Annotations: a.Annotations.Map(), StartsAt: a.FiredAt,
				GeneratorURL: gen,
			}
			if !a.ResolvedAt.IsZero() {
				s.EndsAt = a.ResolvedAt
			} else {
				s.EndsAt = a.ValidUntil
			}
			out = append(out, s)
		}
		send(ctx, out)
	}
}

// remoteBaseKey carries the remote datasource's URL in the remote
// manager's context, for generator URLs.
type remoteBaseKey struct{}

func generatorURL(ctx context.Context, externalURL, expr string) string {
	if base, ok := ctx.Value(remoteBaseKey{}).(string); ok && base != "" {
		u, err := url.Parse(base)
		if err != nil {
			return ""
		}
		u.User = nil // never hand credentials to a notification
		return strings.TrimSuffix(u.String(), "/") + strutil.TableLinkForExpression(expr)
	}
	if externalURL == "" {
		return ""
	}
	return strings.TrimSuffix(externalURL, "/") + "/api/v1/rules"
}
