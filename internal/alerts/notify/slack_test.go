package notify

import (
	"context"
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/slack-go/slack"

	"github.com/opsd-dev/opsd/internal/config"
)

// slackCall is one Web API request as the fake Slack saw it.
type slackCall struct {
	Method  string // chat.postMessage, chat.update
	Channel string
	TS      string
	Text    string
	Blocks  slack.Blocks
}

// fakeSlack speaks enough of Slack's Web API for chat.postMessage and
// chat.update: token from the Authorization header or the form, form or
// JSON bodies, {"ok":...} answers. fail, when set, answers a call instead.
type fakeSlack struct {
	t     *testing.T
	token string

	mu       sync.Mutex
	calls    []slackCall
	messages map[string]slackCall // channel+ts → latest content
	next     int
	fail     func(method string) (status int, header http.Header, body string, ok bool)
}

func newFakeSlack(t *testing.T, token string) (*fakeSlack, *httptest.Server) {
	f := &fakeSlack{t: t, token: token, messages: map[string]slackCall{}}
	srv := httptest.NewServer(http.StripPrefix("/api/", f))
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fakeSlack) Calls() []slackCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]slackCall(nil), f.calls...)
}

func (f *fakeSlack) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	method := r.URL.Path
	params := map[string]string{}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		var raw map[string]any
		if err := json.NewDecoder(r.Body).Decode(&raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for k, v := range raw {
			if s, ok := v.(string); ok {
				params[k] = s
			} else {
				b, _ := json.Marshal(v)
				params[k] = string(b)
			}
		}
	default:
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		for k := range r.PostForm {
			params[k] = r.PostForm.Get(k)
		}
	}
	token := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if token == "" {
		token = params["token"]
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	reply := func(v map[string]any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	if f.fail != nil {
		if status, header, body, ok := f.fail(method); ok {
			for k, v := range header {
				w.Header()[k] = v
			}
			w.WriteHeader(status)
			fmt.Fprint(w, body)
			return
		}
	}
	if token != f.token {
		reply(map[string]any{"ok": false, "error": "invalid_auth"})
		return
	}
	call := slackCall{Method: method, Channel: params["channel"], TS: params["ts"], Text: params["text"]}
	if b := params["blocks"]; b != "" {
		if err := json.Unmarshal([]byte(b), &call.Blocks); err != nil {
			f.t.Errorf("%s: blocks do not decode: %v", method, err)
		}
	}
	switch method {
	case "chat.postMessage":
		if call.Channel != "#ops" {
			reply(map[string]any{"ok": false, "error": "channel_not_found"})
			return
		}
		f.next++
		call.Channel = "C0OPS"
		call.TS = fmt.Sprintf("1700000000.%06d", f.next)
		f.calls = append(f.calls, call)
		f.messages[call.Channel+call.TS] = call
		reply(map[string]any{"ok": true, "channel": call.Channel, "ts": call.TS,
			"message": map[string]any{"text": call.Text, "ts": call.TS}})
	case "chat.update":
		if _, ok := f.messages[call.Channel+call.TS]; !ok {
			reply(map[string]any{"ok": false, "error": "message_not_found"})
			return
		}
		f.calls = append(f.calls, call)
		f.messages[call.Channel+call.TS] = call
		reply(map[string]any{"ok": true, "channel": call.Channel, "ts": call.TS, "text": call.Text})
	default:
		reply(map[string]any{"ok": false, "error": "unknown_method"})
	}
}

func newSlackReceiver(t *testing.T, srv *httptest.Server, c config.Slack, store MessageStore) *Receiver {
	t.Helper()
	if c.APIURL == "" {
		c.APIURL = srv.URL + "/api/"
	}
	if c.Channel == "" {
		c.Channel = "#ops"
	}
	r, err := New("oncall", config.Receiver{Slack: &c}, Deps{HTTPClient: srv.Client(), Messages: store, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// headerText returns the text of the header block.
func headerText(t *testing.T, bs slack.Blocks) string {
	t.Helper()
	for _, b := range bs.BlockSet {
		if h, ok := b.(*slack.HeaderBlock); ok {
			return h.Text.Text
		}
	}
	t.Fatalf("no header block in %d blocks", len(bs.BlockSet))
	return ""
}

func blockTexts(bs slack.Blocks) string {
	var out []string
	for _, b := range bs.BlockSet {
		switch b := b.(type) {
		case *slack.SectionBlock:
			if b.Text != nil {
				out = append(out, b.Text.Text)
			}
			for _, f := range b.Fields {
				out = append(out, f.Text)
			}
		case *slack.ContextBlock:
			for _, e := range b.ContextElements.Elements {
				if tx, ok := e.(*slack.TextBlockObject); ok {
					out = append(out, tx.Text)
				}
			}
		}
	}
	return strings.Join(out, "\n")
}

func TestSlackPostThenUpdate(t *testing.T) {
	fake, srv := newFakeSlack(t, "xoxb-test-token")
	store := NewMemStore()
	r := newSlackReceiver(t, srv, config.Slack{Token: "xoxb-test-token"}, store)
	ctx := context.Background()

	steps := []*Notification{firing(1), firing(2), resolved(2), firing(1)}
	for i, n := range steps {
		if retry, err := r.Notify(ctx, n); err != nil {
			t.Fatalf("step %d: Notify() = %v, %v", i, retry, err)
		}
	}
	calls := fake.Calls()
	type brief struct{ Method, Channel, TS, Header string }
	var got []brief
	for _, c := range calls {
		got = append(got, brief{c.Method, c.Channel, c.TS, headerText(t, c.Blocks)})
	}
	want := []brief{
		{"chat.postMessage", "C0OPS", "1700000000.000001", "🔥 [FIRING:1] BackupStale source=orders-db"},
		{"chat.update", "C0OPS", "1700000000.000001", "🔥 [FIRING:2] BackupStale source=orders-db"},
		{"chat.update", "C0OPS", "1700000000.000001", "✅ [RESOLVED] BackupStale source=orders-db"},
		// Firing again after it resolved: a new message, not an edit.
		{"chat.postMessage", "C0OPS", "1700000000.000002", "🔥 [FIRING:1] BackupStale source=orders-db"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Slack calls (-want +got):\n%s", diff)
	}
	for _, c := range calls {
		t.Logf("%s channel=%s ts=%s header=%q", c.Method, c.Channel, c.TS, headerText(t, c.Blocks))
	}

	// Content: a section per alert with escaped mrkdwn, a context line
	// linking back to opsd, a fallback text.
	upd := calls[1]
	text := blockTexts(upd.Blocks)
	for _, want := range []string{
		"*source*\norders-db",
		":red_circle: *Backups of orders-db are stale*",
		"No backup for 2h &lt;b&gt;&amp;&lt;/b&gt; counting.",
		"`target=local`", "`target=offsite-s3`",
		"<https://opsd.example.com:8470/ui/rules/BackupStale|source>",
		"<https://opsd.example.com:8470|opsd>",
		"receiver *oncall*",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("update blocks lack %q:\n%s", want, text)
		}
	}
	if want := "[FIRING:2] BackupStale source=orders-db: Backups of orders-db are stale"; upd.Text != want {
		t.Errorf("fallback text = %q, want %q", upd.Text, want)
	}
	if res := blockTexts(calls[2].Blocks); !strings.Contains(res, ":large_green_circle:") || !strings.Contains(res, "resolved <!date^") {
		t.Errorf("resolved blocks lack the resolved marks:\n%s", res)
	}

	ref, ok, _ := store.GetMessage(ctx, MessageKey{"oncall", "slack", firing(1).GroupKey})
	if want := (MessageRef{Channel: "C0OPS", ID: "1700000000.000002", Sent: 4}); !ok || ref.Channel != want.Channel || ref.ID != want.ID || ref.Sent != want.Sent || ref.Resolved {
		t.Errorf("stored ref = %+v, %v; want %+v", ref, ok, want)
	}
}

func TestSlackUpdateOfVanishedMessagePostsAnew(t *testing.T) {
	fake, srv := newFakeSlack(t, "xoxb-test-token")
	store := NewMemStore()
	key := MessageKey{"oncall", "slack", firing(1).GroupKey}
	_ = store.PutMessage(context.Background(), key, MessageRef{Channel: "C0OPS", ID: "1600000000.000001", Sent: 3})
	r := newSlackReceiver(t, srv, config.Slack{Token: "xoxb-test-token"}, store)
	if _, err := r.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	calls := fake.Calls()
	if len(calls) != 1 || calls[0].Method != "chat.postMessage" {
		t.Fatalf("calls = %+v, want one chat.postMessage", calls)
	}
	if ref, _, _ := store.GetMessage(context.Background(), key); ref.ID != calls[0].TS {
		t.Errorf("stored ts = %q, want the new %q", ref.ID, calls[0].TS)
	}
}

func TestSlackTokenFile(t *testing.T) {
	fake, srv := newFakeSlack(t, "xoxb-from-file")
	file := filepath.Join(t.TempDir(), "slack")
	if err := os.WriteFile(file, []byte("xoxb-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := newSlackReceiver(t, srv, config.Slack{TokenFile: file}, NewMemStore())
	if _, err := r.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	if n := len(fake.Calls()); n != 1 {
		t.Errorf("calls = %d, want 1", n)
	}
	_ = os.Remove(file)
	retry, err := r.Notify(context.Background(), firing(1))
	if err == nil || retry {
		t.Errorf("Notify(token file gone) = %v, %v; want retry=false and an error", retry, err)
	}
}

func TestSlackErrors(t *testing.T) {
	tests := []struct {
		name       string
		status     int
		header     http.Header
		body       string
		wantRetry  bool
		wantAfter  time.Duration
		wantSubstr string
	}{
		{"rate limited", 429, http.Header{"Retry-After": {"7"}}, "", true, 7 * time.Second, "retry after 7s"},
		{"429 without Retry-After", 429, nil, "", true, 0, "429"},
		{"server error", 500, nil, "<html>oops</html>", true, 0, "500"},
		{"bad gateway", 502, nil, "", true, 0, "502"},
		{"channel not found", 200, nil, `{"ok":false,"error":"channel_not_found"}`, false, 0, "channel_not_found"},
		{"invalid auth", 200, nil, `{"ok":false,"error":"invalid_auth"}`, false, 0, "invalid_auth"},
		{"slack internal error", 200, nil, `{"ok":false,"error":"internal_error"}`, true, 0, "internal_error"},
		{"ok false ratelimited", 200, nil, `{"ok":false,"error":"ratelimited"}`, true, 0, "ratelimited"},
		{"not json", 200, nil, `<html>proxy</html>`, true, 0, "chat.postMessage"},
		{"forbidden", 403, nil, "", false, 0, "403"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake, srv := newFakeSlack(t, "xoxb-test-token")
			fake.fail = func(string) (int, http.Header, string, bool) {
				return tt.status, tt.header, tt.body, true
			}
			r := newSlackReceiver(t, srv, config.Slack{Token: "xoxb-test-token"}, NewMemStore())
			retry, err := r.Integrations()[0].Notifier.Notify(context.Background(), firing(1))
			if err == nil {
				t.Fatalf("Notify() error = nil, want one")
			}
			if retry != tt.wantRetry {
				t.Errorf("Notify() retry = %v, want %v (err %v)", retry, tt.wantRetry, err)
			}
			after, ok := RetryAfter(err)
			if ok != (tt.wantAfter > 0) || after != tt.wantAfter {
				t.Errorf("RetryAfter(%v) = %v, %v; want %v", err, after, ok, tt.wantAfter)
			}
			if !strings.Contains(err.Error(), tt.wantSubstr) {
				t.Errorf("Notify() error = %q, want it to contain %q", err, tt.wantSubstr)
			}
			if strings.Contains(err.Error(), "xoxb-test-token") {
				t.Errorf("Notify() error %q contains the token", err)
			}
		})
	}
}

func TestSlackUnreachable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close()
	r, err := New("oncall", config.Receiver{Slack: &config.Slack{Token: "xoxb-test-token", Channel: "#ops", APIURL: u + "/api/"}}, Deps{})
	if err != nil {
		t.Fatal(err)
	}
	retry, err := r.Notify(context.Background(), firing(1))
	if err == nil || !retry {
		t.Errorf("Notify(connection refused) = %v, %v; want retry=true and an error", retry, err)
	}
}

func TestSlackCancelledIsNotRetried(t *testing.T) {
	_, srv := newFakeSlack(t, "xoxb-test-token")
	r := newSlackReceiver(t, srv, config.Slack{Token: "xoxb-test-token"}, NewMemStore())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	retry, err := r.Notify(ctx, firing(1))
	if err == nil || retry {
		t.Errorf("Notify(cancelled ctx) = %v, %v; want retry=false and an error", retry, err)
	}
}

func TestSlackManyAlertsStayWithinLimits(t *testing.T) {
	fake, srv := newFakeSlack(t, "xoxb-test-token")
	r := newSlackReceiver(t, srv, config.Slack{Token: "xoxb-test-token"}, NewMemStore())
	n := firing(3)
	for i := range 60 {
		a := n.Alerts[0]
		a.Labels = map[string]string{"alertname": "BackupStale", "source": "orders-db", "n": fmt.Sprint(i)}
		a.Annotations = map[string]string{"description": strings.Repeat("x", 5000)}
		n.Alerts = append(n.Alerts, a)
	}
	n.TruncatedAlerts = 5
	if _, err := r.Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	bs := fake.Calls()[0].Blocks.BlockSet
	if len(bs) > 50 {
		t.Errorf("blocks = %d, want ≤ 50", len(bs))
	}
	for _, b := range bs {
		if s, ok := b.(*slack.SectionBlock); ok && s.Text != nil && len([]rune(s.Text.Text)) > slackSectionMax {
			t.Errorf("section of %d characters, want ≤ %d", len([]rune(s.Text.Text)), slackSectionMax)
		}
	}
	if text := blockTexts(fake.Calls()[0].Blocks); !strings.Contains(text, "… and 48 more alert(s) not shown") {
		t.Errorf("blocks lack the count of alerts not shown:\n%s", text[len(text)-200:])
	}
}

func TestSlackAPIURLWithoutSlash(t *testing.T) {
	fake, srv := newFakeSlack(t, "xoxb-test-token")
	r := newSlackReceiver(t, srv, config.Slack{Token: "xoxb-test-token", APIURL: srv.URL + "/api"}, NewMemStore())
	if _, err := r.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	if len(fake.Calls()) != 1 {
		t.Errorf("calls = %d, want 1", len(fake.Calls()))
	}
	if _, err := New("x", config.Receiver{Slack: &config.Slack{Token: "t", Channel: "#c", APIURL: "ftp://x"}}, Deps{}); err == nil {
		t.Errorf("New(api_url ftp://x) = nil error, want one")
	}
}
