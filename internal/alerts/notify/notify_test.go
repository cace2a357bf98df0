package notify

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/config"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var t0 = time.Date(2026, 11, 23, 7, 45, 0, 0, time.UTC)

// firing returns a firing notification of the group BackupStale/orders-db
// with n alerts.
func firing(n int) *Notification {
	no := &Notification{
		GroupKey:          `{}:{alertname="BackupStale", source="orders-db"}`,
		Receiver:          "oncall",
		Status:            StatusFiring,
		GroupLabels:       map[string]string{"alertname": "BackupStale", "source": "orders-db"},
		CommonLabels:      map[string]string{"alertname": "BackupStale", "source": "orders-db", "severity": "page"},
		CommonAnnotations: map[string]string{"summary": "Backups of orders-db are stale"},
		ExternalURL:       "https://opsd.example.com:8470",
	}
	targets := []string{"local", "offsite-s3", "archive"}
	for i := range n {
		no.Alerts = append(no.Alerts, Alert{
			Status:       StatusFiring,
			Labels:       map[string]string{"alertname": "BackupStale", "source": "orders-db", "severity": "page", "target": targets[i%len(targets)]},
			Annotations:  map[string]string{"summary": "Backups of orders-db are stale", "description": "No backup for 2h <b>&</b> counting."},
			StartsAt:     t0.Add(time.Duration(i) * time.Minute),
			GeneratorURL: "https://opsd.example.com:8470/ui/rules/BackupStale",
			Fingerprint:  []string{"a1b2c3d4e5f60718", "1122334455667788", "99aabbccddeeff00"}[i%3],
		})
	}
	return no
}

func resolved(n int) *Notification {
	no := firing(n)
	no.Status = StatusResolved
	for i := range no.Alerts {
		no.Alerts[i].Status = StatusResolved
		no.Alerts[i].EndsAt = t0.Add(time.Hour)
	}
	return no
}

func TestNewRequiresAnIntegration(t *testing.T) {
	if _, err := New("empty", config.Receiver{}, Deps{}); err == nil {
		t.Errorf("New(no integration) = nil error, want one")
	}
}

func TestNewIntegrationsOrder(t *testing.T) {
	r, err := New("all", config.Receiver{
		Slack:   &config.Slack{Token: "xoxb-1", Channel: "#ops"},
		Email:   &config.Email{To: []string{"a@example.com"}, From: "opsd@example.com", Smarthost: "127.0.0.1:25"},
		Webhook: &config.Webhook{URL: "https://hooks.example.com/x"},
	}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, in := range r.Integrations() {
		got = append(got, in.Name)
	}
	if diff := cmp.Diff([]string{"slack", "email", "webhook"}, got); diff != "" {
		t.Errorf("Integrations() names (-want +got):\n%s", diff)
	}
	if r.Name() != "all" {
		t.Errorf("Name() = %q, want all", r.Name())
	}
}

func TestMetrics(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
	}))
	defer srv.Close()
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL)}},
		Deps{Metrics: m, HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	// Series exist at zero before the first notification.
	if got := testutil.CollectAndCount(reg, "opsd_notifications_total"); got != 2 {
		t.Errorf("series before any notification = %d, want 2", got)
	}
	ctx := context.Background()
	for _, s := range []int{200, 200, 503} {
		status = s
		_, _ = r.Notify(ctx, firing(1))
	}
	want := `
# HELP opsd_notifications_total Notification attempts per receiver integration, by result (sent or failed); a retried notification counts once per attempt.
# TYPE opsd_notifications_total counter
opsd_notifications_total{receiver="chat",result="failed"} 1
opsd_notifications_total{receiver="chat",result="sent"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "opsd_notifications_total"); err != nil {
		t.Error(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Errorf("NewMetrics twice on one registry = nil error, want AlreadyRegistered")
	}
}

func TestReceiverNotifyJoinsErrors(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ok.Close()
	// Slack answers 503: retryable; the webhook succeeds.
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer down.Close()
	r, err := New("oncall", config.Receiver{
		Slack:   &config.Slack{Token: "xoxb-1", Channel: "#ops", APIURL: down.URL + "/api/"},
		Webhook: &config.Webhook{URL: config.Secret(ok.URL)},
	}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := r.Notify(context.Background(), firing(1))
	if err == nil || !retry {
		t.Fatalf("Notify() = %v, %v; want retry=true and an error", retry, err)
	}
	if !strings.HasPrefix(err.Error(), "slack: ") {
		t.Errorf("Notify() error = %q, want it to name slack", err)
	}
}

func TestRetryAfter(t *testing.T) {
	inner := errors.New("429")
	err := error(&RetryAfterError{After: 3 * time.Second, Err: inner})
	wrapped := errors.Join(errors.New("other"), err)
	d, ok := RetryAfter(wrapped)
	if !ok || d != 3*time.Second {
		t.Errorf("RetryAfter(%v) = %v, %v; want 3s, true", wrapped, d, ok)
	}
	if !errors.Is(wrapped, inner) {
		t.Errorf("errors.Is(%v, inner) = false", wrapped)
	}
	if _, ok := RetryAfter(inner); ok {
		t.Errorf("RetryAfter(plain error) ok = true, want false")
	}
}

func TestTitle(t *testing.T) {
	tests := []struct {
		name string
		give *Notification
		want string
	}{
		{"firing", firing(2), "[FIRING:2] BackupStale source=orders-db"},
		{"resolved", resolved(2), "[RESOLVED] BackupStale source=orders-db"},
		{"no group labels", &Notification{Status: StatusFiring, Alerts: []Alert{{Status: StatusFiring, Labels: map[string]string{"alertname": "X"}}}}, "[FIRING:1] X"},
		{"nothing", &Notification{Status: StatusFiring}, "[FIRING:0] alerts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := notificationTitle(tt.give); got != tt.want {
				t.Errorf("notificationTitle() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		give string
		n    int
		want string
	}{
		{"abc", 3, "abc"},
		{"abcd", 3, "ab…"},
		{"🔥🔥🔥🔥", 3, "🔥🔥…"},
	}
	for _, tt := range tests {
		if got := truncate(tt.give, tt.n); got != tt.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tt.give, tt.n, got, tt.want)
		}
	}
}
