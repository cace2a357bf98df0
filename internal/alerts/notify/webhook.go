package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/config"
)

// SignatureHeader carries "sha256=" and the hex HMAC-SHA256 of the request
// body under the webhook's signing secret.
const SignatureHeader = "X-Opsd-Signature"

// WebhookMessage is the JSON body POSTed to webhooks: Alertmanager's
// webhook payload, version 4, field for field and in its order.
type WebhookMessage struct {
	Receiver          string            `json:"receiver"`
	Status            string            `json:"status"`
	Alerts            []WebhookAlert    `json:"alerts"`
	GroupLabels       map[string]string `json:"groupLabels"`
	CommonLabels      map[string]string `json:"commonLabels"`
	CommonAnnotations map[string]string `json:"commonAnnotations"`
	ExternalURL       string            `json:"externalURL"`
	Version           string            `json:"version"`
	GroupKey          string            `json:"groupKey"`
	TruncatedAlerts   int               `json:"truncatedAlerts"`
}

// WebhookAlert is one alert in a WebhookMessage.
type WebhookAlert struct {
	Status       string            `json:"status"`
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
}

// NewWebhookMessage builds the payload for n, keeping at most maxAlerts
// alerts (0 keeps all) and counting the rest in TruncatedAlerts.
func NewWebhookMessage(receiver string, n *Notification, maxAlerts int) *WebhookMessage {
	alerts := n.Alerts
	truncated := n.TruncatedAlerts
	if maxAlerts > 0 && len(alerts) > maxAlerts {
		truncated += len(alerts) - maxAlerts
		alerts = alerts[:maxAlerts]
	}
	m := &WebhookMessage{
		Receiver:          receiverName(n, receiver),
		Status:            n.Status,
		Alerts:            make([]WebhookAlert, 0, len(alerts)),
		GroupLabels:       nonNil(n.GroupLabels),
		CommonLabels:      nonNil(n.CommonLabels),
		CommonAnnotations: nonNil(n.CommonAnnotations),
		ExternalURL:       n.ExternalURL,
		Version:           "4",
		GroupKey:          n.GroupKey,
		TruncatedAlerts:   truncated,
	}
	for _, a := range alerts {
		m.Alerts = append(m.Alerts, WebhookAlert{
			Status:       a.Status,
			Labels:       nonNil(a.Labels),
			Annotations:  nonNil(a.Annotations),
			StartsAt:     a.StartsAt,
			EndsAt:       a.EndsAt,
			GeneratorURL: a.GeneratorURL,
			Fingerprint:  a.Fingerprint,
		})
	}
	return m
}

func nonNil(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

// Sign returns the SignatureHeader value for body under secret.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

type webhookNotifier struct {
	receiver  string
	conf      config.Webhook
	secret    config.Secret
	client    *http.Client
	timeout   time.Duration
	userAgent string
	redact    *redactor
}

func newWebhook(receiver string, c *config.Webhook, d Deps, secret config.Secret) (*webhookNotifier, error) {
	if c.URL == "" && c.URLFile == "" {
		return nil, errors.New("url or url_file is required")
	}
	w := &webhookNotifier{
		receiver:  receiver,
		conf:      *c,
		secret:    secret,
		client:    d.HTTPClient,
		timeout:   d.Timeout,
		userAgent: "opsd",
		redact:    &redactor{},
	}
	if c.URL != "" {
		if _, err := url.Parse(string(c.URL)); err != nil {
			return nil, errors.New("url does not parse")
		}
		w.redact.addURL(string(c.URL))
	}
	if w.secret == "" {
		w.secret = c.SigningSecret
	}
	w.redact.add(string(w.secret))
	return w, nil
}

func (w *webhookNotifier) Notify(ctx context.Context, n *Notification) (bool, error) {
	raw, err := readSecret(w.conf.URL, w.conf.URLFile)
	if err != nil {
		return false, w.redact.err(fmt.Errorf("read webhook url_file: %w", err))
	}
	// A URL read from a file is only known now.
	red := w.redact.clone()
	red.addURL(raw)
	secret := string(w.secret)
	if w.conf.SigningSecretFile != "" {
		if secret, err = readSecret("", w.conf.SigningSecretFile); err != nil {
			return false, red.err(fmt.Errorf("read webhook signing_secret_file: %w", err))
		}
		red.add(secret)
	}
	retry, err := w.notify(ctx, n, raw, secret)
	return retry, red.err(err)
}

func (w *webhookNotifier) notify(parent context.Context, n *Notification, raw, secret string) (bool, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return false, errors.New("webhook URL is not an http(s) URL")
	}
	body, err := json.Marshal(NewWebhookMessage(w.receiver, n, w.conf.MaxAlerts))
	if err != nil {
		return false, fmt.Errorf("encode webhook payload: %w", err)
	}
	ctx, cancel := context.WithTimeout(parent, w.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, raw, bytes.NewReader(body))
	if err != nil {
		return false, fmt.Errorf("build webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", w.userAgent)
	if secret != "" {
		req.Header.Set(SignatureHeader, Sign([]byte(secret), body))
	}
	dest := redactURL(raw)
	resp, err := w.client.Do(req)
	if err != nil {
		if done, err := ctxDone(parent, err); done {
			return false, fmt.Errorf("post webhook to %s: %w", dest, err)
		}
		return true, fmt.Errorf("post webhook to %s: %w", dest, err)
	}
	defer resp.Body.Close()
	// Read a little of the body for the error, and drain it so the
	// connection can be reused.
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		return false, nil
	}
	err = fmt.Errorf("post webhook to %s: %s", dest, resp.Status)
	if s := strings.TrimSpace(string(snippet)); s != "" {
		err = fmt.Errorf("%w: %s", err, strings.ToValidUTF8(s, "?"))
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests:
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			return true, &RetryAfterError{After: d, Err: err}
		}
		return true, err
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode >= 500:
		return true, err
	default:
		// Other 4xx (and unexpected 1xx/3xx): the same request will fail
		// the same way.
		return false, err
	}
}

// parseRetryAfter reads a Retry-After header: delay-seconds or an
// HTTP-date (RFC 9110 §10.2.3).
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}
