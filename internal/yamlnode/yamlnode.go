// Package yamlnode is what opsd's two strict YAML readers share — the
// config loader (internal/config) and the runbook parser
// (internal/dr/runbook) — over yaml.v3 node trees: aliases followed with a
// bound, mapping pairs with merge keys applied and duplicate keys
// reported, the words and paths their messages use, and yaml.v3's syntax
// errors turned into a line and a message. Both readers report every
// problem at once as file:line:col: message; this package only finds them.
package yamlnode

import (
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxAliases bounds alias dereferences in one document, so a "billion
// laughs" document cannot make a walk explode.
const MaxAliases = 10000

// Walker walks one document. ErrAt receives its problems.
type Walker struct {
	ErrAt   func(n *yaml.Node, format string, args ...any)
	aliases int
}

// Deref follows aliases; past MaxAliases in the document it reports one
// problem and returns nil.
func (w *Walker) Deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		w.aliases++
		if w.aliases == MaxAliases {
			w.ErrAt(n, "too many alias expansions")
		}
		if w.aliases >= MaxAliases {
			return nil
		}
		n = n.Alias
	}
	return n
}

// Pair is one key and its value (not dereferenced) in a mapping.
type Pair struct{ Key, Val *yaml.Node }

// Pairs returns the pairs of mapping n, the mapping at path, with merge
// keys (<<) applied: keys written explicitly override merged ones, and
// among merged mappings earlier ones win. Duplicate and non-string keys
// are problems.
func (w *Walker) Pairs(n *yaml.Node, path string) []Pair {
	var out, merged []Pair
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := w.Deref(n.Content[i]), n.Content[i+1]
		if k == nil {
			continue
		}
		if k.Kind == yaml.ScalarNode && k.Tag == "!!merge" {
			merged = append(merged, w.mergePairs(v, path)...)
			continue
		}
		if k.Kind != yaml.ScalarNode {
			w.ErrAt(k, "%s: keys must be strings, got %s", Display(path), KindName(k))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			w.ErrAt(k, "duplicate key %q%s (first at line %d)", k.Value, Where(path), first.Line)
			continue
		}
		seen[k.Value] = k
		out = append(out, Pair{k, v})
	}
	for _, p := range merged {
		if _, ok := seen[p.Key.Value]; !ok {
			seen[p.Key.Value] = p.Key
			out = append(out, p)
		}
	}
	return out
}

// mergePairs returns the pairs a merge key brings in: from a mapping or
// from a sequence of mappings, earlier ones winning.
func (w *Walker) mergePairs(v *yaml.Node, path string) []Pair {
	v = w.Deref(v)
	if v == nil {
		return nil
	}
	switch v.Kind {
	case yaml.MappingNode:
		return w.Pairs(v, path)
	case yaml.SequenceNode:
		var out []Pair
		seen := map[string]bool{}
		for _, item := range v.Content {
			item = w.Deref(item)
			if item == nil {
				continue
			}
			if item.Kind != yaml.MappingNode {
				w.ErrAt(item, "%s: << must merge mappings, got %s", Display(path), KindName(item))
				continue
			}
			for _, p := range w.Pairs(item, path) {
				if !seen[p.Key.Value] {
					seen[p.Key.Value] = true
					out = append(out, p)
				}
			}
		}
		return out
	}
	w.ErrAt(v, "%s: << must merge a mapping, got %s", Display(path), KindName(v))
	return nil
}

// IsNull reports a missing or null node.
func IsNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

// KindName names what n is, for "want X, got Y" messages.
func KindName(n *yaml.Node) string {
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

// Display is path as a message shows it: "top level" for the root.
func Display(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

// Where names the mapping at path for a message about one of its keys.
func Where(path string) string {
	if path == "" {
		return " at the top level"
	}
	return " in " + path
}

var simpleKey = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// JoinKey appends a mapping key to a path: a.b, or a["x.y"] when the key
// would be ambiguous.
func JoinKey(path, key string) string {
	if !simpleKey.MatchString(key) {
		return path + "[" + strconv.Quote(key) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

// JoinIndex appends a sequence index to a path: a[3].
func JoinIndex(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parserProblems are the messages of yaml.v3's parser (as opposed to its
// scanner), whose line numbers are 0-based: yaml.v3 adds 1 to the
// scanner's mark only. Checked against yaml.v3's parserc.go.
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

// SyntaxError returns the 1-based line (0 if unknown) and the message of a
// yaml.v3 parse error. yaml.v3 gives no column.
func SyntaxError(err error) (line int, msg string) {
	msg = strings.TrimPrefix(err.Error(), "yaml: ")
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if parserProblems[msg] {
		line++
	}
	return line, msg
}
