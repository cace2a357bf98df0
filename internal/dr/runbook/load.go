package runbook

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/opsd-dev/opsd/internal/config"
)

// MaxFileSize bounds a runbook file; anything larger is not a runbook.
const MaxFileSize = 1 << 20

// Load reads and parses the runbook at path (see Parse). Reading errors are
// reported as a Problems error too, so callers print one kind of error.
func Load(path string, refs *References) (*Runbook, error) {
	rb, probs := load(path, refs)
	if len(probs) > 0 {
		return nil, probs
	}
	return rb, nil
}

// load returns the runbook at path as far as it decoded, and its problems
// sorted.
func load(path string, refs *References) (*Runbook, config.Problems) {
	data, err := readFile(path)
	if err != nil {
		return nil, config.Problems{{File: path, Msg: err.Error()}}
	}
	rb, probs := parse(path, data)
	if rb != nil && refs != nil {
		probs = append(probs, Check(rb, refs)...)
	}
	sortProblems(probs)
	return rb, probs
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.New("cannot read runbook: " + pathErrText(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, errors.New("cannot read runbook: " + pathErrText(err))
	}
	if st.IsDir() {
		return nil, errors.New("is a directory, not a runbook file")
	}
	if st.Size() > MaxFileSize {
		return nil, errors.New("runbook larger than 1MiB")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, errors.New("cannot read runbook: " + pathErrText(err))
	}
	return data, nil
}

func pathErrText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// LoadDir loads every *.yaml and *.yml file in dir (not its
// subdirectories), in name order. Two runbooks with one name are a
// problem. It returns every problem of every file at once.
func LoadDir(dir string, refs *References) ([]*Runbook, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, config.Problems{{File: dir, Msg: "cannot read runbook directory: " + pathErrText(err)}}
	}
	var paths []string
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if ext := filepath.Ext(e.Name()); ext == ".yaml" || ext == ".yml" {
			paths = append(paths, filepath.Join(dir, e.Name()))
		}
	}
	return LoadFiles(paths, refs)
}

// LoadFiles loads the runbooks at paths, like LoadDir.
func LoadFiles(paths []string, refs *References) ([]*Runbook, error) {
	var (
		out   []*Runbook
		all   []*Runbook // as far as they decoded, for duplicate names
		probs config.Problems
	)
	for _, path := range paths {
		rb, ps := load(path, refs)
		if rb != nil {
			all = append(all, rb)
		}
		if len(ps) > 0 {
			probs = append(probs, ps...)
			continue
		}
		out = append(out, rb)
	}
	probs = append(probs, duplicateNames(all)...)
	if len(probs) > 0 {
		sortProblems(probs)
		return nil, probs
	}
	return out, nil
}

// duplicateNames reports runbooks that share a name: runs, schedules and
// the API name runbooks, so a name must say which file it means.
func duplicateNames(rbs []*Runbook) config.Problems {
	var probs config.Problems
	first := map[string]*Runbook{}
	for _, rb := range rbs {
		if rb.Name == "" {
			continue
		}
		if other, dup := first[rb.Name]; dup {
			probs = append(probs, config.Problem{File: rb.File, Line: rb.namePos.Line, Col: rb.namePos.Col,
				Msg: "name: runbook " + strconv.Quote(rb.Name) + " is also defined in " + other.File})
			continue
		}
		first[rb.Name] = rb
	}
	return probs
}

// Step returns the step with id, or nil.
func (rb *Runbook) Step(id string) *Step {
	i := slices.IndexFunc(rb.Steps, func(s *Step) bool { return s.ID == id })
	if i < 0 {
		return nil
	}
	return rb.Steps[i]
}

// Param returns the parameter called name, or nil.
func (rb *Runbook) Param(name string) *Param {
	i := slices.IndexFunc(rb.Params, func(p *Param) bool { return p.Name == name })
	if i < 0 {
		return nil
	}
	return rb.Params[i]
}

// RunOrder returns the steps in the order a run takes them: the steps that
// are not finally in file order, then the finally steps in file order.
func (rb *Runbook) RunOrder() []*Step {
	out := make([]*Step, 0, len(rb.Steps))
	for _, final := range []bool{false, true} {
		for _, s := range rb.Steps {
			if s.Finally == final {
				out = append(out, s)
			}
		}
	}
	return out
}
