package dr

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/state"
)

// Errors callers branch on (the HTTP layer maps them to statuses).
var (
	// ErrForbidden: the actor's role may not do this (403).
	ErrForbidden = errors.New("forbidden")
	// ErrBusy: the runbook already has as many active runs as its
	// concurrency allows (409).
	ErrBusy = errors.New("runbook is busy")
	// ErrNotWaiting: the run or step is not waiting for that decision (409).
	ErrNotWaiting = errors.New("not waiting for that")
	// ErrNotActive: the run has ended or is not run by this engine (409).
	ErrNotActive = errors.New("run is not active")
	// ErrStopped: the engine is not running (Run has not started or has
	// returned).
	ErrStopped = errors.New("runbook engine is not running")
	// ErrInvalid: bad parameters or mode (400).
	ErrInvalid = errors.New("invalid run request")
)

// Roles of actors (SPEC §4).
const (
	RoleViewer   = "viewer"
	RoleOperator = "operator"
	RoleAdmin    = "admin"
)

// Actor is who asks: a token (Name its name) with its role, a schedule, or
// opsd itself.
type Actor struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

func (a Actor) String() string {
	if a.Role == "" {
		return a.Name
	}
	return a.Name + " (" + a.Role + ")"
}

func roleRank(r string) int {
	switch r {
	case RoleAdmin:
		return 3
	case RoleOperator:
		return 2
	case RoleViewer:
		return 1
	}
	return 0
}

// Clock is the engine's time source; tests inject a fake one.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config holds an Engine's dependencies.
type Config struct {
	Store   state.Runs
	Actions *Registry
	// Lookup returns the runbook a run was started from, for Resume; the
	// run's runbook SHA-256 must still match, else the run fails.
	Lookup func(name string) (*runbook.Runbook, bool)
	// Sealer protects secret parameters in the journal; nil keeps them in
	// memory only (such runs cannot resume).
	Sealer  Sealer
	Metrics *Metrics // may be nil
	// Audit fills in reports' audit range; may be nil.
	Audit  AuditRanger
	Clock  Clock // nil: the real clock
	Logger *slog.Logger
	// NewID makes run IDs; nil: time-sortable IDs like backups'.
	NewID func(now time.Time) string
	// Hooks let other subsystems follow runs (alert silencing during
	// drills, say); both are optional.
	Hooks Hooks
}

// Hooks are called as runs start and end. They run on the run's own
// goroutine, so they must return quickly; a panic in one is logged and
// does not stop the run.
type Hooks struct {
	// OnRunStart is called once each time an engine starts executing a
	// run: when it is started, and again when a later engine resumes it
	// after a restart (RunInfo.Resumed). Dry runs execute nothing and are
	// not reported.
	OnRunStart func(ctx context.Context, run RunInfo)
	// OnRunEnd is called once when a run has ended and its final state is
	// journaled, including a run that fails at resume because its runbook
	// is gone or changed (then without an OnRunStart in this process, and
	// with only what the journal holds). A run left for resume when the
	// engine stops has not ended: no OnRunEnd.
	OnRunEnd func(ctx context.Context, run RunInfo)
}

// RunInfo describes a run to Hooks.
type RunInfo struct {
	ID      string
	Runbook string
	// Mode is runbook.ModeDrill or runbook.ModeLive.
	Mode string
	// Sources are the backup sources the runbook's backup.* steps (and
	// their compensations) name in with.source, sorted, each once: the
	// literal ones and those that only read parameters. A source chosen
	// from a step's outputs cannot be known at start and is not listed.
	Sources []string
	// Actor is who started the run.
	Actor     string
	StartedAt time.Time
	// Resumed: OnRunStart for a run resumed after a restart.
	Resumed bool
	// State is the final state (OnRunEnd only): succeeded, failed or
	// cancelled; Error says why a run did not succeed.
	State      string
	Error      string
	FinishedAt time.Time
}

// Engine runs runbooks. Create it with New, start it with Run (an actor of
// the daemon's run group); Start, Approve and the rest work while Run runs.
type Engine struct {
	cfg    Config
	clock  Clock
	logger *slog.Logger

	mu     sync.Mutex
	base   context.Context // Run's ctx while it runs; nil otherwise
	active map[string]*activeRun
	counts map[string]int // active runs per runbook

	subMu   sync.Mutex
	subs    map[string]map[*subscription]struct{}
	wg      sync.WaitGroup
	stopped bool
	ready   bool
}

// New returns an Engine; nothing runs until Run.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil || cfg.Actions == nil {
		return nil, errors.New("runbook engine: Store and Actions are required")
	}
	e := &Engine{cfg: cfg, clock: cfg.Clock, logger: cfg.Logger,
		active: map[string]*activeRun{}, counts: map[string]int{}, subs: map[string]map[*subscription]struct{}{}}
	if e.clock == nil {
		e.clock = realClock{}
	}
	if e.logger == nil {
		e.logger = slog.New(slog.DiscardHandler)
	}
	e.logger = e.logger.With("component", "dr")
	if e.cfg.NewID == nil {
		e.cfg.NewID = newRunID
	}
	return e, nil
}

func newRunID(now time.Time) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Run resumes every run that had not ended (Resume), then serves until ctx
// ends. When it does, runs stop where they are without recording anything
// more — exactly what a crash would leave — and the next Run resumes them.
// Run returns after every run's goroutine has returned.
func (e *Engine) Run(ctx context.Context) error {
	e.mu.Lock()
	if e.base != nil || e.stopped {
		e.mu.Unlock()
		return errors.New("runbook engine: Run called twice")
	}
	e.base = ctx
	e.mu.Unlock()
	err := e.Resume(ctx)
	if err != nil {
		e.logger.ErrorContext(ctx, "resume runs", "err", err)
	}
	e.mu.Lock()
	e.ready = true
	e.mu.Unlock()
	<-ctx.Done()
	e.mu.Lock()
	e.stopped, e.ready = true, false
	e.base = nil
	e.mu.Unlock()
	e.wg.Wait()
	return err
}

// Ready reports whether Run is serving and has resumed the runs it found.
func (e *Engine) Ready() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ready
}

// runData is the engine's part of a journaled run (state.Run.Data).
type runData struct {
	Phase     string              `json:"phase"`             // main, compensate, finally
	Outcome   string              `json:"outcome,omitempty"` // failed, cancelled
	Cancelled *Decision           `json:"cancelled,omitempty"`
	Approvals map[string]Decision `json:"approvals,omitempty"`
	// Operator holds operator decisions (retry, skip) for interrupted
	// steps, by stepKey.
	Operator map[string]Decision `json:"operator,omitempty"`
	// Waiting is the interrupted step the run waits on an operator for.
	Waiting         *WaitingStep `json:"waiting,omitempty"`
	Plan            []PlanStep   `json:"plan"`
	RTOObjective    float64      `json:"rto_objective_seconds,omitempty"`
	RPOObjective    float64      `json:"rpo_objective_seconds,omitempty"`
	DisruptionStart *time.Time   `json:"disruption_start,omitempty"`
	StartedBy       Actor        `json:"started_by"`
	File            string       `json:"file,omitempty"`
}

// Decision is an approval, a rejection, an operator's retry/skip or a cancel.
type Decision struct {
	Approved bool      `json:"approved"`
	Action   string    `json:"action,omitempty"` // retry, skip (operator decisions)
	Actor    string    `json:"actor"`
	Role     string    `json:"role,omitempty"`
	Comment  string    `json:"comment,omitempty"`
	Time     time.Time `json:"time"`
}

// WaitingStep names the interrupted step an operator must retry or skip.
type WaitingStep struct {
	StepID string `json:"step"`
	Phase  string `json:"phase"`
	Reason string `json:"reason"`
}

// PlanStep is one step of a run as planned at its start.
type PlanStep struct {
	ID            string         `json:"id"`
	Uses          string         `json:"uses"`
	Finally       bool           `json:"finally,omitempty"`
	LiveOnly      bool           `json:"live_only,omitempty"`
	Marks         []string       `json:"marks,omitempty"`
	Compensate    string         `json:"compensate,omitempty"` // its action, if any
	Idempotent    bool           `json:"idempotent"`
	If            string         `json:"if,omitempty"`
	With          map[string]any `json:"with,omitempty"` // dry runs: rendered, redacted
	WouldRun      *bool          `json:"would_run,omitempty"`
	DryRunComment string         `json:"dry_run_comment,omitempty"`
}

type stepKey struct{ id, phase string }

func (k stepKey) String() string { return k.id + "/" + k.phase }

// activeRun is a run this engine executes.
type activeRun struct {
	id     string
	rb     *runbook.Runbook
	mode   string
	params map[string]any // typed, secrets in clear (memory only)
	red    *redactor
	cancel context.CancelCauseFunc
	done   chan struct{}
	// resumed: this engine took the run over from the journal.
	resumed bool
	sources []string // for Hooks

	// jmu serialises journal writes of this run with the publication of
	// their events, so subscribers see events in sequence order.
	jmu sync.Mutex

	mu       sync.Mutex
	run      state.Run
	data     runData
	steps    map[stepKey]*state.StepState
	results  map[string]runbook.StepResult // outputs in clear, for expressions
	failed   bool
	waitingA map[string][]string // approval steps waiting: approvers
	wake     chan struct{}       // signalled when a decision arrives
}

func (a *activeRun) signal() {
	a.mu.Lock()
	close(a.wake)
	a.wake = make(chan struct{})
	a.mu.Unlock()
}

func (a *activeRun) wakeCh() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.wake
}

// errCancelled is the cause of a run context cancelled by Cancel.
var errCancelled = errors.New("run cancelled")

// Start starts a run of rb with the given parameters (strings or JSON values,
// see runbook.ResolveParams) and returns its ID at once. mode is
// runbook.ModeDrill or runbook.ModeLive; live runs need the admin role, runs
// the operator role. A dry run resolves parameters and expressions, records
// the plan as a run that succeeded at once and runs nothing.
func (e *Engine) Start(ctx context.Context, rb *runbook.Runbook, params map[string]any, mode string, dryRun bool, actor Actor) (string, error) {
	switch {
	case mode == "":
		mode = runbook.ModeDrill
	case mode != runbook.ModeDrill && mode != runbook.ModeLive:
		return "", fmt.Errorf("%w: mode %q, want drill or live", ErrInvalid, mode)
	}
	if mode == runbook.ModeLive && roleRank(actor.Role) < roleRank(RoleAdmin) {
		return "", fmt.Errorf("start %s: live runs need the admin role: %w", rb.Name, ErrForbidden)
	}
	if roleRank(actor.Role) < roleRank(RoleOperator) {
		return "", fmt.Errorf("start %s: runs need the operator role: %w", rb.Name, ErrForbidden)
	}
	typed, err := rb.ResolveParams(params)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	red := newRedactor(rb.Secrets(typed))
	data := runData{Phase: "main", Plan: plan(rb), RTOObjective: rb.Objectives.RTO.Seconds(),
		RPOObjective: rb.Objectives.RPO.Seconds(), StartedBy: actor, File: rb.File}
	if p := rb.Param(disruptionParam); p != nil {
		if s, _ := typed[disruptionParam].(string); s != "" {
			t, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return "", fmt.Errorf("%w: parameter %s: want an RFC 3339 time", ErrInvalid, disruptionParam)
			}
			t = t.UTC()
			data.DisruptionStart = &t
		}
	}
	now := state.Timestamp(e.clock.Now())
	r := state.Run{Runbook: rb.Name, RunbookSHA256: rb.SHA256, Mode: mode, DryRun: dryRun,
		State: state.RunRunning, Actor: actor.String(), Params: redactedParams(rb, typed),
		CreatedAt: now, StartedAt: now}

	if dryRun {
		data.Plan = dryRunPlan(rb, typed, mode, red)
		r.ID = e.cfg.NewID(now)
		r.State, r.FinishedAt = state.RunSucceeded, now
		r.Data = mustJSON(data)
		err := e.cfg.Store.CreateRun(ctx, r, state.RunEvent{Time: now, Type: "run", State: r.State,
			Message: fmt.Sprintf("dry run of %s by %s: nothing was run", rb.Name, actor)})
		if err != nil {
			return "", fmt.Errorf("start %s: %w", rb.Name, err)
		}
		return r.ID, nil
	}

	if len(rb.Secrets(typed)) > 0 && e.cfg.Sealer != nil {
		sec := map[string]any{}
		for _, p := range rb.Params {
			if p.Type == runbook.TypeSecret {
				sec[p.Name] = typed[p.Name]
			}
		}
		b, _ := json.Marshal(sec)
		if r.Secrets, err = e.cfg.Sealer.Seal(b); err != nil {
			return "", fmt.Errorf("start %s: seal secrets: %w", rb.Name, err)
		}
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.base == nil {
		return "", ErrStopped
	}
	limit := max(rb.Concurrency, 1)
	if e.counts[rb.Name] >= limit {
		return "", fmt.Errorf("start %s: %d of %d runs active: %w", rb.Name, e.counts[rb.Name], limit, ErrBusy)
	}
	r.ID = e.cfg.NewID(now)
	r.Data = mustJSON(data)
	// Journaled before anything runs (and under e.mu, so the concurrency
	// count and the store agree).
	if err := e.cfg.Store.CreateRun(ctx, r, state.RunEvent{Time: now, Type: "run", State: r.State,
		Message: fmt.Sprintf("%s run of %s started by %s", mode, rb.Name, actor)}); err != nil {
		return "", fmt.Errorf("start %s: %w", rb.Name, err)
	}
	r.Version = 1
	a := e.newActive(r, rb, typed, red, data)
	a.sources = touchedSources(rb, typed, mode)
	e.publish(r.ID, []state.RunEvent{{Seq: 1, Time: now, Type: "run", State: r.State,
		Message: fmt.Sprintf("%s run of %s started by %s", mode, rb.Name, actor)}})
	e.launch(a)
	return r.ID, nil
}

// disruptionParam is the parameter that, when a runbook declares it, gives
// the disruption time (RFC 3339) RTO and RPO are measured from.
const disruptionParam = "disruption_start"

func (e *Engine) newActive(r state.Run, rb *runbook.Runbook, typed map[string]any, red *redactor, data runData) *activeRun {
	return &activeRun{id: r.ID, rb: rb, mode: r.Mode, params: typed, red: red, run: r, data: data,
		steps: map[stepKey]*state.StepState{}, results: map[string]runbook.StepResult{},
		waitingA: map[string][]string{}, wake: make(chan struct{}), done: make(chan struct{})}
}

// launch starts a's goroutine; e.mu is held.
func (e *Engine) launch(a *activeRun) {
	ctx, cancel := context.WithCancelCause(context.WithValue(e.base, engineCtxKey{}, e.base))
	a.cancel = cancel
	e.active[a.id] = a
	e.counts[a.rb.Name]++
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(a.done)
		defer cancel(nil)
		e.hookStart(ctx, a)
		e.execute(ctx, a)
		e.mu.Lock()
		delete(e.active, a.id)
		e.counts[a.rb.Name]--
		e.mu.Unlock()
	}()
}

func plan(rb *runbook.Runbook) []PlanStep {
	var out []PlanStep
	for _, s := range rb.RunOrder() {
		p := PlanStep{ID: s.ID, Uses: s.Uses, Finally: s.Finally, LiveOnly: s.LiveOnly, Idempotent: s.Idempotent()}
		for _, m := range s.Marks {
			p.Marks = append(p.Marks, string(m))
		}
		if s.Compensate != nil {
			p.Compensate = s.Compensate.Uses
		}
		if s.If != nil {
			p.If = s.If.Source
		}
		out = append(out, p)
	}
	return out
}

func dryRunPlan(rb *runbook.Runbook, typed map[string]any, mode string, red *redactor) []PlanStep {
	ps := plan(rb)
	env := &runbook.Env{Mode: mode, Params: typed, Steps: map[string]runbook.StepResult{},
		Run: runbook.RunInfo{ID: "dry-run", Runbook: rb.Name}}
	for i, s := range rb.RunOrder() {
		yes := true
		switch {
		case s.LiveOnly && mode == runbook.ModeDrill:
			yes, ps[i].DryRunComment = false, "live_only: skipped in drills"
		case s.If != nil:
			ok, err := s.If.EvalBool(env)
			if err != nil {
				ps[i].DryRunComment = "if: decided at run time (" + red.Error(err) + ")"
			} else {
				yes = ok
			}
		}
		ps[i].WouldRun = &yes
		with := map[string]any{}
		for k, v := range s.With {
			r, err := v.Eval(env)
			switch {
			case err != nil:
				with[k] = "(decided at run time: " + v.String() + ")"
			case v.Secret():
				with[k] = Redacted
			default:
				with[k] = red.Value(r)
			}
		}
		ps[i].With = with
		env.Steps[s.ID] = runbook.StepResult{State: state.StepSucceeded, Outputs: map[string]any{}}
	}
	return ps
}

func redactedParams(rb *runbook.Runbook, typed map[string]any) string {
	out := map[string]any{}
	for _, p := range rb.Params {
		v := typed[p.Name]
		if p.Type == runbook.TypeSecret {
			if s, _ := v.(string); s != "" {
				v = Redacted
			}
		}
		out[p.Name] = v
	}
	return mustJSON(out)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Only engine-built values reach here; they always marshal.
		return fmt.Sprintf(`{"error":%q}`, err.Error())
	}
	return string(b)
}

// Resume re-attaches every run in the store that has not ended. Completed
// steps never run again; an in-flight idempotent step runs again; an
// in-flight step that is not idempotent makes the run wait for an operator
// (RetryStep, SkipStep). A run whose runbook is gone or changed fails.
func (e *Engine) Resume(ctx context.Context) error {
	var errs []error
	cursor := ""
	for {
		runs, next, err := e.cfg.Store.ListRuns(ctx, state.RunFilter{Cursor: cursor, Limit: state.MaxRunPage,
			States: []string{state.RunQueued, state.RunRunning, state.RunWaitingApproval, state.RunWaitingOperator}})
		if err != nil {
			return fmt.Errorf("resume runs: %w", err)
		}
		// Oldest first, so runs resume in the order they started.
		slices.Reverse(runs)
		for _, r := range runs {
			if err := e.resumeOne(ctx, r); err != nil {
				errs = append(errs, err)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	return errors.Join(errs...)
}

func (e *Engine) resumeOne(ctx context.Context, r state.Run) error {
	e.mu.Lock()
	_, running := e.active[r.ID]
	base := e.base
	e.mu.Unlock()
	if running {
		return nil
	}
	if base == nil {
		return ErrStopped
	}
	var data runData
	if err := json.Unmarshal([]byte(r.Data), &data); err != nil {
		return e.failResumed(ctx, r, fmt.Sprintf("journal data unreadable: %v", err))
	}
	var rb *runbook.Runbook
	if e.cfg.Lookup != nil {
		rb, _ = e.cfg.Lookup(r.Runbook)
	}
	switch {
	case rb == nil:
		return e.failResumed(ctx, r, "runbook "+r.Runbook+" is no longer loaded; the run cannot resume")
	case rb.SHA256 != r.RunbookSHA256:
		return e.failResumed(ctx, r, "runbook "+r.Runbook+" changed since the run started; the run cannot resume")
	}
	typed := map[string]any{}
	if err := json.Unmarshal([]byte(r.Params), &typed); err != nil {
		return e.failResumed(ctx, r, "parameters unreadable")
	}
	for k, v := range typed {
		typed[k] = normalizeJSON(v)
	}
	hasSecret := false
	for _, p := range rb.Params {
		if p.Type == runbook.TypeSecret {
			if s, _ := typed[p.Name].(string); s != "" {
				hasSecret = true
			}
		}
	}
	if hasSecret {
		if r.Secrets == nil || e.cfg.Sealer == nil {
			return e.failResumed(ctx, r, "secret parameters were not kept (no sealer); start the run again")
		}
		plain, err := e.cfg.Sealer.Open(r.Secrets)
		if err != nil {
			return e.failResumed(ctx, r, "secret parameters: "+err.Error())
		}
		sec := map[string]any{}
		if err := json.Unmarshal(plain, &sec); err != nil {
			return e.failResumed(ctx, r, "secret parameters unreadable")
		}
		for k, v := range sec {
			typed[k] = v
		}
	}
	steps, err := e.cfg.Store.GetStepStates(ctx, r.ID)
	if err != nil {
		return fmt.Errorf("resume run %s: %w", r.ID, err)
	}
	a := e.newActive(r, rb, typed, newRedactor(rb.Secrets(typed)), data)
	a.resumed = true
	a.sources = touchedSources(rb, typed, r.Mode)
	for i := range steps {
		st := steps[i]
		a.steps[stepKey{st.StepID, st.Phase}] = &st
		if st.Phase == state.PhaseMain && st.State != state.StepPending && st.State != state.StepRunning {
			a.results[st.StepID] = runbook.StepResult{State: st.State, Outputs: decodeOutputs(st.Outputs)}
			if st.State == state.StepFailed {
				a.failed = true
			}
		}
	}
	if data.Outcome != "" {
		a.failed = true
	}
	e.logger.InfoContext(ctx, "resuming run", "run", r.ID, "runbook", r.Runbook, "state", r.State)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.base == nil {
		return ErrStopped
	}
	e.launch(a)
	return nil
}

func (e *Engine) failResumed(ctx context.Context, r state.Run, reason string) error {
	now := state.Timestamp(e.clock.Now())
	ev := state.RunEvent{Time: now, Type: "run", State: state.RunFailed, Message: reason}
	_, seq, err := e.cfg.Store.UpdateRun(ctx, r.ID, func(r *state.Run) error {
		r.State, r.Error, r.FinishedAt = state.RunFailed, reason, now
		return nil
	}, ev)
	if err != nil {
		return fmt.Errorf("resume run %s: %w", r.ID, err)
	}
	ev.Seq = seq
	e.publish(r.ID, []state.RunEvent{ev})
	e.logger.WarnContext(ctx, "run cannot resume", "run", r.ID, "runbook", r.Runbook, "err", reason)
	e.callHook(ctx, "OnRunEnd", e.cfg.Hooks.OnRunEnd, RunInfo{ID: r.ID, Runbook: r.Runbook, Mode: r.Mode,
		Actor: r.Actor, StartedAt: r.StartedAt, Resumed: true, State: state.RunFailed, Error: reason, FinishedAt: now})
	return nil
}

func decodeOutputs(s string) map[string]any {
	out := map[string]any{}
	if s == "" {
		return out
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return map[string]any{}
	}
	for k, v := range out {
		out[k] = normalizeJSON(v)
	}
	return out
}

// normalizeJSON turns whole float64s back into ints, as actions return them.
func normalizeJSON(v any) any {
	switch x := v.(type) {
	case float64:
		if x == float64(int64(x)) && x < 1<<53 && x > -(1<<53) {
			return int(x)
		}
	case map[string]any:
		for k, e := range x {
			x[k] = normalizeJSON(e)
		}
	case []any:
		for i, e := range x {
			x[i] = normalizeJSON(e)
		}
	}
	return v
}

func (e *Engine) lookupActive(id string) (*activeRun, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	a, ok := e.active[id]
	return a, ok
}

// Cancel stops a run: the running step is cancelled, the compensations of
// the completed steps run in reverse order, then the finally steps. The
// cancellation is journaled before it takes effect.
func (e *Engine) Cancel(ctx context.Context, runID string, actor Actor, comment string) error {
	if roleRank(actor.Role) < roleRank(RoleOperator) {
		return fmt.Errorf("cancel run %s: %w", runID, ErrForbidden)
	}
	a, ok := e.lookupActive(runID)
	if !ok {
		return fmt.Errorf("cancel run %s: %w", runID, ErrNotActive)
	}
	now := state.Timestamp(e.clock.Now())
	d := Decision{Actor: actor.Name, Role: actor.Role, Comment: a.red.String(comment), Time: now}
	err := e.updateRun(ctx, a, func(r *state.Run, data *runData) error {
		if data.Outcome == "cancelled" {
			return fmt.Errorf("cancel run %s: already cancelled: %w", runID, ErrNotActive)
		}
		// Between its end being journaled and its goroutine leaving the
		// active set (the end hooks run there), a run is over.
		switch r.State {
		case state.RunSucceeded, state.RunFailed, state.RunCancelled:
			return fmt.Errorf("cancel run %s: already %s: %w", runID, r.State, ErrNotActive)
		}
		data.Outcome = "cancelled"
		data.Cancelled = &d
		return nil
	}, state.RunEvent{Time: now, Type: "run", State: "cancelling", Message: "cancelled by " + actor.String()})
	if err != nil {
		return err
	}
	a.cancel(errCancelled)
	a.signal()
	return nil
}

// Approve approves an approval step that is waiting. On a step the run
// waits for an operator on (waiting_operator) it is RetryStep.
func (e *Engine) Approve(ctx context.Context, runID, stepID string, actor Actor, comment string) error {
	return e.decide(ctx, runID, stepID, actor, comment, true)
}

// Reject rejects an approval step that is waiting; the step fails. On a
// step the run waits for an operator on (waiting_operator) it is SkipStep.
func (e *Engine) Reject(ctx context.Context, runID, stepID string, actor Actor, comment string) error {
	return e.decide(ctx, runID, stepID, actor, comment, false)
}

func (e *Engine) decide(ctx context.Context, runID, stepID string, actor Actor, comment string, approve bool) error {
	verb := "approve"
	if !approve {
		verb = "reject"
	}
	a, ok := e.lookupActive(runID)
	if !ok {
		return fmt.Errorf("%s %s/%s: %w", verb, runID, stepID, ErrNotActive)
	}
	a.mu.Lock()
	w := a.data.Waiting
	a.mu.Unlock()
	if w != nil && w.StepID == stepID {
		// The step was in flight at a crash and is not idempotent: approving
		// it runs it again, rejecting it skips it (the API's approve and
		// reject routes are the operator's retry and skip).
		return e.operatorDecision(ctx, runID, stepID, actor, comment, map[bool]string{true: "retry", false: "skip"}[approve])
	}
	approvers, waiting := e.approversFor(a, stepID)
	if !waiting {
		return fmt.Errorf("%s %s/%s: step is not waiting for approval: %w", verb, runID, stepID, ErrNotWaiting)
	}
	if !mayApprove(actor, approvers) {
		return fmt.Errorf("%s %s/%s: %s may not decide (approvers: %v): %w", verb, runID, stepID, actor, approvers, ErrForbidden)
	}
	now := state.Timestamp(e.clock.Now())
	d := Decision{Approved: approve, Actor: actor.Name, Role: actor.Role, Comment: a.red.String(comment), Time: now}
	msg := fmt.Sprintf("%s %sd by %s", stepID, verb, actor)
	if d.Comment != "" {
		msg += ": " + d.Comment
	}
	err := e.updateRun(ctx, a, func(r *state.Run, data *runData) error {
		if _, done := data.Approvals[stepID]; done {
			return fmt.Errorf("%s %s/%s: already decided: %w", verb, runID, stepID, ErrNotWaiting)
		}
		if data.Approvals == nil {
			data.Approvals = map[string]Decision{}
		}
		data.Approvals[stepID] = d
		return nil
	}, state.RunEvent{Time: now, Type: "approval", StepID: stepID, State: map[bool]string{true: "approved", false: "rejected"}[approve], Message: msg})
	if err != nil {
		return err
	}
	a.signal()
	return nil
}

// approversFor returns who may decide approval step stepID, and whether it
// waits for a decision: it is waiting at its gate, or it is journaled as
// running (a resumed run that has not reached the gate again yet).
func (e *Engine) approversFor(a *activeRun, stepID string) ([]string, bool) {
	a.mu.Lock()
	approvers, waiting := a.waitingA[stepID]
	st := a.steps[stepKey{stepID, state.PhaseMain}]
	a.mu.Unlock()
	if waiting {
		return approvers, true
	}
	s := a.rb.Step(stepID)
	if s == nil || s.Uses != "approval" || st == nil || st.State != state.StepRunning {
		return nil, false
	}
	approvers = []string{"role:operator"}
	if v := s.With["approvers"]; v != nil {
		r, err := v.Eval(e.env(a))
		list, ok := r.([]any)
		if err != nil || !ok {
			return nil, false
		}
		approvers = approvers[:0]
		for _, x := range list {
			approvers = append(approvers, fmt.Sprint(x))
		}
	}
	return approvers, true
}

// mayApprove checks actor against approvers (role:operator, role:admin,
// token:NAME). Viewers never decide; an admin may decide what an operator may.
func mayApprove(actor Actor, approvers []string) bool {
	if roleRank(actor.Role) < roleRank(RoleOperator) {
		return false
	}
	for _, ap := range approvers {
		switch {
		case ap == "role:operator" && roleRank(actor.Role) >= roleRank(RoleOperator):
			return true
		case ap == "role:admin" && actor.Role == RoleAdmin:
			return true
		case len(ap) > 6 && ap[:6] == "token:" && ap[6:] == actor.Name:
			return true
		}
	}
	return false
}

// RetryStep tells a run waiting for an operator to run its interrupted step
// again.
func (e *Engine) RetryStep(ctx context.Context, runID, stepID string, actor Actor, comment string) error {
	return e.operatorDecision(ctx, runID, stepID, actor, comment, "retry")
}

// SkipStep tells a run waiting for an operator to consider its interrupted
// step skipped and go on.
func (e *Engine) SkipStep(ctx context.Context, runID, stepID string, actor Actor, comment string) error {
	return e.operatorDecision(ctx, runID, stepID, actor, comment, "skip")
}

func (e *Engine) operatorDecision(ctx context.Context, runID, stepID string, actor Actor, comment, action string) error {
	if roleRank(actor.Role) < roleRank(RoleOperator) {
		return fmt.Errorf("%s %s/%s: %w", action, runID, stepID, ErrForbidden)
	}
	a, ok := e.lookupActive(runID)
	if !ok {
		return fmt.Errorf("%s %s/%s: %w", action, runID, stepID, ErrNotActive)
	}
	now := state.Timestamp(e.clock.Now())
	d := Decision{Action: action, Actor: actor.Name, Role: actor.Role, Comment: a.red.String(comment), Time: now}
	err := e.updateRun(ctx, a, func(r *state.Run, data *runData) error {
		if data.Waiting == nil || data.Waiting.StepID != stepID {
			return fmt.Errorf("%s %s/%s: the run is not waiting for an operator on this step: %w", action, runID, stepID, ErrNotWaiting)
		}
		k := stepKey{stepID, data.Waiting.Phase}.String()
		if data.Operator == nil {
			data.Operator = map[string]Decision{}
		}
		data.Operator[k] = d
		return nil
	}, state.RunEvent{Time: now, Type: "operator", StepID: stepID, State: action,
		Message: fmt.Sprintf("%s: %s by %s", stepID, action, actor)})
	if err != nil {
		return err
	}
	a.signal()
	return nil
}

// updateRun applies fn to the run and its data in the store and in memory,
// journaling events, and publishes them.
func (e *Engine) updateRun(ctx context.Context, a *activeRun, fn func(r *state.Run, data *runData) error, events ...state.RunEvent) error {
	a.jmu.Lock()
	defer a.jmu.Unlock()
	var newData runData
	var r state.Run
	var seq int64
	err := e.retryJournal(ctx, a, func() error {
		var err error
		r, seq, err = e.cfg.Store.UpdateRun(ctx, a.id, func(r *state.Run) error {
			var data runData
			if err := json.Unmarshal([]byte(r.Data), &data); err != nil {
				return permanent{fmt.Errorf("run %s: journal data: %w", r.ID, err)}
			}
			if err := fn(r, &data); err != nil {
				return permanent{err}
			}
			r.Data = mustJSON(data)
			newData = data
			return nil
		}, events...)
		return err
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.run, a.data = r, newData
	a.mu.Unlock()
	e.publish(a.id, numbered(events, seq))
	return nil
}

func numbered(events []state.RunEvent, last int64) []state.RunEvent {
	out := slices.Clone(events)
	for i := range out {
		out[i].Seq = last - int64(len(out)-1-i)
	}
	return out
}

// putStep journals a step state with events and publishes them.
func (e *Engine) putStep(ctx context.Context, a *activeRun, st state.StepState, events ...state.RunEvent) error {
	a.jmu.Lock()
	defer a.jmu.Unlock()
	var seq int64
	err := e.retryJournal(ctx, a, func() error {
		var err error
		seq, err = e.cfg.Store.PutStepState(ctx, st, events...)
		return err
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	cp := st
	a.steps[stepKey{st.StepID, st.Phase}] = &cp
	a.mu.Unlock()
	e.publish(a.id, numbered(events, seq))
	return nil
}

// permanent marks an error that retrying the journal write cannot fix (a
// refused decision, a bad record).
type permanent struct{ err error }

func (p permanent) Error() string { return p.err.Error() }
func (p permanent) Unwrap() error { return p.err }

// Journal retry delays: a state store that is briefly unreachable (PostgreSQL
// restarting) delays a run rather than stopping it, since no transition may
// take effect before it is journaled.
const (
	journalRetryInitial = 100 * time.Millisecond
	journalRetryMax     = 5 * time.Second
)

// retryJournal calls write until it succeeds, fails permanently or ctx ends.
func (e *Engine) retryJournal(ctx context.Context, a *activeRun, write func() error) error {
	delay := journalRetryInitial
	for {
		err := write()
		var p permanent
		switch {
		case err == nil:
			return nil
		case errors.As(err, &p):
			return p.err
		case ctx.Err() != nil, errors.Is(err, state.ErrInvalid), errors.Is(err, state.ErrNotFound),
			errors.Is(err, state.ErrClosed), errors.Is(err, state.ErrSchemaTooNew):
			return err
		}
		e.logger.WarnContext(ctx, "journal write failed; retrying", "run", a.id, "err", a.red.Error(err), "in", delay)
		select {
		case <-e.clock.After(delay):
		case <-ctx.Done():
			return err
		}
		delay = min(2*delay, journalRetryMax)
	}
}
