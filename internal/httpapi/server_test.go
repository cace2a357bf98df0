package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/opsd-dev/opsd/internal/action"
)

// recorder is an in-memory action.Recorder standing in for the audit log.
type recorder struct {
	mu      sync.Mutex
	records []action.Record
	fail    error
}

func (r *recorder) Record(_ context.Context, rec action.Record) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return 0, r.fail
	}
	r.records = append(r.records, rec)
	return int64(len(r.records) - 1), nil
}

func (r *recorder) summary() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, rec := range r.records {
		out = append(out, rec.Actor.String()+" "+rec.Action+" "+string(rec.Outcome))
	}
	return out
}

func token(name string, role Role) Token {
	return Token{Name: name, Role: role, SHA256: sha256.Sum256([]byte(name + "-secret"))}
}

type fixture struct {
	srv      *Server
	rec      *recorder
	reloads  int
	reloadFn func() error
	ready    []Check
	doc      *openapi3.T
	router   routers.Router
}

func newFixture(t *testing.T, mod func(*Settings)) *fixture {
	t.Helper()
	f := &fixture{rec: &recorder{}}
	reg := prometheus.NewRegistry()
	set := Settings{
		Tokens:        []Token{token("viewer", RoleViewer), token("operator", RoleOperator), token("root", RoleAdmin)},
		MaxBodyBytes:  1024,
		RatePerSecond: 1000,
		RateBurst:     1000,
	}
	if mod != nil {
		mod(&set)
	}
	deps := Deps{
		Logger:     slog.New(slog.DiscardHandler),
		Dispatcher: action.NewDispatcher(f.rec),
		Gatherer:   reg,
		Ready:      func(context.Context) []Check { return f.ready },
		Status: func(context.Context) (any, error) {
			return map[string]any{
				"version": map[string]string{"version": "dev", "commit": "x", "go_version": "go1.26"}, "started_at": "2026-11-25T06:00:00Z",
				"uptime_seconds": 1.5, "state_store": "sqlite", "config_hash": "abc", "sources": []any{},
			}, nil
		},
		Backups: &fakeBackups{},
		Reload: func(context.Context) error {
			f.reloads++
			if f.reloadFn != nil {
				return f.reloadFn()
			}
			return nil
		},
	}
	f.srv = NewServer(deps, set, reg)
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(OpenAPI)
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("openapi.json is not a valid OpenAPI 3 document: %v", err)
	}
	doc.Servers = nil // match any host
	f.doc = doc
	f.router, err = gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatalf("openapi router: %v", err)
	}
	return f
}

// do sends a request and checks the response against the OpenAPI document.
func (f *fixture) do(t *testing.T, method, path, tok string, body string) *httptest.ResponseRecorder {
	t.Helper()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rb)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok+"-secret")
	}
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, req)
	f.checkOpenAPI(t, req, w)
	return w
}

func (f *fixture) checkOpenAPI(t *testing.T, req *http.Request, w *httptest.ResponseRecorder) {
	t.Helper()
	vreq := req.Clone(context.Background())
	vreq.Host, vreq.URL.Host, vreq.URL.Scheme = "", "", ""
	route, params, err := f.router.FindRoute(vreq)
	if err != nil {
		if w.Code == http.StatusNotFound || w.Code == http.StatusMethodNotAllowed {
			return // not in the document by design
		}
		t.Errorf("%s %s: not in openapi.json: %v", req.Method, req.URL.Path, err)
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
		Status: w.Code,
		Header: w.Header(),
		Body:   io.NopCloser(bytes.NewReader(w.Body.Bytes())),
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s -> %d does not match openapi.json: %v\nbody: %s", req.Method, req.URL.Path, w.Code, err, w.Body.String())
	}
}

func decodeProblem(t *testing.T, w *httptest.ResponseRecorder) Problem {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json (body %s)", ct, w.Body.String())
	}
	var p Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("decode problem: %v", err)
	}
	return p
}

func TestAuthAndRoles(t *testing.T) {
	tests := []struct {
		name     string
		method   string
		path     string
		token    string
		body     string
		wantCode int
		wantType string
	}{
		{"healthz needs no token", "GET", "/healthz", "", "", 200, ""},
		{"status without token", "GET", "/api/v1/status", "", "", 401, problemBase + "unauthorized"},
		{"status with unknown token", "GET", "/api/v1/status", "intruder", "", 401, problemBase + "unauthorized"},
		{"status as viewer", "GET", "/api/v1/status", "viewer", "", 200, ""},
		{"metrics need a token", "GET", "/metrics", "", "", 401, problemBase + "unauthorized"},
		{"metrics as viewer", "GET", "/metrics", "viewer", "", 200, ""},
		{"reload as viewer", "POST", "/api/v1/reload", "viewer", "", 403, problemBase + "forbidden"},
		{"reload as operator", "POST", "/api/v1/reload", "operator", "", 403, problemBase + "forbidden"},
		{"reload as admin", "POST", "/api/v1/reload", "root", "", 200, ""},
		{"reload with malformed JSON", "POST", "/api/v1/reload", "root", "{nope", 400, problemBase + "malformed-json"},
		{"reload with unknown field", "POST", "/api/v1/reload", "root", `{"x":1}`, 400, problemBase + "malformed-json"},
		{"oversized body", "POST", "/api/v1/reload", "root", `{"pad":"` + strings.Repeat("x", 2000) + `"}`, 413, problemBase + "body-too-large"},
		{"unknown route", "GET", "/api/v1/nope", "viewer", "", 404, problemBase + "not-found"},
		{"wrong method", "DELETE", "/api/v1/status", "viewer", "", 405, problemBase + "method-not-allowed"},
		{"feature not landed", "GET", "/api/v1/cost", "viewer", "", 501, problemBase + "not-implemented"},
		{"alerting not wired", "GET", "/api/v1/alerts", "viewer", "", 503, problemBase + "unavailable"},
		{"openapi document", "GET", "/api/v1/openapi.json", "viewer", "", 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, nil)
			w := f.do(t, tt.method, tt.path, tt.token, tt.body)
			if w.Code != tt.wantCode {
				t.Fatalf("%s %s = %d, want %d; body %s", tt.method, tt.path, w.Code, tt.wantCode, w.Body.String())
			}
			if tt.wantType != "" {
				p := decodeProblem(t, w)
				if p.Type != tt.wantType || p.Status != tt.wantCode {
					t.Errorf("problem = %+v, want type %s status %d", p, tt.wantType, tt.wantCode)
				}
				if p.RequestID == "" || p.RequestID != w.Header().Get("X-Request-Id") {
					t.Errorf("problem request_id = %q, header %q", p.RequestID, w.Header().Get("X-Request-Id"))
				}
			}
		})
	}
}

func TestProblemsDoNotLeakBodies(t *testing.T) {
	f := newFixture(t, nil)
	w := f.do(t, "POST", "/api/v1/reload", "root", `{"password": "hunter2", oops}`)
	if w.Code != 400 {
		t.Fatalf("code = %d, want 400", w.Code)
	}
	if strings.Contains(w.Body.String(), "hunter2") {
		t.Errorf("problem echoes the request body: %s", w.Body.String())
	}
}

func TestMutationsPassTheChokePoint(t *testing.T) {
	f := newFixture(t, nil)
	f.do(t, "POST", "/api/v1/reload", "root", "")
	f.do(t, "POST", "/api/v1/reload", "viewer", "")
	f.do(t, "GET", "/api/v1/status", "root", "") // reads are not audited by default
	want := []string{
		"token:root config.reload accepted",
		"token:root config.reload succeeded",
		"token:viewer config.reload refused",
	}
	if diff := cmp.Diff(want, f.rec.summary()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
	if f.reloads != 1 {
		t.Errorf("reloads = %d, want 1", f.reloads)
	}
}

func TestLogReads(t *testing.T) {
	f := newFixture(t, func(s *Settings) { s.LogReads = true })
	f.do(t, "GET", "/api/v1/status", "viewer", "")
	want := []string{"token:viewer api.read accepted", "token:viewer api.read succeeded"}
	if diff := cmp.Diff(want, f.rec.summary()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
}

func TestAuditDownRefusesMutations(t *testing.T) {
	f := newFixture(t, nil)
	f.rec.fail = errors.New("no space left on device")
	w := f.do(t, "POST", "/api/v1/reload", "root", "")
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("code = %d, want 503", w.Code)
	}
	if p := decodeProblem(t, w); p.Type != problemBase+"audit-unavailable" {
		t.Errorf("type = %s, want audit-unavailable", p.Type)
	}
	if strings.Contains(w.Body.String(), "no space") {
		t.Errorf("problem leaks the internal error: %s", w.Body.String())
	}
	if f.reloads != 0 {
		t.Errorf("reload ran %d times although its audit entry failed", f.reloads)
	}
	// Reads still work.
	if w := f.do(t, "GET", "/api/v1/status", "viewer", ""); w.Code != 200 {
		t.Errorf("status = %d while audit is down, want 200", w.Code)
	}
}

func TestReloadInvalidConfig(t *testing.T) {
	f := newFixture(t, nil)
	f.reloadFn = func() error {
		return &ConfigError{Problems: []string{"opsd.yaml:3:5: unknown key \"lisen\"", "opsd.yaml:9:12: bad cron"}}
	}
	w := f.do(t, "POST", "/api/v1/reload", "root", "{}")
	if w.Code != http.StatusUnprocessableEntity {
		t.Fatalf("code = %d, want 422", w.Code)
	}
	p := decodeProblem(t, w)
	if diff := cmp.Diff([]string{"opsd.yaml:3:5: unknown key \"lisen\"", "opsd.yaml:9:12: bad cron"}, p.Errors); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	want := []string{"token:root config.reload accepted", "token:root config.reload failed"}
	if diff := cmp.Diff(want, f.rec.summary()); diff != "" {
		t.Errorf("audit records (-want +got):\n%s", diff)
	}
}

func TestReadyz(t *testing.T) {
	f := newFixture(t, nil)
	f.ready = []Check{{Name: "state", Err: nil}, {Name: "audit", Err: errors.New("append failed")}}
	w := f.do(t, "GET", "/readyz", "", "")
	if w.Code != http.StatusServiceUnavailable {
		t.Fatalf("code = %d, want 503", w.Code)
	}
	var got readyResponse
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := readyResponse{Status: "not ready", Components: map[string]string{"state": "ok", "audit": "append failed"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("readyz (-want +got):\n%s", diff)
	}
	f.ready = []Check{{Name: "state"}}
	if w := f.do(t, "GET", "/readyz", "", ""); w.Code != 200 {
		t.Errorf("readyz = %d once every component is ready, want 200", w.Code)
	}
}

func TestMetricsPublic(t *testing.T) {
	f := newFixture(t, func(s *Settings) { s.MetricsPublic = true })
	f.do(t, "GET", "/healthz", "", "")
	w := f.do(t, "GET", "/metrics", "", "")
	if w.Code != 200 {
		t.Fatalf("code = %d, want 200", w.Code)
	}
	if !strings.Contains(w.Body.String(), `opsd_http_requests_total{code="200",method="GET",route="/healthz"} 1`) {
		t.Errorf("metrics lack the request counter:\n%s", w.Body.String())
	}
}

func TestRateLimitPerToken(t *testing.T) {
	f := newFixture(t, func(s *Settings) { s.RatePerSecond, s.RateBurst = 0.001, 3 })
	var codes []int
	for range 5 {
		codes = append(codes, f.do(t, "GET", "/api/v1/status", "viewer", "").Code)
	}
	if diff := cmp.Diff([]int{200, 200, 200, 429, 429}, codes); diff != "" {
		t.Errorf("codes (-want +got):\n%s", diff)
	}
	// Another token has its own bucket.
	if w := f.do(t, "GET", "/api/v1/status", "root", ""); w.Code != 200 {
		t.Errorf("other token = %d, want 200", w.Code)
	}
}

func TestUpdateSwapsTokens(t *testing.T) {
	f := newFixture(t, nil)
	f.srv.Update(Settings{Tokens: []Token{token("new", RoleViewer)}, MaxBodyBytes: 1024, RatePerSecond: 100, RateBurst: 100})
	if w := f.do(t, "GET", "/api/v1/status", "viewer", ""); w.Code != 401 {
		t.Errorf("removed token = %d, want 401", w.Code)
	}
	if w := f.do(t, "GET", "/api/v1/status", "new", ""); w.Code != 200 {
		t.Errorf("added token = %d, want 200", w.Code)
	}
}

func TestRequestIDPropagates(t *testing.T) {
	f := newFixture(t, nil)
	req := httptest.NewRequest("GET", "/healthz", nil)
	req.Header.Set("X-Request-Id", "abc-123")
	w := httptest.NewRecorder()
	f.srv.ServeHTTP(w, req)
	if got := w.Header().Get("X-Request-Id"); got != "abc-123" {
		t.Errorf("X-Request-Id = %q, want abc-123", got)
	}
	req.Header.Set("X-Request-Id", "bad id with spaces\n")
	w = httptest.NewRecorder()
	f.srv.ServeHTTP(w, req)
	if got := w.Header().Get("X-Request-Id"); got == "" || strings.Contains(got, " ") {
		t.Errorf("X-Request-Id = %q, want a fresh id", got)
	}
}
