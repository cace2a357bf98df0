package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	alertroute "github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/alerts/rules"
	"github.com/opsd-dev/opsd/internal/config"
)

// realAlerts serves the routes from a real Router (Alertmanager's silences
// and dispatcher) with no receiver; Rules comes from a fixed list.
type realAlerts struct {
	*alertroute.Router
	groups []rules.GroupStatus
}

func (r realAlerts) Rules(context.Context) ([]rules.GroupStatus, error) { return r.groups, nil }

func newAlertsFixture(t *testing.T) (*fixture, *alertroute.Router) {
	t.Helper()
	f := newFixture(t, nil)
	router, err := alertroute.New(alertroute.Options{Config: config.Alerts{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	f.srv.deps.Alerts = realAlerts{Router: router, groups: []rules.GroupStatus{{Name: "opsd", File: "builtin", Path: "local",
		Interval: 15, Rules: []rules.RuleStatus{{Type: "alerting", Name: "BackupStale", Query: "vector(1)", Labels: map[string]string{"severity": "page"},
			Health: "ok", State: "firing", Alerts: []rules.AlertStatus{{Labels: map[string]string{"alertname": "BackupStale"}, Annotations: map[string]string{},
				State: "firing", ActiveAt: time.Now().UTC(), Value: "1"}}}}}}}
	return f, router
}

func TestSilenceRoutes(t *testing.T) {
	f, router := newAlertsFixture(t)
	end := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)

	// A viewer may not silence; bad matchers and missing fields are 400.
	if w := f.do(t, "POST", "/api/v1/silences", "viewer", `{"matchers":["source=\"a\""],"endsAt":"`+end+`"}`); w.Code != http.StatusForbidden {
		t.Errorf("viewer POST = %d, want 403", w.Code)
	}
	for _, body := range []string{
		`{"matchers":["source=~\"(\""],"endsAt":"` + end + `"}`,
		`{"matchers":[],"endsAt":"` + end + `"}`,
		`{"matchers":["source=\"a\""]}`,
		`{"matchers":["source=\"a\""],"endsAt":"2001-01-01T00:00:00Z"}`,
		`{"matchers":["source=\"a\""],"endsAt":"` + end + `","bogus":1}`,
	} {
		if w := f.do(t, "POST", "/api/v1/silences", "operator", body); w.Code != http.StatusBadRequest {
			t.Errorf("POST %s = %d, want 400; body %s", body, w.Code, w.Body)
		}
	}

	w := f.do(t, "POST", "/api/v1/silences", "operator", `{"matchers":["source=\"orders-db\""],"endsAt":"`+end+`","comment":"migration"}`)
	if w.Code != http.StatusCreated {
		t.Fatalf("POST = %d %s", w.Code, w.Body)
	}
	var sil alertroute.Silence
	if err := json.Unmarshal(w.Body.Bytes(), &sil); err != nil {
		t.Fatal(err)
	}
	if sil.ID == "" || sil.State != "active" || sil.CreatedBy != "operator" || sil.Comment != "migration" ||
		w.Header().Get("Location") != "/api/v1/silences/"+sil.ID {
		t.Errorf("created %+v, Location %q", sil, w.Header().Get("Location"))
	}
	// The router has it: an alert of that source is muted.
	got, err := router.ListSilences(context.Background(), alertroute.SilenceFilter{Labels: map[string]string{"source": "orders-db"}})
	if err != nil || len(got) != 1 || got[0].ID != sil.ID {
		t.Fatalf("router silences for source=orders-db = %+v, %v", got, err)
	}
	// The audit log records who silenced what.
	f.rec.mu.Lock()
	audited := false
	for _, r := range f.rec.records {
		audited = audited || (r.Action == "alerts.silence.add" && r.Actor.Name == "operator")
	}
	f.rec.mu.Unlock()
	if !audited {
		t.Error("no alerts.silence.add audit record by operator")
	}

	if w := f.do(t, "GET", "/api/v1/silences/"+sil.ID, "viewer", ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), sil.ID) {
		t.Errorf("GET one = %d %s", w.Code, w.Body)
	}
	if w := f.do(t, "GET", "/api/v1/silences?state=active", "viewer", ""); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), sil.ID) {
		t.Errorf("GET active = %d %s", w.Code, w.Body)
	}
	if w := f.do(t, "GET", "/api/v1/silences?state=bogus", "viewer", ""); w.Code != http.StatusBadRequest {
		t.Errorf("GET state=bogus = %d, want 400", w.Code)
	}
	if w := f.do(t, "DELETE", "/api/v1/silences/"+sil.ID, "operator", ""); w.Code != http.StatusNoContent {
		t.Errorf("DELETE = %d %s", w.Code, w.Body)
	}
	if w := f.do(t, "DELETE", "/api/v1/silences/"+sil.ID, "operator", ""); w.Code != http.StatusNoContent {
		t.Errorf("DELETE again = %d, want 204 (expiring an expired silence)", w.Code)
	}
	if w := f.do(t, "DELETE", "/api/v1/silences/nope", "operator", ""); w.Code != http.StatusNotFound {
		t.Errorf("DELETE unknown = %d, want 404", w.Code)
	}
	if w := f.do(t, "GET", "/api/v1/silences?state=expired", "viewer", ""); !strings.Contains(w.Body.String(), sil.ID) {
		t.Errorf("expired list lacks %s: %s", sil.ID, w.Body)
	}
}

func TestAlertAndRuleRoutes(t *testing.T) {
	f, router := newAlertsFixture(t)
	ctx := context.Background()
	if err := router.Push(ctx,
		alertroute.Alert{Labels: map[string]string{"alertname": "BackupStale", "source": "a"}, StartsAt: time.Now()},
		alertroute.Alert{Labels: map[string]string{"alertname": "BackupStale", "source": "b"}, StartsAt: time.Now()},
	); err != nil {
		t.Fatal(err)
	}
	if _, err := router.AddSilence(ctx, []string{`source="b"`}, time.Time{}, time.Now().Add(time.Hour), "t", ""); err != nil {
		t.Fatal(err)
	}
	var list alertList
	deadline := time.Now().Add(5 * time.Second)
	for {
		w := f.do(t, "GET", "/api/v1/alerts?state=suppressed", "viewer", "")
		if w.Code != http.StatusOK {
			t.Fatalf("GET alerts = %d %s", w.Code, w.Body)
		}
		list = alertList{}
		if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(list.Items) != 1 || list.Items[0].Labels["source"] != "b" || len(list.Items[0].SilencedBy) != 1 {
		t.Errorf("suppressed alerts = %+v, want source b silenced", list.Items)
	}
	w := f.do(t, "GET", "/api/v1/alerts?label=source=a", "viewer", "")
	if err := json.Unmarshal(w.Body.Bytes(), &list); err != nil || len(list.Items) != 1 || list.Items[0].Labels["source"] != "a" {
		t.Errorf("label filter source=a: %+v, %v", list.Items, err)
	}
	if w := f.do(t, "GET", "/api/v1/alerts?state=nope", "viewer", ""); w.Code != http.StatusBadRequest {
		t.Errorf("state=nope = %d, want 400", w.Code)
	}
	w = f.do(t, "GET", "/api/v1/rules", "viewer", "")
	var rl ruleList
	if err := json.Unmarshal(w.Body.Bytes(), &rl); err != nil || len(rl.Groups) != 1 || rl.Groups[0].Rules[0].Name != "BackupStale" {
		t.Errorf("rules = %s, %v", w.Body, err)
	}
}
