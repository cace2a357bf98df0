package dr

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/opsd-dev/opsd/internal/state"
)

// Attempt is one attempt of a step, as journaled in its data.
type Attempt struct {
	N          int            `json:"n"`
	StartedAt  time.Time      `json:"started_at"`
	FinishedAt time.Time      `json:"finished_at,omitzero"`
	Error      string         `json:"error,omitempty"`
	Outputs    map[string]any `json:"outputs,omitempty"`
}

type stepData struct {
	Attempts []Attempt `json:"attempts,omitempty"`
}

func decodeAttempts(s string) []Attempt {
	var d stepData
	_ = json.Unmarshal([]byte(s), &d)
	return d.Attempts
}

func encodeAttempts(att []Attempt) string { return mustJSON(stepData{Attempts: att}) }

// RunView is a run as the API shows it (SPEC §4 runs): secrets redacted.
type RunView struct {
	ID            string         `json:"id"`
	Runbook       string         `json:"runbook"`
	RunbookSHA256 string         `json:"runbook_sha256"`
	Mode          string         `json:"mode"`
	DryRun        bool           `json:"dry_run"`
	State         string         `json:"state"`
	Actor         string         `json:"actor"`
	Params        map[string]any `json:"params"`
	Error         string         `json:"error,omitempty"`
	CreatedAt     time.Time      `json:"created_at"`
	StartedAt     time.Time      `json:"started_at,omitzero"`
	FinishedAt    time.Time      `json:"finished_at,omitzero"`
	Waiting       *WaitingStep   `json:"waiting,omitempty"`
	Cancelled     *Decision      `json:"cancelled,omitempty"`
	Steps         []StepView     `json:"steps"`
}

// StepView is one step of a run.
type StepView struct {
	ID         string         `json:"id"`
	Uses       string         `json:"uses"`
	Finally    bool           `json:"finally,omitempty"`
	Marks      []string       `json:"marks,omitempty"`
	State      string         `json:"state"`
	Attempts   []Attempt      `json:"attempts,omitempty"`
	StartedAt  time.Time      `json:"started_at,omitzero"`
	FinishedAt time.Time      `json:"finished_at,omitzero"`
	Outputs    map[string]any `json:"outputs,omitempty"`
	Error      string         `json:"error,omitempty"`
	// Approval is the decision on an approval step.
	Approval *Decision `json:"approval,omitempty"`
	// Operator is an operator's retry/skip of the step after a restart.
	Operator     *Decision `json:"operator,omitempty"`
	Compensation *StepView `json:"compensation,omitempty"`
	Plan         *PlanStep `json:"plan,omitempty"` // dry runs: what would run
}

// Get returns run id with its steps.
func (e *Engine) Get(ctx context.Context, id string) (*RunView, error) {
	r, err := e.cfg.Store.GetRun(ctx, id)
	if err != nil {
		return nil, err
	}
	sts, err := e.cfg.Store.GetStepStates(ctx, id)
	if err != nil {
		return nil, err
	}
	return view(r, sts)
}

func view(r state.Run, sts []state.StepState) (*RunView, error) {
	var data runData
	if err := json.Unmarshal([]byte(r.Data), &data); err != nil {
		return nil, fmt.Errorf("run %s: journal data: %w", r.ID, err)
	}
	params := map[string]any{}
	_ = json.Unmarshal([]byte(r.Params), &params)
	v := &RunView{ID: r.ID, Runbook: r.Runbook, RunbookSHA256: r.RunbookSHA256, Mode: r.Mode, DryRun: r.DryRun,
		State: r.State, Actor: r.Actor, Params: params, Error: r.Error, CreatedAt: r.CreatedAt,
		StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Waiting: data.Waiting, Cancelled: data.Cancelled}
	byKey := map[stepKey]state.StepState{}
	for _, st := range sts {
		byKey[stepKey{st.StepID, st.Phase}] = st
	}
	for i, p := range data.Plan {
		sv := stepView(p.ID, p.Uses, byKey[stepKey{p.ID, state.PhaseMain}])
		sv.Finally, sv.Marks = p.Finally, p.Marks
		if d, ok := data.Approvals[p.ID]; ok {
			sv.Approval = &d
		}
		for _, ph := range []string{state.PhaseMain, state.PhaseCompensate} {
			if d, ok := data.Operator[stepKey{p.ID, ph}.String()]; ok {
				sv.Operator = &d
			}
		}
		if c, ok := byKey[stepKey{p.ID, state.PhaseCompensate}]; ok {
			cv := stepView(p.ID, p.Compensate, c)
			sv.Compensation = &cv
		}
		if r.DryRun {
			sv.Plan = &data.Plan[i]
		}
		v.Steps = append(v.Steps, sv)
	}
	return v, nil
}

func stepView(id, uses string, st state.StepState) StepView {
	sv := StepView{ID: id, Uses: uses, State: st.State, StartedAt: st.StartedAt, FinishedAt: st.FinishedAt,
		Error: st.Error, Attempts: decodeAttempts(st.Data)}
	if sv.State == "" {
		sv.State = state.StepPending
	}
	if st.Outputs != "" && st.Outputs != "{}" {
		sv.Outputs = decodeOutputs(st.Outputs)
	}
	return sv
}

// List returns runs matching f, newest first, without their steps' details.
func (e *Engine) List(ctx context.Context, f state.RunFilter) ([]*RunView, string, error) {
	runs, next, err := e.cfg.Store.ListRuns(ctx, f)
	if err != nil {
		return nil, "", err
	}
	out := make([]*RunView, 0, len(runs))
	for _, r := range runs {
		v, err := view(r, nil)
		if err != nil {
			return nil, "", err
		}
		out = append(out, v)
	}
	return out, next, nil
}

// Events returns run id's journaled events after afterSeq (an SSE
// Last-Event-ID), at most limit of them.
func (e *Engine) Events(ctx context.Context, id string, afterSeq int64, limit int) ([]state.RunEvent, error) {
	return e.cfg.Store.ListRunEvents(ctx, id, afterSeq, limit)
}

// subscription is one live listener of a run's events.
type subscription struct {
	ch chan state.RunEvent
}

// subscriptionBuffer is how many events a slow subscriber may lag behind
// before it is dropped (its channel closed); it then replays from the
// journal with Events after the last sequence number it saw.
const subscriptionBuffer = 256

// Subscribe returns a channel of run id's events as they are journaled, and a
// function that ends the subscription. The channel is closed when the run
// ends, when the subscriber falls too far behind, or by the function. To serve
// SSE without gaps: Subscribe, then replay Events after Last-Event-ID, then
// read the channel skipping sequence numbers already sent.
func (e *Engine) Subscribe(id string) (<-chan state.RunEvent, func()) {
	s := &subscription{ch: make(chan state.RunEvent, subscriptionBuffer)}
	e.subMu.Lock()
	if e.subs[id] == nil {
		e.subs[id] = map[*subscription]struct{}{}
	}
	e.subs[id][s] = struct{}{}
	e.subMu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			e.subMu.Lock()
			defer e.subMu.Unlock()
			if _, ok := e.subs[id][s]; ok {
				delete(e.subs[id], s)
				close(s.ch)
			}
		})
	}
}

func (e *Engine) publish(id string, events []state.RunEvent) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	for s := range e.subs[id] {
		for _, ev := range events {
			select {
			case s.ch <- ev:
			default:
				delete(e.subs[id], s)
				close(s.ch)
			}
			if _, ok := e.subs[id][s]; !ok {
				break
			}
		}
	}
}

func (e *Engine) closeSubs(id string) {
	e.subMu.Lock()
	defer e.subMu.Unlock()
	for s := range e.subs[id] {
		close(s.ch)
	}
	delete(e.subs, id)
}

// Wait blocks until run id is no longer executed by this engine (it ended, or
// the engine stopped) or ctx ends, and returns the run as journaled.
func (e *Engine) Wait(ctx context.Context, id string) (*RunView, error) {
	if a, ok := e.lookupActive(id); ok {
		select {
		case <-a.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return e.Get(ctx, id)
}
