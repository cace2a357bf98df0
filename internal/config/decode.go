package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/yamlnode"
)

// nodePos remembers where a config path was written, so validation, which
// works on the decoded structs, can still point at the right line.
type nodePos struct {
	key *yaml.Node // nil for sequence items
	val *yaml.Node
}

// loader holds the state of one Load: positions, problems, and the paths
// that failed to decode (validation stays quiet about those, so one typo
// does not cascade into several messages).
type loader struct {
	file     string
	dir      string
	getenv   func(string) string
	nodes    map[string]nodePos
	bad      map[string]bool
	expanded map[string]bool
	probs    Problems
	w        yamlnode.Walker // aliases, mapping pairs
}

func (l *loader) problems() Problems {
	ps := slices.Clone(l.probs)
	ps.sort()
	return ps
}

// errAt records a problem at node n.
func (l *loader) errAt(n *yaml.Node, format string, args ...any) {
	line, col := 0, 0
	if n != nil {
		line, col = n.Line, n.Column
	}
	l.probs = append(l.probs, Problem{File: l.file, Line: line, Col: col, Msg: fmt.Sprintf(format, args...)})
}

// markBad records that path did not decode.
func (l *loader) markBad(path string) {
	if l.bad == nil {
		l.bad = map[string]bool{}
	}
	l.bad[path] = true
}

// isBad reports whether path or one of its parents failed to decode.
func (l *loader) isBad(path string) bool {
	for p := path; ; p = parentPath(p) {
		if l.bad[p] {
			return true
		}
		if p == "" {
			return false
		}
	}
}

// isSet reports whether path was written in the file with a non-null value.
func (l *loader) isSet(path string) bool {
	n, ok := l.nodes[path]
	return ok && !yamlnode.IsNull(n.val)
}

// posOf returns the node to report a problem about path at: the value if
// it was written, else the closest written parent.
func (l *loader) posOf(path string, key bool) *yaml.Node {
	for p := path; ; p = parentPath(p) {
		if n, ok := l.nodes[p]; ok {
			if key && n.key != nil {
				return n.key
			}
			return n.val
		}
		if p == "" {
			return nil
		}
	}
}

// errPath records a problem about path, prefixed with the path and placed
// at its value. Problems under a path that failed to decode are dropped.
func (l *loader) errPath(path, format string, args ...any) {
	if l.isBad(path) {
		return
	}
	l.errAt(l.posOf(path, false), "%s: %s", yamlnode.Display(path), fmt.Sprintf(format, args...))
}

// errKey is errPath placed at the key, for problems about a key's
// presence rather than its value.
func (l *loader) errKey(path, format string, args ...any) {
	if l.isBad(path) {
		return
	}
	l.errAt(l.posOf(path, true), "%s: %s", yamlnode.Display(path), fmt.Sprintf(format, args...))
}

// show quotes a value for a message, unless it came from an expansion:
// then it may be a secret from the environment or a file.
func (l *loader) show(path, value string) string {
	if l.expanded[path] {
		return "the expanded value"
	}
	return strconv.Quote(value)
}

// parentPath strips the last element of a path; the parent of a
// top-level key is "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// decodeFile parses data and decodes it into c. It returns false when the
// YAML itself is unusable; decoding problems are collected in l.
func (l *loader) decodeFile(data []byte, c *Config) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			l.probs = append(l.probs, Problem{File: l.file, Msg: "config is empty"})
		} else {
			l.syntaxError(err)
		}
		return false
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		l.errAt(&extra, "only one YAML document is allowed")
		return false
	case !errors.Is(err, io.EOF):
		l.syntaxError(err)
		return false
	}
	root := doc.Content[0]
	if yamlnode.IsNull(root) {
		l.probs = append(l.probs, Problem{File: l.file, Msg: "config is empty"})
		return false
	}
	l.nodes[""] = nodePos{val: root}
	l.decode(root, "", reflect.ValueOf(c).Elem(), false)
	return true
}

// syntaxError turns a YAML parser error into a problem. yaml.v3 reports a
// line but no column, so the column is left out.
func (l *loader) syntaxError(err error) {
	line, msg := yamlnode.SyntaxError(err)
	l.probs = append(l.probs, Problem{File: l.file, Line: line, Msg: "invalid YAML: " + msg})
}

// nodeUnmarshaler is implemented by types whose YAML form is not a plain
// struct, map, sequence or scalar (unions like `encryption: none`).
type nodeUnmarshaler interface {
	unmarshalNode(l *loader, n *yaml.Node, path string)
}

var (
	durationType        = reflect.TypeFor[time.Duration]()
	sizeType            = reflect.TypeFor[Size]()
	percentType         = reflect.TypeFor[Percent]()
	secretType          = reflect.TypeFor[Secret]()
	nodeUnmarshalerType = reflect.TypeFor[nodeUnmarshaler]()
)

// decode decodes n into v. secret marks values that must not be quoted in
// problems.
func (l *loader) decode(n *yaml.Node, path string, v reflect.Value, secret bool) {
	n = l.w.Deref(n)
	if yamlnode.IsNull(n) {
		return
	}
	if v.CanAddr() && v.Addr().Type().Implements(nodeUnmarshalerType) {
		v.Addr().Interface().(nodeUnmarshaler).unmarshalNode(l, n, path)
		return
	}
	secret = secret || v.Type() == secretType
	switch v.Type() {
	case durationType:
		if s, ok := l.scalar(n, path, "a duration", secret); ok {
			d, err := ParseDuration(s)
			if err != nil {
				l.typeErr(n, path, err.Error(), s, secret)
				return
			}
			v.SetInt(int64(d))
		}
		return
	case sizeType:
		if s, ok := l.scalar(n, path, "a size", secret); ok {
			sz, err := ParseSize(s)
			if err != nil {
				l.typeErr(n, path, err.Error(), s, secret)
				return
			}
			v.SetInt(int64(sz))
		}
		return
	case percentType:
		if s, ok := l.scalar(n, path, "a percentage", secret); ok {
			p, err := ParsePercent(s)
			if err != nil {
				l.typeErr(n, path, err.Error(), s, secret)
				return
			}
			v.SetFloat(float64(p))
		}
		return
	}
	switch v.Kind() {
	case reflect.String:
		if s, ok := l.scalar(n, path, "a string", secret); ok {
			v.SetString(s)
		}
	case reflect.Bool:
		if s, ok := l.scalar(n, path, "a boolean", secret); ok {
			switch strings.ToLower(s) {
			case "true":
				v.SetBool(true)
			case "false":
				v.SetBool(false)
			default:
				l.typeErr(n, path, "want true or false", s, secret)
			}
		}
	case reflect.Int:
		if s, ok := l.scalar(n, path, "an integer", secret); ok {
			i, err := strconv.ParseInt(s, 10, 0)
			if err != nil {
				l.typeErr(n, path, "want an integer", s, secret)
				return
			}
			v.SetInt(i)
		}
	case reflect.Float64:
		if s, ok := l.scalar(n, path, "a number", secret); ok {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil {
				l.typeErr(n, path, "want a number", s, secret)
				return
			}
			v.SetFloat(f)
		}
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		l.decode(n, path, v.Elem(), secret)
	case reflect.Struct:
		l.decodeStruct(n, path, v, secret)
	case reflect.Map:
		l.decodeMap(n, path, v, secret)
	case reflect.Slice:
		l.decodeSlice(n, path, v, secret)
	case reflect.Interface:
		if x, ok := l.toAny(n, path); ok {
			v.Set(reflect.ValueOf(&x).Elem())
		}
	default:
		panic(fmt.Sprintf("config: cannot decode into %s", v.Type()))
	}
}

// typeErr reports a scalar that does not parse, quoting it unless it may
// be secret.
func (l *loader) typeErr(n *yaml.Node, path, want, got string, secret bool) {
	l.markBad(path)
	if secret || l.expanded[path] {
		l.errAt(n, "%s: %s", yamlnode.Display(path), want)
		return
	}
	l.errAt(n, "%s: %s, got %q", yamlnode.Display(path), want, got)
}

// wrongKind reports a node of the wrong kind.
func (l *loader) wrongKind(n *yaml.Node, path, want string) {
	l.markBad(path)
	l.errAt(n, "%s: want %s, got %s", yamlnode.Display(path), want, yamlnode.KindName(n))
}

// scalar returns the expanded value of scalar node n.
func (l *loader) scalar(n *yaml.Node, path, want string, secret bool) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		l.wrongKind(n, path, want)
		return "", false
	}
	s, ok := l.expand(n, path)
	if !ok {
		l.markBad(path)
	}
	return s, ok
}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// expand applies ${NAME}, ${file:PATH} and $${ to one scalar. Problems are
// placed at the scalar and never quote what a variable or file holds.
func (l *loader) expand(n *yaml.Node, path string) (string, bool) {
	s := n.Value
	if !strings.Contains(s, "${") {
		return s, true
	}
	var b strings.Builder
	ok := true
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "$${") {
			b.WriteString("${")
			i += 3
			continue
		}
		if !strings.HasPrefix(s[i:], "${") {
			b.WriteByte(s[i])
			i++
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			l.errAt(n, "%s: unterminated ${ (write $${ for a literal ${)", yamlnode.Display(path))
			return "", false
		}
		ref := s[i+2 : i+2+end]
		i += end + 3
		if l.expanded == nil {
			l.expanded = map[string]bool{}
		}
		l.expanded[path] = true
		if file, isFile := strings.CutPrefix(ref, "file:"); isFile {
			if file == "" {
				l.errAt(n, "%s: ${file:} needs a path", yamlnode.Display(path))
				ok = false
				continue
			}
			p := l.resolve(file)
			data, err := os.ReadFile(p)
			if err != nil {
				l.errAt(n, "%s: cannot read %s: %s", yamlnode.Display(path), p, pathErrText(err))
				ok = false
				continue
			}
			b.WriteString(strings.TrimSpace(string(data)))
			continue
		}
		if !envName.MatchString(ref) {
			l.errAt(n, "%s: invalid variable name %q in ${...}", yamlnode.Display(path), ref)
			ok = false
			continue
		}
		var val string
		if l.getenv != nil {
			val = l.getenv(ref)
		}
		if val == "" {
			l.errAt(n, "%s: environment variable %s is not set", yamlnode.Display(path), ref)
			ok = false
			continue
		}
		b.WriteString(val)
	}
	return b.String(), ok
}

// pathErrText is the reason of a file error without the path, which the
// caller has already named.
func pathErrText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// resolve makes a relative path relative to the config file's directory.
func (l *loader) resolve(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(l.dir, p)
}

type fieldInfo struct {
	index  int
	secret bool
}

// fieldsOf maps the YAML names of t's fields to their index.
func fieldsOf(t reflect.Type) (map[string]fieldInfo, []string) {
	fields := map[string]fieldInfo{}
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		name := f.Tag.Get("yaml")
		if name == "" || name == "-" {
			continue
		}
		fields[name] = fieldInfo{index: i, secret: f.Tag.Get("opsd") == "secret"}
		names = append(names, name)
	}
	return fields, names
}

func (l *loader) decodeStruct(n *yaml.Node, path string, v reflect.Value, secret bool) {
	if n.Kind != yaml.MappingNode {
		l.wrongKind(n, path, "a mapping")
		return
	}
	fields, names := fieldsOf(v.Type())
	for _, p := range l.w.Pairs(n, path) {
		name := p.Key.Value
		if path == "" && strings.HasPrefix(name, "x-") {
			continue // a home for anchors, as in Compose files
		}
		f, ok := fields[name]
		if !ok {
			l.errAt(p.Key, "unknown key %q%s%s", name, yamlnode.Where(path), Suggest(name, names))
			continue
		}
		fp := yamlnode.JoinKey(path, name)
		val := l.w.Deref(p.Val)
		if yamlnode.IsNull(val) {
			continue
		}
		l.nodes[fp] = nodePos{key: p.Key, val: val}
		l.decode(val, fp, v.Field(f.index), secret || f.secret)
	}
}

func (l *loader) decodeMap(n *yaml.Node, path string, v reflect.Value, secret bool) {
	if n.Kind != yaml.MappingNode {
		l.wrongKind(n, path, "a mapping")
		return
	}
	if v.IsNil() {
		v.Set(reflect.MakeMap(v.Type()))
	}
	et := v.Type().Elem()
	for _, p := range l.w.Pairs(n, path) {
		fp := yamlnode.JoinKey(path, p.Key.Value)
		val := l.w.Deref(p.Val)
		l.nodes[fp] = nodePos{key: p.Key, val: val}
		elem := reflect.New(et).Elem()
		if et.Kind() == reflect.Pointer {
			// An entry with no body still exists, so that validation can
			// say what it lacks.
			elem.Set(reflect.New(et.Elem()))
		}
		l.decode(val, fp, elem, secret)
		v.SetMapIndex(reflect.ValueOf(p.Key.Value).Convert(v.Type().Key()), elem)
	}
}

func (l *loader) decodeSlice(n *yaml.Node, path string, v reflect.Value, secret bool) {
	if n.Kind != yaml.SequenceNode {
		l.wrongKind(n, path, "a sequence")
		return
	}
	s := reflect.MakeSlice(v.Type(), 0, len(n.Content))
	for i, item := range n.Content {
		fp := yamlnode.JoinIndex(path, i)
		item = l.w.Deref(item)
		l.nodes[fp] = nodePos{val: item}
		elem := reflect.New(v.Type().Elem()).Elem()
		l.decode(item, fp, elem, secret)
		s = reflect.Append(s, elem)
	}
	v.Set(s)
}

// toAny decodes free-form YAML (plugin configs) into maps, slices and
// scalars, expanding string scalars like everywhere else.
func (l *loader) toAny(n *yaml.Node, path string) (any, bool) {
	n = l.w.Deref(n)
	if n == nil {
		return nil, false
	}
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]any{}
		ok := true
		for _, p := range l.w.Pairs(n, path) {
			fp := yamlnode.JoinKey(path, p.Key.Value)
			l.nodes[fp] = nodePos{key: p.Key, val: l.w.Deref(p.Val)}
			x, xok := l.toAny(p.Val, fp)
			m[p.Key.Value] = x
			ok = ok && xok
		}
		return m, ok
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		ok := true
		for i, item := range n.Content {
			fp := yamlnode.JoinIndex(path, i)
			l.nodes[fp] = nodePos{val: l.w.Deref(item)}
			x, xok := l.toAny(item, fp)
			s = append(s, x)
			ok = ok && xok
		}
		return s, ok
	}
	switch n.Tag {
	case "!!null":
		return nil, true
	case "!!bool", "!!int", "!!float":
		var x any
		if err := n.Decode(&x); err == nil {
			return x, true
		}
	}
	s, ok := l.expand(n, path)
	return s, ok
}

// Suggest offers the closest valid name for a misspelt one, as
// ` (did you mean "x"?)`, or "" when none is within two edits. The config
// and runbook parsers add it to their "unknown ..." errors.
func Suggest(name string, valid []string) string {
	best, bestDist := "", 3
	for _, v := range valid {
		if d := editDistance(name, v); d < bestDist {
			best, bestDist = v, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
