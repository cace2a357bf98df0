package runbook

import (
	"net/url"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/yamlnode"
)

// with decodes a step's with: against its action's fields. Plugin steps
// (and steps whose action is unknown) take any keys.
func (p *parser) with(s *Step, n *yaml.Node, path string, sc *scope) map[string]*Value {
	if n.Kind != yaml.MappingNode {
		p.wrongKind(n, path, "a mapping")
		return nil
	}
	a := builtinActions[s.Uses]
	out := map[string]*Value{}
	var names []string
	if a != nil {
		for _, f := range a.Fields {
			names = append(names, f.Name)
		}
	}
	for _, kv := range p.pairs(n, path) {
		key := kv.Key.Value
		kp := yamlnode.JoinKey(path, key)
		if a == nil {
			if v := p.value(kv.Val, kp, sc, false); v != nil {
				out[key] = v
			}
			continue
		}
		f, ok := a.Field(key)
		if !ok {
			p.errAt(kv.Key, "unknown key %q%s for %s%s; it takes %s", key, yamlnode.Where(path), s.Uses, config.Suggest(key, names), strings.Join(names, ", "))
			continue
		}
		if yamlnode.IsNull(kv.Val) {
			if f.Required {
				p.errAt(kv.Key, "%s: missing value", kp)
			}
			continue
		}
		var v *Value
		if f.Kind == KindCondition {
			v = p.conditionValue(kv.Val, kp, sc)
		} else {
			v = p.value(kv.Val, kp, sc, f.NoExpr)
		}
		if v == nil {
			out[key] = nil // present, but reported; keeps "missing" quiet
			continue
		}
		if p.fieldType(v, kv.Val, kp, f) {
			p.fieldValue(s, v, kv.Val, kp, f)
		}
		out[key] = v
	}
	if a == nil {
		return out
	}
	var missing []string
	for _, f := range a.Fields {
		if _, ok := out[f.Name]; !ok && f.Required {
			missing = append(missing, f.Name)
		}
	}
	if len(missing) > 0 {
		p.errAt(n, "%s: %s needs %s", path, s.Uses, quoteList(missing))
	}
	p.actionRules(s, out, n, path)
	for k, v := range out {
		if v == nil {
			delete(out, k)
		}
	}
	return out
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

// conditionValue is a condition held in a with: key (assert's that:), as a
// template of one expression.
func (p *parser) conditionValue(n *yaml.Node, path string, sc *scope) *Value {
	e := p.condition(n, path, sc)
	if e == nil {
		return nil
	}
	return &Value{kind: kindTemplate, raw: n.Value, tpl: []Part{{Expr: e}}, Pos: posOf(n), secret: sc.secret(e)}
}

// secret reports whether e reads a secret parameter.
func (sc *scope) secret(e *Expr) bool {
	for _, name := range e.params {
		if prm := sc.param(name); prm != nil && prm.Type == TypeSecret {
			return true
		}
	}
	return false
}

// value decodes any YAML value into a Value, compiling the expressions in
// its strings. noExpr refuses expressions anywhere inside (exec argv).
func (p *parser) value(n *yaml.Node, path string, sc *scope, noExpr bool) *Value {
	n = p.w.Deref(n)
	if n == nil {
		return nil
	}
	v := &Value{Pos: posOf(n), raw: n.Value}
	switch n.Kind {
	case yaml.MappingNode:
		v.kind = kindMap
		v.m = map[string]*Value{}
		ok := true
		for _, kv := range p.pairs(n, path) {
			x := p.value(kv.Val, yamlnode.JoinKey(path, kv.Key.Value), sc, noExpr)
			if x == nil {
				ok = false
				continue
			}
			v.keys = append(v.keys, kv.Key.Value)
			v.m[kv.Key.Value] = x
		}
		if !ok {
			return nil
		}
		return v
	case yaml.SequenceNode:
		v.kind = kindList
		ok := true
		for i, item := range n.Content {
			x := p.value(item, yamlnode.JoinIndex(path, i), sc, noExpr)
			if x == nil {
				ok = false
				continue
			}
			v.list = append(v.list, x)
		}
		if !ok {
			return nil
		}
		return v
	}
	switch n.Tag {
	case "!!null":
		return v
	case "!!bool":
		v.lit = strings.EqualFold(n.Value, "true")
		return v
	case "!!int":
		var i int
		if err := n.Decode(&i); err != nil {
			p.errAt(n, "%s: integer %s out of range", path, n.Value)
			return nil
		}
		v.lit = i
		return v
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil {
			p.errAt(n, "%s: invalid number %s", path, n.Value)
			return nil
		}
		v.lit = f
		return v
	}
	if !strings.Contains(n.Value, "${{") {
		v.lit = n.Value
		return v
	}
	parts, off, err := parseTemplate(n.Value)
	if err != nil {
		p.errPos(p.exprPos(n, off), "%s: %s", path, err)
		return nil
	}
	if noExpr {
		for _, part := range parts {
			if part.Expr != nil {
				p.errPos(p.exprPos(n, part.Expr.open), "%s: expressions are not allowed in exec argv; "+
					"parameters reach the command only as environment variables OPSD_PARAM_<NAME>", path)
				return nil
			}
		}
		// Only escaped $${{: literal text.
		v.lit = parts[0].Text
		return v
	}
	ok := true
	for _, part := range parts {
		if part.Expr == nil {
			continue
		}
		part.Expr.Pos = v.Pos
		if !p.compile(part.Expr, n, path, sc, false) {
			ok = false
			continue
		}
		v.secret = v.secret || sc.secret(part.Expr)
	}
	if !ok {
		return nil
	}
	if len(parts) == 1 && parts[0].Expr == nil {
		v.lit = parts[0].Text // only escaped $${{
		return v
	}
	v.kind = kindTemplate
	v.tpl = parts
	return v
}

// fieldType checks that v can be of f's kind. Literals are checked now;
// an expression's type is checked when the library knows it.
func (p *parser) fieldType(v *Value, n *yaml.Node, path string, f Field) bool {
	want := string(f.Kind)
	switch f.Kind {
	case KindAny, KindCondition:
		return true
	case KindString, KindDuration, KindInt, KindBool:
		if f.Kind == KindInt {
			want = "an integer"
		} else if f.Kind == KindBool {
			want = "true or false"
		} else {
			want = "a " + want
		}
		return p.scalarType(v, n, path, f, want)
	case KindStringList, KindIntList, KindList:
		want = "a sequence"
		if v.kind == kindTemplate {
			return p.exprType(v, n, path, f, want)
		}
		if v.kind != kindList {
			p.wrongKind(n, path, want)
			return false
		}
		if f.Kind == KindList {
			return true
		}
		ok := true
		elem := Field{Kind: KindString}
		ew := "a string"
		if f.Kind == KindIntList {
			elem, ew = Field{Kind: KindInt}, "an integer"
		}
		for i, x := range v.list {
			if !p.scalarType(x, n.Content[i], yamlnode.JoinIndex(path, i), elem, ew) {
				ok = false
			}
		}
		return ok
	case KindStringMap, KindMap:
		want = "a mapping"
		if v.kind == kindTemplate {
			return p.exprType(v, n, path, f, want)
		}
		if v.kind != kindMap {
			p.wrongKind(n, path, want)
			return false
		}
		if f.Kind == KindMap {
			return true
		}
		ok := true
		for _, kv := range p.pairs(n, path) {
			x := v.m[kv.Key.Value]
			if x != nil && !p.scalarType(x, p.w.Deref(kv.Val), yamlnode.JoinKey(path, kv.Key.Value), Field{Kind: KindString}, "a string") {
				ok = false
			}
		}
		return ok
	}
	return true
}

// scalarType checks a value that must be one scalar of f's kind.
func (p *parser) scalarType(v *Value, n *yaml.Node, path string, f Field, want string) bool {
	switch v.kind {
	case kindMap, kindList:
		p.wrongKind(n, path, want)
		return false
	case kindTemplate:
		return p.exprType(v, n, path, f, want)
	}
	switch x := v.lit.(type) {
	case nil:
		p.errAt(n, "%s: want %s, got nothing", path, want)
		return false
	case bool:
		if f.Kind == KindString {
			v.lit = n.Value // argv: [true] runs true
			break
		}
		if f.Kind != KindBool {
			p.wrongKind(n, path, want)
			return false
		}
	case int:
		if f.Kind != KindInt && f.Kind != KindString {
			p.wrongKind(n, path, want)
			return false
		}
		if f.Kind == KindString {
			v.lit = n.Value // "backup: 20261123" is an id, not a number
		}
	case float64:
		if f.Kind != KindString {
			p.wrongKind(n, path, want)
			return false
		}
		v.lit = n.Value
	case string:
		switch f.Kind {
		case KindInt, KindBool:
			p.wrongKind(n, path, want)
			return false
		case KindDuration:
			d, err := config.ParseDuration(x)
			if err != nil {
				p.errAt(n, "%s: %s, got %q", path, err, x)
				return false
			}
			if d == 0 {
				p.errAt(n, "%s: want a duration above zero", path)
				return false
			}
		}
	}
	return true
}

// exprType checks a template against the kind it fills: text around
// expressions makes a string; a single expression has the type the
// library inferred, if it knows one.
func (p *parser) exprType(v *Value, n *yaml.Node, path string, f Field, want string) bool {
	if len(v.tpl) != 1 || v.tpl[0].Expr == nil {
		switch f.Kind {
		case KindString, KindDuration, KindAny:
			return true
		}
		p.errAt(n, "%s: want %s; text around ${{ }} makes a string", path, want)
		return false
	}
	e := v.tpl[0].Expr
	t := e.program.Node().Type()
	if kindAccepts(f.Kind, t) {
		return true
	}
	p.errPos(p.exprPos(n, e.offset), "%s: want %s, but ${{ %s }} is %s", path, want, e.Source, t)
	return false
}

// fieldValue checks a well-typed literal against the field's allowed
// values; expressions are checked when the engine renders them.
func (p *parser) fieldValue(s *Step, v *Value, n *yaml.Node, path string, f Field) {
	str, isStr := v.lit.(string)
	if v.kind != kindLiteral || !isStr {
		if v.kind == kindList {
			p.listValues(s, v, n, path)
		}
		if v.kind == kindMap && s.Uses == ActionExec && f.Name == "env" {
			for _, kv := range p.pairs(n, path) {
				name := kv.Key.Value
				switch {
				case !envRE.MatchString(name):
					p.errAt(kv.Key, "%s: invalid environment variable name %q", path, name)
				case strings.HasPrefix(strings.ToUpper(name), "OPSD_PARAM_"):
					p.errAt(kv.Key, "%s: %s: OPSD_PARAM_* is set by opsd from the run's parameters", path, name)
				}
			}
		}
		if v.kind == kindTemplate && s.Uses == ActionSQLCheck && f.Name == "expect" {
			if first := v.tpl[0]; first.Expr != nil || !expectOpRE.MatchString(first.Text) {
				p.errAt(n, "%s: want an operator first, as in \">= ${{ params.min }}\"", path)
			}
		}
		return
	}
	if len(f.Enum) > 0 && !containsStr(f.Enum, str) {
		p.errAt(n, "%s: %q is not one of %s%s", path, str, strings.Join(f.Enum, ", "), config.Suggest(str, f.Enum))
		return
	}
	switch {
	case f.Name == "url":
		u, err := url.Parse(str)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			p.errAt(n, "%s: want an http:// or https:// URL, got %q", path, str)
		}
	case s.Uses == ActionSQLCheck && f.Name == "expect":
		if !expectRE.MatchString(strings.TrimSpace(str)) {
			p.errAt(n, "%s: want an operator and a number, like \"> 0\" or \">= 1000\", got %q", path, str)
		}
	case f.Ref != "" && str == "":
		p.errAt(n, "%s: want a %s name", path, f.Ref)
	case f.Name == "backup" && str != "latest" && strings.TrimSpace(str) == "":
		p.errAt(n, "%s: want a backup id or \"latest\"", path)
	}
}

// listValues checks the items of literal lists with rules per action.
func (p *parser) listValues(s *Step, v *Value, n *yaml.Node, path string) {
	switch {
	case s.Uses == ActionApproval && strings.HasSuffix(path, ".approvers"):
		if len(v.list) == 0 {
			p.errAt(n, "%s: want at least one approver", path)
		}
		for i, x := range v.list {
			if a, ok := x.lit.(string); ok && !approverRE.MatchString(a) {
				p.errAt(n.Content[i], "%s: %q: want role:operator, role:admin or token:NAME", yamlnode.JoinIndex(path, i), a)
			}
		}
	case s.Uses == ActionExec && strings.HasSuffix(path, ".argv"):
		if len(v.list) == 0 {
			p.errAt(n, "%s: want the program and its arguments", path)
		} else if a, ok := v.list[0].lit.(string); ok && a == "" {
			p.errAt(n.Content[0], "%s: empty program name", yamlnode.JoinIndex(path, 0))
		}
	case strings.HasSuffix(path, ".expect_status"):
		for i, x := range v.list {
			if c, ok := x.lit.(int); ok && (c < 100 || c > 599) {
				p.errAt(n.Content[i], "%s: %d is not an HTTP status", yamlnode.JoinIndex(path, i), c)
			}
		}
	}
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// actionRules checks rules across an action's keys.
func (p *parser) actionRules(s *Step, with map[string]*Value, n *yaml.Node, path string) {
	if s.Uses == ActionBackupRestore {
		_, pg := with["to_postgres"]
		_, dir := with["to_dir"]
		switch {
		case pg && dir:
			p.errAt(n, "%s: backup.restore takes to_postgres or to_dir, not both", path)
		case !pg && !dir:
			p.errAt(n, "%s: backup.restore needs to_postgres (postgres sources) or to_dir", path)
		}
	}
}

// ParamEnvName is the environment variable through which exec steps
// receive parameter name: OPSD_PARAM_ and the name in upper case.
func ParamEnvName(name string) string { return "OPSD_PARAM_" + strings.ToUpper(name) }
