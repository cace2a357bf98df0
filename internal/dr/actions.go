package dr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Action is what a step's `uses` names. Run performs one attempt; the engine
// handles if, timeout (ctx carries the deadline), retry, journaling and
// redaction. Outputs are readable by later steps as
// ${{ steps.ID.outputs.KEY }}; they are journaled redacted. An action must
// return promptly when ctx is done.
type Action interface {
	Run(ctx context.Context, sc *StepContext) (outputs map[string]any, err error)
}

// ActionFunc adapts a function to Action.
type ActionFunc func(ctx context.Context, sc *StepContext) (map[string]any, error)

// Run calls f.
func (f ActionFunc) Run(ctx context.Context, sc *StepContext) (map[string]any, error) {
	return f(ctx, sc)
}

// StepContext is what an action sees of its step and run.
type StepContext struct {
	RunID   string
	Runbook string
	StepID  string
	// Phase is state.PhaseMain, or state.PhaseCompensate when the action runs
	// as a compensation.
	Phase   string
	Mode    string
	Attempt int
	// StartedAt is when the step's first attempt started (before any
	// restart): time limits that must survive a restart count from it.
	StartedAt time.Time
	// With are the step's inputs, rendered (expressions evaluated, in
	// clear: the action needs the real values).
	With map[string]any
	// ExecEnv is the OPSD_PARAM_<NAME>=value environment of exec steps.
	ExecEnv []string
	// Actor is who started the run.
	Actor  Actor
	Logger *slog.Logger
	// Now is the engine's clock.
	Now func() time.Time
	// After is the engine's timer.
	After func(d time.Duration) <-chan time.Time
	// Redact replaces the run's secret values in s; an action applies it to
	// anything it sends or logs outside the journal (a notification).
	Redact func(s string) string
	// Log journals a log line as a "log" event of the step (redacted), for
	// people following the run; nil outside the engine.
	Log func(ctx context.Context, line string)

	gate approvalGate
}

// String returns with[key] as a string ("" when absent).
func (sc *StepContext) String(key string) string {
	switch v := sc.With[key].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		return fmt.Sprint(v)
	}
}

// Duration returns with[key] as a duration (Go syntax, plus a day count
// like "7d"), or def when absent.
func (sc *StepContext) Duration(key string, def time.Duration) (time.Duration, error) {
	v, ok := sc.With[key]
	if !ok || v == nil {
		return def, nil
	}
	switch x := v.(type) {
	case time.Duration:
		return x, nil
	case string:
		return parseDuration(x)
	}
	return 0, fmt.Errorf("with.%s: want a duration, got %T", key, v)
}

// parseDuration is time.ParseDuration with a leading day count ("7d",
// "1d12h"), as runbook durations are written.
func parseDuration(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err == nil {
			days = time.Duration(n) * 24 * time.Hour
			s = s[i+1:]
			if s == "" {
				return days, nil
			}
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("duration %q: %w", s, err)
	}
	return days + d, nil
}

// Registry maps action names to actions. The daemon builds one with
// NewRegistry, adds the built-ins (RegisterBuiltins) and those that need other
// subsystems (backup.run, backup.restore, backup.verify, plugin:NAME).
type Registry struct {
	mu      sync.RWMutex
	actions map[string]Action
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{actions: map[string]Action{}} }

// Register adds a, replacing any action of that name.
func (r *Registry) Register(name string, a Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.actions[name] = a
}

// Lookup returns the action called name.
func (r *Registry) Lookup(name string) (Action, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	a, ok := r.actions[name]
	return a, ok
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []string
	for n := range r.actions {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Builtins are the dependencies of the built-in actions.
type Builtins struct {
	// Notifier receives notify steps; nil means a LogNotifier on Logger.
	Notifier Notifier
	// HTTPClient serves http.request and http.check; nil means a client
	// with a 30s timeout.
	HTTPClient *http.Client
	// ExecDir is exec's default working directory (opsd's data_dir).
	ExecDir string
	// ExecPath is the PATH exec programs get (default: opsd's own).
	ExecPath string
	// ExecStateDir, when set, is where exec records the process groups of
	// running programs so that the next start kills what a crash of opsd
	// left running (ReapExec, called here). It must belong to this process
	// alone (the daemon uses data_dir/exec).
	ExecStateDir string
	Logger       *slog.Logger
}

// RegisterBuiltins registers the built-in actions that need no other
// subsystem: exec, sql.query, sql.check, http.request, http.check, wait,
// approval, notify and assert.
func RegisterBuiltins(r *Registry, b Builtins) {
	if b.Logger == nil {
		b.Logger = slog.New(slog.DiscardHandler)
	}
	if b.Notifier == nil {
		b.Notifier = &LogNotifier{Logger: b.Logger}
	}
	if b.HTTPClient == nil {
		b.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if _, err := ReapExec(b.ExecStateDir, b.Logger); err != nil {
		b.Logger.Error("exec: programs a crash left running may still run", "err", err)
	}
	r.Register("exec", &execAction{dir: b.ExecDir, path: b.ExecPath, state: b.ExecStateDir, logger: b.Logger})
	r.Register("sql.query", ActionFunc(sqlQuery))
	r.Register("sql.check", ActionFunc(sqlCheck))
	r.Register("http.request", &httpAction{client: b.HTTPClient})
	r.Register("http.check", &httpAction{client: b.HTTPClient, check: true})
	r.Register("wait", ActionFunc(waitAction))
	r.Register("approval", ActionFunc(approvalAction))
	r.Register("notify", &notifyAction{n: b.Notifier})
	r.Register("assert", ActionFunc(assertAction))
}

func waitAction(ctx context.Context, sc *StepContext) (map[string]any, error) {
	d, err := sc.Duration("duration", 0)
	if err != nil {
		return nil, err
	}
	select {
	case <-sc.After(d):
		return map[string]any{}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ErrAssertion is the error of an assert step whose condition is false.
var ErrAssertion = errors.New("assertion failed")

func assertAction(_ context.Context, sc *StepContext) (map[string]any, error) {
	ok, isBool := sc.With["that"].(bool)
	if !isBool {
		return nil, fmt.Errorf("assert: that: want a boolean, got %T", sc.With["that"])
	}
	if !ok {
		if msg := sc.String("message"); msg != "" {
			return nil, fmt.Errorf("%w: %s", ErrAssertion, msg)
		}
		return nil, ErrAssertion
	}
	return map[string]any{}, nil
}

// Notification is one message of a notify step.
type Notification struct {
	Receiver string
	Severity string // info, warning or critical
	Message  string
	RunID    string
	Runbook  string
	StepID   string
}

// Notifier delivers notify steps' messages. The alerting subsystem's
// receivers implement it in the daemon; LogNotifier logs them.
type Notifier interface {
	Notify(ctx context.Context, n Notification) error
}

// LogNotifier writes notifications to a logger.
type LogNotifier struct{ Logger *slog.Logger }

// Notify logs n.
func (l *LogNotifier) Notify(ctx context.Context, n Notification) error {
	l.Logger.InfoContext(ctx, "runbook notification", "receiver", n.Receiver, "severity", n.Severity,
		"run", n.RunID, "runbook", n.Runbook, "step", n.StepID, "message", n.Message)
	return nil
}

type notifyAction struct{ n Notifier }

func (a *notifyAction) Run(ctx context.Context, sc *StepContext) (map[string]any, error) {
	sev := sc.String("severity")
	if sev == "" {
		sev = "info"
	}
	msg := sc.String("message")
	if sc.Redact != nil {
		// Notifications leave opsd (chat, mail): secrets never go with them.
		msg = sc.Redact(msg)
	}
	n := Notification{Receiver: sc.String("receiver"), Severity: sev, Message: msg,
		RunID: sc.RunID, Runbook: sc.Runbook, StepID: sc.StepID}
	if err := a.n.Notify(ctx, n); err != nil {
		return nil, fmt.Errorf("notify %s: %w", n.Receiver, err)
	}
	return map[string]any{}, nil
}

// approvalGate is the engine's side of an approval step.
type approvalGate interface {
	waitDecision(ctx context.Context, sc *StepContext, approvers []string, deadline time.Time) (Decision, error)
}

// ErrApprovalTimeout is the error of an approval step nobody decided in time.
var ErrApprovalTimeout = errors.New("approval timed out")

// ErrRejected is the error of an approval step that was rejected.
var ErrRejected = errors.New("rejected")

func approvalAction(ctx context.Context, sc *StepContext) (map[string]any, error) {
	if sc.gate == nil {
		return nil, errors.New("approval: no engine to wait on")
	}
	timeout, err := sc.Duration("timeout", time.Hour)
	if err != nil {
		return nil, err
	}
	approvers := []string{"role:operator"}
	if v, ok := sc.With["approvers"].([]any); ok && len(v) > 0 {
		approvers = approvers[:0]
		for _, a := range v {
			approvers = append(approvers, fmt.Sprint(a))
		}
	}
	d, err := sc.gate.waitDecision(ctx, sc, approvers, sc.StartedAt.Add(timeout))
	if err != nil {
		return nil, err
	}
	out := map[string]any{"approver": d.Actor, "comment": d.Comment}
	if !d.Approved {
		return out, fmt.Errorf("%w by %s: %s", ErrRejected, d.Actor, d.Comment)
	}
	return out, nil
}
