package runbook

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/yamlnode"
)

var (
	// nameRE is the config's name syntax: runbook names appear in URLs,
	// metric labels and runbooks.schedules.
	nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
	// idRE is what step ids look like; they appear in URLs and in
	// expressions (steps.ID or steps["ID"] when the id has a '-').
	idRE = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)
	// paramRE matches the config's runbooks.schedules params and makes a
	// valid environment variable name after OPSD_PARAM_.
	paramRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	envRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	// approverRE is who may decide an approval.
	approverRE = regexp.MustCompile(`^(role:(operator|admin)|token:[A-Za-z0-9_.-]+)$`)
	expectRE   = regexp.MustCompile(ExpectPattern)
	expectOpRE = regexp.MustCompile(`^\s*(>=|<=|==|!=|>|<|=)`)
)

const (
	maxIDLen       = 64
	maxConcurrency = 1000
	maxFactor      = 10
)

var (
	topKeys        = []string{"name", "description", "objectives", "params", "steps", "concurrency"}
	objectiveKeys  = []string{"rto", "rpo"}
	paramKeys      = []string{"type", "description", "required", "default", "values"}
	stepKeys       = []string{"id", "uses", "with", "if", "timeout", "retry", "live_only", "compensate", "finally", "marks", "idempotent"}
	compensateKeys = []string{"uses", "with", "timeout", "retry", "idempotent"}
	retryKeys      = []string{"max_attempts", "backoff"}
	backoffKeys    = []string{"initial", "factor", "max"}
)

// Parse decodes a runbook file's bytes strictly and checks it; with refs it
// also checks the names it uses against the config (nil refs skips that).
// On any problem it returns a config.Problems error listing every problem,
// sorted by position. file names the runbook in problems and Runbook.File.
func Parse(file string, data []byte, refs *References) (*Runbook, error) {
	rb, probs := parse(file, data)
	if rb != nil && refs != nil {
		probs = append(probs, Check(rb, refs)...)
	}
	if len(probs) > 0 {
		sortProblems(probs)
		return nil, probs
	}
	return rb, nil
}

// parse decodes data. It returns the runbook as far as it could be decoded
// (nil when the YAML itself is unusable) and the problems found.
func parse(file string, data []byte) (*Runbook, config.Problems) {
	p := &parser{file: file}
	p.w.ErrAt = p.errAt
	root := p.document(data)
	if root == nil {
		return nil, p.probs
	}
	sum := sha256.Sum256(data)
	rb := &Runbook{File: file, SHA256: hex.EncodeToString(sum[:]), Concurrency: 1, Pos: posOf(root)}
	var paramsNode, stepsNode *yaml.Node
	keys := p.fields(root, "", topKeys, func(name string, _, v *yaml.Node) {
		switch name {
		case "name":
			if s, ok := p.str(v, "name"); ok {
				if !nameRE.MatchString(s) {
					p.errAt(v, "name: %q: use lower-case letters, digits, '_' and '-', starting with a letter or digit", s)
				}
				rb.Name = s
				rb.namePos = posOf(v)
			}
		case "description":
			if v.Kind != yaml.ScalarNode {
				p.wrongKind(v, "description", "a string")
			}
			rb.Description = v.Value
		case "objectives":
			p.fields(v, "objectives", objectiveKeys, func(name string, _, v *yaml.Node) {
				d, ok := p.duration(v, "objectives."+name)
				if name == "rto" && ok {
					rb.Objectives.RTO = d
				} else if ok {
					rb.Objectives.RPO = d
				}
			})
		case "params":
			paramsNode = v
		case "steps":
			stepsNode = v
		case "concurrency":
			if n, ok := p.integer(v, "concurrency"); ok {
				if n < 1 || n > maxConcurrency {
					p.errAt(v, "concurrency: want 1 to %d runs at once, got %d", maxConcurrency, n)
				}
				rb.Concurrency = n
			}
		}
	})
	if keys == nil {
		return rb, p.probs
	}
	if k, ok := keys["name"]; !ok {
		p.errAt(root, "missing required key \"name\"")
	} else if rb.Name == "" && len(p.probs) == 0 {
		p.errAt(k, "name: want a runbook name")
	}
	if paramsNode != nil {
		rb.Params = p.params(paramsNode)
	}
	if stepsNode == nil {
		p.errAt(root, "missing required key \"steps\"")
	} else {
		rb.Steps = p.steps(stepsNode, rb)
	}
	return rb, p.probs
}

func (p *parser) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := p.str(n, path)
	if !ok {
		return 0, false
	}
	d, err := config.ParseDuration(s)
	if err != nil {
		p.errAt(n, "%s: %s, got %q", path, err, s)
		return 0, false
	}
	if d == 0 {
		p.errAt(n, "%s: want a duration above zero", path)
		return 0, false
	}
	return d, true
}

func (p *parser) params(n *yaml.Node) []*Param {
	if n.Kind != yaml.MappingNode {
		p.wrongKind(n, "params", "a mapping")
		return nil
	}
	var out []*Param
	envNames := map[string]*Param{}
	for _, kv := range p.pairs(n, "params") {
		name := kv.Key.Value
		path := yamlnode.JoinKey("params", name)
		prm := &Param{Name: name, Type: TypeString, Pos: posOf(kv.Key)}
		if !paramRE.MatchString(name) {
			p.errAt(kv.Key, "%s: invalid parameter name: use letters, digits and '_', not starting with a digit", path)
		} else if other, dup := envNames[ParamEnvName(name)]; dup {
			p.errAt(kv.Key, "%s: parameter %q and %q are both %s in exec's environment", path, other.Name, name, ParamEnvName(name))
		} else {
			envNames[ParamEnvName(name)] = prm
		}
		out = append(out, prm)
		if yamlnode.IsNull(kv.Val) {
			continue // a string parameter with no default
		}
		var defNode, valuesNode *yaml.Node
		typeOK := true
		p.fields(kv.Val, path, paramKeys, func(key string, _, v *yaml.Node) {
			switch key {
			case "type":
				s, ok := p.str(v, path+".type")
				if !ok {
					typeOK = false
					return
				}
				if !slices.Contains(paramTypes, s) {
					p.errAt(v, "%s.type: %q is not one of %s%s", path, s, strings.Join(paramTypes, ", "), config.Suggest(s, paramTypes))
					typeOK = false
					prm.Type = "" // unknown: expressions may use it as anything
					return
				}
				prm.Type = ParamType(s)
			case "description":
				prm.Description, _ = p.str(v, path+".description")
			case "required":
				prm.Required, _ = p.boolean(v, path+".required")
			case "default":
				defNode = v
			case "values":
				valuesNode = v
			}
		})
		if valuesNode != nil {
			prm.Values = p.enumValues(valuesNode, path+".values", prm.Type)
		} else if prm.Type == TypeEnum {
			p.errAt(kv.Key, "%s: an enum parameter needs values", path)
		}
		if defNode != nil && typeOK {
			prm.Default = p.paramDefault(defNode, path+".default", prm)
			if prm.Required {
				p.errAt(defNode, "%s.default: a required parameter cannot have a default", path)
			}
		}
	}
	return out
}

func (p *parser) enumValues(n *yaml.Node, path string, typ ParamType) []string {
	if typ != TypeEnum {
		p.errAt(n, "%s: only enum parameters have values (type is %s)", path, typ)
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.wrongKind(n, path, "a sequence")
		return nil
	}
	if len(n.Content) == 0 {
		p.errAt(n, "%s: want at least one value", path)
	}
	var out []string
	for i, item := range n.Content {
		item = p.w.Deref(item)
		if item == nil {
			continue
		}
		s, ok := p.str(item, yamlnode.JoinIndex(path, i))
		if !ok {
			continue
		}
		if slices.Contains(out, s) {
			p.errAt(item, "%s: duplicate value %q", yamlnode.JoinIndex(path, i), s)
			continue
		}
		out = append(out, s)
	}
	return out
}

func (p *parser) paramDefault(n *yaml.Node, path string, prm *Param) any {
	switch prm.Type {
	case TypeSecret:
		p.errAt(n, "%s: a secret parameter cannot have a default (it would be stored in the runbook)", path)
		return nil
	case TypeInt:
		if i, ok := p.integer(n, path); ok {
			return i
		}
	case TypeBool:
		if b, ok := p.boolean(n, path); ok {
			return b
		}
	case TypeEnum:
		s, ok := p.str(n, path)
		if !ok {
			return nil
		}
		if prm.Values != nil && !slices.Contains(prm.Values, s) {
			p.errAt(n, "%s: %q is not one of the values %s", path, s, strings.Join(prm.Values, ", "))
			return nil
		}
		return s
	default:
		if s, ok := p.str(n, path); ok {
			return s
		}
	}
	return nil
}

// stepNode is a step's mapping entries before decoding.
type stepNode struct {
	n     *yaml.Node
	keys  map[string]*yaml.Node // key nodes
	vals  map[string]*yaml.Node // non-null values
	id    string                // the step's id if valid and unique
	rawID string                // the id as written
	final bool
}

func (p *parser) steps(n *yaml.Node, rb *Runbook) []*Step {
	if n.Kind != yaml.SequenceNode {
		p.wrongKind(n, "steps", "a sequence")
		return nil
	}
	if len(n.Content) == 0 {
		p.errAt(n, "steps: want at least one step")
		return nil
	}
	// First pass: keys, ids and finally flags, so that expressions can
	// tell a later step from an unknown one, and run order is known.
	nodes := make([]*stepNode, len(n.Content))
	firstID := map[string]*yaml.Node{}
	for i, item := range n.Content {
		path := yamlnode.JoinIndex("steps", i)
		sn := &stepNode{n: p.w.Deref(item), keys: map[string]*yaml.Node{}, vals: map[string]*yaml.Node{}}
		nodes[i] = sn
		if sn.n == nil {
			continue
		}
		if yamlnode.IsNull(sn.n) {
			p.errAt(sn.n, "%s: empty step", path)
			continue
		}
		sn.keys = p.fields(sn.n, path, stepKeys, func(key string, _, v *yaml.Node) { sn.vals[key] = v })
		if v := sn.vals["id"]; v != nil {
			id, ok := p.str(v, path+".id")
			sn.rawID = id
			switch {
			case !ok:
			case !idRE.MatchString(id) || len(id) > maxIDLen:
				p.errAt(v, "%s.id: %q: use lower-case letters, digits, '_' and '-', starting with a letter (at most %d)", path, id, maxIDLen)
			default:
				if first, dup := firstID[id]; dup {
					p.errAt(v, "%s.id: duplicate step id %q (first at line %d)", path, id, first.Line)
				} else {
					firstID[id] = v
					sn.id = id
				}
			}
		} else if sn.keys != nil {
			p.errAt(sn.n, "%s: missing required key \"id\"", path)
		}
		if v := sn.vals["finally"]; v != nil {
			sn.final, _ = p.boolean(v, path+".finally")
		}
	}
	// Run order: the steps that are not finally, then the finally steps.
	order := map[string]int{}
	seq := 0
	for _, final := range []bool{false, true} {
		for _, sn := range nodes {
			if sn.id != "" && sn.final == final {
				order[sn.id] = seq
				seq++
			}
		}
	}
	sc := &scope{params: rb.Params, order: order, actions: map[string]*Step{}}
	var out []*Step
	for i, sn := range nodes {
		if sn.n == nil || sn.keys == nil {
			continue
		}
		out = append(out, p.step(sn, yamlnode.JoinIndex("steps", i), sc))
	}
	p.crossSteps(out)
	return out
}

func (p *parser) step(sn *stepNode, path string, sc *scope) *Step {
	s := &Step{ID: sn.rawID, Pos: posOf(sn.n), Finally: sn.final, Retry: defaultRetry(), path: path}
	self := sc.at(sn.id)
	p.uses(s, sn.n, sn.vals["uses"], path)
	if sn.id != "" {
		sc.actions[sn.id] = s // its compensation may read its outputs
	}
	if v := sn.vals["if"]; v != nil {
		s.If = p.condition(v, path+".if", self)
	}
	if v := sn.vals["with"]; v != nil {
		s.With = p.with(s, v, path+".with", self)
	} else {
		p.missingWith(s, sn.n, path)
	}
	if v := sn.vals["timeout"]; v != nil {
		s.Timeout, _ = p.duration(v, path+".timeout")
	}
	if v := sn.vals["retry"]; v != nil {
		s.Retry = p.retry(v, path+".retry")
	}
	if v := sn.vals["live_only"]; v != nil {
		s.LiveOnly, _ = p.boolean(v, path+".live_only")
	}
	if v := sn.vals["idempotent"]; v != nil {
		if b, ok := p.boolean(v, path+".idempotent"); ok {
			s.IdempotentOverride = &b
		}
	}
	if v := sn.vals["marks"]; v != nil {
		s.Marks, s.markPos = p.marks(v, path+".marks")
		if s.Finally && len(s.Marks) > 0 {
			p.errAt(v, "%s.marks: a finally step cannot set marks (it runs after the outcome is decided)", path)
		}
	}
	if v := sn.vals["compensate"]; v != nil {
		if s.Finally {
			p.errAt(sn.keys["compensate"], "%s.compensate: a finally step cannot have a compensation", path)
		}
		s.Compensate = p.compensate(s, v, path+".compensate", sc.including(sn.id))
	}
	return s
}

func defaultRetry() Retry {
	return Retry{MaxAttempts: 1, Backoff: Backoff{Initial: DefaultBackoffInitial, Factor: DefaultBackoffFactor, Max: DefaultBackoffMax}}
}

// uses decodes a step's action.
func (p *parser) uses(s *Step, stepNode, v *yaml.Node, path string) {
	if v == nil {
		p.errAt(stepNode, "%s: missing required key \"uses\"", path)
		return
	}
	name, ok := p.str(v, path+".uses")
	if !ok {
		return
	}
	s.UsesPos = posOf(v)
	if plugin, isPlugin := strings.CutPrefix(name, pluginPrefix); isPlugin {
		if !nameRE.MatchString(plugin) {
			p.errAt(v, "%s.uses: plugin name %q: use lower-case letters, digits, '_' and '-', starting with a letter or digit", path, plugin)
			return
		}
		s.Uses = name
		return
	}
	if _, ok := builtinActions[name]; !ok {
		if hint := config.Suggest(name, actionNames()); hint != "" {
			p.errAt(v, "%s.uses: unknown action %q%s", path, name, hint)
		} else {
			p.errAt(v, "%s.uses: unknown action %q: want one of %s, or plugin:<name>", path, name, strings.Join(actionNames(), ", "))
		}
		return
	}
	s.Uses = name
}

// missingWith reports required with: keys of a step that has no with:.
func (p *parser) missingWith(s *Step, n *yaml.Node, path string) {
	a := builtinActions[s.Uses]
	if a == nil {
		return
	}
	var missing []string
	for _, f := range a.Fields {
		if f.Required {
			missing = append(missing, f.Name)
		}
	}
	if len(missing) > 0 {
		p.errAt(n, "%s: %s needs with: %s", path, s.Uses, strings.Join(missing, ", "))
	}
}

func (p *parser) compensate(parent *Step, n *yaml.Node, path string, sc *scope) *Step {
	c := &Step{ID: parent.ID, Pos: posOf(n), Retry: defaultRetry()}
	vals := map[string]*yaml.Node{}
	keys := p.fields(n, path, compensateKeys, func(key string, _, v *yaml.Node) { vals[key] = v })
	if keys == nil {
		return nil
	}
	p.uses(c, n, vals["uses"], path)
	if v := vals["with"]; v != nil {
		c.With = p.with(c, v, path+".with", sc)
	} else {
		p.missingWith(c, n, path)
	}
	if v := vals["timeout"]; v != nil {
		c.Timeout, _ = p.duration(v, path+".timeout")
	}
	if v := vals["retry"]; v != nil {
		c.Retry = p.retry(v, path+".retry")
	}
	if v := vals["idempotent"]; v != nil {
		if b, ok := p.boolean(v, path+".idempotent"); ok {
			c.IdempotentOverride = &b
		}
	}
	return c
}

func (p *parser) retry(n *yaml.Node, path string) Retry {
	r := defaultRetry()
	var backoffNode *yaml.Node
	p.fields(n, path, retryKeys, func(key string, _, v *yaml.Node) {
		switch key {
		case "max_attempts":
			if i, ok := p.integer(v, path+".max_attempts"); ok {
				if i < 1 || i > MaxAttempts {
					p.errAt(v, "%s.max_attempts: want 1 to %d (1 means no retry), got %d", path, MaxAttempts, i)
				} else {
					r.MaxAttempts = i
				}
			}
		case "backoff":
			backoffNode = v
		}
	})
	if backoffNode == nil {
		return r
	}
	var maxNode *yaml.Node
	p.fields(backoffNode, path+".backoff", backoffKeys, func(key string, _, v *yaml.Node) {
		bp := path + ".backoff." + key
		switch key {
		case "initial":
			if d, ok := p.duration(v, bp); ok {
				r.Backoff.Initial = d
			}
		case "max":
			if d, ok := p.duration(v, bp); ok {
				r.Backoff.Max = d
				maxNode = v
			}
		case "factor":
			if f, ok := p.number(v, bp); ok {
				if f < 1 || f > maxFactor || math.IsNaN(f) {
					p.errAt(v, "%s: want a factor from 1 to %d, got %v", bp, maxFactor, f)
				} else {
					r.Backoff.Factor = f
				}
			}
		}
	})
	if maxNode != nil && r.Backoff.Max < r.Backoff.Initial {
		p.errAt(maxNode, "%s.backoff.max: %s is less than initial (%s)", path, r.Backoff.Max, r.Backoff.Initial)
	} else if maxNode == nil && r.Backoff.Max < r.Backoff.Initial {
		r.Backoff.Max = r.Backoff.Initial
	}
	return r
}

func (p *parser) marks(n *yaml.Node, path string) ([]Mark, map[Mark]Pos) {
	if n.Kind == yaml.MappingNode {
		p.wrongKind(n, path, "a mark or a sequence of marks")
		return nil, nil
	}
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	var out []Mark
	pos := map[Mark]Pos{}
	for i, item := range items {
		item = p.w.Deref(item)
		if item == nil {
			continue
		}
		ip := path
		if n.Kind == yaml.SequenceNode {
			ip = yamlnode.JoinIndex(path, i)
		}
		s, ok := p.str(item, ip)
		if !ok {
			continue
		}
		if !slices.Contains(marks, s) {
			p.errAt(item, "%s: %q is not one of %s%s", ip, s, strings.Join(marks, ", "), config.Suggest(s, marks))
			continue
		}
		if slices.Contains(out, Mark(s)) {
			p.errAt(item, "%s: duplicate mark %q", ip, s)
			continue
		}
		out = append(out, Mark(s))
		pos[Mark(s)] = posOf(item)
	}
	return out, pos
}

// crossSteps checks what concerns several steps: each mark is set once,
// and the RTO clock starts before it stops.
func (p *parser) crossSteps(steps []*Step) {
	first := map[Mark]*Step{}
	for _, s := range steps {
		for _, m := range s.Marks {
			if other, dup := first[m]; dup {
				p.errPos(s.markPos[m], "%s.marks: mark %q is already set by %s; a mark belongs to one step", s.path, m, describe(other))
				continue
			}
			first[m] = s
		}
	}
	start, stop := first[MarkDisruptionStart], first[MarkRecovered]
	if start != nil && stop != nil && slices.Index(steps, start) > slices.Index(steps, stop) {
		p.errPos(start.markPos[MarkDisruptionStart], "%s.marks: %q comes after %q (%s): the RTO clock would stop before it starts",
			start.path, MarkDisruptionStart, MarkRecovered, describe(stop))
	}
}

// describe names a step in a message.
func describe(s *Step) string {
	if s.ID == "" {
		return s.path
	}
	return fmt.Sprintf("step %q", s.ID)
}
