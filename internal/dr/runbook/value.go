package runbook

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
)

// Value is a `with` value: a literal scalar, a template (a string with
// ${{ }} expressions), a mapping or a sequence of Values.
type Value struct {
	kind valueKind
	lit  any      // literal scalar: string, int, float64, bool or nil
	raw  string   // the scalar as written, for messages
	tpl  []Part   // template parts
	keys []string // mapping keys in file order
	m    map[string]*Value
	list []*Value

	// Pos is where the value is written.
	Pos Pos
	// secret is set when a template references a secret parameter.
	secret bool
}

type valueKind int

const (
	kindLiteral valueKind = iota
	kindTemplate
	kindMap
	kindList
)

// Part is a piece of a template: literal text, or an expression.
type Part struct {
	Text string
	Expr *Expr
}

// Expr is a compiled ${{ }} expression (or an `if:` condition).
type Expr struct {
	// Source is the expression text, without ${{ }}.
	Source string
	// Pos is where the YAML scalar holding the expression is written.
	Pos Pos

	open    int // byte offset of "${{" in the scalar's value
	offset  int // byte offset of Source in the scalar's value
	program *vm.Program
	params  []string // parameters it reads
	steps   []string // steps whose results it reads
}

// Params returns the names of the parameters the expression reads.
func (e *Expr) Params() []string { return slices.Clone(e.params) }

// Steps returns the ids of the steps whose results the expression reads.
func (e *Expr) Steps() []string { return slices.Clone(e.steps) }

// Env is what expressions see at run time. Its fields are exposed to
// expressions as `mode`, `params.NAME`, `steps.ID.outputs.KEY`,
// `steps.ID.state` and `run.id`, `run.runbook`, `run.started_at`,
// `run.elapsed`, `run.failed`.
type Env struct {
	// Mode is ModeDrill or ModeLive.
	Mode string
	// Params are the typed parameter values (see Runbook.ResolveParams):
	// string for string, secret and enum, int for int, bool for bool.
	Params map[string]any
	// Steps are the results of the steps that have finished so far.
	Steps map[string]StepResult
	Run   RunInfo
}

// StepResult is a finished step as expressions see it.
type StepResult struct {
	// State is the step's state: succeeded, failed, skipped or
	// compensated (SPEC §4).
	State   string
	Outputs map[string]any
}

// RunInfo describes the run an expression is evaluated in.
type RunInfo struct {
	ID        string
	Runbook   string
	StartedAt time.Time
	// Elapsed is the time since StartedAt; the engine rounds it to what a
	// message should show (a second, say).
	Elapsed time.Duration
	// Failed is true once a step of the run has failed; finally steps use
	// it to tell success from failure.
	Failed bool
}

func (env *Env) vars() map[string]any {
	steps := make(map[string]any, len(env.Steps))
	for id, r := range env.Steps {
		out := r.Outputs
		if out == nil {
			out = map[string]any{}
		}
		steps[id] = map[string]any{"state": r.State, "outputs": out}
	}
	params := env.Params
	if params == nil {
		params = map[string]any{}
	}
	return map[string]any{
		"mode":   env.Mode,
		"params": params,
		"steps":  steps,
		"run": map[string]any{
			"id":         env.Run.ID,
			"runbook":    env.Run.Runbook,
			"started_at": env.Run.StartedAt,
			"elapsed":    env.Run.Elapsed,
			"failed":     env.Run.Failed,
		},
	}
}

// ErrNotCompiled is returned by Eval for an expression of a runbook that
// was not checked (a Value built by hand, or a failed Parse).
var ErrNotCompiled = errors.New("expression was not compiled")

// Eval evaluates the expression in env.
func (e *Expr) Eval(env *Env) (any, error) {
	return e.eval(env.vars())
}

func (e *Expr) eval(vars map[string]any) (any, error) {
	if e.program == nil {
		return nil, ErrNotCompiled
	}
	out, err := expr.Run(e.program, vars)
	if err != nil {
		return nil, fmt.Errorf("evaluate ${{ %s }}: %s", e.Source, oneLine(err))
	}
	return out, nil
}

// EvalBool evaluates a condition (an `if:` or assert's `that:`); it was
// checked to be boolean at check time.
func (e *Expr) EvalBool(env *Env) (bool, error) {
	out, err := e.Eval(env)
	if err != nil {
		return false, err
	}
	b, ok := out.(bool)
	if !ok {
		return false, fmt.Errorf("evaluate ${{ %s }}: got %T, want a boolean", e.Source, out)
	}
	return b, nil
}

// Eval renders the value in env: a literal is itself; a template that is a
// single ${{ }} expression yields the expression's typed value; a template
// with text around its expressions yields a string; mappings and
// sequences yield map[string]any and []any of their rendered values.
// The result of an expression is never evaluated again, so a parameter
// holding "${{ ... }}" stays that text.
func (v *Value) Eval(env *Env) (any, error) {
	return v.eval(env.vars())
}

func (v *Value) eval(vars map[string]any) (any, error) {
	switch v.kind {
	case kindTemplate:
		if len(v.tpl) == 1 && v.tpl[0].Expr != nil {
			return v.tpl[0].Expr.eval(vars)
		}
		var b strings.Builder
		for _, p := range v.tpl {
			if p.Expr == nil {
				b.WriteString(p.Text)
				continue
			}
			out, err := p.Expr.eval(vars)
			if err != nil {
				return nil, err
			}
			b.WriteString(render(out))
		}
		return b.String(), nil
	case kindMap:
		m := make(map[string]any, len(v.m))
		for k, x := range v.m {
			out, err := x.eval(vars)
			if err != nil {
				return nil, err
			}
			m[k] = out
		}
		return m, nil
	case kindList:
		l := make([]any, 0, len(v.list))
		for _, x := range v.list {
			out, err := x.eval(vars)
			if err != nil {
				return nil, err
			}
			l = append(l, out)
		}
		return l, nil
	}
	return v.lit, nil
}

// render is how an expression's result reads inside a string.
func render(x any) string {
	switch x := x.(type) {
	case nil:
		return ""
	case string:
		return x
	case time.Time:
		return x.UTC().Format(time.RFC3339)
	case time.Duration:
		return x.String()
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case fmt.Stringer:
		return x.String()
	case map[string]any, []any:
		b, err := json.Marshal(x)
		if err != nil {
			return fmt.Sprint(x)
		}
		return string(b)
	}
	return fmt.Sprint(x)
}

// IsLiteral reports whether the value is a scalar without expressions.
func (v *Value) IsLiteral() bool { return v.kind == kindLiteral }

// Literal returns a literal scalar's value (string, int, float64, bool or
// nil) and true, or nil and false for anything else.
func (v *Value) Literal() (any, bool) {
	if v.kind != kindLiteral {
		return nil, false
	}
	return v.lit, true
}

// HasExpr reports whether the value or anything inside it holds an
// expression.
func (v *Value) HasExpr() bool {
	switch v.kind {
	case kindTemplate:
		return true
	case kindMap:
		for _, x := range v.m {
			if x.HasExpr() {
				return true
			}
		}
	case kindList:
		return slices.ContainsFunc(v.list, (*Value).HasExpr)
	}
	return false
}

// Secret reports whether the value's rendering can contain a secret
// parameter, so the engine redacts it in the journal, logs and reports.
func (v *Value) Secret() bool {
	switch v.kind {
	case kindTemplate:
		return v.secret
	case kindMap:
		for _, x := range v.m {
			if x.Secret() {
				return true
			}
		}
	case kindList:
		return slices.ContainsFunc(v.list, (*Value).Secret)
	}
	return false
}

// Exprs returns every expression in the value, depth first in file order.
func (v *Value) Exprs() []*Expr {
	var out []*Expr
	v.walk(func(x *Value) {
		for _, p := range x.tpl {
			if p.Expr != nil {
				out = append(out, p.Expr)
			}
		}
	})
	return out
}

func (v *Value) walk(fn func(*Value)) {
	fn(v)
	switch v.kind {
	case kindMap:
		for _, k := range v.keys {
			v.m[k].walk(fn)
		}
	case kindList:
		for _, x := range v.list {
			x.walk(fn)
		}
	}
}

// Keys returns a mapping's keys in file order, nil for anything else.
func (v *Value) Keys() []string { return slices.Clone(v.keys) }

// Get returns a mapping's value for key, or nil.
func (v *Value) Get(key string) *Value { return v.m[key] }

// Items returns a sequence's values, nil for anything else.
func (v *Value) Items() []*Value { return slices.Clone(v.list) }

// String is the value as written, for messages; expressions stay ${{ }}.
func (v *Value) String() string {
	switch v.kind {
	case kindMap:
		parts := make([]string, 0, len(v.keys))
		for _, k := range v.keys {
			parts = append(parts, k+": "+v.m[k].String())
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case kindList:
		parts := make([]string, 0, len(v.list))
		for _, x := range v.list {
			parts = append(parts, x.String())
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	return v.raw
}

// parseTemplate splits s into text and ${{ }} expressions. $${{ is a
// literal ${{. It returns the byte offset of a problem with the error.
func parseTemplate(s string) ([]Part, int, error) {
	var parts []Part
	var text strings.Builder
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "$${{") {
			text.WriteString("${{")
			i += 4
			continue
		}
		if !strings.HasPrefix(s[i:], "${{") {
			text.WriteByte(s[i])
			i++
			continue
		}
		end := closing(s[i+3:])
		if end < 0 {
			return nil, i, errors.New("unterminated ${{ (write $${{ for a literal ${{)")
		}
		inner := s[i+3 : i+3+end]
		src := strings.TrimSpace(inner)
		if src == "" {
			return nil, i, errors.New("empty ${{ }}")
		}
		if text.Len() > 0 {
			parts = append(parts, Part{Text: text.String()})
			text.Reset()
		}
		lead := len(inner) - len(strings.TrimLeft(inner, " \t\n"))
		parts = append(parts, Part{Expr: &Expr{Source: src, open: i, offset: i + 3 + lead}})
		i += 3 + end + 2
	}
	if text.Len() > 0 {
		parts = append(parts, Part{Text: text.String()})
	}
	return parts, 0, nil
}

// closing finds the "}}" that ends an expression, skipping string
// literals so that "${{ '}}' }}" works.
func closing(s string) int {
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"' || c == '`':
			quote = c
		case c == '}' && i+1 < len(s) && s[i+1] == '}':
			return i
		}
	}
	return -1
}

// oneLine is an error message without expr's multi-line snippet.
func oneLine(err error) string {
	msg, _, _ := strings.Cut(err.Error(), "\n")
	return msg
}
