package route_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/alertmanager/dispatch"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
	"github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// net/http keeps idle connections of the senders' client.
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
	)
}

// hook is a webhook endpoint recording what it receives.
type hook struct {
	mu   sync.Mutex
	msgs []notify.WebhookMessage
	srv  *httptest.Server
}

func newHook(t *testing.T) *hook {
	t.Helper()
	h := &hook{}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m notify.WebhookMessage
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.msgs = append(h.msgs, m)
		h.mu.Unlock()
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *hook) url(path string) string { return h.srv.URL + path }

func (h *hook) messages() []notify.WebhookMessage {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.msgs)
}

// waitFor polls until cond holds on the received messages or fails.
func (h *hook) waitFor(t *testing.T, what string, cond func([]notify.WebhookMessage) bool) []notify.WebhookMessage {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if ms := h.messages(); cond(ms) {
			return ms
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; got %s", what, summary(h.messages()))
	return nil
}

// summary renders messages as "receiver status [alertname/instance=status ...]".
func summary(ms []notify.WebhookMessage) string {
	var out []string
	for _, m := range ms {
		out = append(out, msgSummary(m))
	}
	return "\n  " + strings.Join(out, "\n  ")
}

func msgSummary(m notify.WebhookMessage) string {
	var as []string
	for _, a := range m.Alerts {
		as = append(as, a.Labels["alertname"]+"/"+a.Labels["instance"]+"="+a.Status)
	}
	sort.Strings(as)
	return m.Receiver + " " + m.Status + " [" + strings.Join(as, " ") + "]"
}

func webhook(url string) *config.Receiver {
	return &config.Receiver{Webhook: &config.Webhook{URL: config.Secret(url)}}
}

// baseConfig: chat by default, pager for critical alerts (continuing to
// chat's child route too), ClusterDown inhibits warnings of its cluster.
func baseConfig(h *hook) config.Alerts {
	return config.Alerts{
		Route: &config.Route{
			Receiver:       "chat",
			GroupBy:        []string{"alertname", "cluster"},
			GroupWait:      50 * time.Millisecond,
			GroupInterval:  200 * time.Millisecond,
			RepeatInterval: time.Hour,
			Routes: []*config.Route{
				{Matchers: []string{`severity="critical"`}, Receiver: "pager", Continue: true},
				{Matchers: []string{`team="db"`}, Receiver: "db"},
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
			"db":    webhook(h.url("/db")),
		},
	}
}

// start runs a Router until the test ends (or stop is called).
func start(t *testing.T, opts route.Options) (*route.Router, func()) {
	t.Helper()
	r, err := route.New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

func firing(labels ...string) route.Alert {
	a := route.Alert{Labels: map[string]string{}, Annotations: map[string]string{"summary": "test"}, StartsAt: time.Now()}
	for i := 0; i+1 < len(labels); i += 2 {
		a.Labels[labels[i]] = labels[i+1]
	}
	return a
}

func resolved(a route.Alert) route.Alert {
	a.EndsAt = time.Now()
	return a
}

func push(t *testing.T, r *route.Router, alerts ...route.Alert) {
	t.Helper()
	if err := r.Push(context.Background(), alerts...); err != nil {
		t.Fatalf("Push: %v", err)
	}
}

func TestConvertErrors(t *testing.T) {
	recv := map[string]*config.Receiver{"chat": webhook("http://127.0.0.1:1/x")}
	tests := []struct {
		name string
		give config.Alerts
		want []string
	}{
		{
			name: "unknown receiver",
			give: config.Alerts{Receivers: recv, Route: &config.Route{Receiver: "chat",
				Routes: []*config.Route{{Receiver: "pager"}}}},
			want: []string{`alerts.route.routes[0].receiver: unknown receiver "pager" (known: [chat])`},
		},
		{
			name: "bad matchers everywhere",
			give: config.Alerts{Receivers: recv,
				Route:        &config.Route{Receiver: "chat", Routes: []*config.Route{{Matchers: []string{`severity`, `a="b"`, `x=~"("`}}}},
				InhibitRules: []config.InhibitRule{{SourceMatchers: []string{`=x`}}},
			},
			want: []string{
				`alerts.route.routes[0].matchers[0]: invalid matcher "severity"`,
				`alerts.route.routes[0].matchers[2]: invalid matcher "x=~\"(\"`,
				`alerts.inhibit_rules[0].target_matchers: at least one matcher is required`,
				`alerts.inhibit_rules[0].source_matchers[0]: invalid matcher "=x"`,
			},
		},
		{
			name: "root route",
			give: config.Alerts{Receivers: recv, Route: &config.Route{Matchers: []string{`a="b"`}, Continue: true}},
			want: []string{
				"alerts.route.receiver: the root route needs a receiver",
				"alerts.route.matchers: the root route must not have matchers",
				"alerts.route.continue: the root route cannot continue",
			},
		},
		{
			name: "group_by",
			give: config.Alerts{Receivers: recv, Route: &config.Route{Receiver: "chat", GroupBy: []string{"a", "a", "..."},
				GroupWait: -time.Second}},
			want: []string{
				`alerts.route.group_by[1]: duplicate label "a"`,
				`alerts.route.group_by[2]: "..." groups by all labels and must be the only entry`,
				"alerts.route.group_wait: must not be negative",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := route.Convert(tt.give)
			var ce *route.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Convert() error = %v, want a *ConfigError", err)
			}
			if len(ce.Problems) != len(tt.want) {
				t.Errorf("Convert() problems = %q, want %d", ce.Problems, len(tt.want))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Convert() error = %v, want it to contain %q", err, w)
				}
			}
			if _, err := route.New(route.Options{Config: tt.give}); err == nil {
				t.Errorf("New() accepted the config")
			}
		})
	}
}

func TestConvertDefaults(t *testing.T) {
	c, err := route.Convert(config.Alerts{
		Receivers: map[string]*config.Receiver{"chat": webhook("http://127.0.0.1:1/x")},
		Route:     &config.Route{Receiver: "chat", GroupBy: []string{"alertname"}, Routes: []*config.Route{{Matchers: []string{`a="b"`}, GroupWait: time.Second}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Alertmanager's defaults at the root, inherited below.
	tree := dispatch.NewRoute(c.Route, nil)
	if got, want := tree.RouteOpts.GroupWait, 30*time.Second; got != want {
		t.Errorf("root group_wait = %v, want %v", got, want)
	}
	child := tree.Routes[0].RouteOpts
	if got, want := child.RepeatInterval, 4*time.Hour; got != want {
		t.Errorf("child repeat_interval = %v, want %v", got, want)
	}
	if got, want := child.GroupWait, time.Second; got != want {
		t.Errorf("child group_wait = %v, want %v", got, want)
	}
	if _, ok := child.GroupBy["alertname"]; !ok || child.Receiver != "chat" {
		t.Errorf("child opts = %+v, want group_by and receiver inherited", child)
	}
}

func TestRoutingMatchersAndContinue(t *testing.T) {
	h := newHook(t)
	r, _ := start(t, route.Options{Config: baseConfig(h)})
	push(t, r,
		firing("alertname", "Disk", "cluster", "c1", "severity", "critical", "team", "db"),
		firing("alertname", "Latency", "cluster", "c1", "severity", "info"),
	)
	ms := h.waitFor(t, "three notifications", func(ms []notify.WebhookMessage) bool { return len(ms) >= 3 })
	var got []string
	for _, m := range ms {
		got = append(got, msgSummary(m))
	}
	sort.Strings(got)
	want := []string{
		"chat firing [Latency/=firing]",
		"db firing [Disk/=firing]",
		"pager firing [Disk/=firing]",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
	for _, m := range ms {
		if m.Receiver == "pager" {
			if want := `{}/{severity="critical"}:{alertname="Disk", cluster="c1"}`; m.GroupKey != want {
				t.Errorf("pager GroupKey = %q, want %q", m.GroupKey, want)
			}
			if diff := cmp.Diff(map[string]string{"alertname": "Disk", "cluster": "c1"}, m.GroupLabels); diff != "" {
				t.Errorf("GroupLabels (-want +got):\n%s", diff)
			}
		}
	}
	as, err := r.Alerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	receivers := map[string][]string{}
	for _, a := range as {
		receivers[a.Labels["alertname"]] = a.Receivers
	}
	if diff := cmp.Diff(map[string][]string{"Disk": {"pager", "db"}, "Latency": {"chat"}}, receivers); diff != "" {
		t.Errorf("Alerts() receivers (-want +got):\n%s", diff)
	}
}

func TestInhibition(t *testing.T) {
	h := newHook(t)
	r, _ := start(t, route.Options{Config: baseConfig(h)})
	push(t, r, firing("alertname", "ClusterDown", "cluster", "c1", "severity", "page"))
	h.waitFor(t, "ClusterDown", func(ms []notify.WebhookMessage) bool { return len(ms) == 1 })
	push(t, r,
		firing("alertname", "Latency", "cluster", "c1", "severity", "warning"),
		firing("alertname", "Latency", "cluster", "c2", "severity", "warning"),
	)
	h.waitFor(t, "c2 latency", func(ms []notify.WebhookMessage) bool { return len(ms) >= 2 })
	time.Sleep(400 * time.Millisecond) // two group intervals for a wrong c1 notification
	ms := h.messages()
	if len(ms) != 2 || ms[1].CommonLabels["cluster"] != "c2" {
		t.Fatalf("notifications = %s, want ClusterDown then Latency of c2 only", summary(ms))
	}
	as, err := r.Alerts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var c1 route.AlertStatus
	var clusterDownFP string
	for _, a := range as {
		if a.Labels["alertname"] == "Latency" && a.Labels["cluster"] == "c1" {
			c1 = a
		}
		if a.Labels["alertname"] == "ClusterDown" {
			clusterDownFP = a.Fingerprint
		}
	}
	if c1.State != route.StateSuppressed || !slices.Equal(c1.InhibitedBy, []string{clusterDownFP}) {
		t.Errorf("c1 latency status = %s inhibitedBy %v, want suppressed by %s", c1.State, c1.InhibitedBy, clusterDownFP)
	}
	// Resolving the source lets the target through.
	push(t, r, resolved(firing("alertname", "ClusterDown", "cluster", "c1", "severity", "page")))
	h.waitFor(t, "c1 latency after ClusterDown resolved", func(ms []notify.WebhookMessage) bool {
		return slices.ContainsFunc(ms, func(m notify.WebhookMessage) bool {
			return m.CommonLabels["cluster"] == "c1" && m.CommonLabels["alertname"] == "Latency"
		})
	})
}

func TestSilences(t *testing.T) {
	h := newHook(t)
	r, _ := start(t, route.Options{Config: baseConfig(h)})
	ctx := context.Background()
	id, err := r.AddSilence(ctx, []string{`alertname="Latency"`, `cluster=~"c.*"`}, time.Time{}, time.Now().Add(time.Hour), "alice", "maintenance")
	if err != nil {
		t.Fatalf("AddSilence: %v", err)
	}
	push(t, r, firing("alertname", "Latency", "cluster", "c1", "severity", "info"))
	time.Sleep(300 * time.Millisecond)
	if ms := h.messages(); len(ms) != 0 {
		t.Fatalf("silenced alert notified: %s", summary(ms))
	}
	as, _ := r.Alerts(ctx)
	if len(as) != 1 || as[0].State != route.StateSuppressed || !slices.Equal(as[0].SilencedBy, []string{id}) {
		t.Fatalf("Alerts() = %+v, want suppressed by %s", as, id)
	}
	sils, err := r.ListSilences(ctx, route.SilenceFilter{States: []string{route.SilenceActive}, Labels: map[string]string{"alertname": "Latency", "cluster": "c9"}})
	if err != nil || len(sils) != 1 {
		t.Fatalf("ListSilences = %+v, %v; want the silence", sils, err)
	}
	want := route.Silence{ID: id, Matchers: []string{`alertname="Latency"`, `cluster=~"c.*"`}, CreatedBy: "alice", Comment: "maintenance", State: route.SilenceActive}
	if diff := cmp.Diff(want, sils[0], ignoreTimes); diff != "" {
		t.Errorf("silence (-want +got):\n%s", diff)
	}
	if err := r.ExpireSilence(ctx, id); err != nil {
		t.Fatalf("ExpireSilence: %v", err)
	}
	h.waitFor(t, "notification once the silence expired", func(ms []notify.WebhookMessage) bool { return len(ms) == 1 })
	if s, err := r.GetSilence(ctx, id); err != nil || s.State != route.SilenceExpired {
		t.Errorf("GetSilence = %+v, %v; want expired", s, err)
	}
	if sils, _ := r.ListSilences(ctx, route.SilenceFilter{States: []string{route.SilenceActive}}); len(sils) != 0 {
		t.Errorf("active silences after expiry = %+v", sils)
	}

	// Bad input.
	if err := r.ExpireSilence(ctx, "nope"); !errors.Is(err, route.ErrNotFound) {
		t.Errorf("ExpireSilence(unknown) = %v, want ErrNotFound", err)
	}
	for _, bad := range []struct {
		ms    []string
		start time.Time
		end   time.Time
		by    string
	}{
		{nil, time.Time{}, time.Now().Add(time.Hour), "a"},
		{[]string{`a=`}, time.Time{}, time.Now().Add(time.Hour), "a"},
		{[]string{`a=~".*"`}, time.Time{}, time.Now().Add(time.Hour), "a"}, // matches everything
		{[]string{`a="b"`}, time.Time{}, time.Now().Add(-time.Hour), "a"},
		{[]string{`a="b"`}, time.Now().Add(2 * time.Hour), time.Now().Add(time.Hour), "a"},
		{[]string{`a="b"`}, time.Time{}, time.Now().Add(time.Hour), ""},
	} {
		if _, err := r.AddSilence(ctx, bad.ms, bad.start, bad.end, bad.by, ""); !errors.Is(err, route.ErrInvalid) {
			t.Errorf("AddSilence(%q, %v, %v, %q) = %v, want ErrInvalid", bad.ms, bad.start, bad.end, bad.by, err)
		}
	}
	if _, err := r.ListSilences(ctx, route.SilenceFilter{States: []string{"firing"}}); !errors.Is(err, route.ErrInvalid) {
		t.Errorf("ListSilences(bad state) = %v, want ErrInvalid", err)
	}
}

var ignoreTimes = cmp.FilterPath(func(p cmp.Path) bool {
	s := p.String()
	return s == "StartsAt" || s == "EndsAt" || s == "UpdatedAt"
}, cmp.Ignore())

// TestRestartNoDuplicate restarts the router between two notifications of
// one group within repeat_interval: the restarted router must not send the
// first one again, must send the second, and must remember silences.
func TestRestartNoDuplicate(t *testing.T) {
	tests := []struct {
		name string
		opts func(t *testing.T) route.Options
	}{
		{"files", func(t *testing.T) route.Options { return route.Options{DataDir: t.TempDir()} }},
		{"state store", func(t *testing.T) route.Options {
			st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"), nil)
			if err != nil {
				t.Fatalf("open state: %v", err)
			}
			t.Cleanup(func() { st.Close() })
			return route.Options{State: st}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHook(t)
			opts := tt.opts(t)
			opts.Config = baseConfig(h)
			ctx := context.Background()
			a1 := firing("alertname", "Latency", "cluster", "c1", "instance", "i1", "severity", "info")
			a2 := firing("alertname", "Latency", "cluster", "c1", "instance", "i2", "severity", "info")

			r, stop := start(t, opts)
			push(t, r, a1)
			h.waitFor(t, "first notification", func(ms []notify.WebhookMessage) bool { return len(ms) == 1 })
			silID, err := r.AddSilence(ctx, []string{`alertname="Other"`}, time.Time{}, time.Now().Add(time.Hour), "bob", "")
			if err != nil {
				t.Fatal(err)
			}
			stop()

			r2, _ := start(t, opts)
			push(t, r2, a1) // the rule evaluator re-sends what still fires
			time.Sleep(500 * time.Millisecond)
			if ms := h.messages(); len(ms) != 1 {
				t.Fatalf("after restart: %s; want the first notification only", summary(ms))
			}
			push(t, r2, a2)
			ms := h.waitFor(t, "second notification", func(ms []notify.WebhookMessage) bool { return len(ms) == 2 })
			if got, want := msgSummary(ms[1]), "chat firing [Latency/i1=firing Latency/i2=firing]"; got != want {
				t.Errorf("second notification = %s, want %s", got, want)
			}
			if ms[0].GroupKey != ms[1].GroupKey {
				t.Errorf("group key changed across restart: %q then %q", ms[0].GroupKey, ms[1].GroupKey)
			}
			if s, err := r2.GetSilence(ctx, silID); err != nil || s.State != route.SilenceActive {
				t.Errorf("silence after restart = %+v, %v; want it active", s, err)
			}
		})
	}
}

func TestDedupAndRepeat(t *testing.T) {
	h := newHook(t)
	c := baseConfig(h)
	c.Route.RepeatInterval = 700 * time.Millisecond
	r, _ := start(t, route.Options{Config: c})
	a := firing("alertname", "Latency", "cluster", "c1", "severity", "info")
	push(t, r, a)
	h.waitFor(t, "first notification", func(ms []notify.WebhookMessage) bool { return len(ms) == 1 })
	// Group intervals pass with nothing new: nothing is sent again.
	time.Sleep(450 * time.Millisecond)
	push(t, r, a)
	if ms := h.messages(); len(ms) != 1 {
		t.Fatalf("before repeat_interval: %s", summary(ms))
	}
	// After repeat_interval the same notification repeats once.
	ms := h.waitFor(t, "repeat", func(ms []notify.WebhookMessage) bool { return len(ms) == 2 })
	if msgSummary(ms[0]) != msgSummary(ms[1]) {
		t.Errorf("repeat differs: %s", summary(ms))
	}
}

func TestDrillSilence(t *testing.T) {
	h := newHook(t)
	r, _ := start(t, route.Options{Config: baseConfig(h)})
	ctx := context.Background()
	id, err := r.SilenceForDrill(ctx, "orders-db", "run-42", time.Now().Add(time.Hour))
	if err != nil {
		t.Fatalf("SilenceForDrill: %v", err)
	}
	s, err := r.GetSilence(ctx, id)
	if err != nil || !strings.Contains(s.Comment, "run-42") || !slices.Equal(s.Matchers, []string{`source="orders-db"`}) {
		t.Fatalf("drill silence = %+v, %v", s, err)
	}
	push(t, r,
		firing("alertname", "BackupStale", "source", "orders-db", "severity", "info"),
		firing("alertname", "BackupStale", "source", "uploads", "severity", "info"),
	)
	ms := h.waitFor(t, "uploads", func(ms []notify.WebhookMessage) bool { return len(ms) == 1 })
	if ms[0].Alerts[0].Labels["source"] != "uploads" {
		t.Fatalf("notified %s, want only uploads", summary(ms))
	}
	if err := r.EndDrill(ctx, "run-42"); err != nil {
		t.Fatalf("EndDrill: %v", err)
	}
	ms = h.waitFor(t, "orders-db after the drill", func(ms []notify.WebhookMessage) bool { return len(ms) == 2 })
	got := ms[1].Alerts[0]
	if got.Labels["source"] != "orders-db" || got.Annotations[route.AnnotationDrillRun] != "run-42" ||
		!strings.Contains(got.Annotations[route.AnnotationDrill], "drill run run-42 on source orders-db") {
		t.Errorf("notification after drill = %+v, want the drill annotations", got)
	}
	if ms[0].Alerts[0].Annotations[route.AnnotationDrillRun] != "" {
		t.Errorf("uploads alert carries a drill annotation: %+v", ms[0].Alerts[0])
	}
	if s, _ := r.GetSilence(ctx, id); s.State != route.SilenceExpired {
		t.Errorf("drill silence state after EndDrill = %s, want expired", s.State)
	}
}

func TestApplyConfig(t *testing.T) {
	h := newHook(t)
	r, _ := start(t, route.Options{Config: baseConfig(h)})
	bad := baseConfig(h)
	bad.Route.Routes[0].Receiver = "nobody"
	if err := r.ApplyConfig(bad); err == nil || !strings.Contains(err.Error(), `unknown receiver "nobody"`) {
		t.Fatalf("ApplyConfig(bad) = %v", err)
	}
	// The old config still routes critical alerts to pager.
	push(t, r, firing("alertname", "A", "severity", "critical"))
	h.waitFor(t, "pager + chat", func(ms []notify.WebhookMessage) bool { return len(ms) == 1 })
	good := baseConfig(h)
	good.Route.Routes = nil
	if err := r.ApplyConfig(good); err != nil {
		t.Fatalf("ApplyConfig(good): %v", err)
	}
	push(t, r, firing("alertname", "B", "severity", "critical"))
	// A is routed anew too: the new tree puts it in a new group on chat.
	ms := h.waitFor(t, "A and B on chat", func(ms []notify.WebhookMessage) bool { return len(ms) >= 3 })
	var got []string
	for _, m := range ms {
		got = append(got, msgSummary(m))
	}
	sort.Strings(got)
	want := []string{"chat firing [A/=firing]", "chat firing [B/=firing]", "pager firing [A/=firing]"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
}

func TestPushInvalid(t *testing.T) {
	r, _ := start(t, route.Options{})
	err := r.Push(context.Background(), route.Alert{}, firing("alertname", "ok"))
	if !errors.Is(err, route.ErrInvalid) {
		t.Fatalf("Push(no labels) = %v, want ErrInvalid", err)
	}
	as, _ := r.Alerts(context.Background())
	if len(as) != 1 || as[0].State != route.StateActive {
		t.Errorf("Alerts() = %+v, want the valid alert, active", as)
	}
}

// Two replicas share one state store: a silence added on one reaches the
// other, expiring it on the other reaches the first, and only the replica
// that sends (the alerting lead) delivers the group, once.
func TestReplicasShareState(t *testing.T) {
	st, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "state.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	h := newHook(t)
	var lead atomic.Int32 // which replica sends: 1 or 2
	lead.Store(1)
	opts := func(n int32) route.Options {
		return route.Options{Config: baseConfig(h), State: st, SyncInterval: 100 * time.Millisecond,
			Sends: func() bool { return lead.Load() == n }}
	}
	r1, _ := start(t, opts(1))
	r2, _ := start(t, opts(2))
	ctx := context.Background()

	id, err := r1.AddSilence(ctx, []string{`alertname="Silenced"`}, time.Time{}, time.Now().Add(time.Hour), "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the silence on replica 2", func() bool {
		s, err := r2.GetSilence(ctx, id)
		return err == nil && s.State == route.SilenceActive
	})
	if err := r2.ExpireSilence(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the expiry on replica 1", func() bool {
		s, err := r1.GetSilence(ctx, id)
		return err == nil && s.State == route.SilenceExpired
	})

	// Both replicas evaluate the same rules, so both route the alert; one sends.
	a := firing("alertname", "Latency", "cluster", "c1", "instance", "i1", "severity", "info")
	push(t, r1, a)
	push(t, r2, a)
	h.waitFor(t, "the notification", func(ms []notify.WebhookMessage) bool { return len(ms) >= 1 })
	time.Sleep(time.Second)
	if ms := h.messages(); len(ms) != 1 {
		t.Fatalf("two replicas sent %s; want one notification", summary(ms))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
