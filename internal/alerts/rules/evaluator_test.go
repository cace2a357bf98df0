package rules

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	promrules "github.com/prometheus/prometheus/rules"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func writeRules(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

type notifications struct {
	mu     sync.Mutex
	alerts map[string]*promrules.Alert
}

func (n *notifications) notify(_ context.Context, _ string, as ...*promrules.Alert) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, a := range as {
		n.alerts[a.Labels.Get("alertname")+"/"+a.Labels.Get("source")] = a
	}
}

func (n *notifications) get(key string) (promrules.Alert, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	a, ok := n.alerts[key]
	if !ok {
		return promrules.Alert{}, false
	}
	return *a, true
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLocalPath runs the whole local path: opsd's registry is collected
// into the store, the built-in and a user rule fire on it and reach the
// notify callback with templated annotations, and resolve when the gauge
// series disappears (staleness marker).
func TestLocalPath(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsd_drill_last_success"}, []string{"runbook"})
	reg.MustRegister(g)
	g.WithLabelValues("orders").Set(0)
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "opsd_test_seconds", Buckets: []float64{1, 2}})
	reg.MustRegister(h)
	h.Observe(1.5)

	rf := writeRules(t, `groups:
  - name: user
    rules:
      - alert: Slow
        expr: histogram_quantile(0.5, sum by (le) (opsd_test_seconds_bucket)) > 1
        annotations:
          summary: "p50 {{ $value }} at {{ $externalURL }}"
`)
	n := &notifications{alerts: map[string]*promrules.Alert{}}
	e, err := New(Options{
		Dir:             t.TempDir(),
		Gatherer:        reg,
		CollectInterval: 20 * time.Millisecond,
		EvalInterval:    100 * time.Millisecond,
		Builtin:         nil,
		RuleFiles:       []string{rf},
		ExternalURL:     "https://opsd.example",
		Notify:          n.notify,
		TargetLabels:    map[string]string{"job": "opsd", "instance": "h1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	// DrillFailed has for: 1m; pending is what a fast test can see.
	waitFor(t, "DrillFailed pending", func() bool {
		for _, gr := range e.Groups() {
			for _, ar := range gr.AlertingRules() {
				if ar.Name() == "DrillFailed" && ar.State() == promrules.StatePending {
					return true
				}
			}
		}
		return false
	})
	waitFor(t, "Slow firing", func() bool { _, ok := n.get("Slow/"); return ok })
	a, _ := n.get("Slow/")
	if got, want := a.Annotations.Get("summary"), "p50 1.5 at https://opsd.example"; got != want {
		t.Errorf("Slow summary = %q, want %q", got, want)
	}
	if got := a.Labels.Get("instance"); got != "" {
		t.Errorf("Slow instance = %q, want none (aggregated away)", got)
	}

	// The gauge disappears: the staleness marker resolves nothing here
	// (DrillFailed was pending), but its pending state must go at once.
	g.Reset()
	waitFor(t, "DrillFailed inactive after the series went stale", func() bool {
		for _, gr := range e.Groups() {
			for _, ar := range gr.AlertingRules() {
				if ar.Name() == "DrillFailed" {
					return ar.State() == promrules.StateInactive
				}
			}
		}
		return false
	})
}

func TestForStateSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	rf := writeRules(t, `groups:
  - name: g
    rules:
      - alert: Held
        expr: vector(1)
        for: 1h
`)
	start := func() (*Evaluator, context.CancelFunc, chan error) {
		e, err := New(Options{Dir: dir, DisableBuiltin: true, RuleFiles: []string{rf}, EvalInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- e.Run(ctx) }()
		return e, cancel, done
	}
	activeAt := func(e *Evaluator) time.Time {
		for _, gr := range e.Groups() {
			for _, ar := range gr.AlertingRules() {
				for _, a := range ar.ActiveAlerts() {
					return a.ActiveAt
				}
			}
		}
		return time.Time{}
	}
	e, cancel, done := start()
	waitFor(t, "Held pending", func() bool { return !activeAt(e).IsZero() })
	first := activeAt(e)
	time.Sleep(time.Second) // restore (after the 2nd evaluation), then ALERTS_FOR_STATE samples
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	restarted := time.Now()
	e2, cancel2, done2 := start()
	defer func() {
		cancel2()
		<-done2
	}()
	// Prometheus restores after the group's second evaluation.
	waitFor(t, "Held restored", func() bool { a := activeAt(e2); return !a.IsZero() && a.Before(restarted) })
	// Restored from ALERTS_FOR_STATE as Prometheus does: the time spent
	// pending before the restart counts (ActiveAt = now - that time, the
	// downtime excluded). Without restore ActiveAt would be the first
	// evaluation after the restart.
	if got := activeAt(e2); got.Before(first) {
		t.Errorf("ActiveAt after restart = %v, before the first run's %v", got, first)
	}
}

func TestRemotePath(t *testing.T) {
	var mu sync.Mutex
	var gotAuth, gotQuery string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		gotAuth, gotQuery = r.Header.Get("Authorization"), r.Form.Get("query")
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if strings.Contains(r.Form.Get("query"), "broken") {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"status":"error","errorType":"bad_data","error":"parse error: unexpected end"}`))
			return
		}
		_, _ = w.Write([]byte(`{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"api","source":"x"},"value":[1700000000,"3"]}]}}`))
	}))
	defer srv.Close()

	rf := writeRules(t, `groups:
  - name: remote
    rules:
      - alert: FromRemote
        expr: up == 3
        annotations: {v: "{{ $value }} {{ $labels.job }}"}
      - alert: Broken
        expr: broken_metric > 0
`)
	n := &notifications{alerts: map[string]*promrules.Alert{}}
	e, err := New(Options{
		Dir: t.TempDir(), DisableBuiltin: true, RuleFiles: []string{rf}, EvalInterval: 100 * time.Millisecond,
		Remote: &Remote{URL: srv.URL, BearerToken: "s3cret"}, Notify: n.notify,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "FromRemote firing", func() bool { _, ok := n.get("FromRemote/x"); return ok })
	a, _ := n.get("FromRemote/x")
	if got := a.Annotations.Get("v"); got != "3 api" {
		t.Errorf("annotation v = %q, want %q", got, "3 api")
	}
	mu.Lock()
	if gotAuth != "Bearer s3cret" {
		t.Errorf("Authorization = %q, want the bearer token", gotAuth)
	}
	_ = gotQuery
	mu.Unlock()
	waitFor(t, "Broken rule health err", func() bool {
		for _, gr := range e.Groups() {
			for _, r := range gr.Rules() {
				if r.Name() == "Broken" && r.Health() == promrules.HealthBad {
					return strings.Contains(r.LastError().Error(), "bad_data: parse error")
				}
			}
		}
		return false
	})
}
