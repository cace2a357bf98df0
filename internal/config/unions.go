package config

import (
	"reflect"

	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/yamlnode"
)

// unmarshalNode accepts `encryption: none` or a mapping. "none" must be
// written out because backups are encrypted unless a config opts out.
func (e *Encryption) unmarshalNode(l *loader, n *yaml.Node, path string) {
	if n.Kind == yaml.ScalarNode {
		s, ok := l.expand(n, path)
		if !ok {
			l.markBad(path)
			return
		}
		if s != "none" {
			l.typeErr(n, path, `want "none" or a mapping with age_recipients`, s, false)
			return
		}
		e.None = true
		return
	}
	type plain Encryption // the same fields without this method
	l.decodeStruct(n, path, reflect.ValueOf((*plain)(e)).Elem(), false)
}

// unmarshalNode refuses a plain string with a message that says why,
// instead of a generic type error.
func (a *Argv) unmarshalNode(l *loader, n *yaml.Node, path string) {
	if n.Kind == yaml.ScalarNode {
		l.markBad(path)
		l.errAt(n, "%s: command must be an argv list, not a shell string", yamlnode.Display(path))
		return
	}
	l.decodeSlice(n, path, reflect.ValueOf((*[]string)(a)).Elem(), false)
}

// unmarshalNode accepts "all" or a list of target names.
func (t *TargetSet) unmarshalNode(l *loader, n *yaml.Node, path string) {
	if n.Kind == yaml.ScalarNode {
		s, ok := l.expand(n, path)
		if !ok {
			l.markBad(path)
			return
		}
		if s != "all" {
			l.typeErr(n, path, `want "all" or a sequence of target names`, s, false)
			return
		}
		t.All = true
		return
	}
	l.decodeSlice(n, path, reflect.ValueOf(&t.Names).Elem(), false)
}
