package yamlnode

import (
	"fmt"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func walk(t *testing.T, doc string) (*Walker, *yaml.Node, *[]string) {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(doc), &root); err != nil {
		t.Fatal(err)
	}
	var probs []string
	w := &Walker{ErrAt: func(n *yaml.Node, format string, args ...any) {
		probs = append(probs, fmt.Sprintf("%d:%d: ", n.Line, n.Column)+fmt.Sprintf(format, args...))
	}}
	return w, w.Deref(root.Content[0]), &probs
}

func TestPairs(t *testing.T) {
	w, root, probs := walk(t, `
base: &base {a: 1, b: 2}
other: &other {b: 3, c: 4}
m:
  <<: [*base, *other]
  b: 9
  d: 5
  d: 6
`)
	var m *yaml.Node
	for _, p := range w.Pairs(root, "") {
		if p.Key.Value == "m" {
			m = w.Deref(p.Val)
		}
	}
	var got []string
	for _, p := range w.Pairs(m, "m") {
		got = append(got, p.Key.Value+"="+w.Deref(p.Val).Value)
	}
	// Explicit keys first and winning; among merged mappings the first wins.
	if want := "b=9 d=5 a=1 c=4"; strings.Join(got, " ") != want {
		t.Errorf("pairs = %v, want %s", got, want)
	}
	if want := []string{`8:3: duplicate key "d" in m (first at line 7)`}; fmt.Sprint(*probs) != fmt.Sprint(want) {
		t.Errorf("problems = %q, want %q", *probs, want)
	}
}

func TestBadMergesAndKeys(t *testing.T) {
	w, root, probs := walk(t, "<<: 3\n[a]: 1\nx: 2\n")
	if ps := w.Pairs(root, ""); len(ps) != 1 || ps[0].Key.Value != "x" {
		t.Errorf("pairs = %v, want only x", ps)
	}
	want := []string{"1:5: top level: << must merge a mapping, got a number", "2:1: top level: keys must be strings, got a sequence"}
	if fmt.Sprint(*probs) != fmt.Sprint(want) {
		t.Errorf("problems = %q, want %q", *probs, want)
	}
}

func TestAliasBound(t *testing.T) {
	// Nine levels of ten aliases each: 10^9 expansions if walked naively.
	var b strings.Builder
	b.WriteString("a0: &a0 [x]\n")
	for i := 1; i <= 9; i++ {
		fmt.Fprintf(&b, "a%d: &a%d [%s]\n", i, i, strings.TrimSuffix(strings.Repeat(fmt.Sprintf("*a%d,", i-1), 10), ","))
	}
	w, root, probs := walk(t, b.String())
	var count func(n *yaml.Node) int
	count = func(n *yaml.Node) int {
		n = w.Deref(n)
		if n == nil {
			return 0
		}
		c := 1
		for _, k := range n.Content {
			c += count(k)
		}
		return c
	}
	count(root)
	if len(*probs) != 1 || !strings.Contains((*probs)[0], "too many alias expansions") || w.aliases < MaxAliases {
		t.Errorf("problems = %q after %d expansions; want one 'too many alias expansions' at %d", *probs, w.aliases, MaxAliases)
	}
}

func TestSyntaxError(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		line int
		msg  string
	}{
		{"a: 1\nb: [1, 2\n", 2, "did not find expected ',' or ']'"},              // a parser error: 0-based line from yaml.v3
		{"a: 1\n\tb: 2\n", 2, "found a tab character that violates indentation"}, // a scanner error: 1-based already
	} {
		var n yaml.Node
		err := yaml.Unmarshal([]byte(tc.doc), &n)
		if err == nil {
			t.Fatalf("%q parsed", tc.doc)
		}
		if line, msg := SyntaxError(err); line != tc.line || msg != tc.msg {
			t.Errorf("SyntaxError(%v) = %d %q, want %d %q", err, line, msg, tc.line, tc.msg)
		}
	}
}

func TestPathWords(t *testing.T) {
	for _, tc := range [][2]string{
		{Display(""), "top level"}, {Display("a.b"), "a.b"},
		{Where(""), " at the top level"}, {Where("a"), " in a"},
		{JoinKey("", "a"), "a"}, {JoinKey("a", "b-c"), "a.b-c"}, {JoinKey("a", "x.y"), `a["x.y"]`},
		{JoinIndex("a", 3), "a[3]"},
	} {
		if tc[0] != tc[1] {
			t.Errorf("got %q, want %q", tc[0], tc[1])
		}
	}
}
