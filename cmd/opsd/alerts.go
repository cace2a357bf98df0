package main

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opsd-dev/opsd/internal/alerts/rules"
)

// runAlertsTestRules is `opsd alerts test-rules FILE...`: promtool's rule
// unit-test format, run with Prometheus's rules manager. Exit 0 when every
// test passes, 1 when an expectation fails, 2 when a file cannot be run.
func runAlertsTestRules(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "alerts test-rules")
	if err := parseFlags(fs, args, 1<<16); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"usage: opsd alerts test-rules FILE..."}
	}
	if code := rules.RunUnitTests(ctx, e.stdout, fs.Args()...); code != exitOK {
		return exitError{code: code}
	}
	return nil
}

// alertView is an alert as GET /api/v1/alerts shows it.
type alertView struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    time.Time         `json:"startsAt"`
	State       string            `json:"state"`
	SilencedBy  []string          `json:"silencedBy"`
	InhibitedBy []string          `json:"inhibitedBy"`
	Receivers   []string          `json:"receivers"`
}

// runAlertsList is `opsd alerts list [--state S] [--label k=v]... [--json]`:
// firing alerts as routing sees them (active or suppressed) and the rules'
// pending ones.
func runAlertsList(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "alerts list")
	newClient := clientFlags(e, fs)
	state := fs.String("state", "", "only alerts in this state: active, suppressed or pending")
	var labels []string
	fs.Func("label", "only alerts with this label (name=value; repeatable)", func(v string) error {
		if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
			return fmt.Errorf("want name=value, got %q", v)
		}
		labels = append(labels, v)
		return nil
	})
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	switch *state {
	case "", "active", "suppressed", "pending":
	default:
		return usageError{fmt.Sprintf("--state %q: want active, suppressed or pending", *state)}
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *state != "" {
		q.Set("state", *state)
	}
	for _, l := range labels {
		q.Add("label", l)
	}
	path := "/api/v1/alerts"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var page struct {
		Items []json.RawMessage `json:"items"`
	}
	if err := c.do(ctx, "GET", path, nil, &page); err != nil {
		return err
	}
	if *asJSON {
		if page.Items == nil {
			page.Items = []json.RawMessage{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"items": page.Items})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ALERT\tSTATE\tSEVERITY\tSINCE\tLABELS\tSUMMARY")
	for _, raw := range page.Items {
		var a alertView
		if err := json.Unmarshal(raw, &a); err != nil {
			return fmt.Errorf("decode alert: %w", err)
		}
		st := a.State
		if len(a.SilencedBy) > 0 {
			st += " (silenced)"
		} else if len(a.InhibitedBy) > 0 {
			st += " (inhibited)"
		}
		var rest []string
		for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
			if k != "alertname" && k != "severity" {
				rest = append(rest, k+"="+a.Labels[k])
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Labels["alertname"], st, dash(a.Labels["severity"]),
			a.StartsAt.UTC().Format(time.RFC3339), dash(strings.Join(rest, ",")), dash(a.Annotations["summary"]))
	}
	return tw.Flush()
}
