package runbook

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/yamlnode"
)

// References are the names a runbook may use from the opsd config. A nil
// map means "not known": references of that kind are not checked.
type References struct {
	// Sources maps a source name to its type (postgres, files, command,
	// plugin:<name>).
	Sources   map[string]string
	Targets   map[string]bool
	Receivers map[string]bool
	// Plugins are the plugins a plugin:<name> step may use. An empty,
	// non-nil map means plugins are not configured.
	Plugins map[string]bool
}

// ReferencesFromConfig returns what cfg defines. The plugins are those
// pinned in plugins.pinned and the files in plugins.dir, if it can be
// read (it may not exist where a runbook is checked offline).
func ReferencesFromConfig(cfg *config.Config) *References {
	r := &References{
		Sources:   map[string]string{},
		Targets:   map[string]bool{},
		Receivers: map[string]bool{},
		Plugins:   map[string]bool{},
	}
	for name, s := range cfg.Sources {
		r.Sources[name] = s.Type
	}
	for name := range cfg.Targets {
		r.Targets[name] = true
	}
	for name := range cfg.Alerts.Receivers {
		r.Receivers[name] = true
	}
	for name := range cfg.Plugins.Pinned {
		r.Plugins[name] = true
	}
	if cfg.Plugins.Dir != "" {
		if entries, err := os.ReadDir(cfg.Plugins.Dir); err == nil {
			for _, e := range entries {
				if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") {
					r.Plugins[e.Name()] = true
				}
			}
		}
	}
	return r
}

// Check checks the names rb uses against refs: the sources, targets and
// receivers its built-in steps name in literal with: values, and the
// plugins its plugin:<name> steps use. Names given by expressions are the
// engine's to check when it renders them. It returns nil when all is well.
func Check(rb *Runbook, refs *References) config.Problems {
	if refs == nil {
		return nil
	}
	c := &checker{file: rb.File, refs: refs}
	for i, s := range rb.Steps {
		path := yamlnode.JoinIndex("steps", i)
		c.step(s, path)
		if s.Compensate != nil {
			c.step(s.Compensate, path+".compensate")
		}
	}
	sortProblems(c.probs)
	return c.probs
}

type checker struct {
	file  string
	refs  *References
	probs config.Problems
}

func (c *checker) errPos(pos Pos, format string, args ...any) {
	c.probs = append(c.probs, config.Problem{File: c.file, Line: pos.Line, Col: pos.Col, Msg: fmt.Sprintf(format, args...)})
}

func (c *checker) step(s *Step, path string) {
	if plugin := s.Plugin(); plugin != "" && c.refs.Plugins != nil && !c.refs.Plugins[plugin] {
		if len(c.refs.Plugins) == 0 {
			c.errPos(s.UsesPos, "%s.uses: unknown plugin %q: the config has no plugins (plugins.dir, plugins.pinned)", path, plugin)
		} else {
			c.errPos(s.UsesPos, "%s.uses: unknown plugin %q%s", path, plugin, knownHint(plugin, slices.Sorted(maps.Keys(c.refs.Plugins))))
		}
	}
	a := builtinActions[s.Uses]
	if a == nil {
		return
	}
	for _, f := range a.Fields {
		v := s.With[f.Name]
		if v == nil || f.Ref == "" {
			continue
		}
		name, ok := v.lit.(string)
		if v.kind != kindLiteral || !ok {
			continue
		}
		var known []string
		switch f.Ref {
		case RefSource:
			if c.refs.Sources == nil {
				continue
			}
			if typ, ok := c.refs.Sources[name]; ok {
				c.restoreInto(s, path, name, typ)
				continue
			}
			known = slices.Sorted(maps.Keys(c.refs.Sources))
		case RefTarget:
			if c.refs.Targets == nil || c.refs.Targets[name] {
				continue
			}
			known = slices.Sorted(maps.Keys(c.refs.Targets))
		case RefReceiver:
			if c.refs.Receivers == nil || c.refs.Receivers[name] {
				continue
			}
			known = slices.Sorted(maps.Keys(c.refs.Receivers))
		}
		c.errPos(v.Pos, "%s.with.%s: unknown %s %q%s", path, f.Name, f.Ref, name, knownHint(name, known))
	}
}

// restoreInto checks that a restore goes where its source's backups can.
func (c *checker) restoreInto(s *Step, path, source, typ string) {
	if s.Uses != ActionBackupRestore {
		return
	}
	if v := s.With["to_postgres"]; v != nil && typ != config.SourcePostgres {
		c.errPos(v.Pos, "%s.with.to_postgres: source %q is a %s source; restore it with to_dir", path, source, typ)
	}
	if v := s.With["to_dir"]; v != nil && typ == config.SourcePostgres {
		c.errPos(v.Pos, "%s.with.to_dir: source %q is a postgres source; restore it with to_postgres", path, source)
	}
}

func knownHint(name string, known []string) string {
	if h := config.Suggest(name, known); h != "" {
		return h
	}
	if len(known) == 0 {
		return " (the config defines none)"
	}
	if len(known) <= 8 {
		return " (the config defines " + strings.Join(known, ", ") + ")"
	}
	return ""
}
