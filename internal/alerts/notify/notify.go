// Package notify sends alert notifications to the receivers configured under
// alerts.receivers: Slack (through the Web API, one message per alert group,
// updated in place), email (SMTP with STARTTLS or implicit TLS, threaded per
// group) and webhooks (Alertmanager's v4 JSON payload, HMAC-signed).
//
// The package only delivers. Grouping, waiting, deduplication and retries
// belong to the dispatcher, which calls a Notifier with one alert group at a
// time. Like Alertmanager's notifiers, each sender classifies its own
// failures: Notify returns retry=true when the same notification may succeed
// later (network errors, timeouts, 5xx, rate limits) and false when it never
// will until the configuration changes (bad token, unknown channel, rejected
// address, failed SMTP authentication). A wait the remote asked for (HTTP
// 429 Retry-After) is carried by the error; see RetryAfter.
//
// Errors never contain secrets: Slack tokens, SMTP passwords, webhook URLs
// (beyond scheme and host) and signing secrets are replaced by [REDACTED].
package notify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opsd-dev/opsd/internal/config"
)

// Notification statuses, as in Alertmanager.
const (
	StatusFiring   = "firing"
	StatusResolved = "resolved"
)

// Notifier delivers one notification about one alert group.
//
// retry reports whether sending the same notification again later may
// succeed. It is false for errors that need a configuration change and for
// a done ctx. err may wrap a *RetryAfterError when the remote asked for a
// wait before the next attempt.
type Notifier interface {
	Notify(ctx context.Context, n *Notification) (retry bool, err error)
}

// Notification is one alert group as the dispatcher hands it over. Its
// fields mirror Alertmanager's webhook payload (version 4).
type Notification struct {
	// GroupKey identifies the alert group across notifications; updates
	// of one Slack message and one email thread are keyed by it.
	GroupKey string
	// Receiver is the receiver's name; empty means the name given to New.
	Receiver string
	// Status is StatusFiring if any alert fires, else StatusResolved.
	Status            string
	GroupLabels       map[string]string
	CommonLabels      map[string]string
	CommonAnnotations map[string]string
	Alerts            []Alert
	// ExternalURL is opsd's own URL, for links back to it.
	ExternalURL string
	// TruncatedAlerts counts alerts the dispatcher left out of Alerts.
	TruncatedAlerts int
}

// Alert is one alert of a group.
type Alert struct {
	Status       string // StatusFiring or StatusResolved
	Labels       map[string]string
	Annotations  map[string]string
	StartsAt     time.Time
	EndsAt       time.Time // zero while firing with no known end
	GeneratorURL string
	Fingerprint  string
}

// Firing returns the firing alerts of n.
func (n *Notification) Firing() []Alert { return n.withStatus(StatusFiring) }

// Resolved returns the resolved alerts of n.
func (n *Notification) Resolved() []Alert { return n.withStatus(StatusResolved) }

func (n *Notification) withStatus(s string) []Alert {
	var out []Alert
	for _, a := range n.Alerts {
		if a.Status == s {
			out = append(out, a)
		}
	}
	return out
}

// RetryAfterError is returned, wrapped, when the remote answered "too many
// requests" and said how long to wait. The dispatcher should wait at least
// After before the next attempt to the same integration.
type RetryAfterError struct {
	After time.Duration
	Err   error
}

func (e *RetryAfterError) Error() string {
	return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
}

func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns the wait a remote asked for, if err carries one.
func RetryAfter(err error) (time.Duration, bool) {
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		return ra.After, true
	}
	return 0, false
}

// Deps are the dependencies of the senders. Every field is optional.
type Deps struct {
	// HTTPClient sends Slack and webhook requests; nil means a shared
	// client with http.DefaultTransport's settings and Alertmanager's
	// larger idle connection pool.
	HTTPClient *http.Client
	// Messages remembers the Slack message and the email thread of each
	// alert group; nil means an in-memory store, which forgets them on
	// restart (a restarted opsd then posts a new Slack message).
	Messages MessageStore
	// Logger reports what is not returned: a message delivered whose
	// reference could not be stored, an update that fell back to a post.
	Logger *slog.Logger
	// Metrics counts opsd_notifications_total; nil counts nothing.
	Metrics *Metrics
	// TLSConfig is the base of the SMTP TLS configuration (root CAs,
	// minimum version); ServerName is always the smarthost's host.
	TLSConfig *tls.Config
	// Timeout bounds one Notify of one integration; 0 means 30s.
	Timeout time.Duration
	// Hostname is sent in SMTP EHLO and used in Message-IDs when the
	// From address has no domain; empty means os.Hostname.
	Hostname string
}

// Option configures New.
type Option func(*options)

type options struct {
	webhookSecret config.Secret
}

// WithWebhookSecret signs webhook bodies with HMAC-SHA256 under secret in
// the X-Opsd-Signature header. config.Webhook has no key for it yet.
func WithWebhookSecret(secret config.Secret) Option {
	return func(o *options) { o.webhookSecret = secret }
}

// Integration is one channel of a receiver: its Slack, email or webhook
// sender. Its Notifier records opsd_notifications_total.
type Integration struct {
	Name     string // "slack", "email" or "webhook"
	Notifier Notifier
}

// Receiver sends to every integration of one configured receiver.
type Receiver struct {
	name         string
	integrations []Integration
}

var _ Notifier = (*Receiver)(nil)

// New builds the senders of the receiver called name. It reads no secret
// file: token_file, auth_password_file and url_file are read at each
// Notify, so a rotated secret takes effect without a reload.
func New(name string, r config.Receiver, deps Deps, opts ...Option) (*Receiver, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	deps = withDefaults(deps)
	rc := &Receiver{name: name}
	add := func(kind string, n Notifier) {
		deps.Metrics.init(name)
		rc.integrations = append(rc.integrations, Integration{
			Name:     kind,
			Notifier: &instrumented{Notifier: n, receiver: name, metrics: deps.Metrics},
		})
	}
	if r.Slack != nil {
		s, err := newSlack(name, r.Slack, deps)
		if err != nil {
			return nil, fmt.Errorf("receiver %q: slack: %w", name, err)
		}
		add("slack", s)
	}
	if r.Email != nil {
		e, err := newEmail(name, r.Email, deps)
		if err != nil {
			return nil, fmt.Errorf("receiver %q: email: %w", name, err)
		}
		add("email", e)
	}
	if r.Webhook != nil {
		w, err := newWebhook(name, r.Webhook, deps, o.webhookSecret)
		if err != nil {
			return nil, fmt.Errorf("receiver %q: webhook: %w", name, err)
		}
		add("webhook", w)
	}
	if len(rc.integrations) == 0 {
		return nil, fmt.Errorf("receiver %q: no slack, email or webhook configured", name)
	}
	return rc, nil
}

func withDefaults(d Deps) Deps {
	if d.HTTPClient == nil {
		d.HTTPClient = defaultClient()
	}
	if d.Messages == nil {
		d.Messages = NewMemStore()
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Timeout <= 0 {
		d.Timeout = 30 * time.Second
	}
	if d.Hostname == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			d.Hostname = h
		} else {
			d.Hostname = "localhost"
		}
	}
	return d
}

// defaultClient is the HTTP client of senders given none: one shared
// transport with http.DefaultTransport's settings but an idle pool of
// Alertmanager's notifiers (prometheus/common's NewRoundTripperFromConfig:
// 20,000 idle connections, 1,000 per host) instead of 2 per host. When
// many alert groups flush at once to one Slack API or webhook host, the
// connections are reused instead of dialed (and TLS-handshaken) anew for
// nearly every notification. At most 64 connections per host are open at
// once (Alertmanager sets no bound): a burst of 1,000 groups flushing
// together queues for a connection instead of opening 1,000 sockets to one
// Slack API or webhook; on the 10,000-alert routing benchmark 16, 32, 64
// and unbounded measured the same within noise.
var defaultClient = sync.OnceValue(func() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 20_000
	t.MaxIdleConnsPerHost = 1_000
	t.MaxConnsPerHost = 64
	return &http.Client{Transport: t}
})

// Name returns the receiver's name.
func (r *Receiver) Name() string { return r.name }

// Integrations returns the receiver's senders, in the order slack, email,
// webhook. A dispatcher that retries should retry each integration on its
// own, as Alertmanager does, so that a failing one does not make the others
// send twice.
func (r *Receiver) Integrations() []Integration { return slices.Clone(r.integrations) }

// Notify sends n to every integration concurrently and waits for all. It
// asks for a retry if any failed integration may succeed later; a retry
// sends to all of them again (an update for Slack, a new mail for email).
func (r *Receiver) Notify(ctx context.Context, n *Notification) (bool, error) {
	type result struct {
		retry bool
		err   error
	}
	results := make([]result, len(r.integrations))
	var wg sync.WaitGroup
	for i, in := range r.integrations {
		wg.Go(func() {
			retry, err := in.Notifier.Notify(ctx, n)
			if err != nil {
				err = fmt.Errorf("%s: %w", in.Name, err)
			}
			results[i] = result{retry, err}
		})
	}
	wg.Wait()
	var (
		retry bool
		errs  []error
	)
	for _, res := range results {
		if res.err != nil {
			retry = retry || res.retry
			errs = append(errs, res.err)
		}
	}
	return retry, errors.Join(errs...)
}

// Metrics holds opsd_notifications_total; one Metrics serves every receiver.
type Metrics struct {
	notifications *prometheus.CounterVec
}

// Values of the result label of opsd_notifications_total.
const (
	resultSuccess = "sent"
	resultFailure = "failed"
)

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_notifications_total",
			Help: "Notification attempts per receiver integration, by result (sent or failed); a retried notification counts once per attempt.",
		}, []string{"receiver", "result"}),
	}
	if err := reg.Register(m.notifications); err != nil {
		return nil, fmt.Errorf("register opsd_notifications_total: %w", err)
	}
	return m, nil
}

// init creates the receiver's series at zero, so rate() sees the first
// failure.
func (m *Metrics) init(receiver string) {
	if m == nil {
		return
	}
	m.notifications.WithLabelValues(receiver, resultSuccess)
	m.notifications.WithLabelValues(receiver, resultFailure)
}

func (m *Metrics) observe(receiver string, err error) {
	if m == nil {
		return
	}
	result := resultSuccess
	if err != nil {
		result = resultFailure
	}
	m.notifications.WithLabelValues(receiver, result).Inc()
}

// instrumented counts every attempt of one integration.
type instrumented struct {
	Notifier
	receiver string
	metrics  *Metrics
}

func (i *instrumented) Notify(ctx context.Context, n *Notification) (bool, error) {
	retry, err := i.Notifier.Notify(ctx, n)
	i.metrics.observe(i.receiver, err)
	return retry, err
}

// Unwrap returns the sender inside.
func (i *instrumented) Unwrap() Notifier { return i.Notifier }

// receiverName is the name a payload or message shows.
func receiverName(n *Notification, configured string) string {
	if n.Receiver != "" {
		return n.Receiver
	}
	return configured
}

// ctxDone turns an error seen after ctx ended into ctx's error: the cause
// is the deadline or cancellation, and retrying under a done ctx is
// pointless.
func ctxDone(ctx context.Context, err error) (bool, error) {
	if ctx.Err() != nil {
		return true, fmt.Errorf("%w: %w", context.Cause(ctx), err)
	}
	// An I/O deadline set from ctx's may fire a moment before ctx's timer.
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return true, fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	return false, nil
}
