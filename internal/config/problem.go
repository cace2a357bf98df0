package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong with a config file, at the position of the
// offending YAML node so an operator can jump straight to it.
type Problem struct {
	File string
	Line int // 1-based; 0 when the problem concerns the whole file
	Col  int // 1-based; 0 when the YAML parser did not report a column
	Msg  string
}

// String formats p as "file:line:col: message", the form editors and CI
// annotators understand. Unknown parts are left out rather than invented.
func (p Problem) String() string {
	switch {
	case p.Line == 0:
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	case p.Col == 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
}

// Problems is every problem found in a config. It is returned as an error
// so callers can treat a bad config like any other failure, yet still list
// all problems at once instead of making the operator fix them one by one.
type Problems []Problem

// Error lists one problem per line, sorted by position.
func (ps Problems) Error() string {
	sorted := slices.Clone(ps)
	sorted.sort()
	var b strings.Builder
	for i, p := range sorted {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// sort orders problems by file, line and column; problems at the same
// position keep the order in which they were found.
func (ps Problems) sort() {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		return cmp.Or(
			cmp.Compare(a.File, b.File),
			cmp.Compare(a.Line, b.Line),
			cmp.Compare(a.Col, b.Col),
		)
	})
}
