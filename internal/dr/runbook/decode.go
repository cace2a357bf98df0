package runbook

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/yamlnode"
)

// parser holds the state of one Parse: the file's lines (for columns
// inside scalars) and the problems found so far.
type parser struct {
	file  string
	lines [][]byte
	probs config.Problems
	w     yamlnode.Walker // aliases, mapping pairs
}

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

func (p *parser) syntaxError(err error) {
	line, msg := yamlnode.SyntaxError(err)
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
	root := p.w.Deref(doc.Content[0])
	if yamlnode.IsNull(root) {
		p.errPos(Pos{}, "runbook is empty")
		return nil
	}
	return root
}

func (p *parser) wrongKind(n *yaml.Node, path, want string) {
	p.errAt(n, "%s: want %s, got %s", path, want, yamlnode.KindName(n))
}

// pairs is yamlnode's Pairs with the values dereferenced.
func (p *parser) pairs(n *yaml.Node, path string) []yamlnode.Pair {
	ps := p.w.Pairs(n, path)
	for i := range ps {
		ps[i].Val = p.w.Deref(ps[i].Val)
	}
	return ps
}

// fields decodes mapping n whose allowed keys are the keys of fns, calling
// each key's function with its value (null values are skipped). Unknown
// keys are problems. It returns the key nodes by name.
func (p *parser) fields(n *yaml.Node, path string, allowed []string, fn func(key string, k, v *yaml.Node)) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		p.wrongKind(n, yamlnode.Display(path), "a mapping")
		return nil
	}
	keys := map[string]*yaml.Node{}
	for _, kv := range p.pairs(n, yamlnode.Display(path)) {
		name := kv.Key.Value
		if path == "" && strings.HasPrefix(name, "x-") {
			continue // a home for anchors, as in the config
		}
		if !slices.Contains(allowed, name) {
			p.errAt(kv.Key, "unknown key %q%s%s", name, yamlnode.Where(path), config.Suggest(name, allowed))
			continue
		}
		keys[name] = kv.Key
		if yamlnode.IsNull(kv.Val) {
			continue
		}
		fn(name, kv.Key, kv.Val)
	}
	return keys
}

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
