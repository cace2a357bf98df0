package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/state"
)

// Runs is what the runbook and run routes need: the DR engine and the
// runbooks the daemon loaded. Errors wrap state.ErrNotFound (404) or the
// dr sentinels (dr.ErrForbidden 403, dr.ErrBusy, dr.ErrNotWaiting and
// dr.ErrNotActive 409, dr.ErrInvalid 400).
type Runs interface {
	// Runbooks returns the loaded runbooks, sorted by name.
	Runbooks() []*runbook.Runbook
	// Runbook returns the runbook called name.
	Runbook(name string) (*runbook.Runbook, bool)
	Start(ctx context.Context, rb *runbook.Runbook, params map[string]any, mode string, dryRun bool, actor dr.Actor) (string, error)
	Get(ctx context.Context, id string) (*dr.RunView, error)
	List(ctx context.Context, f state.RunFilter) ([]*dr.RunView, string, error)
	Events(ctx context.Context, id string, afterSeq int64, limit int) ([]state.RunEvent, error)
	Subscribe(id string) (<-chan state.RunEvent, func())
	Approve(ctx context.Context, runID, stepID string, actor dr.Actor, comment string) error
	Reject(ctx context.Context, runID, stepID string, actor dr.Actor, comment string) error
	// RetryStep and SkipStep decide on a step a resumed run waits for an
	// operator on (its action is not idempotent): run it again, or go on.
	RetryStep(ctx context.Context, runID, stepID string, actor dr.Actor, comment string) error
	SkipStep(ctx context.Context, runID, stepID string, actor dr.Actor, comment string) error
	Cancel(ctx context.Context, runID string, actor dr.Actor, comment string) error
	Report(ctx context.Context, id string) (*dr.Report, error)
	// SignReport signs a report with the audit key (dr.SignReport).
	SignReport(r *dr.Report, markdown bool) ([]byte, error)
}

// Problem kinds of the run routes.
var (
	probConflict = problemKind{"conflict", "Conflict with the run's state", http.StatusConflict}
)

// RunbookResource is a runbook as the API shows it.
type RunbookResource struct {
	Name        string          `json:"name"`
	Description string          `json:"description,omitempty"`
	File        string          `json:"file"`
	SHA256      string          `json:"sha256"`
	Concurrency int             `json:"concurrency"`
	Objectives  RunbookObjects  `json:"objectives"`
	Params      []RunbookParam  `json:"params"`
	Steps       []RunbookStepIn `json:"steps,omitempty"`
}

// RunbookObjects are a runbook's objectives in seconds (0: not stated).
type RunbookObjects struct {
	RTOSeconds float64 `json:"rto_seconds"`
	RPOSeconds float64 `json:"rpo_seconds"`
}

// RunbookParam is one parameter of a runbook. Secret parameters have no
// default.
type RunbookParam struct {
	Name        string   `json:"name"`
	Type        string   `json:"type"`
	Description string   `json:"description,omitempty"`
	Required    bool     `json:"required"`
	Default     any      `json:"default,omitempty"`
	Values      []string `json:"values,omitempty"`
}

// RunbookStepIn is one step of a runbook (GET /api/v1/runbooks/{name}).
type RunbookStepIn struct {
	ID             string   `json:"id"`
	Uses           string   `json:"uses"`
	If             string   `json:"if,omitempty"`
	TimeoutSeconds float64  `json:"timeout_seconds,omitempty"`
	MaxAttempts    int      `json:"max_attempts"`
	LiveOnly       bool     `json:"live_only,omitempty"`
	Finally        bool     `json:"finally,omitempty"`
	Compensate     string   `json:"compensate,omitempty"`
	Marks          []string `json:"marks,omitempty"`
}

type runbookList struct {
	Items      []RunbookResource `json:"items"`
	NextCursor string            `json:"next_cursor"`
}

type runList struct {
	Items      []*dr.RunView `json:"items"`
	NextCursor string        `json:"next_cursor"`
}

// StartRunRequest is the body of POST /api/v1/runbooks/{name}/runs.
type StartRunRequest struct {
	Params map[string]any `json:"params"`
	Mode   string         `json:"mode"`
	DryRun bool           `json:"dry_run"`
}

// DecisionRequest is the body of approve, reject and cancel.
type DecisionRequest struct {
	Comment string `json:"comment"`
}

// RunEventResource is the data of one SSE event of a run.
type RunEventResource struct {
	Seq     int64           `json:"seq"`
	Time    string          `json:"time"`
	Type    string          `json:"type"`
	Step    string          `json:"step,omitempty"`
	State   string          `json:"state,omitempty"`
	Message string          `json:"message,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
}

func toRunbookResource(rb *runbook.Runbook, withSteps bool) RunbookResource {
	out := RunbookResource{Name: rb.Name, Description: rb.Description, File: rb.File, SHA256: rb.SHA256, Concurrency: rb.Concurrency,
		Objectives: RunbookObjects{RTOSeconds: rb.Objectives.RTO.Seconds(), RPOSeconds: rb.Objectives.RPO.Seconds()},
		Params:     make([]RunbookParam, 0, len(rb.Params))}
	if out.Concurrency == 0 {
		out.Concurrency = 1
	}
	for _, p := range rb.Params {
		rp := RunbookParam{Name: p.Name, Type: string(p.Type), Description: p.Description, Required: p.Required, Values: p.Values}
		if p.Type != runbook.TypeSecret {
			rp.Default = p.Default
		}
		out.Params = append(out.Params, rp)
	}
	if !withSteps {
		return out
	}
	out.Steps = make([]RunbookStepIn, 0, len(rb.Steps))
	for _, s := range rb.Steps {
		st := RunbookStepIn{ID: s.ID, Uses: s.Uses, TimeoutSeconds: s.Timeout.Seconds(), MaxAttempts: max(s.Retry.MaxAttempts, 1),
			LiveOnly: s.LiveOnly, Finally: s.Finally}
		if s.If != nil {
			st.If = s.If.Source
		}
		if s.Compensate != nil {
			st.Compensate = s.Compensate.Uses
		}
		for _, m := range s.Marks {
			st.Marks = append(st.Marks, string(m))
		}
		out.Steps = append(out.Steps, st)
	}
	return out
}

// runsOr answers 503 when the DR engine is not configured.
func (s *Server) runsOr(w http.ResponseWriter, r *http.Request) (Runs, bool) {
	if s.deps.Runs == nil {
		writeProblem(w, r, probUnavailable.with("runbooks not available"))
		return nil, false
	}
	return s.deps.Runs, true
}

// drActor is the token of the request as the DR engine sees it.
func (s *Server) drActor(r *http.Request) dr.Actor {
	name := reqInfoFrom(r.Context()).token
	for _, t := range s.settings.Load().Tokens {
		if t.Name == name {
			return dr.Actor{Name: "token:" + name, Role: t.Role.String()}
		}
	}
	return dr.Actor{Name: "token:" + name}
}

func (s *Server) handleListRunbooks(w http.ResponseWriter, r *http.Request) {
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	out := runbookList{Items: []RunbookResource{}}
	for _, rb := range runs.Runbooks() {
		out.Items = append(out.Items, toRunbookResource(rb, false))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleGetRunbook(w http.ResponseWriter, r *http.Request) {
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	rb, found := runs.Runbook(r.PathValue("name"))
	if !found {
		writeProblem(w, r, probNotFound.with("no runbook "+strconv.Quote(r.PathValue("name"))))
		return
	}
	writeJSON(w, http.StatusOK, toRunbookResource(rb, true))
}

func (s *Server) handleStartRun(w http.ResponseWriter, r *http.Request) {
	var body StartRunRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	rb, found := runs.Runbook(r.PathValue("name"))
	if !found {
		writeProblem(w, r, probNotFound.with("no runbook "+strconv.Quote(r.PathValue("name"))))
		return
	}
	if body.Mode == "" {
		body.Mode = runbook.ModeDrill
	}
	if body.Mode != runbook.ModeDrill && body.Mode != runbook.ModeLive {
		writeProblem(w, r, probBadRequest.with(`mode must be "drill" or "live"`))
		return
	}
	id, err := runs.Start(r.Context(), rb, body.Params, body.Mode, body.DryRun, s.drActor(r))
	if err != nil {
		s.runError(w, r, "start run", err)
		return
	}
	s.answerRun(w, r, runs, id)
}

func (s *Server) handleListRuns(w http.ResponseWriter, r *http.Request) {
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f := state.RunFilter{Runbook: q.Get("runbook"), Cursor: q.Get("cursor")}
	if st := q.Get("state"); st != "" {
		for _, one := range strings.Split(st, ",") {
			switch one {
			case state.RunQueued, state.RunRunning, state.RunWaitingApproval, state.RunWaitingOperator,
				state.RunSucceeded, state.RunFailed, state.RunCancelled:
				f.States = append(f.States, one)
			default:
				writeProblem(w, r, probBadRequest.with("unknown run state "+strconv.Quote(one)))
				return
			}
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > state.MaxRunPage {
			writeProblem(w, r, probBadRequest.with(fmt.Sprintf("limit must be an integer from 1 to %d", state.MaxRunPage)))
			return
		}
		f.Limit = n
	}
	items, next, err := runs.List(r.Context(), f)
	if err != nil {
		s.runError(w, r, "list runs", err)
		return
	}
	if items == nil {
		items = []*dr.RunView{}
	}
	writeJSON(w, http.StatusOK, runList{Items: items, NextCursor: next})
}

func (s *Server) handleGetRun(w http.ResponseWriter, r *http.Request) {
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	v, err := runs.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		s.runError(w, r, "get run", err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func (s *Server) handleApproveStep(w http.ResponseWriter, r *http.Request) {
	s.decide(w, r, func(rs Runs) decideFunc { return rs.Approve })
}

func (s *Server) handleRejectStep(w http.ResponseWriter, r *http.Request) {
	s.decide(w, r, func(rs Runs) decideFunc { return rs.Reject })
}

func (s *Server) handleRetryStep(w http.ResponseWriter, r *http.Request) {
	s.decide(w, r, func(rs Runs) decideFunc { return rs.RetryStep })
}

func (s *Server) handleSkipStep(w http.ResponseWriter, r *http.Request) {
	s.decide(w, r, func(rs Runs) decideFunc { return rs.SkipStep })
}

type decideFunc func(ctx context.Context, runID, stepID string, actor dr.Actor, comment string) error

func (s *Server) decide(w http.ResponseWriter, r *http.Request, pick func(Runs) decideFunc) {
	var body DecisionRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	id, step := r.PathValue("id"), r.PathValue("step")
	decide := pick(runs)
	if err := decide(r.Context(), id, step, s.drActor(r), body.Comment); err != nil {
		s.runError(w, r, "decide", err)
		return
	}
	s.answerRun(w, r, runs, id)
}

func (s *Server) handleCancelRun(w http.ResponseWriter, r *http.Request) {
	var body DecisionRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	if err := runs.Cancel(r.Context(), id, s.drActor(r), body.Comment); err != nil {
		s.runError(w, r, "cancel run", err)
		return
	}
	s.answerRun(w, r, runs, id)
}

// answerRun answers a start or a decision with the run as it is now (202:
// the engine acts on it asynchronously).
func (s *Server) answerRun(w http.ResponseWriter, r *http.Request, runs Runs, id string) {
	v, err := runs.Get(r.Context(), id)
	if err != nil {
		s.runError(w, r, "get run", err)
		return
	}
	w.Header().Set("Location", "/api/v1/runs/"+id)
	writeJSON(w, http.StatusAccepted, v)
}

func (s *Server) handleRunReport(w http.ResponseWriter, r *http.Request) {
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	format := r.URL.Query().Get("format")
	if format != "" && format != "json" && format != "md" {
		writeProblem(w, r, probBadRequest.with(`format must be "json" or "md"`))
		return
	}
	rep, err := runs.Report(r.Context(), r.PathValue("id"))
	if err != nil {
		s.runError(w, r, "build report", err)
		return
	}
	md := format == "md"
	signed, err := runs.SignReport(rep, md)
	if err != nil {
		s.runError(w, r, "sign report", err)
		return
	}
	// The body is a signed note: the text (JSON or Markdown) followed by a
	// blank line and the signature lines; opsd drill verify-report checks it.
	ct := "text/plain; charset=utf-8"
	if md {
		ct = "text/markdown; charset=utf-8"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`inline; filename="drill-report-%s.%s"`, rep.RunID, map[bool]string{true: "md", false: "txt"}[md]))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(signed)
}

// sseHeartbeat is how often an idle event stream gets a comment line, so
// proxies keep it open and the server notices a run that ended.
const sseHeartbeat = 15 * time.Second

// handleRunEvents streams a run's events as Server-Sent Events: first the
// journaled events after Last-Event-ID, then live ones, until the run ends
// or the client goes away. Each event's id is its sequence number.
func (s *Server) handleRunEvents(w http.ResponseWriter, r *http.Request) {
	runs, ok := s.runsOr(w, r)
	if !ok {
		return
	}
	id := r.PathValue("id")
	var last int64
	if v := r.Header.Get("Last-Event-ID"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeProblem(w, r, probBadRequest.with("Last-Event-ID must be an event sequence number"))
			return
		}
		last = n
	}
	ctx := r.Context()
	if _, err := runs.Get(ctx, id); err != nil {
		s.runError(w, r, "get run", err)
		return
	}
	// Subscribe before replaying, so nothing falls between the two.
	ch, unsubscribe := runs.Subscribe(id)
	defer func() { unsubscribe() }()

	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{}) // a stream outlives server.write_timeout
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	send := func(ev state.RunEvent) error {
		if ev.Seq <= last {
			return nil
		}
		data, _ := json.Marshal(toRunEventResource(ev))
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", ev.Seq, sseName(ev.Type), data); err != nil {
			return err
		}
		last = ev.Seq
		return nil
	}
	// replay sends the journaled events after last, page by page.
	replay := func() error {
		for {
			evs, err := runs.Events(ctx, id, last, state.MaxRunEventPage)
			if err != nil {
				return err
			}
			for _, ev := range evs {
				if err := send(ev); err != nil {
					return err
				}
			}
			if len(evs) < state.MaxRunEventPage {
				return rc.Flush()
			}
		}
	}
	ended := func() bool {
		v, err := runs.Get(ctx, id)
		return err != nil || !state.RunActive(v.State)
	}
	if err := replay(); err != nil || ended() {
		if err == nil {
			_ = replay() // whatever was journaled as it ended
		}
		return
	}
	tick := time.NewTicker(sseHeartbeat)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, open := <-ch:
			if !open {
				// The run ended, or this stream fell behind: catch up from
				// the journal and go on while the run is active.
				if replay() != nil || ended() {
					return
				}
				unsubscribe()
				ch, unsubscribe = runs.Subscribe(id)
				if replay() != nil {
					return
				}
				continue
			}
			if err := send(ev); err != nil {
				return
			}
			_ = rc.Flush()
			if ev.Type == "run" && !state.RunActive(ev.State) && ev.State != "cancelling" {
				_ = replay()
				return
			}
		case <-tick.C:
			if _, err := fmt.Fprint(w, ": heartbeat\n\n"); err != nil {
				return
			}
			_ = rc.Flush()
			if ended() {
				_ = replay()
				return
			}
		}
	}
}

// sseName is the SSE event name of a run event type; names are single
// tokens so EventSource listeners can register them.
func sseName(t string) string {
	if t == "" {
		return "message"
	}
	return strings.NewReplacer("\n", "", "\r", "", " ", "_").Replace(t)
}

func toRunEventResource(ev state.RunEvent) RunEventResource {
	out := RunEventResource{Seq: ev.Seq, Time: ev.Time.UTC().Format(time.RFC3339Nano), Type: ev.Type, Step: ev.StepID, State: ev.State,
		Message: ev.Message}
	if ev.Data != "" && json.Valid([]byte(ev.Data)) {
		out.Data = json.RawMessage(ev.Data)
	}
	return out
}

// runError maps the engine's errors to problems.
func (s *Server) runError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, state.ErrNotFound):
		writeProblem(w, r, probNotFound.with(err.Error()))
	case errors.Is(err, dr.ErrForbidden):
		writeProblem(w, r, probForbidden.with(err.Error()))
	case errors.Is(err, dr.ErrBusy), errors.Is(err, dr.ErrNotWaiting), errors.Is(err, dr.ErrNotActive):
		writeProblem(w, r, probConflict.with(err.Error()))
	case errors.Is(err, dr.ErrInvalid), errors.Is(err, state.ErrInvalid):
		writeProblem(w, r, probBadRequest.with(err.Error()))
	case errors.Is(err, dr.ErrStopped):
		writeProblem(w, r, probUnavailable.with(err.Error()))
	default:
		s.log.Error(what, "err", err, "request_id", requestIDFrom(r.Context()))
		writeProblem(w, r, probInternal.with(what+" failed; see the daemon log for request "+requestIDFrom(r.Context())))
	}
}
