package state

import (
	"context"
	"fmt"
	"time"
)

// Runs is the durable journal of runbook runs (internal/dr). The engine
// writes every state transition of a run and of its steps here before it acts
// on it, so that after a crash it can tell which steps completed, which were in
// flight and which never started. Each write that changes a run or a step can
// carry events; they are appended in the same transaction and numbered per run
// (1, 2, 3, ...), so replaying ListRunEvents after a sequence number (an SSE
// Last-Event-ID) gives exactly the transitions that happened since.
//
// Values stored here are already redacted by the engine: secret parameters
// never reach the store in clear (Run.Secrets is sealed by the engine).
type Runs interface {
	// CreateRun adds r with Version 1, and events as the run's first events.
	// It returns an error wrapping ErrConflict when a run with r.ID exists and
	// ErrInvalid when r fails CheckRun.
	CreateRun(ctx context.Context, r Run, events ...RunEvent) error
	// GetRun returns the run id. It returns an error wrapping ErrNotFound
	// when there is no such run.
	GetRun(ctx context.Context, id string) (Run, error)
	// ListRuns returns the runs matching f, newest (largest ID) first, at
	// most f.Limit of them; nextCursor continues the listing.
	ListRuns(ctx context.Context, f RunFilter) (items []Run, nextCursor string, err error)
	// UpdateRun reads run id, calls fn on it and writes the result back with
	// Version incremented, appending events, all in one transaction; no other
	// update of the run interleaves. When fn returns an error nothing is
	// written and UpdateRun returns it. fn must not change ID or Version.
	// UpdateRun returns the run as written and the sequence number of the
	// last event appended (the run's current last sequence when none).
	UpdateRun(ctx context.Context, id string, fn func(r *Run) error, events ...RunEvent) (Run, int64, error)
	// PutStepState inserts or replaces the state of one step (keyed by
	// RunID, StepID and Phase) and appends events, in one transaction. It
	// returns the sequence number of the last event (or the run's current
	// last sequence when none) and an error wrapping ErrNotFound when the run
	// does not exist.
	PutStepState(ctx context.Context, s StepState, events ...RunEvent) (int64, error)
	// GetStepStates returns every step state of run id, ordered by
	// StartedAt, then StepID and Phase (steps not started yet first).
	GetStepStates(ctx context.Context, runID string) ([]StepState, error)
	// AppendRunEvents appends events to run id and returns the sequence
	// number of the last one. It returns an error wrapping ErrNotFound when
	// the run does not exist.
	AppendRunEvents(ctx context.Context, runID string, events ...RunEvent) (int64, error)
	// ListRunEvents returns run id's events with a sequence number above
	// afterSeq in order, at most limit of them (limit ≤ 0 means
	// MaxRunEventPage).
	ListRunEvents(ctx context.Context, runID string, afterSeq int64, limit int) ([]RunEvent, error)
}

// Run is one run of a runbook as journaled.
type Run struct {
	ID            string // time-sortable, like backup IDs
	Runbook       string
	RunbookSHA256 string
	Mode          string // drill | live
	DryRun        bool
	State         string // RunQueued ... RunCancelled
	Actor         string // who started it
	// Params is the JSON object of the run's parameters with secret values
	// redacted.
	Params string
	// Secrets holds the secret parameter values sealed by the engine (never
	// in clear), or nil.
	Secrets []byte
	Error   string
	// Data is engine-private JSON (phase, approvals, operator decisions).
	Data       string
	CreatedAt  time.Time
	StartedAt  time.Time // zero until it starts
	FinishedAt time.Time // zero until it ends
	// Version counts the writes of the run: 1 after CreateRun.
	Version int64
}

// Run states (SPEC §4, plus waiting_operator: a step that was in flight at a
// crash and is not idempotent waits for an operator to retry or skip it).
const (
	RunQueued          = "queued"
	RunRunning         = "running"
	RunWaitingApproval = "waiting_approval"
	RunWaitingOperator = "waiting_operator"
	RunSucceeded       = "succeeded"
	RunFailed          = "failed"
	RunCancelled       = "cancelled"
)

// RunActive reports whether a run in state s has not ended.
func RunActive(s string) bool {
	switch s {
	case RunQueued, RunRunning, RunWaitingApproval, RunWaitingOperator:
		return true
	}
	return false
}

// Step states (SPEC §4).
const (
	StepPending     = "pending"
	StepRunning     = "running"
	StepSucceeded   = "succeeded"
	StepFailed      = "failed"
	StepSkipped     = "skipped"
	StepCompensated = "compensated"
)

// Step phases: a step's own action, or its compensation.
const (
	PhaseMain       = "main"
	PhaseCompensate = "compensate"
)

// StepState is the journaled state of one step (or of its compensation).
type StepState struct {
	RunID      string
	StepID     string
	Phase      string // PhaseMain or PhaseCompensate
	State      string
	Attempts   int
	StartedAt  time.Time // first attempt's start; zero while pending
	FinishedAt time.Time
	// Outputs is the JSON object of the step's outputs, redacted.
	Outputs string
	Error   string
	// Data is engine-private JSON (attempt timings, approval decision).
	Data string
}

// RunEvent is one entry of a run's event stream.
type RunEvent struct {
	Seq     int64 // assigned by the store, 1-based per run
	Time    time.Time
	Type    string // e.g. "run", "step", "log", "approval"
	StepID  string
	State   string
	Message string
	Data    string // JSON or empty
}

// RunFilter selects runs in ListRuns.
type RunFilter struct {
	Runbook string
	// States, when not empty, keeps runs in one of these states.
	States []string
	Cursor string
	Limit  int // 0 means DefaultRunPage; at most MaxRunPage
}

// Page sizes.
const (
	DefaultRunPage  = 50
	MaxRunPage      = 1000
	MaxRunEventPage = 1000
)

// CheckRun validates r before CreateRun stores it.
func CheckRun(r Run) error {
	if r.ID == "" || len(r.ID) > MaxKeyLen {
		return fmt.Errorf("%w: run id must be 1..%d bytes", ErrInvalid, MaxKeyLen)
	}
	if r.Runbook == "" {
		return fmt.Errorf("%w: run without a runbook", ErrInvalid)
	}
	if r.State == "" {
		return fmt.Errorf("%w: run without a state", ErrInvalid)
	}
	for _, f := range []struct{ name, v string }{
		{"run id", r.ID}, {"runbook", r.Runbook}, {"runbook sha256", r.RunbookSHA256}, {"mode", r.Mode},
		{"state", r.State}, {"actor", r.Actor}, {"params", r.Params}, {"error", r.Error}, {"data", r.Data},
	} {
		if err := CheckText(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// CheckStepState validates s before PutStepState stores it.
func CheckStepState(s StepState) error {
	if s.RunID == "" || s.StepID == "" {
		return fmt.Errorf("%w: step state without run or step id", ErrInvalid)
	}
	if s.Phase != PhaseMain && s.Phase != PhaseCompensate {
		return fmt.Errorf("%w: step phase %q", ErrInvalid, s.Phase)
	}
	for _, f := range []struct{ name, v string }{
		{"run id", s.RunID}, {"step id", s.StepID}, {"state", s.State}, {"outputs", s.Outputs},
		{"error", s.Error}, {"data", s.Data},
	} {
		if err := CheckText(f.name, f.v); err != nil {
			return err
		}
	}
	return nil
}

// CheckRunEvents validates events before they are appended.
func CheckRunEvents(events []RunEvent) error {
	for _, e := range events {
		for _, f := range []struct{ name, v string }{
			{"event type", e.Type}, {"event step", e.StepID}, {"event state", e.State},
			{"event message", e.Message}, {"event data", e.Data},
		} {
			if err := CheckText(f.name, f.v); err != nil {
				return err
			}
		}
	}
	return nil
}

// CheckRunFilter validates f and fills in the default limit.
func CheckRunFilter(f RunFilter) (RunFilter, error) {
	switch {
	case f.Limit < 0 || f.Limit > MaxRunPage:
		return f, fmt.Errorf("%w: limit must be 0..%d", ErrInvalid, MaxRunPage)
	case f.Limit == 0:
		f.Limit = DefaultRunPage
	}
	for _, v := range append([]string{f.Runbook, f.Cursor}, f.States...) {
		if err := CheckText("filter", v); err != nil {
			return f, err
		}
	}
	return f, nil
}
