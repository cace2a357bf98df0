package runbook

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
)

// parser holds the state of one Parse: the file's lines (for columns
// inside scalars) and the problems found so far.
type parser struct {
	file    string
	lines   [][]byte
	probs   config.Problems
	aliases int
}

// maxAliases bounds alias dereferences so a "billion laughs" document
// cannot make the walk explode.
const maxAliases = 10000

func (p *parser) errAt(n *yaml.Node, format string, args ...any) {
	var pos Pos
	if n != nil {
		pos = Pos{n.Line, n.Column}
	}
	p.errPos(pos, format, args...)
}

func (p *parser) errPos(pos Pos, format string, args ...any) {
	p.probs = append(p.probs, config.Problem{File: p.file, Line: pos.Line, Col: pos.Col, Msg: fmt.Sprintf(format, args...)})
}

// sortProblems orders problems by file, line and column, keeping the
// order in which problems at one position were found (as config does).
func sortProblems(ps config.Problems) {
	slices.SortStableFunc(ps, func(a, b config.Problem) int {
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
}

func posOf(n *yaml.Node) Pos { return Pos{n.Line, n.Column} }

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserProblems are yaml.v3 parser messages whose line is 0-based (see
// internal/config); the scanner's lines are 1-based already.
var parserProblems = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

func (p *parser) syntaxError(err error) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if parserProblems[msg] {
		line++
	}
	p.probs = append(p.probs, config.Problem{File: p.file, Line: line, Msg: "invalid YAML: " + msg})
}

// document parses data into its single YAML document's root node.
func (p *parser) document(data []byte) *yaml.Node {
	p.lines = bytes.Split(data, []byte("\n"))
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errPos(Pos{}, "runbook is empty")
		} else {
			p.syntaxError(err)
		}
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		p.errAt(&extra, "only one YAML document is allowed")
		return nil
	case !errors.Is(err, io.EOF):
		p.syntaxError(err)
		return nil
	}
	root := p.deref(doc.Content[0])
	if isNull(root) {
		p.errPos(Pos{}, "runbook is empty")
		return nil
	}
	return root
}

func (p *parser) deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		p.aliases++
		if p.aliases == maxAliases {
			p.errAt(n, "too many alias expansions")
		}
		if p.aliases >= maxAliases {
			return nil
		}
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	}
	switch n.Tag {
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "nothing"
	}
	return "a string"
}

func (p *parser) wrongKind(n *yaml.Node, path, want string) {
	p.errAt(n, "%s: want %s, got %s", path, want, kindName(n))
}

type pair struct{ key, val *yaml.Node }

// pairs returns the key/value pairs of mapping n with merge keys applied;
// duplicate keys are problems, explicit keys override merged ones. The
// values are dereferenced.
func (p *parser) pairs(n *yaml.Node, path string) []pair {
	var out, merged []pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := p.deref(n.Content[i]), n.Content[i+1]
		if k == nil {
			continue
		}
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			merged = append(merged, p.mergePairs(v, path)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			p.errAt(k, "%s: keys must be strings, got %s", path, kindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			p.errAt(k, "duplicate key %q%s (first at line %d)", k.Value, where(path), first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, pair{k, p.deref(v)})
	}
	for _, m := range merged {
		if _, ok := seen[m.key.Value]; !ok {
			seen[m.key.Value] = m.key
			out = append(out, m)
		}
	}
	return out
}

func (p *parser) mergePairs(v *yaml.Node, path string) []pair {
	v = p.deref(v)
	if v == nil {
		return nil
	}
	switch v.Kind {
	case yaml.MappingNode:
		return p.pairs(v, path)
	case yaml.SequenceNode:
		var out []pair
		seen := map[string]bool{}
		for _, item := range v.Content {
			item = p.deref(item)
			if item == nil {
				continue
			}
			if item.Kind != yaml.MappingNode {
				p.errAt(item, "%s: << must merge mappings, got %s", path, kindName(item))
				continue
			}
			for _, q := range p.pairs(item, path) {
				if !seen[q.key.Value] {
					seen[q.key.Value] = true
					out = append(out, q)
				}
			}
		}
		return out
	}
	p.errAt(v, "%s: << must merge a mapping, got %s", path, kindName(v))
	return nil
}

func where(path string) string {
	if path == "" {
		return " at the top level"
	}
	return " in " + path
}

func display(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

// fields decodes mapping n whose allowed keys are the keys of fns, calling
// each key's function with its value (null values are skipped). Unknown
// keys are problems. It returns the key nodes by name.
func (p *parser) fields(n *yaml.Node, path string, allowed []string, fn func(key string, k, v *yaml.Node)) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		p.wrongKind(n, display(path), "a mapping")
		return nil
	}
	keys := map[string]*yaml.Node{}
	for _, kv := range p.pairs(n, display(path)) {
		name := kv.key.Value
		if path == "" && strings.HasPrefix(name, "x-") {
			continue // a home for anchors, as in the config
		}
		if !slices.Contains(allowed, name) {
			p.errAt(kv.key, "unknown key %q%s%s", name, where(path), config.Suggest(name, allowed))
			continue
		}
		keys[name] = kv.key
		if isNull(kv.val) {
			continue
		}
		fn(name, kv.key, kv.val)
	}
	return keys
}

func joinKey(path, key string) string {
	if !simpleKey.MatchString(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

var simpleKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func joinIndex(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// str decodes a scalar as a string. Numbers are accepted as their text;
// ${{ }} is refused: expressions belong in if: and with: only.
func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!bool" {
		p.wrongKind(n, path, "a string")
		return "", false
	}
	if strings.Contains(n.Value, "${{") {
		p.errAt(n, "%s: expressions (${{ }}) are allowed only in if: and with:", path)
		return "", false
	}
	return n.Value, true
}

func (p *parser) boolean(n *yaml.Node, path string) (bool, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		p.wrongKind(n, path, "true or false")
		return false, false
	}
	return n.Value == "true" || n.Value == "True" || n.Value == "TRUE", true
}

func (p *parser) integer(n *yaml.Node, path string) (int, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		p.wrongKind(n, path, "an integer")
		return 0, false
	}
	var i int
	if err := n.Decode(&i); err != nil {
		p.errAt(n, "%s: want an integer, got %q", path, n.Value)
		return 0, false
	}
	return i, true
}

func (p *parser) number(n *yaml.Node, path string) (float64, bool) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") {
		p.wrongKind(n, path, "a number")
		return 0, false
	}
	var f float64
	if err := n.Decode(&f); err != nil {
		p.errAt(n, "%s: want a number, got %q", path, n.Value)
		return 0, false
	}
	return f, true
}

// exprPos is the position of byte offset off inside scalar n's value,
// when the scalar is written on one line without escapes; otherwise the
// scalar's own position.
func (p *parser) exprPos(n *yaml.Node, off int) Pos {
	pos := posOf(n)
	if n.Line < 1 || n.Line > len(p.lines) || strings.Contains(n.Value, "\n") || off > len(n.Value) {
		return pos
	}
	quote := 0
	switch n.Style {
	case 0, yaml.FlowStyle:
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		quote = 1
	default:
		return pos
	}
	line := string(p.lines[n.Line-1])
	// Columns count characters; find the byte where the value starts.
	start := 0
	for col := 1; col < n.Column+quote && start < len(line); col++ {
		_, size := utf8.DecodeRuneInString(line[start:])
		start += size
	}
	prefix := n.Value[:off]
	if !strings.HasPrefix(line[start:], prefix) {
		return pos
	}
	return Pos{n.Line, n.Column + quote + utf8.RuneCountInString(prefix)}
}
