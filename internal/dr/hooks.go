package dr

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/opsd-dev/opsd/internal/dr/runbook"
)

// hookStart calls Hooks.OnRunStart for a run this engine starts executing.
func (e *Engine) hookStart(ctx context.Context, a *activeRun) {
	if e.cfg.Hooks.OnRunStart == nil {
		return
	}
	a.mu.Lock()
	info := RunInfo{ID: a.id, Runbook: a.rb.Name, Mode: a.mode, Sources: slices.Clone(a.sources),
		Actor: a.run.Actor, StartedAt: a.run.StartedAt, Resumed: a.resumed}
	a.mu.Unlock()
	e.callHook(ctx, "OnRunStart", e.cfg.Hooks.OnRunStart, info)
}

// hookEnd calls Hooks.OnRunEnd for a run whose end is journaled.
func (e *Engine) hookEnd(ctx context.Context, a *activeRun) {
	if e.cfg.Hooks.OnRunEnd == nil {
		return
	}
	a.mu.Lock()
	info := RunInfo{ID: a.id, Runbook: a.rb.Name, Mode: a.mode, Sources: slices.Clone(a.sources),
		Actor: a.run.Actor, StartedAt: a.run.StartedAt, Resumed: a.resumed, State: a.run.State,
		Error: a.run.Error, FinishedAt: a.run.FinishedAt}
	a.mu.Unlock()
	e.callHook(ctx, "OnRunEnd", e.cfg.Hooks.OnRunEnd, info)
}

// callHook calls fn, containing a panic: a hook's bug must not stop runs.
func (e *Engine) callHook(ctx context.Context, name string, fn func(context.Context, RunInfo), info RunInfo) {
	if fn == nil {
		return
	}
	defer func() {
		if p := recover(); p != nil {
			e.logger.ErrorContext(ctx, "run hook panicked", "hook", name, "run", info.ID, "panic", fmt.Sprint(p))
		}
	}()
	fn(ctx, info)
}

// touchedSources lists the sources the backup.* steps of rb (and their
// compensations) name in with.source: literals, and expressions that only
// read parameters and the mode, evaluated with the run's parameters.
func touchedSources(rb *runbook.Runbook, params map[string]any, mode string) []string {
	env := &runbook.Env{Mode: mode, Params: params, Steps: map[string]runbook.StepResult{},
		Run: runbook.RunInfo{Runbook: rb.Name}}
	var out []string
	add := func(s *runbook.Step) {
		if s == nil || !strings.HasPrefix(s.Uses, "backup.") {
			return
		}
		v := s.With["source"]
		if v == nil {
			return
		}
		// Expressions over steps' outputs are unknown at start; evaluating
		// them against no steps fails or yields nothing usable.
		r, err := v.Eval(env)
		if src, ok := r.(string); err == nil && ok && src != "" && !slices.Contains(out, src) {
			out = append(out, src)
		}
	}
	for _, s := range rb.Steps {
		add(s)
		add(s.Compensate)
	}
	slices.Sort(out)
	return out
}
