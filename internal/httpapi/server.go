// Package httpapi serves opsd's HTTP API (SPEC §4): bearer-token auth with
// roles, RFC 9457 errors, rate limits, the access log and the audit choke
// point for every mutating request. routes.go lists the whole surface.
package httpapi

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/opsd-dev/opsd/internal/action"
)

// Settings are the parts of the server's behaviour that a config reload may
// change while it runs.
type Settings struct {
	Tokens        []Token
	MetricsPublic bool
	MaxBodyBytes  int64
	RatePerSecond float64
	RateBurst     int
	// LogReads records GET requests in the audit log too.
	LogReads bool
}

// Check is one component's readiness.
type Check struct {
	Name string
	Err  error
}

// Deps are the server's collaborators. Every field except Logger and
// Dispatcher may be nil; the matching routes then answer 503.
type Deps struct {
	Logger     *slog.Logger
	Dispatcher *action.Dispatcher
	Gatherer   prometheus.Gatherer
	// Ready reports every component's readiness for /readyz.
	Ready func(ctx context.Context) []Check
	// Status builds GET /api/v1/status.
	Status func(ctx context.Context) (any, error)
	// Reload validates and loads the config file; on error the running
	// config stays. A *ConfigError lists the problems.
	Reload func(ctx context.Context) error
	// Cluster builds GET /api/v1/cluster.
	Cluster func(ctx context.Context) (any, error)
	// Audit serves the audit-log routes.
	Audit AuditLog
	// Backups serves the backup routes.
	Backups Backups
	// Sources builds GET /api/v1/sources; Source one source, with an error
	// wrapping state.ErrNotFound for an unknown name.
	Sources func(ctx context.Context) (any, error)
	Source  func(ctx context.Context, name string) (any, error)
	// Runs serves the runbook and run routes (the DR engine).
	Runs Runs
	// Alerts serves the alert, rule and silence routes.
	Alerts Alerts
}

// ConfigError is returned by Deps.Reload when the new config is invalid.
type ConfigError struct{ Problems []string }

func (e *ConfigError) Error() string { return "invalid config" }

// Server is opsd's HTTP handler.
type Server struct {
	deps     Deps
	log      *slog.Logger
	settings atomic.Pointer[serverSettings]
	mux      *http.ServeMux
	metrics  *httpMetrics
	newID    func() string
	stopping chan struct{} // closed by Stopping: long polls answer now
	stopOnce sync.Once
}

// Stopping makes every long poll (GET /api/v1/backups/{id}?wait=) answer
// at once with what it has, so a graceful shutdown does not wait for them;
// the daemon registers it with http.Server.RegisterOnShutdown.
func (s *Server) Stopping() { s.stopOnce.Do(func() { close(s.stopping) }) }

type serverSettings struct {
	Settings
	tokenLimits *limiters
	failLimits  *limiters
}

// NewServer returns the API handler. reg receives the HTTP metrics.
func NewServer(deps Deps, s Settings, reg prometheus.Registerer) *Server {
	srv := &Server{
		deps:     deps,
		log:      deps.Logger.With("component", "http"),
		mux:      http.NewServeMux(),
		metrics:  newHTTPMetrics(reg),
		newID:    randomID,
		stopping: make(chan struct{}),
	}
	srv.Update(s)
	srv.routes()
	return srv
}

// Update applies new settings (after a config reload). Rate-limit state is
// kept when the limits did not change.
func (s *Server) Update(set Settings) {
	old := s.settings.Load()
	ns := &serverSettings{Settings: set}
	if old != nil && old.RatePerSecond == set.RatePerSecond && old.RateBurst == set.RateBurst {
		ns.tokenLimits, ns.failLimits = old.tokenLimits, old.failLimits
	} else {
		ns.tokenLimits = newLimiters(set.RatePerSecond, set.RateBurst)
		// Failed authentications get a tighter budget per client address.
		ns.failLimits = newLimiters(1, 10)
	}
	s.settings.Store(ns)
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	id := r.Header.Get("X-Request-Id")
	if !validRequestID(id) {
		id = s.newID()
	}
	ctx := context.WithValue(r.Context(), requestIDKey{}, id)
	info := &reqInfo{}
	ctx = context.WithValue(ctx, reqInfoKey{}, info)
	r = r.WithContext(ctx)
	w.Header().Set("X-Request-Id", id)
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	set := s.settings.Load()
	r.Body = http.MaxBytesReader(rec, r.Body, set.MaxBodyBytes)

	s.mux.ServeHTTP(rec, r)

	elapsed := time.Since(start)
	s.metrics.observe(info.route, r.Method, rec.status, elapsed)
	level := slog.LevelInfo
	if info.route == "/healthz" || info.route == "/readyz" || info.route == "/metrics" {
		level = slog.LevelDebug
	}
	s.log.Log(ctx, level, "request",
		"method", r.Method, "path", r.URL.Path, "route", info.route, "status", rec.status,
		"bytes", rec.bytes, "duration_ms", elapsed.Milliseconds(), "token", info.token,
		"remote", clientAddr(r), "request_id", id)
}

// route describes one API route: its pattern, the least role allowed, the
// audit action it is recorded as (empty for reads) and which body fields
// are secrets.
type route struct {
	method  string
	path    string
	role    Role // RoleNone = unauthenticated
	action  string
	secrets []string
	// object names the audited object from the request.
	object  func(r *http.Request) string
	handler http.Handler
}

func (s *Server) handle(rt route) {
	s.mux.Handle(rt.method+" "+rt.path, s.wrap(rt))
}

// wrap applies authentication, authorization, rate limiting and the audit
// choke point to a route's handler.
func (s *Server) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		info := reqInfoFrom(r.Context())
		info.route = rt.path
		if rt.role == RoleNone {
			rt.handler.ServeHTTP(w, r)
			return
		}
		set := s.settings.Load()
		if rt.path == "/metrics" && set.MetricsPublic {
			rt.handler.ServeHTTP(w, r)
			return
		}
		tok, ok := authenticate(set.Tokens, r)
		if !ok {
			if !set.failLimits.allow(clientHost(r)) {
				writeProblem(w, r, probRateLimited.with("too many failed authentications from this address"))
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="opsd"`)
			writeProblem(w, r, probUnauthorized.with(""))
			return
		}
		info.token, info.role = tok.Name, tok.Role
		if !set.tokenLimits.allow(tok.Name) {
			w.Header().Set("Retry-After", "1")
			writeProblem(w, r, probRateLimited.with("rate limit for token "+tok.Name))
			return
		}
		actor := action.Actor{Kind: action.ActorToken, Name: tok.Name}
		ctx := action.WithActor(r.Context(), actor)
		r = r.WithContext(ctx)
		audited := rt.action != "" || set.LogReads
		if tok.Role < rt.role {
			if audited {
				req := s.auditRequest(r, rt, actor, nil)
				_ = s.deps.Dispatcher.Refuse(ctx, req, errors.New("role "+tok.Role.String()+" may not "+rt.method+" "+rt.path))
			}
			writeProblem(w, r, probForbidden.with("token "+tok.Name+" has role "+tok.Role.String()+"; this needs "+rt.role.String()))
			return
		}
		if !audited {
			rt.handler.ServeHTTP(w, r)
			return
		}
		s.serveAudited(w, r, rt, actor)
	})
}

// serveAudited is the HTTP side of the audit choke point: the action is
// recorded as accepted before the handler runs, refused with 503 if that
// record cannot be made durable, and its outcome is recorded after.
func (s *Server) serveAudited(w http.ResponseWriter, r *http.Request, rt route, actor action.Actor) {
	var params map[string]any
	if r.Body != nil && r.Body != http.NoBody && r.Method != http.MethodGet {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeProblem(w, r, probTooLarge.with("limit is "+formatBytes(tooLarge.Limit)))
				return
			}
			writeProblem(w, r, probBadRequest.with("read body: "+err.Error()))
			return
		}
		if len(bytes.TrimSpace(body)) > 0 {
			if err := json.Unmarshal(body, &params); err != nil {
				writeProblem(w, r, probMalformedJSON.with(jsonErrorDetail(err)))
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	req := s.auditRequest(r, rt, actor, params)
	ticket, err := s.deps.Dispatcher.Accept(r.Context(), req)
	if err != nil {
		s.log.Error("audit append failed; refusing action", "action", req.Action, "err", err)
		w.Header().Set("Retry-After", "5")
		writeProblem(w, r, probAuditDown.with(""))
		return
	}
	rec, _ := w.(*statusRecorder)
	rt.handler.ServeHTTP(w, r)
	var outcome error
	if rec != nil && rec.status >= 400 {
		outcome = errors.New(http.StatusText(rec.status) + ": " + rec.problem)
	}
	_ = ticket.Finish(r.Context(), outcome)
}

func (s *Server) auditRequest(r *http.Request, rt route, actor action.Actor, params map[string]any) action.Request {
	name := rt.action
	if name == "" {
		name = "api.read"
	}
	obj := r.URL.Path
	if rt.object != nil {
		obj = rt.object(r)
	}
	return action.Request{Actor: actor, Action: name, Object: obj, RequestID: requestIDFrom(r.Context()), Params: params, Secrets: rt.secrets}
}

type requestIDKey struct{}
type reqInfoKey struct{}

// reqInfo carries what the outer access log needs from inner handlers.
type reqInfo struct {
	route string
	token string
	role  Role // the token's
}

func reqInfoFrom(ctx context.Context) *reqInfo {
	if i, ok := ctx.Value(reqInfoKey{}).(*reqInfo); ok {
		return i
	}
	return &reqInfo{}
}

func requestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// statusRecorder remembers the status and size of a response, and the
// detail of a problem response for the audit outcome.
type statusRecorder struct {
	http.ResponseWriter
	status  int
	bytes   int64
	wrote   bool
	problem string
}

func (s *statusRecorder) WriteHeader(code int) {
	if !s.wrote {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if !s.wrote {
		s.wrote = true
	}
	if s.status >= 400 && s.problem == "" && s.Header().Get("Content-Type") == "application/problem+json" {
		var pr Problem
		if json.Unmarshal(p, &pr) == nil {
			s.problem = pr.Title
			if pr.Detail != "" {
				s.problem += ": " + pr.Detail
			}
		}
	}
	n, err := s.ResponseWriter.Write(p)
	s.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the underlying writer (flush,
// deadlines for streaming responses).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

func clientAddr(r *http.Request) string { return r.RemoteAddr }

func clientHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func formatBytes(n int64) string { return strconv.FormatInt(n, 10) + " bytes" }

func isJSON(ct string) bool {
	mt, _, _ := bytes.Cut([]byte(ct), []byte(";"))
	m := string(bytes.TrimSpace(mt))
	return m == "application/json" || (len(m) > 5 && m[len(m)-5:] == "+json")
}

// metricsHandler serves /metrics from the gatherer.
func (s *Server) metricsHandler() http.Handler {
	if s.deps.Gatherer == nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeProblem(w, r, probUnavailable.with("metrics registry not configured"))
		})
	}
	return promhttp.HandlerFor(s.deps.Gatherer, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError)})
}
