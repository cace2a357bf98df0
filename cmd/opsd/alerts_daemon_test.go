package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
)

// slackAPI speaks the two Slack Web API methods opsd uses and keeps a
// request log.
type slackAPI struct {
	mu   sync.Mutex
	log  []slackCall
	next int
}

type slackCall struct {
	Method, Channel, TS, Text string
}

func (s *slackAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	method := strings.TrimPrefix(r.URL.Path, "/api/")
	call := slackCall{Method: method, Channel: r.Form.Get("channel"), TS: r.Form.Get("ts"), Text: r.Form.Get("text")}
	if r.Header.Get("Authorization") != "Bearer xoxb-test" && r.Form.Get("token") != "xoxb-test" {
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": "invalid_auth"})
		return
	}
	switch method {
	case "chat.postMessage":
		s.next++
		call.TS = fmt.Sprintf("1764000000.%06d", s.next)
		call.Channel = "C0OPS" // Slack answers with the channel's ID
	case "chat.update":
	default:
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": false, "error": "unknown_method"})
		return
	}
	s.log = append(s.log, call)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "channel": call.Channel, "ts": call.TS})
}

func (s *slackAPI) calls() []slackCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]slackCall(nil), s.log...)
}

// webhookSink records Alertmanager v4 payloads.
// newWebhookSink starts a webhook receiver for the test and returns its URL.
func newWebhookSink(t *testing.T) (*webhookSink, string) {
	t.Helper()
	hook := &webhookSink{}
	srv := httptest.NewServer(hook)
	t.Cleanup(srv.Close)
	return hook, srv.URL
}

// vectorRule is a rule file with one alert that always fires.
func vectorRule(name, labels string) string {
	return fmt.Sprintf(`groups:
  - name: test
    rules:
      - alert: %s
        expr: vector(1)
        labels: %s
`, name, labels)
}

// appendConfig appends YAML to a config file.
func appendConfig(t *testing.T, path, extra string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(extra); err != nil {
		t.Fatal(err)
	}
}

type webhookSink struct {
	mu     sync.Mutex
	msgs   []notify.WebhookMessage
	bodies [][]byte
	sigs   []string
}

func (s *webhookSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var m notify.WebhookMessage
	if err := json.Unmarshal(body, &m); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.bodies = append(s.bodies, body)
	s.sigs = append(s.sigs, r.Header.Get(notify.SignatureHeader))
	s.mu.Unlock()
}

func (s *webhookSink) messages() []notify.WebhookMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]notify.WebhookMessage(nil), s.msgs...)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// writeAlertConfig is writeBackupConfig plus a rule file and an alerts
// section whose receiver posts to Slack and a webhook.
func writeAlertConfig(t *testing.T, dir, rules, route string, slackURL, hookURL string) string {
	t.Helper()
	var recv strings.Builder
	if slackURL != "" {
		fmt.Fprintf(&recv, "      slack: {token: xoxb-test, channel: \"#ops\", api_url: %q}\n", slackURL+"/api/")
	}
	fmt.Fprintf(&recv, "      webhook: {url: %q, signing_secret: hook-secret}\n", hookURL)
	return writeAlertsYAML(t, dir, rules, fmt.Sprintf(`alerts:
  rule_files: [./rules.yaml]
  evaluation_interval: 1s
  route: %s
  receivers:
    oncall:
%s`, route, recv.String()))
}

// writeAlertsYAML is writeBackupConfig plus rules.yaml and extra YAML.
func writeAlertsYAML(t *testing.T, dir, rules, extra string) string {
	t.Helper()
	path := writeBackupConfig(t, dir, "@daily")
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(rules), 0o600); err != nil {
		t.Fatal(err)
	}
	appendConfig(t, path, extra)
	return path
}

// An alert over opsd's own metrics fires with no Prometheus, is posted to
// Slack once and to a signed webhook, shows in the API and CLI, and when a
// backup makes it resolve the Slack message is updated in place.
func TestAlertsThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	slack := &slackAPI{}
	slackSrv := httptest.NewServer(slack)
	defer slackSrv.Close()
	hook, hookURL := newWebhookSink(t)
	rules := `groups:
  - name: test
    rules:
      - alert: DemoNotBackedUp
        expr: opsd_backup_last_success_timestamp_seconds{source="demo"} == 0
        labels: {severity: page}
        annotations: {summary: "{{ $labels.source }} has no backup yet"}
`
	cfg := writeAlertConfig(t, dir, rules, `{receiver: oncall, group_by: [alertname, source], group_wait: 1s, group_interval: 1s, repeat_interval: 1h}`,
		slackSrv.URL, hookURL)
	d := startDaemon(t, cfg, true)
	env := map[string]string{"OPSD_ADDR": d.addr, "OPSD_TOKEN": testToken}

	firing := func(m notify.WebhookMessage) bool {
		return m.Status == "firing" && m.CommonLabels["alertname"] == "DemoNotBackedUp"
	}
	waitFor(t, 60*time.Second, "the firing webhook notification", func() bool {
		for _, m := range hook.messages() {
			if firing(m) {
				return true
			}
		}
		return false
	})
	msgs := hook.messages()
	if m := msgs[0]; m.Receiver != "oncall" || m.GroupLabels["source"] != "demo" || len(m.Alerts) != 1 ||
		m.Alerts[0].Annotations["summary"] != "demo has no backup yet" || m.Alerts[0].Labels["job"] != "opsd" {
		t.Errorf("webhook payload = %+v", m)
	}
	hook.mu.Lock()
	if want := notify.Sign([]byte("hook-secret"), hook.bodies[0]); hook.sigs[0] != want {
		t.Errorf("webhook signature %q, want %q", hook.sigs[0], want)
	}
	hook.mu.Unlock()
	waitFor(t, 10*time.Second, "the Slack post", func() bool { return len(slack.calls()) > 0 })

	// API and CLI show the alert; the rule is healthy.
	var alerts struct {
		Items []alertView `json:"items"`
	}
	d.api(t, "GET", "/api/v1/alerts?state=active", testToken, &alerts)
	found := false
	for _, a := range alerts.Items {
		found = found || (a.Labels["alertname"] == "DemoNotBackedUp" && len(a.Receivers) == 1 && a.Receivers[0] == "oncall")
	}
	if !found {
		t.Errorf("GET /api/v1/alerts lacks DemoNotBackedUp routed to oncall: %+v", alerts.Items)
	}
	code, out, errOut := cli(t, env, "alerts", "list")
	if code != 0 || !strings.Contains(out, "DemoNotBackedUp") || !strings.Contains(out, "demo has no backup yet") {
		t.Errorf("alerts list = %d\n%s\n%s", code, out, errOut)
	}
	if code, out, errOut := cli(t, env, "status"); code != 0 || !strings.Contains(out, "DemoNotBackedUp [page] demo") {
		t.Errorf("status = %d, want the firing alert listed\n%s\n%s", code, out, errOut)
	}
	var rl struct {
		Groups []struct {
			Name, File, Path string
			Rules            []struct{ Name, Health, State string }
		} `json:"groups"`
	}
	d.api(t, "GET", "/api/v1/rules", testToken, &rl)
	var ruleOK, builtin bool
	for _, g := range rl.Groups {
		builtin = builtin || g.File == "builtin"
		for _, r := range g.Rules {
			ruleOK = ruleOK || (r.Name == "DemoNotBackedUp" && r.Health == "ok" && r.State == "firing")
		}
	}
	if !ruleOK || !builtin {
		t.Errorf("rules: DemoNotBackedUp ok+firing %v, built-in group present %v: %+v", ruleOK, builtin, rl.Groups)
	}

	// A backup resolves it: the webhook hears "resolved", Slack's message is
	// updated in place rather than posted again.
	if code, out, errOut := cli(t, env, "backup", "run", "demo", "--wait"); code != 0 {
		t.Fatalf("backup run = %d\n%s\n%s", code, out, errOut)
	}
	waitFor(t, 60*time.Second, "the resolved webhook notification", func() bool {
		for _, m := range hook.messages() {
			if m.Status == "resolved" && m.CommonLabels["alertname"] == "DemoNotBackedUp" {
				return true
			}
		}
		return false
	})
	waitFor(t, 10*time.Second, "the Slack update", func() bool {
		for _, c := range slack.calls() {
			if c.Method == "chat.update" {
				return true
			}
		}
		return false
	})
	calls := slack.calls()
	for _, c := range calls {
		t.Logf("slack request: %s channel=%s ts=%s text=%q", c.Method, c.Channel, c.TS, c.Text)
	}
	posts := 0
	for _, c := range calls {
		switch c.Method {
		case "chat.postMessage":
			posts++
			if c.Channel != "C0OPS" {
				t.Errorf("post to %q", c.Channel)
			}
		case "chat.update":
			if c.Channel != "C0OPS" || c.TS != calls[0].TS {
				t.Errorf("update of %s/%s, want the posted message C0OPS/%s", c.Channel, c.TS, calls[0].TS)
			}
		}
	}
	if posts != 1 || calls[0].Method != "chat.postMessage" || !strings.Contains(strings.ToLower(calls[len(calls)-1].Text), "resolved") {
		t.Errorf("Slack calls = %+v; want one post, then updates ending resolved", calls)
	}

	var metrics string
	waitFor(t, 10*time.Second, "notification metrics", func() bool {
		metrics = d.metrics(t)
		return strings.Contains(metrics, `opsd_notifications_total{receiver="oncall",result="sent"}`)
	})
	if strings.Contains(metrics, `opsd_notifications_total{receiver="oncall",result="failed"} 1`) {
		t.Errorf("a notification failed:\n%s", metrics)
	}
}

// kill -9 while a group waits: after the restart the notification goes out
// once; a second kill -9 after it went out does not send it again.
func TestAlertSentOnceAcrossKill(t *testing.T) {
	dir := t.TempDir()
	hook, hookURL := newWebhookSink(t)
	rules := vectorRule("AlwaysFiring", "{severity: page, source: demo}")
	cfg := writeAlertConfig(t, dir, rules, `{receiver: oncall, group_by: [alertname], group_wait: 8s, group_interval: 2s, repeat_interval: 1h}`, "", hookURL)
	d := startDaemon(t, cfg, true)
	// The alert reaches routing, then the process dies inside group_wait.
	waitFor(t, 30*time.Second, "the alert in routing", func() bool {
		var alerts struct {
			Items []alertView `json:"items"`
		}
		d.api(t, "GET", "/api/v1/alerts?state=active", testToken, &alerts)
		return len(alerts.Items) > 0
	})
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	if n := len(hook.messages()); n != 0 {
		t.Fatalf("%d notifications before the group_wait ended", n)
	}

	d = startDaemon(t, cfg, true)
	waitFor(t, 40*time.Second, "the notification after the restart", func() bool { return len(hook.messages()) > 0 })
	time.Sleep(3 * time.Second) // the notification log reaches disk; group_interval passes
	if err := d.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.exited

	d = startDaemon(t, cfg, true)
	// Group wait (8s) and a few group intervals after the restart.
	time.Sleep(16 * time.Second)
	msgs := hook.messages()
	if len(msgs) != 1 {
		t.Fatalf("%d notifications across two kill -9s, want exactly 1: %+v", len(msgs), msgs)
	}
	if msgs[0].Status != "firing" || msgs[0].CommonLabels["alertname"] != "AlwaysFiring" {
		t.Errorf("notification = %+v", msgs[0])
	}
	_ = d
}

// When a receiver keeps failing, the built-in NotificationsFailing alert
// names it and reaches on-call through another receiver.
func TestNotificationsFailingAlert(t *testing.T) {
	dir := t.TempDir()
	var broken sync.Mutex
	attempts := 0
	brokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		broken.Lock()
		attempts++
		broken.Unlock()
		http.Error(w, "upstream down", http.StatusInternalServerError)
	}))
	defer brokenSrv.Close()
	hook, hookURL := newWebhookSink(t)
	rules := vectorRule("AlwaysFiring", "{severity: page}")
	cfg := writeAlertsYAML(t, dir, rules, fmt.Sprintf(`alerts:
  rule_files: [./rules.yaml]
  evaluation_interval: 1s
  builtin: {notifications_failing: {for: 1s}}
  route:
    receiver: pager
    group_by: [alertname]
    group_wait: 1s
    group_interval: 2s
    repeat_interval: 1h
    routes: [{matchers: ['alertname="NotificationsFailing"'], receiver: fallback}]
  receivers:
    pager: {webhook: {url: %q}}
    fallback: {webhook: {url: %q}}
`, brokenSrv.URL, hookURL))
	d := startDaemon(t, cfg, true)
	waitFor(t, 90*time.Second, "NotificationsFailing at the fallback receiver", func() bool {
		for _, m := range hook.messages() {
			if m.CommonLabels["alertname"] == "NotificationsFailing" && m.CommonLabels["receiver"] == "pager" && m.Receiver == "fallback" {
				return true
			}
		}
		return false
	})
	broken.Lock()
	n := attempts
	broken.Unlock()
	if n < 2 {
		t.Errorf("the failing receiver saw %d attempts, want retries", n)
	}
	if m := d.metrics(t); !strings.Contains(m, `opsd_notifications_total{receiver="pager",result="failed"}`) {
		t.Errorf("no failed count for pager:\n%s", m)
	}
	for _, m := range hook.messages() {
		if m.CommonLabels["alertname"] == "AlwaysFiring" {
			t.Errorf("AlwaysFiring reached the fallback receiver: %+v", m)
		}
	}
}

// The dead man's switch pings while opsd is healthy; failed pings are
// counted, and the pings stop when opsd does.
func TestDeadMansSwitch(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var pings []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		pings = append(pings, r.Method+" "+r.URL.Path)
		if len(pings) == 2 {
			http.Error(w, "flaky", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(pings)
	}
	cfg := writeAlertsYAML(t, dir, "groups: []\n", fmt.Sprintf("alerts:\n  heartbeat: {url: %q, interval: 1s}\n", srv.URL+"/ping/token123"))
	d := startDaemon(t, cfg, true)
	waitFor(t, 30*time.Second, "4 heartbeats", func() bool { return count() >= 4 })
	mu.Lock()
	if pings[0] != "POST /ping/token123" {
		t.Errorf("ping = %q, want POST /ping/token123", pings[0])
	}
	mu.Unlock()
	m := d.metrics(t)
	if !strings.Contains(m, `opsd_heartbeat_pings_total{result="failed"} 1`) || !strings.Contains(m, `opsd_heartbeat_pings_total{result="ok"}`) {
		t.Errorf("heartbeat metrics:\n%s", grepLines(m, "opsd_heartbeat"))
	}
	if strings.Contains(d.stderr.String(), "token123") {
		t.Error("the heartbeat URL's token appears in the log")
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-d.exited
	n := count()
	time.Sleep(2500 * time.Millisecond)
	if count() != n {
		t.Errorf("pings continued after opsd stopped: %d → %d", n, count())
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// metrics returns the daemon's /metrics text.
func (d *daemonProc) metrics(t *testing.T) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+d.addr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// While a drill runs on a source, that source's alerts are silenced by a
// silence naming the run; the silence ends with the run.
func TestDrillSilencesAlerts(t *testing.T) {
	dir := t.TempDir()
	hook, hookURL := newWebhookSink(t)
	rules := vectorRule("DemoAlert", "{severity: page, source: demo}")
	cfg := writeAlertConfig(t, dir, rules, `{receiver: oncall, group_by: [alertname], group_wait: 30s, group_interval: 30s, repeat_interval: 1h}`, "", hookURL)
	appendConfig(t, cfg, "runbooks: {dir: ./runbooks}\n")
	runbook := `name: demo-drill
steps:
  - id: hold
    uses: approval
    with: {timeout: 10m}
  - id: backup
    uses: backup.run
    with: {source: demo}
`
	if err := os.MkdirAll(filepath.Join(dir, "runbooks"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "runbooks", "demo.yaml"), []byte(runbook), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfg, true)
	resp, body := d.post(t, "/api/v1/runbooks/demo-drill/runs", testToken, `{"mode":"drill"}`)
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusCreated {
		t.Fatalf("start drill = %d %s", resp.StatusCode, body)
	}
	var run struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &run); err != nil || run.ID == "" {
		t.Fatalf("run answer %s: %v", body, err)
	}

	type silence struct {
		ID          string            `json:"id"`
		Matchers    []string          `json:"matchers"`
		CreatedBy   string            `json:"createdBy"`
		Comment     string            `json:"comment"`
		State       string            `json:"state"`
		Annotations map[string]string `json:"annotations"`
	}
	var sils struct {
		Items []silence `json:"items"`
	}
	waitFor(t, 20*time.Second, "the drill silence", func() bool {
		d.api(t, "GET", "/api/v1/silences?state=active", testToken, &sils)
		return len(sils.Items) > 0
	})
	s := sils.Items[0]
	if s.CreatedBy != "opsd (drill)" || s.Annotations["opsd_drill_run"] != run.ID || len(s.Matchers) != 1 ||
		s.Matchers[0] != `source="demo"` || !strings.Contains(s.Comment, run.ID) {
		t.Errorf("drill silence = %+v, want source=\"demo\" naming run %s", s, run.ID)
	}
	// The source's alert is suppressed by it, and nothing is sent.
	waitFor(t, 30*time.Second, "DemoAlert suppressed", func() bool {
		var alerts struct {
			Items []alertView `json:"items"`
		}
		d.api(t, "GET", "/api/v1/alerts", testToken, &alerts)
		for _, a := range alerts.Items {
			if a.Labels["alertname"] == "DemoAlert" && a.State == "suppressed" && len(a.SilencedBy) == 1 && a.SilencedBy[0] == s.ID {
				return true
			}
		}
		return false
	})

	// The run ends (cancelled): the silence is expired.
	if resp, body := d.post(t, "/api/v1/runs/"+run.ID+"/cancel", testToken, `{"comment":"done"}`); resp.StatusCode >= 300 {
		t.Fatalf("cancel = %d %s", resp.StatusCode, body)
	}
	waitFor(t, 20*time.Second, "the drill silence to expire", func() bool {
		var one silence
		d.api(t, "GET", "/api/v1/silences/"+s.ID, testToken, &one)
		return one.State == "expired"
	})
	if n := len(hook.messages()); n != 0 {
		t.Errorf("%d notifications while the drill silenced the source", n)
	}
}

// Two replicas share a PostgreSQL state: both evaluate and route, one sends;
// when it is killed the other takes the lead and does not send the group
// again (the notification log is shared).
func TestAlertingTwoReplicas(t *testing.T) {
	t.Setenv("TEST_STATE_DSN", pgtest.DSN(t))
	hook, hookURL := newWebhookSink(t)
	rules := vectorRule("AlwaysFiring", "{severity: page}")
	var ds [2]*daemonProc
	var cfgs [2]string
	for i := range ds {
		dir := t.TempDir()
		cfgs[i] = writeAlertConfig(t, dir, rules, `{receiver: oncall, group_by: [alertname], group_wait: 2s, group_interval: 2s, repeat_interval: 1h}`, "", hookURL)
		appendConfig(t, cfgs[i], "state:\n  postgres: ${TEST_STATE_DSN}\n")
		ds[i] = startDaemon(t, cfgs[i], true)
	}
	waitFor(t, 60*time.Second, "the notification", func() bool { return len(hook.messages()) > 0 })
	time.Sleep(5 * time.Second)
	if n := len(hook.messages()); n != 1 {
		t.Fatalf("%d notifications from two replicas, want 1", n)
	}
	leader := -1
	for i, d := range ds {
		if strings.Contains(d.metrics(t), "\nopsd_alerting_lead 1") {
			if leader >= 0 {
				t.Fatal("both replicas hold the alerting lead")
			}
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no replica holds the alerting lead")
	}
	if err := ds[leader].cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-ds[leader].exited
	other := ds[1-leader]
	waitFor(t, 60*time.Second, "the other replica to take the lead", func() bool {
		return strings.Contains(other.metrics(t), "\nopsd_alerting_lead 1")
	})
	time.Sleep(6 * time.Second) // group_wait and a few group intervals on the new lead
	if n := len(hook.messages()); n != 1 {
		t.Fatalf("%d notifications after the failover, want still 1 (already sent)", n)
	}
}
