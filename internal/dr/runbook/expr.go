package runbook

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	exprparser "github.com/expr-lang/expr/parser"
	"github.com/expr-lang/expr/types"
	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
)

// scope is what an expression may read: the parameters, and the steps
// that run before the step it belongs to.
type scope struct {
	params  []*Param
	order   map[string]int   // run order of every step id
	actions map[string]*Step // steps decoded so far, by id
	bound   int              // steps with order < bound are visible
	self    string           // the step the expression belongs to
}

// at is the scope of the step with id: the steps that run before it.
func (sc *scope) at(id string) *scope {
	c := *sc
	c.self = id
	c.bound = 0
	if o, ok := sc.order[id]; ok {
		c.bound = o
	} else {
		// A step without a usable id sees the steps decoded before it.
		for sid := range sc.actions {
			c.bound = max(c.bound, sc.order[sid]+1)
		}
	}
	return &c
}

// including is the scope of a step's compensation: it also sees the step
// itself, which has completed when its compensation runs.
func (sc *scope) including(id string) *scope {
	c := sc.at(id)
	if o, ok := sc.order[id]; ok {
		c.bound = o + 1
	}
	return c
}

func (sc *scope) visible(id string) bool {
	o, ok := sc.order[id]
	return ok && o < sc.bound
}

func (sc *scope) param(name string) *Param {
	i := slices.IndexFunc(sc.params, func(p *Param) bool { return p.Name == name })
	if i < 0 {
		return nil
	}
	return sc.params[i]
}

// env is the expression environment's type for the checker.
func (sc *scope) env() types.Map {
	params := types.Map{}
	for _, p := range sc.params {
		params[p.Name] = paramExprType(p.Type)
	}
	steps := types.Map{}
	for id := range sc.order {
		if !sc.visible(id) {
			continue
		}
		steps[id] = types.Map{"state": types.String, "outputs": outputsType(sc.actions[id])}
	}
	return types.Map{
		"mode":   types.String,
		"params": params,
		"steps":  steps,
		"run": types.Map{
			"id":         types.String,
			"runbook":    types.String,
			"started_at": types.TypeOf(time.Time{}),
			"elapsed":    types.TypeOf(time.Duration(0)),
			"failed":     types.Bool,
		},
	}
}

func paramExprType(t ParamType) types.Type {
	switch t {
	case TypeInt:
		return types.Int
	case TypeBool:
		return types.Bool
	case TypeString, TypeSecret, TypeEnum:
		return types.String
	}
	return types.Any
}

// outputsType is the type of a step's outputs: exact for built-in
// actions, open for plugins (and for steps that did not decode).
func outputsType(s *Step) types.Type {
	if s == nil {
		return types.Map{types.Extra: types.Any}
	}
	a := builtinActions[s.Uses]
	if a == nil {
		return types.Map{types.Extra: types.Any}
	}
	m := types.Map{}
	for _, o := range a.Outputs {
		m[o.Name] = exprType(o.Kind)
	}
	return m
}

// ref is a use of params.X or steps.X[.field[.key]] in an expression.
type ref struct {
	root  string // "params" or "steps"
	name  string
	field string // steps only: "outputs", "state" or another (wrong) name
	key   string // steps.X.outputs.key
	from  int    // rune offset in the expression
}

type refCollector struct {
	refs  []ref
	index map[ast.Node]int // member node → its ref, so a parent extends it
}

// Visit records member chains rooted at params and steps. Walk visits a
// chain's inner members before the outer ones; an outer member replaces
// the ref of the member it contains, so each chain is recorded once, whole.
func (c *refCollector) Visit(node *ast.Node) {
	m, ok := (*node).(*ast.MemberNode)
	if !ok {
		return
	}
	chain, root, ok := memberChain(m)
	if !ok || (root.Value != "params" && root.Value != "steps") || len(chain) == 0 {
		return
	}
	r := ref{root: root.Value, name: chain[0], from: root.Location().From}
	if r.root == "steps" {
		if len(chain) > 1 {
			r.field = chain[1]
		}
		if len(chain) > 2 && chain[1] == "outputs" {
			r.key = chain[2]
		}
	}
	if c.index == nil {
		c.index = map[ast.Node]int{}
	}
	if i, ok := c.index[m.Node]; ok {
		c.refs[i] = r
		c.index[m] = i
		return
	}
	c.index[m] = len(c.refs)
	c.refs = append(c.refs, r)
}

// memberChain flattens a.b["c"].d into its root identifier and the
// constant property names after it.
func memberChain(m *ast.MemberNode) ([]string, *ast.IdentifierNode, bool) {
	var props []string
	var n ast.Node = m
	for {
		switch x := n.(type) {
		case *ast.MemberNode:
			s, ok := x.Property.(*ast.StringNode)
			if !ok {
				return nil, nil, false
			}
			props = append(props, s.Value)
			n = x.Node
			continue
		case *ast.IdentifierNode:
			slices.Reverse(props)
			return props, x, true
		}
		return nil, nil, false
	}
}

// compile checks and compiles e, reporting problems at its position in
// scalar n. Member chains on params and steps are checked first, with
// messages that say more than the expression library's.
func (p *parser) compile(e *Expr, n *yaml.Node, path string, sc *scope, asBool bool) bool {
	tree, err := exprparser.Parse(e.Source)
	if err != nil {
		p.exprErr(e, n, path, err)
		return false
	}
	c := &refCollector{}
	ast.Walk(&tree.Node, c)
	ok := true
	for _, r := range c.refs {
		if msg := sc.checkRef(r); msg != "" {
			p.errPos(p.exprPos(n, e.offset+byteOffset(e.Source, r.from)), "%s: %s", path, msg)
			ok = false
			continue
		}
		if r.root == "params" && !slices.Contains(e.params, r.name) {
			e.params = append(e.params, r.name)
		}
		if r.root == "steps" && !slices.Contains(e.steps, r.name) {
			e.steps = append(e.steps, r.name)
		}
	}
	if !ok {
		return false
	}
	opts := []expr.Option{expr.Env(sc.env())}
	if asBool {
		opts = append(opts, expr.AsBool())
	}
	prog, err := expr.Compile(e.Source, opts...)
	if err != nil {
		p.exprErr(e, n, path, err)
		return false
	}
	e.program = prog
	return true
}

// checkRef explains what is wrong with a reference, or returns "".
func (sc *scope) checkRef(r ref) string {
	if r.root == "params" {
		if sc.param(r.name) != nil {
			return ""
		}
		names := make([]string, 0, len(sc.params))
		for _, p := range sc.params {
			names = append(names, p.Name)
		}
		return fmt.Sprintf("unknown parameter %q%s", r.name, config.Suggest(r.name, names))
	}
	if _, exists := sc.order[r.name]; !exists {
		return fmt.Sprintf("unknown step %q%s", r.name, sc.idHint(r.name))
	}
	if r.name == sc.self && !sc.visible(r.name) {
		return fmt.Sprintf("step %q cannot read its own results (only a compensation can)", r.name)
	}
	if !sc.visible(r.name) {
		return fmt.Sprintf("step %q runs after this one; an expression can only read steps that ran before it", r.name)
	}
	switch r.field {
	case "", "state":
		return ""
	case "outputs":
	default:
		return fmt.Sprintf("steps.%s.%s: a step has outputs and state", r.name, r.field)
	}
	if r.key == "" {
		return ""
	}
	s := sc.actions[r.name]
	if s == nil {
		return ""
	}
	a := builtinActions[s.Uses]
	if a == nil {
		return ""
	}
	var names []string
	for _, o := range a.Outputs {
		if o.Name == r.key {
			return ""
		}
		names = append(names, o.Name)
	}
	if len(names) == 0 {
		return fmt.Sprintf("step %q (%s) has no outputs", r.name, s.Uses)
	}
	return fmt.Sprintf("step %q (%s) has no output %q%s; it has %s", r.name, s.Uses, r.key, config.Suggest(r.key, names), strings.Join(names, ", "))
}

// idHint helps with steps.switch-dns, which reads as steps.switch - dns.
func (sc *scope) idHint(name string) string {
	var ids []string
	for id := range sc.order {
		if strings.HasPrefix(id, name+"-") {
			return fmt.Sprintf(" (for the step %q write steps[%q])", id, id)
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return config.Suggest(name, ids)
}

// exprErr reports an error of the expression library at the column it
// names, in one line.
func (p *parser) exprErr(e *Expr, n *yaml.Node, path string, err error) {
	var fe *file.Error
	if errors.As(err, &fe) {
		from := fe.From
		if from > utf8.RuneCountInString(e.Source) || from < 0 {
			from = 0
		}
		p.errPos(p.exprPos(n, e.offset+byteOffset(e.Source, from)), "%s: %s in ${{ %s }}", path, fe.Message, e.Source)
		return
	}
	p.errPos(p.exprPos(n, e.offset), "%s: %s in ${{ %s }}", path, oneLine(err), e.Source)
}

// byteOffset converts a rune offset in s to a byte offset.
func byteOffset(s string, runes int) int {
	i := 0
	for n := 0; n < runes && i < len(s); n++ {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
	}
	return i
}

// condition decodes an if: (or assert's that:): one expression, with or
// without ${{ }}, that must be a boolean; or a literal true or false.
func (p *parser) condition(n *yaml.Node, path string, sc *scope) *Expr {
	if n.Kind != yaml.ScalarNode {
		p.wrongKind(n, path, "an expression")
		return nil
	}
	e := &Expr{Source: strings.TrimSpace(n.Value), Pos: posOf(n)}
	e.offset = len(n.Value) - len(strings.TrimLeft(n.Value, " \t"))
	if n.Tag == "!!bool" {
		e.Source = strings.ToLower(n.Value)
	}
	if strings.Contains(n.Value, "${{") {
		parts, off, err := parseTemplate(n.Value)
		switch {
		case err != nil:
			p.errPos(p.exprPos(n, off), "%s: %s", path, err)
			return nil
		case len(parts) != 1 || parts[0].Expr == nil:
			p.errAt(n, "%s: a condition is one expression: write ${{ a && b }}, without text around it", path)
			return nil
		}
		e.Source, e.offset = parts[0].Expr.Source, parts[0].Expr.offset
	}
	if e.Source == "" {
		p.errAt(n, "%s: empty condition", path)
		return nil
	}
	if !p.compile(e, n, path, sc, true) {
		return nil
	}
	return e
}
