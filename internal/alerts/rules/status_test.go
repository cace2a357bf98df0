package rules

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	promrules "github.com/prometheus/prometheus/rules"
)

// Alerts as routing receives them: EndsAt is the resolution time or, while
// firing, ValidUntil (Prometheus's sendAlerts); the generator URL links to
// the remote's graph page (without credentials) or to opsd's rule list.
func TestNotifyTo(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	var got []SentAlert
	f := NotifyTo("https://opsd.example/", func(_ context.Context, a []SentAlert) { got = append(got, a...) })
	firing := &promrules.Alert{Labels: labels.FromStrings("alertname", "X"), Annotations: labels.FromStrings("summary", "s"),
		FiredAt: t0, ValidUntil: t0.Add(4 * time.Minute)}
	resolved := &promrules.Alert{Labels: labels.FromStrings("alertname", "Y"), FiredAt: t0, ResolvedAt: t0.Add(time.Minute),
		ValidUntil: t0.Add(4 * time.Minute)}

	f(context.Background(), `up == 0`, firing, resolved)
	f(context.WithValue(context.Background(), remoteBaseKey{}, "http://user:pw@prom.internal:9090/"), `up == 0`, firing)
	f(context.Background(), `up == 0`) // nothing to send: no call

	if len(got) != 3 {
		t.Fatalf("got %d alerts, want 3", len(got))
	}
	if got[0].EndsAt != firing.ValidUntil || got[0].StartsAt != t0 || got[0].Labels["alertname"] != "X" || got[0].Annotations["summary"] != "s" {
		t.Errorf("firing alert = %+v", got[0])
	}
	if got[1].EndsAt != resolved.ResolvedAt {
		t.Errorf("resolved alert EndsAt = %v, want %v", got[1].EndsAt, resolved.ResolvedAt)
	}
	if got[0].GeneratorURL != "https://opsd.example/api/v1/rules" {
		t.Errorf("local generator URL = %q", got[0].GeneratorURL)
	}
	if want := "http://prom.internal:9090/graph?g0.expr=up+%3D%3D+0&g0.tab=1"; got[2].GeneratorURL != want {
		t.Errorf("remote generator URL = %q, want %q", got[2].GeneratorURL, want)
	}
}
