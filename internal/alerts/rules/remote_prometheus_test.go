package rules

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	promrules "github.com/prometheus/prometheus/rules"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// debianPrometheus is where Debian's prometheus package installs the server.
const debianPrometheus = "/usr/bin/prometheus"

// requirePrometheusServer returns Debian's Prometheus server; absent, the
// test fails under CI=true and skips loudly otherwise (SPEC §9).
func requirePrometheusServer(t *testing.T) string {
	t.Helper()
	_, err := os.Stat(debianPrometheus)
	if err == nil {
		return debianPrometheus
	}
	msg := fmt.Sprintf("%s is missing (Debian package prometheus): %v; the remote path was not tested against a real Prometheus", debianPrometheus, err)
	testenv.Missing(t, "%s", msg)
	return ""
}

// The rule file both opsd (through the proxy) and the Debian server
// evaluate. Mismatch fails at execution in Prometheus: demo_queue_depth
// has two series, so on() matches many to many.
const remoteDemoRules = `groups:
  - name: demo
    rules:
      - alert: QueueDeep
        expr: demo_queue_depth > 5
        for: 2s
        labels: {severity: page}
        annotations:
          summary: "queue {{ $labels.source }} is {{ $value }} deep"
      - alert: JobsFlowing
        expr: rate(demo_jobs_processed_total[5s]) > 1
        annotations:
          summary: "{{ $labels.source }} processes {{ $value }} jobs/s"
      - alert: Mismatch
        expr: demo_queue_depth * on() demo_queue_depth > 0
`

// demoExporter is the scrape target: a gauge the test sets and a counter
// that grows by 5 at every scrape (about 5/s at a 1s scrape interval).
type demoExporter struct {
	depth *prometheus.GaugeVec
	jobs  *prometheus.CounterVec
	h     http.Handler
}

func newDemoExporter() *demoExporter {
	reg := prometheus.NewPedanticRegistry()
	x := &demoExporter{
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "demo_queue_depth", Help: "Queued items."}, []string{"source"}),
		jobs:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "demo_jobs_processed_total", Help: "Processed jobs."}, []string{"source"}),
	}
	reg.MustRegister(x.depth, x.jobs)
	x.h = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return x
}

func (x *demoExporter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	x.jobs.WithLabelValues("orders").Add(5)
	x.h.ServeHTTP(w, r)
}

// promProcess is a Debian Prometheus server on loopback.
type promProcess struct {
	base   string
	client *http.Client
}

// startPromProcess starts the server scraping target every second and
// evaluating ruleFile every second, waits for /-/ready and kills it when
// the test ends. A port taken between choosing and binding it is retried.
func startPromProcess(t *testing.T, bin, target, ruleFile string) *promProcess {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	body := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [%q]
scrape_configs:
  - job_name: demo
    static_configs: [{targets: [%q]}]
`, ruleFile, target)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	p := &promProcess{client: &http.Client{Transport: tr, Timeout: 5 * time.Second}}

	for attempt := 1; ; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		cmd := exec.Command(bin,
			"--config.file="+cfg,
			"--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data%d", attempt)),
			"--web.listen-address="+addr,
			"--log.level=warn",
		)
		// A file, not a buffer: no copying goroutine, readable at any time.
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Kill()
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				t.Errorf("prometheus (pid %d) did not exit 10s after SIGKILL", cmd.Process.Pid)
			}
		}
		p.base = "http://" + addr
		switch err := p.waitReady(exited); {
		case err == nil:
			t.Cleanup(stop)
			return p
		case errors.Is(err, errExited) && attempt < 3:
			t.Logf("prometheus exited at start (port %s taken?), retrying: %s", addr, tail(logPath))
			continue
		default:
			stop()
			t.Fatalf("prometheus on %s: %v\n%s", addr, err, tail(logPath))
		}
	}
}

var errExited = errors.New("exited before it was ready")

func (p *promProcess) waitReady(exited <-chan error) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("%w: %v", errExited, err)
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := p.client.Get(p.base + "/-/ready")
		if err != nil {
			continue
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
	}
	return errors.New("not ready after 20s")
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// get decodes the data of a Prometheus API answer.
func (p *promProcess) get(t *testing.T, path string, data any) {
	t.Helper()
	resp, err := p.client.Get(p.base + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	var out struct {
		Status string          `json:"status"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Status != "success" {
		t.Fatalf("GET %s: %s, status %q, decode: %v", path, resp.Status, out.Status, err)
	}
	if err := json.Unmarshal(out.Data, data); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// remoteAlert is what both sides are compared on.
type remoteAlert struct {
	Labels map[string]string
	State  string
}

func sortAlerts(as []remoteAlert) []remoteAlert {
	sort.Slice(as, func(i, j int) bool { return fmt.Sprint(as[i].Labels) < fmt.Sprint(as[j].Labels) })
	return as
}

// alerts is Prometheus's /api/v1/alerts: its pending and firing alerts.
func (p *promProcess) alerts(t *testing.T) []remoteAlert {
	t.Helper()
	var data struct {
		Alerts []struct {
			Labels      map[string]string `json:"labels"`
			Annotations map[string]string `json:"annotations"`
			State       string            `json:"state"`
		} `json:"alerts"`
	}
	p.get(t, "/api/v1/alerts", &data)
	out := []remoteAlert{}
	for _, a := range data.Alerts {
		out = append(out, remoteAlert{Labels: a.Labels, State: a.State})
	}
	return sortAlerts(out)
}

type promRule struct {
	Name      string `json:"name"`
	Health    string `json:"health"`
	LastError string `json:"lastError"`
	Alerts    []struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"alerts"`
}

// rule is one rule of Prometheus's /api/v1/rules.
func (p *promProcess) rule(t *testing.T, name string) promRule {
	t.Helper()
	var data struct {
		Groups []struct {
			Rules []promRule `json:"rules"`
		} `json:"groups"`
	}
	p.get(t, "/api/v1/rules", &data)
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			if r.Name == name {
				return r
			}
		}
	}
	t.Fatalf("prometheus has no rule %s", name)
	return promRule{}
}

// opsdAlerts is the Evaluator's pending and firing alerts.
func opsdAlerts(e *Evaluator) []remoteAlert {
	out := []remoteAlert{}
	for _, g := range e.Groups() {
		for _, r := range g.AlertingRules() {
			for _, a := range r.ActiveAlerts() {
				out = append(out, remoteAlert{Labels: a.Labels.Map(), State: a.State.String()})
			}
		}
	}
	return sortAlerts(out)
}

func opsdRule(e *Evaluator, name string) promrules.Rule {
	for _, g := range e.Groups() {
		for _, r := range g.Rules() {
			if r.Name() == name {
				return r
			}
		}
	}
	return nil
}

func opsdAlert(e *Evaluator, rule, source string) (promrules.Alert, bool) {
	for _, g := range e.Groups() {
		for _, r := range g.AlertingRules() {
			if r.Name() != rule {
				continue
			}
			for _, a := range r.ActiveAlerts() {
				if a.Labels.Get("source") == source {
					return *a, true
				}
			}
		}
	}
	return promrules.Alert{}, false
}

// authProxy stands in front of Prometheus as a gateway would: basic auth
// and a tenant header are required, the 401 and 403 answers are not the
// API's JSON. It can be stopped and started again on the same address.
type authProxy struct {
	user, password string
	header, value  string
	delay          time.Duration // before forwarding a request carrying X-Test-Slow
	rp             *httputil.ReverseProxy
	tr             *http.Transport
	forwarded      atomic.Int64
	refused        atomic.Int64

	mu   sync.Mutex
	addr string
	srv  *httptest.Server
}

func newAuthProxy(t *testing.T, target string) *authProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &authProxy{user: "opsd", password: "pr0m-Secret-pw", header: "X-Scope-OrgID", value: "tenant-a", delay: 10 * time.Second, tr: &http.Transport{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Header.Del("Authorization")
		},
		Transport: p.tr,
		ErrorLog:  log.New(io.Discard, "", 0),
	}
	p.start(t)
	t.Cleanup(func() {
		p.stop()
		p.tr.CloseIdleConnections()
	})
	return p
}

func (p *authProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	user, pw, ok := r.BasicAuth()
	if !ok || user != p.user || pw != p.password {
		p.refused.Add(1)
		w.Header().Set("WWW-Authenticate", `Basic realm="prometheus"`)
		msg := "401 Unauthorized"
		if r.Header.Get("X-Test-Echo") != "" { // a careless gateway
			msg = fmt.Sprintf("refused %q (user %q, password %q)", r.Header.Get("Authorization"), user, pw)
		}
		http.Error(w, msg, http.StatusUnauthorized)
		return
	}
	if r.Header.Get(p.header) != p.value {
		p.refused.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, `{"message":"no org id"}`)
		return
	}
	if r.Header.Get("X-Test-Slow") != "" {
		// With the body read, the server notices the client hanging up
		// and cancels r.Context().
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
			return
		case <-time.After(p.delay):
		}
	}
	p.forwarded.Add(1)
	p.rp.ServeHTTP(w, r)
}

func (p *authProxy) url() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return "http://" + p.addr
}

func (p *authProxy) start(t *testing.T) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	addr := p.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("proxy listen %s: %v", addr, err)
	}
	p.addr = l.Addr().String()
	p.srv = &httptest.Server{Listener: l, Config: &http.Server{Handler: p}}
	p.srv.Start()
}

func (p *authProxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		p.srv.Close()
		p.srv = nil
	}
}

// TestRemotePrometheus evaluates a rule file on the remote path against
// Debian's Prometheus server, reached through an authenticating proxy, and
// compares the alerts with those the server computes from the same file.
func TestRemotePrometheus(t *testing.T) {
	bin := requirePrometheusServer(t)

	exp := newDemoExporter()
	exp.depth.WithLabelValues("orders").Set(10)
	exp.depth.WithLabelValues("billing").Set(2)
	expSrv := httptest.NewServer(exp)
	t.Cleanup(expSrv.Close)
	target := expSrv.Listener.Addr().String()

	ruleFile := writeRules(t, remoteDemoRules)
	prom := startPromProcess(t, bin, target, ruleFile)
	proxy := newAuthProxy(t, prom.base)
	remote := Remote{
		URL:           proxy.url(),
		BasicAuthUser: proxy.user, BasicAuthPassword: proxy.password,
		Headers: map[string]string{proxy.header: proxy.value},
		// Not a whole number of seconds: Prometheus must accept the
		// timeout parameter opsd sends.
		Timeout: 2500 * time.Millisecond,
	}

	n := &notifications{alerts: map[string]*promrules.Alert{}}
	e, err := New(Options{
		Dir: t.TempDir(), DisableBuiltin: true, RuleFiles: []string{ruleFile},
		EvalInterval: 500 * time.Millisecond, Remote: &remote, Notify: n.notify,
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
	defer func() {
		if t.Failed() {
			for _, g := range e.Groups() {
				for _, r := range g.Rules() {
					t.Logf("opsd rule %s: health %s, last error %v, evaluated %v", r.Name(), r.Health(), r.LastError(), r.GetEvaluationTimestamp())
				}
			}
		}
	}()

	orders := func(alertname string, extra ...string) map[string]string {
		m := map[string]string{"alertname": alertname, "job": "demo", "instance": target, "source": "orders"}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}
	queueDeep := orders("QueueDeep", "severity", "page")
	jobsFlowing := orders("JobsFlowing")

	// Pending first, firing once `for: 2s` has passed.
	waitFor(t, "QueueDeep{source=orders} pending", func() bool {
		a, ok := opsdAlert(e, "QueueDeep", "orders")
		return ok && a.State == promrules.StatePending
	})
	waitFor(t, "QueueDeep{source=orders} notified firing", func() bool { _, ok := n.get("QueueDeep/orders"); return ok })
	a, _ := n.get("QueueDeep/orders")
	if diff := cmp.Diff(queueDeep, a.Labels.Map()); diff != "" {
		t.Errorf("QueueDeep labels (-want +got):\n%s", diff)
	}
	if a.Value != 10 {
		t.Errorf("QueueDeep value = %v, want the gauge's 10", a.Value)
	}
	if got, want := a.Annotations.Get("summary"), "queue orders is 10 deep"; got != want {
		t.Errorf("QueueDeep summary = %q, want %q", got, want)
	}
	if !a.ResolvedAt.IsZero() || a.FiredAt.Sub(a.ActiveAt) < 2*time.Second {
		t.Errorf("QueueDeep active %v, fired %v, resolved %v: want firing 2s after active", a.ActiveAt, a.FiredAt, a.ResolvedAt)
	}
	waitFor(t, "JobsFlowing{source=orders} notified firing", func() bool { _, ok := n.get("JobsFlowing/orders"); return ok })
	a, _ = n.get("JobsFlowing/orders")
	if diff := cmp.Diff(jobsFlowing, a.Labels.Map()); diff != "" {
		t.Errorf("JobsFlowing labels (-want +got):\n%s", diff)
	}
	if got, want := a.Annotations.Get("summary"), fmt.Sprintf("orders processes %v jobs/s", a.Value); got != want || a.Value <= 1 {
		t.Errorf("JobsFlowing summary = %q (value %v), want %q and a rate above 1", got, a.Value, want)
	}

	// Prometheus, evaluating the same file over the same scrapes, comes to
	// the same alerts once its own evaluations have caught up.
	wantFiring := sortAlerts([]remoteAlert{{Labels: queueDeep, State: "firing"}, {Labels: jobsFlowing, State: "firing"}})
	if diff := cmp.Diff(wantFiring, opsdAlerts(e)); diff != "" {
		t.Errorf("opsd alerts (-want +got):\n%s", diff)
	}
	waitFor(t, "prometheus firing the same alerts", func() bool { return cmp.Equal(wantFiring, prom.alerts(t)) })
	if got, want := prom.rule(t, "QueueDeep").Alerts[0].Annotations["summary"], "queue orders is 10 deep"; got != want {
		t.Errorf("prometheus QueueDeep summary = %q, want %q as opsd", got, want)
	}

	// A query that fails at execution in Prometheus: health err with
	// Prometheus's own message, on both sides.
	waitFor(t, "Mismatch health err on both sides", func() bool {
		r := opsdRule(e, "Mismatch")
		return r != nil && r.Health() == promrules.HealthBad && prom.rule(t, "Mismatch").Health == "err"
	})
	pr := prom.rule(t, "Mismatch")
	if got, want := opsdRule(e, "Mismatch").LastError().Error(), "execution: "+pr.LastError; got != want {
		t.Errorf("opsd Mismatch LastError = %q, want %q (prometheus's own)", got, want)
	}
	if !strings.Contains(pr.LastError, "many-to-many matching not allowed") {
		t.Errorf("prometheus Mismatch lastError = %q, want many-to-many", pr.LastError)
	}
	if r := opsdRule(e, "QueueDeep"); r.Health() != promrules.HealthGood {
		t.Errorf("QueueDeep health = %v (%v), want ok", r.Health(), r.LastError())
	}
	if got := proxy.forwarded.Load(); got == 0 || proxy.refused.Load() != 0 {
		t.Errorf("proxy forwarded %d, refused %d: want opsd's queries authenticated with basic auth and %s", got, proxy.refused.Load(), proxy.header)
	}

	// The gauge drops: QueueDeep resolves (the notify callback gets it
	// with ResolvedAt), JobsFlowing keeps firing, on both sides.
	exp.depth.WithLabelValues("orders").Set(1)
	waitFor(t, "QueueDeep{source=orders} notified resolved", func() bool {
		a, _ := n.get("QueueDeep/orders")
		return !a.ResolvedAt.IsZero()
	})
	wantEnd := []remoteAlert{{Labels: jobsFlowing, State: "firing"}}
	if diff := cmp.Diff(wantEnd, opsdAlerts(e)); diff != "" {
		t.Errorf("opsd alerts after the gauge dropped (-want +got):\n%s", diff)
	}
	waitFor(t, "prometheus resolving QueueDeep too", func() bool { return cmp.Equal(wantEnd, prom.alerts(t)) })

	// The datasource goes down: every rule's health is err with the
	// connection error, and the firing alert keeps its state, as
	// Prometheus keeps it when its own queries fail.
	before, _ := opsdAlert(e, "JobsFlowing", "orders")
	proxy.stop()
	down := time.Now()
	waitFor(t, "rules failing two rounds after the proxy stopped", func() bool {
		for _, name := range []string{"QueueDeep", "JobsFlowing", "Mismatch"} {
			r := opsdRule(e, name)
			if r.Health() != promrules.HealthBad || r.GetEvaluationTimestamp().Before(down.Add(time.Second)) {
				return false
			}
		}
		return true
	})
	for _, name := range []string{"QueueDeep", "JobsFlowing"} {
		err := opsdRule(e, name).LastError()
		if err == nil || !strings.Contains(err.Error(), "connection refused") || strings.Contains(err.Error(), proxy.password) {
			t.Errorf("%s LastError with the proxy down = %v, want connection refused without the password", name, err)
		}
	}
	after, ok := opsdAlert(e, "JobsFlowing", "orders")
	if !ok || after.State != promrules.StateFiring || !after.ActiveAt.Equal(before.ActiveAt) || !after.ResolvedAt.IsZero() {
		t.Errorf("JobsFlowing with the datasource down: %v active %v (found %v), want still firing since %v", after.State, after.ActiveAt, ok, before.ActiveAt)
	}
	if a, _ := n.get("JobsFlowing/orders"); !a.ResolvedAt.IsZero() {
		t.Errorf("JobsFlowing notified resolved at %v while the datasource was down", a.ResolvedAt)
	}

	// Back up: health ok again, the same alert still firing.
	proxy.start(t)
	waitFor(t, "JobsFlowing health ok after the proxy came back", func() bool {
		return opsdRule(e, "JobsFlowing").Health() == promrules.HealthGood
	})
	if a, ok := opsdAlert(e, "JobsFlowing", "orders"); !ok || a.State != promrules.StateFiring || !a.ActiveAt.Equal(before.ActiveAt) {
		t.Errorf("JobsFlowing after recovery: %v since %v (found %v), want firing since %v", a.State, a.ActiveAt, ok, before.ActiveAt)
	}
	if diff := cmp.Diff(prom.alerts(t), opsdAlerts(e)); diff != "" {
		t.Errorf("alerts at the end, prometheus (-) vs opsd (+):\n%s", diff)
	}

	t.Run("Errors", func(t *testing.T) {
		testRemoteErrors(t, proxy, target)
	})
}

// testRemoteErrors queries the live proxy directly: refused credentials,
// a missing header, a timeout and a bad query each give an error that
// names the cause and never a secret.
func testRemoteErrors(t *testing.T, proxy *authProxy, target string) {
	good := Remote{
		URL:           proxy.url(),
		BasicAuthUser: proxy.user, BasicAuthPassword: proxy.password,
		Headers: map[string]string{proxy.header: proxy.value},
		Timeout: 1500 * time.Millisecond,
	}
	withURLCreds := func(user, pw string) string {
		u, _ := url.Parse(proxy.url())
		u.User = url.UserPassword(user, pw)
		return u.String()
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := l.Addr().String()
	l.Close()
	echo := map[string]string{proxy.header: proxy.value, "X-Test-Echo": "1"}
	slow := good
	slow.Headers = map[string]string{proxy.header: proxy.value, "X-Test-Slow": "1"}
	slow.Timeout = 200 * time.Millisecond

	tests := []struct {
		name    string
		give    Remote
		query   string
		want    string   // in the error; "" means success
		secrets []string // never in the error
	}{
		{
			name:  "good",
			give:  good,
			query: `demo_queue_depth{source="billing"}`,
		},
		{
			name:    "wrong password",
			give:    Remote{URL: good.URL, BasicAuthUser: "opsd", BasicAuthPassword: "Wr0ng-pw-xyz", Headers: good.Headers},
			query:   "up",
			want:    "401 Unauthorized",
			secrets: []string{"Wr0ng-pw-xyz"},
		},
		{
			name:    "wrong password in the URL",
			give:    Remote{URL: withURLCreds("opsd", "Url-pw-4567"), Headers: good.Headers},
			query:   "up",
			want:    "401 Unauthorized",
			secrets: []string{"Url-pw-4567"},
		},
		{
			name:    "wrong bearer token",
			give:    Remote{URL: good.URL, BearerToken: "tok-abcdef-123", Headers: good.Headers},
			query:   "up",
			want:    "401 Unauthorized",
			secrets: []string{"tok-abcdef-123"},
		},
		{
			name:    "wrong password echoed by the gateway",
			give:    Remote{URL: good.URL, BasicAuthUser: "opsd", BasicAuthPassword: "Wr0ng-pw-xyz", Headers: echo},
			query:   "up",
			want:    `401 Unauthorized: refused "Basic xxxxx" (user "opsd", password "xxxxx")`,
			secrets: []string{"Wr0ng-pw-xyz", base64.StdEncoding.EncodeToString([]byte("opsd:Wr0ng-pw-xyz"))},
		},
		{
			name:    "wrong password in the URL echoed by the gateway",
			give:    Remote{URL: withURLCreds("opsd", "Url-pw-4567"), Headers: echo},
			query:   "up",
			want:    `password "xxxxx"`,
			secrets: []string{"Url-pw-4567", base64.StdEncoding.EncodeToString([]byte("opsd:Url-pw-4567"))},
		},
		{
			name:    "wrong bearer token echoed by the gateway",
			give:    Remote{URL: good.URL, BearerToken: "tok-abcdef-123", Headers: echo},
			query:   "up",
			want:    `refused "Bearer xxxxx"`,
			secrets: []string{"tok-abcdef-123"},
		},
		{
			name:    "header missing, JSON error without the API's fields",
			give:    Remote{URL: good.URL, BasicAuthUser: proxy.user, BasicAuthPassword: proxy.password},
			query:   "up",
			want:    "403 Forbidden",
			secrets: []string{proxy.password},
		},
		{
			name:    "parse error",
			give:    good,
			query:   "demo_queue_depth{",
			want:    "bad_data: ",
			secrets: []string{proxy.password},
		},
		{
			name:    "execution error",
			give:    good,
			query:   "demo_queue_depth * on() demo_queue_depth",
			want:    "execution: found duplicate series",
			secrets: []string{proxy.password},
		},
		{
			name:    "URL credentials, datasource down",
			give:    Remote{URL: "http://opsd:Down-pw-999@" + closedAddr},
			query:   "up",
			want:    "connection refused",
			secrets: []string{"Down-pw-999"},
		},
		{
			name:    "timeout",
			give:    slow,
			query:   "up",
			want:    "context deadline exceeded",
			secrets: []string{proxy.password},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			qf, err := NewRemoteQueryFunc(tt.give)
			if err != nil {
				t.Fatal(err)
			}
			vec, err := qf(context.Background(), tt.query, time.Now())
			if tt.want == "" {
				if err != nil || len(vec) != 1 || vec[0].F != 2 || vec[0].Metric.Get("instance") != target {
					t.Errorf("query %s = %v, %v; want billing's 2 from %s", tt.query, vec, err, target)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("query %s = %v, %v; want an error containing %q", tt.query, vec, err, tt.want)
			}
			for _, s := range tt.secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q contains the secret %q", err, s)
				}
			}
		})
	}
}
