package dr

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/state"
)

// errAbandoned: the engine is stopping; the run stays as journaled, to be
// resumed by the next engine.
var errAbandoned = errors.New("engine stopping")

// execute drives a run to its end, or until the engine stops.
func (e *Engine) execute(ctx context.Context, a *activeRun) {
	log := e.logger.With("run", a.id, "runbook", a.rb.Name)
	err := e.executePhases(ctx, a)
	if errors.Is(err, errAbandoned) || e.stopping(ctx) {
		log.Info("run left for resume: engine stopping")
		return
	}
	if err != nil {
		// A journal write failed: the run cannot go on without breaking the
		// write-ahead rule. It stays as journaled and resumes at the next
		// start.
		log.Error("run stopped: journal write failed", "err", a.red.Error(err))
		return
	}
}

// stopping reports whether ctx ended because the engine stops (not because
// the run was cancelled).
func (e *Engine) stopping(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), errCancelled)
}

// phaseCtx is the context compensations and finally steps run in: not
// cancelled by Cancel (they must run then), but by the engine stopping — the
// engine's own context, which launch stores in every run context.
func phaseCtx(ctx context.Context) context.Context {
	if errors.Is(context.Cause(ctx), errCancelled) {
		if p, ok := ctx.Value(engineCtxKey{}).(context.Context); ok {
			return p
		}
	}
	return ctx
}

type engineCtxKey struct{}

func (e *Engine) executePhases(ctx context.Context, a *activeRun) error {
	failpoint.Hit("dr.run-started")
	a.mu.Lock()
	phase := a.data.Phase
	a.mu.Unlock()
	order := a.rb.RunOrder()

	if phase == "main" || phase == "" {
		for _, s := range order {
			if s.Finally {
				continue
			}
			if ctx.Err() != nil {
				break
			}
			failed, err := e.runStep(ctx, a, s, state.PhaseMain)
			if err != nil {
				return err
			}
			if failed {
				a.mu.Lock()
				a.failed = true
				a.mu.Unlock()
				break
			}
		}
		if e.stopping(ctx) {
			return errAbandoned
		}
		a.mu.Lock()
		bad := a.failed || a.data.Outcome != ""
		a.mu.Unlock()
		next := "finally"
		if bad {
			next = "compensate"
		}
		if err := e.setPhase(ctx, a, next); err != nil {
			return err
		}
		phase = next
	}
	// Compensations and finally steps run even when the run is (or gets)
	// cancelled; only the engine stopping interrupts them.
	pctx := ctx
	if p, ok := ctx.Value(engineCtxKey{}).(context.Context); ok {
		pctx = p
	}
	if phase == "compensate" {
		for _, s := range e.compensationOrder(a) {
			if _, err := e.runStep(pctx, a, s, state.PhaseCompensate); err != nil {
				return err
			}
		}
		if pctx.Err() != nil {
			return errAbandoned
		}
		if err := e.setPhase(ctx, a, "finally"); err != nil {
			return err
		}
	}
	for _, s := range order {
		if !s.Finally {
			continue
		}
		failed, err := e.runStep(pctx, a, s, state.PhaseMain)
		if err != nil {
			return err
		}
		if failed {
			a.mu.Lock()
			a.failed = true
			a.mu.Unlock()
		}
	}
	if pctx.Err() != nil {
		return errAbandoned
	}
	return e.finish(pctx, a)
}

func (e *Engine) setPhase(ctx context.Context, a *activeRun, phase string) error {
	err := e.updateRun(phaseCtx(ctx), a, func(r *state.Run, d *runData) error {
		d.Phase = phase
		return nil
	}, state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "phase", State: phase})
	if err == nil {
		failpoint.Hit("dr.phase")
	}
	return err
}

// stepPoint names a step's failpoint (internal/failpoint, the kill -9
// matrix of docs/RESILIENCE.md): dr.step-WHAT for main steps,
// dr.compensation-WHAT and dr.finally-WHAT for the other two kinds.
func stepPoint(s *runbook.Step, phase, what string) string {
	switch {
	case phase == state.PhaseCompensate:
		return "dr.compensation-" + what
	case s.Finally:
		return "dr.finally-" + what
	}
	return "dr.step-" + what
}

// compensationOrder returns the steps to compensate: the completed steps
// that have a compensation, latest finished first.
func (e *Engine) compensationOrder(a *activeRun) []*runbook.Step {
	a.mu.Lock()
	defer a.mu.Unlock()
	type done struct {
		s   *runbook.Step
		end time.Time
	}
	var ds []done
	for _, s := range a.rb.Steps {
		st := a.steps[stepKey{s.ID, state.PhaseMain}]
		if s.Compensate == nil || st == nil {
			continue
		}
		// A step already compensated before a restart is listed too: its
		// compensation's own journal entry makes runStep skip it.
		if st.State == state.StepSucceeded || st.State == state.StepCompensated {
			ds = append(ds, done{s, st.FinishedAt})
		}
	}
	slices.SortStableFunc(ds, func(x, y done) int { return y.end.Compare(x.end) })
	out := make([]*runbook.Step, len(ds))
	for i, d := range ds {
		out[i] = d.s
	}
	return out
}

// runStep runs one step (or its compensation) to a final state, journaling
// each transition before it takes effect. failed reports that the step
// ended failed; err is a journal failure or errAbandoned.
func (e *Engine) runStep(ctx context.Context, a *activeRun, s *runbook.Step, phase string) (failed bool, err error) {
	k := stepKey{s.ID, phase}
	a.mu.Lock()
	prev := a.steps[k]
	a.mu.Unlock()
	st := state.StepState{RunID: a.id, StepID: s.ID, Phase: phase, State: state.StepPending, Outputs: "{}", Data: "{}"}
	if prev != nil {
		st = *prev
	}
	switch st.State {
	case state.StepSucceeded, state.StepSkipped, state.StepCompensated:
		if phase == state.PhaseCompensate && st.State == state.StepSucceeded {
			// A restart may have come between the compensation's end and
			// the step's move to compensated.
			a.mu.Lock()
			main := a.steps[stepKey{s.ID, state.PhaseMain}]
			a.mu.Unlock()
			if main != nil && main.State != state.StepCompensated {
				return false, e.markCompensated(ctx, a, s)
			}
		}
		return false, nil
	case state.StepFailed:
		return true, nil
	}
	action := s
	if phase == state.PhaseCompensate {
		action = s.Compensate
	}
	att := decodeAttempts(st.Data)

	if st.State == state.StepRunning && !action.Idempotent() {
		// In flight at a crash, and running it twice may do harm: an
		// operator decides.
		decision, err := e.waitOperator(ctx, a, s.ID, phase)
		if err != nil {
			return false, err
		}
		switch {
		case decision == "skip" && ctx.Err() != nil:
			return false, e.endStep(phaseCtx(ctx), a, s, &st, att, state.StepSkipped, nil, "not retried: the run was cancelled")
		case decision == "skip":
			return false, e.endStep(ctx, a, s, &st, att, state.StepSkipped, nil, "skipped by an operator after a restart")
		}
	}

	env := e.env(a)
	if st.State == state.StepPending && phase == state.PhaseMain {
		if s.LiveOnly && a.mode == runbook.ModeDrill {
			return false, e.endStep(ctx, a, s, &st, att, state.StepSkipped, nil, "live_only: skipped in a drill")
		}
		if s.If != nil {
			ok, err := s.If.EvalBool(env)
			if err != nil {
				return true, e.endStep(ctx, a, s, &st, att, state.StepFailed, nil, "if: "+a.red.Error(err))
			}
			if !ok {
				return false, e.endStep(ctx, a, s, &st, att, state.StepSkipped, nil, "if: false")
			}
		}
	}
	impl, ok := e.cfg.Actions.Lookup(action.Uses)
	if !ok {
		return true, e.endStep(ctx, a, s, &st, att, state.StepFailed, nil, "no action "+action.Uses+" is registered")
	}
	// A resumed in-flight step gets one more attempt whatever its count.
	maxAttempts := max(action.Retry.MaxAttempts, st.Attempts+1)
	if st.State == state.StepRunning && len(att) > 0 && att[len(att)-1].FinishedAt.IsZero() {
		att[len(att)-1].Error = "interrupted: opsd stopped during this attempt"
	}
	for {
		if ctx.Err() != nil {
			if e.stopping(ctx) {
				return false, errAbandoned
			}
			return true, e.endStep(phaseCtx(ctx), a, s, &st, att, state.StepFailed, nil, "cancelled")
		}
		env = e.env(a)
		with := map[string]any{}
		var renderErr error
		for key, v := range action.With {
			r, err := v.Eval(env)
			if err != nil {
				renderErr = fmt.Errorf("with.%s: %w", key, err)
				break
			}
			with[key] = r
		}
		now := state.Timestamp(e.clock.Now())
		st.Attempts++
		if st.StartedAt.IsZero() {
			st.StartedAt = now
		}
		st.State, st.Error = state.StepRunning, ""
		att = append(att, Attempt{N: st.Attempts, StartedAt: now})
		st.Data = encodeAttempts(att)
		msg := fmt.Sprintf("%s: attempt %d", stepLabel(s.ID, phase), st.Attempts)
		if err := e.putStep(phaseCtx(ctx), a, st, state.RunEvent{Time: now, Type: "step", StepID: s.ID,
			State: state.StepRunning, Message: msg, Data: mustJSON(map[string]any{"phase": phase, "attempt": st.Attempts})}); err != nil {
			return false, err
		}
		failpoint.Hit(stepPoint(s, phase, "running"))
		var outputs map[string]any
		err := renderErr
		if err == nil {
			sc := &StepContext{RunID: a.id, Runbook: a.rb.Name, StepID: s.ID, Phase: phase, Mode: a.mode,
				Attempt: st.Attempts, StartedAt: st.StartedAt, With: with, ExecEnv: a.rb.ExecEnv(a.params),
				Actor: a.data.StartedBy, Logger: e.logger.With("run", a.id, "step", s.ID), Now: e.clock.Now,
				After: e.clock.After, Redact: a.red.String, gate: &gate{e: e, a: a},
				Log: func(lctx context.Context, line string) { e.logLine(phaseCtx(lctx), a, s.ID, line) }}
			actx, cancel := ctx, context.CancelFunc(func() {})
			if action.Timeout > 0 {
				actx, cancel = context.WithTimeoutCause(ctx, action.Timeout,
					fmt.Errorf("step timed out after %s", action.Timeout))
			}
			outputs, err = impl.Run(actx, sc)
			if err != nil && actx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("%w: %w", context.Cause(actx), err)
			}
			cancel()
		}
		// The action has done its work; nothing of it is journaled yet.
		failpoint.Hit(stepPoint(s, phase, "ran"))
		if e.stopping(ctx) {
			// What a kill would leave: the attempt stays "running".
			return false, errAbandoned
		}
		end := state.Timestamp(e.clock.Now())
		att[len(att)-1].FinishedAt = end
		if outputs == nil {
			outputs = map[string]any{}
		}
		if err == nil {
			att[len(att)-1].Outputs = a.red.Value(outputs).(map[string]any)
			a.mu.Lock()
			a.results[s.ID] = runbook.StepResult{State: state.StepSucceeded, Outputs: outputs}
			a.mu.Unlock()
			if phase == state.PhaseCompensate {
				if err := e.endStep(ctx, a, s, &st, att, state.StepSucceeded, outputs, ""); err != nil {
					return false, err
				}
				return false, e.markCompensated(ctx, a, s)
			}
			return false, e.endStep(ctx, a, s, &st, att, state.StepSucceeded, outputs, "")
		}
		att[len(att)-1].Error = a.red.Error(err)
		if st.Attempts >= maxAttempts || errors.Is(context.Cause(ctx), errCancelled) {
			a.mu.Lock()
			a.results[s.ID] = runbook.StepResult{State: state.StepFailed, Outputs: outputs}
			a.mu.Unlock()
			return true, e.endStep(phaseCtx(ctx), a, s, &st, att, state.StepFailed, outputs, a.red.Error(err))
		}
		delay := action.Retry.Backoff.Delay(st.Attempts)
		st.Error = a.red.Error(err)
		st.Data = encodeAttempts(att)
		if err := e.putStep(phaseCtx(ctx), a, st, state.RunEvent{Time: end, Type: "step", StepID: s.ID,
			State: "retrying", Message: fmt.Sprintf("%s: attempt %d failed: %s; next in %s", stepLabel(s.ID, phase),
				st.Attempts, st.Error, delay)}); err != nil {
			return false, err
		}
		failpoint.Hit("dr.retry-backoff")
		select {
		case <-e.clock.After(delay):
		case <-ctx.Done():
		}
	}
}

func stepLabel(id, phase string) string {
	if phase == state.PhaseCompensate {
		return id + " (compensation)"
	}
	return id
}

// endStep journals a step's final state.
func (e *Engine) endStep(ctx context.Context, a *activeRun, s *runbook.Step, st *state.StepState, att []Attempt, final string, outputs map[string]any, reason string) error {
	now := state.Timestamp(e.clock.Now())
	st.State, st.FinishedAt, st.Error = final, now, reason
	if final == state.StepSucceeded {
		st.Error = ""
	}
	if outputs != nil {
		st.Outputs = mustJSON(a.red.Value(outputs))
	}
	st.Data = encodeAttempts(att)
	if final != state.StepSucceeded && final != state.StepFailed && st.Phase == state.PhaseMain {
		a.mu.Lock()
		a.results[s.ID] = runbook.StepResult{State: final, Outputs: map[string]any{}}
		a.mu.Unlock()
	}
	msg := stepLabel(s.ID, st.Phase) + ": " + final
	if reason != "" {
		msg += ": " + reason
	}
	err := e.putStep(phaseCtx(ctx), a, *st, state.RunEvent{Time: now, Type: "step", StepID: s.ID, State: final,
		Message: msg, Data: mustJSON(map[string]any{"phase": st.Phase})})
	if err == nil {
		failpoint.Hit(stepPoint(s, st.Phase, "ended"))
	}
	return err
}

// markCompensated sets a step whose compensation succeeded to compensated.
func (e *Engine) markCompensated(ctx context.Context, a *activeRun, s *runbook.Step) error {
	a.mu.Lock()
	prev := a.steps[stepKey{s.ID, state.PhaseMain}]
	a.mu.Unlock()
	if prev == nil {
		return nil
	}
	st := *prev
	st.State = state.StepCompensated
	a.mu.Lock()
	if r, ok := a.results[s.ID]; ok {
		r.State = state.StepCompensated
		a.results[s.ID] = r
	}
	a.mu.Unlock()
	return e.putStep(phaseCtx(ctx), a, st, state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "step",
		StepID: s.ID, State: state.StepCompensated, Message: s.ID + ": compensated"})
}

// waitOperator puts the run in waiting_operator for an interrupted step and
// waits for RetryStep or SkipStep.
func (e *Engine) waitOperator(ctx context.Context, a *activeRun, stepID, phase string) (string, error) {
	k := stepKey{stepID, phase}.String()
	a.mu.Lock()
	d, decided := a.data.Operator[k]
	waiting := a.data.Waiting
	a.mu.Unlock()
	if !decided && (waiting == nil || waiting.StepID != stepID) {
		reason := fmt.Sprintf("step %s was in flight when opsd stopped and is not idempotent: retry or skip it", stepLabel(stepID, phase))
		err := e.updateRun(phaseCtx(ctx), a, func(r *state.Run, data *runData) error {
			r.State = state.RunWaitingOperator
			data.Waiting = &WaitingStep{StepID: stepID, Phase: phase, Reason: reason}
			return nil
		}, state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "run", StepID: stepID,
			State: state.RunWaitingOperator, Message: reason})
		if err != nil {
			return "", err
		}
		failpoint.Hit("dr.operator-waiting")
	}
	for !decided {
		wake := a.wakeCh()
		a.mu.Lock()
		d, decided = a.data.Operator[k]
		a.mu.Unlock()
		if decided {
			break
		}
		select {
		case <-wake:
		case <-ctx.Done():
			if e.stopping(ctx) {
				return "", errAbandoned
			}
			// Cancelled while waiting: the step counts as skipped, the run
			// compensates.
			return "skip", nil
		}
	}
	err := e.updateRun(phaseCtx(ctx), a, func(r *state.Run, data *runData) error {
		r.State = state.RunRunning
		data.Waiting = nil
		return nil
	}, state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "run", State: state.RunRunning,
		Message: fmt.Sprintf("%s: %s by %s", stepID, d.Action, d.Actor)})
	return d.Action, err
}

// gate is an active run's approval side.
type gate struct {
	e *Engine
	a *activeRun
}

func (g *gate) waitDecision(ctx context.Context, sc *StepContext, approvers []string, deadline time.Time) (Decision, error) {
	e, a := g.e, g.a
	a.mu.Lock()
	a.waitingA[sc.StepID] = approvers
	d, decided := a.data.Approvals[sc.StepID]
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.waitingA, sc.StepID)
		a.mu.Unlock()
	}()
	if !decided {
		err := e.updateRun(phaseCtx(ctx), a, func(r *state.Run, data *runData) error {
			r.State = state.RunWaitingApproval
			return nil
		}, state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "run", StepID: sc.StepID,
			State: state.RunWaitingApproval, Message: fmt.Sprintf("%s: waiting for approval by %v until %s",
				sc.StepID, approvers, deadline.UTC().Format(time.RFC3339))})
		if err != nil {
			return Decision{}, err
		}
		failpoint.Hit("dr.approval-waiting")
	}
	for !decided {
		wake := a.wakeCh()
		a.mu.Lock()
		d, decided = a.data.Approvals[sc.StepID]
		a.mu.Unlock()
		if decided {
			break
		}
		left := deadline.Sub(e.clock.Now())
		if left <= 0 {
			return Decision{}, fmt.Errorf("%w: nobody decided by %s", ErrApprovalTimeout, deadline.UTC().Format(time.RFC3339))
		}
		select {
		case <-wake:
		case <-e.clock.After(left):
		case <-ctx.Done():
			return Decision{}, ctx.Err()
		}
	}
	a.mu.Lock()
	waitingApproval := a.run.State == state.RunWaitingApproval
	a.mu.Unlock()
	if waitingApproval {
		err := e.updateRun(phaseCtx(ctx), a, func(r *state.Run, data *runData) error {
			r.State = state.RunRunning
			return nil
		}, state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "run", State: state.RunRunning})
		if err != nil {
			return Decision{}, err
		}
	}
	return d, nil
}

// env is what expressions see now.
func (e *Engine) env(a *activeRun) *runbook.Env {
	a.mu.Lock()
	defer a.mu.Unlock()
	steps := make(map[string]runbook.StepResult, len(a.results))
	for k, v := range a.results {
		steps[k] = v
	}
	elapsed := e.clock.Now().Sub(a.run.StartedAt).Round(time.Second)
	return &runbook.Env{Mode: a.mode, Params: a.params, Steps: steps, Run: runbook.RunInfo{ID: a.id,
		Runbook: a.rb.Name, StartedAt: a.run.StartedAt, Elapsed: elapsed, Failed: a.failed || a.data.Outcome != ""}}
}

// finish journals the run's end and updates the drill metrics.
func (e *Engine) finish(ctx context.Context, a *activeRun) error {
	a.mu.Lock()
	final := state.RunSucceeded
	reason := ""
	switch {
	case a.data.Outcome == "cancelled":
		final, reason = state.RunCancelled, "cancelled by "+a.data.Cancelled.Actor
	case a.failed:
		final = state.RunFailed
		for _, s := range a.rb.RunOrder() {
			for _, ph := range []string{state.PhaseMain, state.PhaseCompensate} {
				if st := a.steps[stepKey{s.ID, ph}]; st != nil && st.State == state.StepFailed && reason == "" {
					reason = "step " + stepLabel(s.ID, ph) + " failed: " + st.Error
				}
			}
		}
	}
	for _, s := range a.rb.Steps {
		if st := a.steps[stepKey{s.ID, state.PhaseCompensate}]; st != nil && st.State == state.StepFailed {
			final = map[bool]string{true: state.RunCancelled, false: state.RunFailed}[final == state.RunCancelled]
			if reason == "" {
				reason = "compensation of " + s.ID + " failed: " + st.Error
			}
		}
	}
	a.mu.Unlock()
	// Every step has ended; the run's end is not journaled.
	failpoint.Hit("dr.run-finishing")
	now := state.Timestamp(e.clock.Now())
	err := e.updateRun(ctx, a, func(r *state.Run, data *runData) error {
		r.State, r.FinishedAt, r.Error = final, now, reason
		data.Phase = "done"
		return nil
	}, state.RunEvent{Time: now, Type: "run", State: final, Message: runEndMessage(final, reason)})
	if err != nil {
		return err
	}
	if e.cfg.Metrics != nil && a.mode == runbook.ModeDrill {
		rep, err := e.buildReport(ctx, a.id)
		if err == nil {
			e.cfg.Metrics.observe(rep)
		}
	}
	e.logger.InfoContext(ctx, "run ended", "run", a.id, "runbook", a.rb.Name, "state", final)
	// Before the subscribers learn of the end, so that whoever waits for
	// the run finds the hook called.
	e.hookEnd(ctx, a)
	e.closeSubs(a.id)
	return nil
}

// logLine journals a step's log line as an event. Log lines are best effort:
// a failed write is logged, not fatal to the step.
func (e *Engine) logLine(ctx context.Context, a *activeRun, stepID, line string) {
	ev := state.RunEvent{Time: state.Timestamp(e.clock.Now()), Type: "log", StepID: stepID, Message: a.red.String(line)}
	a.jmu.Lock()
	defer a.jmu.Unlock()
	seq, err := e.cfg.Store.AppendRunEvents(ctx, a.id, ev)
	if err != nil {
		e.logger.WarnContext(ctx, "journal log line", "run", a.id, "step", stepID, "err", a.red.Error(err))
		return
	}
	ev.Seq = seq
	e.publish(a.id, []state.RunEvent{ev})
}

// runEndMessage is the last event's message: the final state and, when
// there is one, why.
func runEndMessage(final, reason string) string {
	if reason == "" {
		return "run " + final
	}
	return "run " + final + ": " + reason
}
