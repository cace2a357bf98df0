package route

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/alertmanager/alert"
	amnotify "github.com/prometheus/alertmanager/notify"
	"github.com/prometheus/common/model"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
)

// adapter is an Alertmanager Notifier that sends through one opsd
// integration. The pipeline has already grouped, muted and deduplicated;
// the adapter builds the notification Alertmanager's webhook would carry.
type adapter struct {
	receiver    string
	integration string
	n           notify.Notifier
	router      *Router
}

var _ amnotify.Notifier = (*adapter)(nil)

// Notify implements Alertmanager's Notifier. A wait the remote asked for
// (HTTP 429 Retry-After) is served here, within ctx, before the retry
// stage's own backoff, so the next attempt respects it.
func (a *adapter) Notify(ctx context.Context, alerts ...*alert.Alert) (bool, error) {
	if a.router.sends != nil && !a.router.sends() {
		// Another replica holds the alerting lead and sends this group.
		a.router.logger.Debug("notification left to the replica holding the alerting lead", "receiver", a.receiver, "integration", a.integration)
		return false, nil
	}
	n, err := a.router.notification(ctx, a.receiver, alerts)
	if err != nil {
		return false, err
	}
	retry, err := a.n.Notify(ctx, n)
	if err != nil && retry {
		if d, ok := notify.RetryAfter(err); ok {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
			}
		}
	}
	return retry, err
}

// notification converts one flush of an aggregation group, with the group
// key, receiver and group labels the dispatcher put in ctx.
func (r *Router) notification(ctx context.Context, receiver string, alerts []*alert.Alert) (*notify.Notification, error) {
	key, err := amnotify.ExtractGroupKey(ctx)
	if err != nil {
		return nil, err
	}
	groupLabels, ok := amnotify.GroupLabels(ctx)
	if !ok {
		return nil, fmt.Errorf("group labels missing for group %s", key)
	}
	if name, ok := amnotify.ReceiverName(ctx); ok {
		receiver = name
	}
	now := time.Now()
	n := &notify.Notification{
		GroupKey:    string(key),
		Receiver:    receiver,
		Status:      notify.StatusResolved,
		GroupLabels: stringMap(groupLabels),
		ExternalURL: r.externalURL,
		Alerts:      make([]notify.Alert, 0, len(alerts)),
	}
	drills := r.drillNotes(ctx)
	for _, a := range alerts {
		na := notify.Alert{
			Status:       notify.StatusFiring,
			Labels:       stringMap(a.Labels),
			Annotations:  stringMap(a.Annotations),
			StartsAt:     a.StartsAt,
			GeneratorURL: a.GeneratorURL,
			Fingerprint:  a.Fingerprint().String(),
		}
		if a.ResolvedAt(now) {
			na.Status = notify.StatusResolved
			na.EndsAt = a.EndsAt
		} else {
			n.Status = notify.StatusFiring
		}
		for _, d := range drills {
			if d.covers(a.Labels, a.StartsAt) {
				na.Annotations[AnnotationDrillRun] = d.runID
				na.Annotations[AnnotationDrill] = d.note()
				break
			}
		}
		n.Alerts = append(n.Alerts, na)
	}
	n.CommonLabels, n.CommonAnnotations = common(n.Alerts)
	return n, nil
}

// common returns the labels and annotations every alert shares, as
// Alertmanager's template data computes them.
func common(alerts []notify.Alert) (map[string]string, map[string]string) {
	if len(alerts) == 0 {
		return map[string]string{}, map[string]string{}
	}
	labels := clone(alerts[0].Labels)
	annotations := clone(alerts[0].Annotations)
	for _, a := range alerts[1:] {
		for k, v := range labels {
			if a.Labels[k] != v {
				delete(labels, k)
			}
		}
		for k, v := range annotations {
			if a.Annotations[k] != v {
				delete(annotations, k)
			}
		}
	}
	return labels, annotations
}

func clone(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// drillSilence is a silence SilenceForDrill created, seen from a
// notification.
type drillSilence struct {
	id, source, runID string
	start, end        time.Time
	matches           func(model.LabelSet) bool
}

// covers reports whether an alert with labels that started at startsAt
// fell under the drill: it started before the drill's silence ended.
func (d drillSilence) covers(ls model.LabelSet, startsAt time.Time) bool {
	return d.matches(ls) && startsAt.Before(d.end)
}

func (d drillSilence) note() string {
	return fmt.Sprintf("began during drill run %s on source %s; silenced %s until %s (silence %s)",
		d.runID, d.source, d.start.UTC().Format(time.RFC3339), d.end.UTC().Format(time.RFC3339), d.id)
}
