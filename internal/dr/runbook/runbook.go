package runbook

import (
	"time"
)

// Runbook is a parsed and checked runbook file.
type Runbook struct {
	Name        string
	Description string
	Objectives  Objectives
	// Params are in the order the file declares them.
	Params []*Param
	// Steps are in file order, finally steps included; the engine runs the
	// steps that are not Finally in order, then every Finally step in
	// order, whatever happened before.
	Steps []*Step
	// Concurrency is how many runs of this runbook may be active at once
	// (default 1).
	Concurrency int

	// File is the path the runbook was read from, as given to Load.
	File string
	// SHA256 is the hex SHA-256 of the file's bytes, for drill reports.
	SHA256 string
	// Pos is where the document starts.
	Pos Pos

	namePos Pos
}

// Objectives are the recovery objectives a drill is measured against;
// zero means not stated.
type Objectives struct {
	RTO time.Duration
	RPO time.Duration
}

// Param is a runbook parameter, given when a run starts.
type Param struct {
	Name        string
	Type        ParamType
	Description string
	Required    bool
	// Default is the typed default (string, int or bool), nil when none.
	// Secret parameters have no default.
	Default any
	// Values are the allowed values of an enum parameter.
	Values []string
	Pos    Pos
}

// ParamType is the type of a parameter.
type ParamType string

// Parameter types. A secret is a string that is redacted wherever a run is
// recorded or shown; an enum is a string from a fixed list.
const (
	TypeString ParamType = "string"
	TypeInt    ParamType = "int"
	TypeBool   ParamType = "bool"
	TypeSecret ParamType = "secret"
	TypeEnum   ParamType = "enum"
)

var paramTypes = []string{string(TypeString), string(TypeInt), string(TypeBool), string(TypeSecret), string(TypeEnum)}

// Step is one step of a runbook.
type Step struct {
	ID string
	// Uses is a built-in action name ("backup.restore") or
	// "plugin:<name>".
	Uses string
	// With are the action's inputs by key. Each value is a literal or a
	// template; nested maps and lists are Values too.
	With map[string]*Value
	// If, when set, must evaluate to true for the step to run; otherwise
	// the step is skipped.
	If *Expr
	// Timeout bounds one attempt; 0 means no limit beyond the action's own.
	Timeout time.Duration
	Retry   Retry
	// LiveOnly steps are skipped, and reported as skipped, in drills.
	LiveOnly bool
	// Compensate undoes this step when a later step fails or the run is
	// cancelled; compensations run in reverse order of completion. Its ID
	// is the step's ID, its Compensate nil.
	Compensate *Step
	// Finally steps run at the end of every run, failed or cancelled ones
	// included.
	Finally bool
	// Marks are the measuring points this step sets (see Mark).
	Marks []Mark
	// IdempotentOverride is the step's `idempotent:` key, nil when absent.
	// Use Idempotent.
	IdempotentOverride *bool

	// Pos is where the step starts; UsesPos where its `uses` value is.
	Pos     Pos
	UsesPos Pos

	path    string // steps[i], for messages
	markPos map[Mark]Pos
}

// Idempotent reports whether the step may run again after a crash
// interrupted it: the step's own `idempotent:` if given, else its action's
// declaration. Plugin actions are not idempotent unless a step says so.
func (s *Step) Idempotent() bool {
	if s.IdempotentOverride != nil {
		return *s.IdempotentOverride
	}
	if a, ok := builtinActions[s.Uses]; ok {
		return a.Idempotent
	}
	return false
}

// Plugin returns the plugin name of a "plugin:<name>" step, or "".
func (s *Step) Plugin() string {
	if len(s.Uses) > len(pluginPrefix) && s.Uses[:len(pluginPrefix)] == pluginPrefix {
		return s.Uses[len(pluginPrefix):]
	}
	return ""
}

// HasMark reports whether the step sets m.
func (s *Step) HasMark(m Mark) bool {
	for _, x := range s.Marks {
		if x == m {
			return true
		}
	}
	return false
}

const pluginPrefix = "plugin:"

// Retry says how often a failed attempt is tried again.
type Retry struct {
	// MaxAttempts counts the first attempt: 1 (the default) means no retry.
	MaxAttempts int
	Backoff     Backoff
}

// Backoff is an exponential backoff: Initial, then each wait Factor times
// the previous one, never more than Max.
type Backoff struct {
	Initial time.Duration // default 1s
	Factor  float64       // default 2
	Max     time.Duration // default 1m
}

// Delay returns the wait before attempt n+1 after attempt n (n ≥ 1) failed.
func (b Backoff) Delay(n int) time.Duration {
	d := float64(b.Initial)
	for i := 1; i < n; i++ {
		d *= b.Factor
		if d >= float64(b.Max) {
			return b.Max
		}
	}
	return min(time.Duration(d), b.Max)
}

// Retry defaults and bounds.
const (
	DefaultBackoffInitial = time.Second
	DefaultBackoffFactor  = 2.0
	DefaultBackoffMax     = time.Minute
	MaxAttempts           = 100
)

// Mark is a measuring point a step sets for drill reports.
type Mark string

// Marks. RTO is measured from the run's start, or from the start of the
// step marked disruption_start, to the end of the step marked recovered.
// disruption_end is recorded in the report at the end of its step (the
// moment the simulated or real disruption was contained) and does not
// affect RTO. Each mark may be set by at most one step.
const (
	MarkRecovered       Mark = "recovered"
	MarkDisruptionStart Mark = "disruption_start"
	MarkDisruptionEnd   Mark = "disruption_end"
)

var marks = []string{string(MarkRecovered), string(MarkDisruptionStart), string(MarkDisruptionEnd)}

// Pos is a position in a runbook file; Line and Col are 1-based.
type Pos struct {
	Line int
	Col  int
}

// Modes a run can be in, the values of `mode` in expressions.
const (
	ModeDrill = "drill"
	ModeLive  = "live"
)
