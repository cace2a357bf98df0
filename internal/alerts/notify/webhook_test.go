package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amwebhook "github.com/prometheus/alertmanager/notify/webhook"

	"github.com/opsd-dev/opsd/internal/config"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

type webhookRequest struct {
	Header http.Header
	Body   []byte
	Path   string
}

func newWebhookServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, func() []webhookRequest) {
	var (
		mu   sync.Mutex
		reqs []webhookRequest
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, webhookRequest{r.Header.Clone(), b, r.URL.RequestURI()})
		mu.Unlock()
		if h != nil {
			h(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, func() []webhookRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]webhookRequest(nil), reqs...)
	}
}

func TestWebhookPayload(t *testing.T) {
	srv, reqs := newWebhookServer(t, nil)
	const secret = "whsec-0123456789"
	r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL + "/hook/T0K3N?key=abc"), MaxAlerts: 2}},
		Deps{HTTPClient: srv.Client()}, WithWebhookSecret(secret))
	if err != nil {
		t.Fatal(err)
	}
	n := firing(3)
	n.Receiver = ""
	n.TruncatedAlerts = 1
	if retry, err := r.Notify(context.Background(), n); err != nil {
		t.Fatalf("Notify() = %v, %v", retry, err)
	}
	got := reqs()
	if len(got) != 1 {
		t.Fatalf("requests = %d, want 1", len(got))
	}
	req := got[0]
	if req.Path != "/hook/T0K3N?key=abc" {
		t.Errorf("path = %q", req.Path)
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write(req.Body)
	if want := "sha256=" + hex.EncodeToString(mac.Sum(nil)); req.Header.Get(SignatureHeader) != want {
		t.Errorf("%s = %q, want %q", SignatureHeader, req.Header.Get(SignatureHeader), want)
	}

	golden := filepath.Join("testdata", "webhook_v4.json")
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, req.Body, "", "  "); err != nil {
		t.Fatal(err)
	}
	pretty.WriteByte('\n')
	if *update {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), pretty.String()); diff != "" {
		t.Errorf("payload differs from %s (-want +got; go test -update rewrites it):\n%s", golden, diff)
	}

	// Alertmanager's own type decodes it with every field in place.
	var am amwebhook.Message
	if err := json.Unmarshal(req.Body, &am); err != nil {
		t.Fatal(err)
	}
	if am.Version != "4" || am.GroupKey != n.GroupKey || am.TruncatedAlerts != 2 || am.Receiver != "chat" ||
		am.Status != "firing" || len(am.Alerts) != 2 || am.ExternalURL != n.ExternalURL ||
		am.GroupLabels["source"] != "orders-db" || am.CommonAnnotations["summary"] == "" ||
		am.Alerts[1].Fingerprint != "1122334455667788" || !am.Alerts[0].StartsAt.Equal(t0) {
		t.Errorf("Alertmanager's webhook.Message decodes to %+v", am)
	}
}

func TestWebhookWithoutSecretHasNoSignature(t *testing.T) {
	srv, reqs := newWebhookServer(t, nil)
	r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL)}}, Deps{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Notify(context.Background(), resolved(1)); err != nil {
		t.Fatal(err)
	}
	if h := reqs()[0].Header.Get(SignatureHeader); h != "" {
		t.Errorf("%s = %q, want none", SignatureHeader, h)
	}
	var m WebhookMessage
	if err := json.Unmarshal(reqs()[0].Body, &m); err != nil {
		t.Fatal(err)
	}
	if m.Status != "resolved" || m.Alerts[0].EndsAt.IsZero() {
		t.Errorf("payload = %+v, want resolved with endsAt", m)
	}
}

func TestWebhookStatus(t *testing.T) {
	tests := []struct {
		status    int
		header    http.Header
		wantErr   bool
		wantRetry bool
		wantAfter time.Duration
	}{
		{status: 200},
		{status: 202},
		{status: 204},
		{status: 400, wantErr: true},
		{status: 401, wantErr: true},
		{status: 404, wantErr: true},
		{status: 408, wantErr: true, wantRetry: true},
		{status: 429, wantErr: true, wantRetry: true},
		{status: 429, header: http.Header{"Retry-After": {"12"}}, wantErr: true, wantRetry: true, wantAfter: 12 * time.Second},
		{status: 500, wantErr: true, wantRetry: true},
		{status: 503, wantErr: true, wantRetry: true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status, tt.header), func(t *testing.T) {
			srv, _ := newWebhookServer(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.header {
					w.Header()[k] = v
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, "nope")
			})
			r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL)}}, Deps{HTTPClient: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			retry, err := r.Integrations()[0].Notifier.Notify(context.Background(), firing(1))
			if (err != nil) != tt.wantErr || retry != tt.wantRetry {
				t.Errorf("Notify(status %d) = %v, %v; want retry=%v, error=%v", tt.status, retry, err, tt.wantRetry, tt.wantErr)
			}
			if d, _ := RetryAfter(err); d != tt.wantAfter {
				t.Errorf("RetryAfter = %v, want %v", d, tt.wantAfter)
			}
			if err != nil && !strings.Contains(err.Error(), fmt.Sprint(tt.status)) {
				t.Errorf("error %q does not name the status", err)
			}
		})
	}
}

func TestWebhookTimeout(t *testing.T) {
	release := make(chan struct{})
	srv, _ := newWebhookServer(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL)}},
		Deps{HTTPClient: srv.Client(), Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := r.Notify(context.Background(), firing(1))
	if err == nil || !retry {
		t.Errorf("Notify(slow server) = %v, %v; want retry=true (our timeout, not the caller's)", retry, err)
	}
}

func TestWebhookURLFile(t *testing.T) {
	srv, reqs := newWebhookServer(t, nil)
	file := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(file, []byte(srv.URL+"/from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := New("chat", config.Receiver{Webhook: &config.Webhook{URLFile: file}}, Deps{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	if got := reqs()[0].Path; got != "/from-file" {
		t.Errorf("path = %q, want /from-file", got)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		give   string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"30", 30 * time.Second, true},
		{"0", 0, true},
		{"-1", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"soon", 0, false},
	}
	for _, tt := range tests {
		got, ok := parseRetryAfter(tt.give, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.give, got, ok, tt.want, tt.wantOK)
		}
	}
}

// TestErrorsRedactSecrets drives every sender into failures whose raw
// errors would carry a secret and checks that no message in the error
// chain does.
func TestErrorsRedactSecrets(t *testing.T) {
	const (
		slackToken = "xoxb-1111-2222-SECRETSLACK"
		smtpPass   = "SMTP-PASS-SECRET-42"
		hookToken  = "T0KEN-IN-PATH-9f8e7d"
		hookQuery  = "sig=QUERY-SECRET-1a2b"
		hookSecret = "HMAC-SIGNING-SECRET"
	)
	secrets := []string{slackToken, smtpPass, hookToken, hookQuery, hookSecret, "QUERY-SECRET-1a2b"}

	// Servers that echo the request back in their error answers.
	echo := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "bad request to %s with %v and %s", r.URL.RequestURI(), r.PostForm, r.Header.Get("Authorization"))
	}))
	defer echo.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	// An SMTP server that refuses the password.
	mode := smtpMode{mechs: []string{"PLAIN"}}
	addr, clientTLS := startSMTP(t, mode, &smtpBackend{user: "opsd", pass: "right"})
	mail := newTestEmail(t, addr, clientTLS, config.Email{AuthUsername: "opsd", AuthPassword: smtpPass}, mode, NewMemStore())

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	mailRefused := newTestEmail(t, refused, clientTLS, config.Email{AuthUsername: "opsd", AuthPassword: smtpPass}, mode, NewMemStore())

	badURLFile := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(badURLFile, []byte("https://user:"+hookToken+"@exa mple.com/"), 0o600); err != nil {
		t.Fatal(err)
	}
	build := func(rc config.Receiver) Notifier {
		r, err := New("oncall", rc, Deps{Timeout: 5 * time.Second}, WithWebhookSecret(hookSecret))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	hookPath := "/hooks/" + hookToken + "?" + hookQuery
	tests := []struct {
		name string
		n    Notifier
	}{
		{"webhook 400 echoing the URL", build(config.Receiver{Webhook: &config.Webhook{URL: config.Secret(echo.URL + hookPath)}})},
		{"webhook connection refused", build(config.Receiver{Webhook: &config.Webhook{URL: config.Secret(closedURL + hookPath)}})},
		{"webhook bad URL with password", build(config.Receiver{Webhook: &config.Webhook{URLFile: badURLFile}})},
		{"slack 400 echoing the token", build(config.Receiver{Slack: &config.Slack{Token: slackToken, Channel: "#ops", APIURL: echo.URL + "/api/"}})},
		{"slack connection refused", build(config.Receiver{Slack: &config.Slack{Token: slackToken, Channel: "#ops", APIURL: closedURL + "/api/"}})},
		{"smtp auth refused", mail},
		{"smtp connection refused", mailRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.n.Notify(context.Background(), firing(1))
			if err == nil {
				t.Fatal("Notify() error = nil, want one")
			}
			t.Logf("error: %v", err)
			for _, e := range errorChain(err) {
				msg := e.Error() + fmt.Sprintf(" %+v %#v", e, e)
				for _, s := range secrets {
					if strings.Contains(msg, s) {
						t.Errorf("error %T in the chain contains secret %q: %s", e, s, msg)
					}
				}
			}
		})
	}
}

func errorChain(err error) []error {
	var out []error
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		out = append(out, e)
		switch u := e.(type) {
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		}
	}
	walk(err)
	return out
}

// The signing secret comes from the config (inline or a file read at each
// send, so a rotated secret applies without a reload).
func TestWebhookSigningSecretFromConfig(t *testing.T) {
	srv, reqs := newWebhookServer(t, nil)
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("s3cret-one\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fromFile, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL), SigningSecretFile: file}}, Deps{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	inline, err := New("chat", config.Receiver{Webhook: &config.Webhook{URL: config.Secret(srv.URL), SigningSecret: "inline-secret"}}, Deps{HTTPClient: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	send := func(r *Receiver) {
		t.Helper()
		if _, err := r.Notify(context.Background(), firing(1)); err != nil {
			t.Fatal(err)
		}
	}
	send(fromFile)
	if err := os.WriteFile(file, []byte("s3cret-two"), 0o600); err != nil {
		t.Fatal(err)
	}
	send(fromFile)
	send(inline)
	got := reqs()
	for i, secret := range []string{"s3cret-one", "s3cret-two", "inline-secret"} {
		if h, want := got[i].Header.Get(SignatureHeader), Sign([]byte(secret), got[i].Body); h != want {
			t.Errorf("request %d: %s = %q, want HMAC under %q (%s)", i, SignatureHeader, h, secret, want)
		}
	}
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	if retry, err := fromFile.Notify(context.Background(), firing(1)); err == nil || retry {
		t.Errorf("Notify with the secret file gone = %v, %v; want a non-retryable error", retry, err)
	}
}
