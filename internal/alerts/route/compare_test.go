package route_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
	"github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/testenv"
)

const alertmanagerBin = "prometheus-alertmanager"

// lookAlertmanager finds Debian's Alertmanager, failing under CI=true and
// skipping loudly otherwise when it is missing.
func lookAlertmanager(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath(alertmanagerBin)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("Debian package %s is not installed (%v): the Alertmanager comparison cannot run", alertmanagerBin, err)
	testenv.Missing(t, "%s", msg)
	return ""
}

const compareAMConfig = `
route:
  receiver: chat
  group_by: [alertname, cluster]
  group_wait: 1s
  group_interval: 2s
  repeat_interval: 5s
  routes:
    - matchers: ['severity="critical"']
      receiver: pager
      continue: true
    - matchers: ['cluster=~"c.*"']
      receiver: chat
inhibit_rules:
  - source_matchers: ['alertname="ClusterDown"']
    target_matchers: ['severity="warning"']
    equal: [cluster]
receivers:
  - name: chat
    webhook_configs: [{url: "%[1]s/chat"}]
  - name: pager
    webhook_configs: [{url: "%[1]s/pager"}]
`

// compareConfig is compareAMConfig in opsd's terms.
func compareConfig(h *hook) config.Alerts {
	return config.Alerts{
		Route: &config.Route{
			Receiver:       "chat",
			GroupBy:        []string{"alertname", "cluster"},
			GroupWait:      time.Second,
			GroupInterval:  2 * time.Second,
			RepeatInterval: 5 * time.Second,
			Routes: []*config.Route{
				{Matchers: []string{`severity="critical"`}, Receiver: "pager", Continue: true},
				{Matchers: []string{`cluster=~"c.*"`}, Receiver: "chat"},
			},
		},
		InhibitRules: []config.InhibitRule{{
			SourceMatchers: []string{`alertname="ClusterDown"`},
			TargetMatchers: []string{`severity="warning"`},
			Equal:          []string{"cluster"},
		}},
		Receivers: map[string]*config.Receiver{
			"chat":  webhook(h.url("/chat")),
			"pager": webhook(h.url("/pager")),
		},
	}
}

func freePort(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startAlertmanager runs the real Alertmanager on loopback and returns its
// base URL.
func startAlertmanager(t *testing.T, bin, webhookBase string) string {
	t.Helper()
	base, stop := launchAlertmanager(t, bin, t.TempDir(), fmt.Sprintf(compareAMConfig, webhookBase))
	t.Cleanup(stop)
	return base
}

// launchAlertmanager runs Debian's Alertmanager with config in dir on a
// free loopback port, without clustering, and waits until it is ready. It
// returns the base URL and a func that stops it (and logs its output if the
// test failed).
func launchAlertmanager(tb testing.TB, bin, dir, config string) (string, func()) {
	tb.Helper()
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o600); err != nil {
		tb.Fatal(err)
	}
	addr := freePort(tb)
	var logs bytes.Buffer
	cmd := exec.Command(bin,
		"--config.file="+cfg,
		"--storage.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--cluster.listen-address=",
		"--log.level=warn",
	)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", bin, err)
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if tb.Failed() {
			tb.Logf("alertmanager output:\n%s", logs.String())
		}
	}
	base := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return base, stop
			}
		}
		if time.Now().After(deadline) {
			stop()
			tb.Fatalf("alertmanager not ready at %s: %v\n%s", base, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// postAlerts sends alerts to Alertmanager's API v2.
func postAlerts(t *testing.T, base string, alerts []route.Alert) {
	t.Helper()
	type postable struct {
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations,omitempty"`
		StartsAt    time.Time         `json:"startsAt"`
		EndsAt      *time.Time        `json:"endsAt,omitempty"`
	}
	var body []postable
	for _, a := range alerts {
		p := postable{Labels: a.Labels, Annotations: a.Annotations, StartsAt: a.StartsAt}
		if !a.EndsAt.IsZero() {
			p.EndsAt = &a.EndsAt
		}
		body = append(body, p)
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(base+"/api/v2/alerts", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("post alerts: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("post alerts: %s", resp.Status)
	}
}

// groupHistory is, per receiver and group key, the distinct successive
// notifications (identical repeats collapsed, since when a repeat falls
// depends on timing).
func groupHistory(ms []notify.WebhookMessage) map[string][]string {
	out := map[string][]string{}
	for _, m := range ms {
		k := m.Receiver + " " + m.GroupKey
		var as []string
		for _, a := range m.Alerts {
			as = append(as, fmt.Sprintf("%s/%s=%s", a.Labels["alertname"], a.Labels["instance"], a.Status))
		}
		sort.Strings(as)
		labels, _ := json.Marshal(m.GroupLabels) // sorted keys
		s := fmt.Sprintf("%s %s [%s]", m.Status, labels, strings.Join(as, " "))
		if h := out[k]; len(h) == 0 || h[len(h)-1] != s {
			out[k] = append(out[k], s)
		}
	}
	return out
}

// TestCompareWithAlertmanager sends one timed alert sequence — a group
// forms, an alert joins it, an inhibiting alert fires and resolves, alerts
// resolve — to Debian's Alertmanager and to a Router with the same
// configuration, and requires the same notification groups, in the same
// order per group, with the same alerts and statuses.
func TestCompareWithAlertmanager(t *testing.T) {
	bin := lookAlertmanager(t)
	if testing.Short() {
		t.Skip("the Alertmanager comparison takes ~15s")
	}
	amHook, opsdHook := newHook(t), newHook(t)
	amBase := startAlertmanager(t, bin, amHook.url(""))
	r, _ := start(t, route.Options{Config: compareConfig(opsdHook)})

	t0 := time.Now()
	a1 := firing("alertname", "HighLatency", "cluster", "c1", "instance", "i1", "severity", "warning")
	a2 := firing("alertname", "HighLatency", "cluster", "c1", "instance", "i2", "severity", "warning")
	other := firing("alertname", "Other", "severity", "info")
	down := firing("alertname", "ClusterDown", "cluster", "c1", "severity", "critical")
	// Events fall between group flushes (each group flushes at 1s, 3s,
	// 5s, ... after its first alert), so jitter cannot reorder them.
	steps := []struct {
		at     time.Duration
		alerts func() []route.Alert
	}{
		{0, func() []route.Alert { return []route.Alert{a1, other} }},
		{2 * time.Second, func() []route.Alert { return []route.Alert{a2} }},
		{4 * time.Second, func() []route.Alert { down.StartsAt = time.Now(); return []route.Alert{down} }},
		{6 * time.Second, func() []route.Alert { return []route.Alert{resolved(down)} }},
		{8 * time.Second, func() []route.Alert { return []route.Alert{resolved(a1)} }},
		{10 * time.Second, func() []route.Alert { return []route.Alert{resolved(a2), resolved(other)} }},
	}
	for _, s := range steps {
		time.Sleep(time.Until(t0.Add(s.at)))
		alerts := s.alerts()
		postAlerts(t, amBase, alerts)
		push(t, r, alerts...)
	}
	time.Sleep(time.Until(t0.Add(12500 * time.Millisecond)))

	want, got := groupHistory(amHook.messages()), groupHistory(opsdHook.messages())
	t.Logf("alertmanager notifications:%s", summary(amHook.messages()))
	t.Logf("opsd notifications:%s", summary(opsdHook.messages()))
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notification groups differ (-alertmanager +opsd):\n%s", diff)
	}
	// Guard against both sides being silent: four groups must have spoken
	// (HighLatency and Other on chat, ClusterDown on pager and on chat).
	if len(got) != 4 {
		t.Errorf("opsd notified %d groups, want 4: %v", len(got), got)
	}
}
