package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
)

// runRunbookCheck is `opsd runbook check [--config F] FILE|DIR...`: offline,
// every problem of every runbook as file:line:col: message, exit 2 if any.
// With a config (--config, else $OPSD_CONFIG) it also checks the sources,
// targets, receivers and plugins the runbooks name; without one it says
// that it did not.
func runRunbookCheck(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "runbook check")
	cfgPath := fs.String("config", "", "config whose sources, targets, receivers and plugins the runbooks may name (default $OPSD_CONFIG; none: not checked)")
	if err := parseFlags(fs, args, 1<<20); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"want at least one runbook file or directory"}
	}
	var refs *runbook.References
	p := *cfgPath
	if p == "" {
		p = e.getenv("OPSD_CONFIG")
	}
	if p != "" {
		cfg, err := config.Load(p, e.getenv)
		if err != nil {
			return err
		}
		refs = runbook.ReferencesFromConfig(cfg)
	}
	var files []string
	for _, arg := range fs.Args() {
		st, err := os.Stat(arg)
		if err != nil || !st.IsDir() {
			files = append(files, arg) // Load reports what is wrong with it
			continue
		}
		for _, pattern := range []string{"*.yaml", "*.yml"} {
			m, _ := filepath.Glob(filepath.Join(arg, pattern))
			files = append(files, m...)
		}
	}
	rbs, err := runbook.LoadFiles(files, refs)
	var problems config.Problems
	switch {
	case errors.As(err, &problems):
		for _, pr := range problems {
			fmt.Fprintln(e.stderr, pr.String())
		}
		return exitError{code: exitUsage, err: fmt.Errorf("%d problem(s) in runbooks", len(problems))}
	case err != nil:
		return err
	}
	for _, rb := range rbs {
		fmt.Fprintf(e.stdout, "%s: OK (runbook %s, %d steps)\n", rb.File, rb.Name, len(rb.Steps))
	}
	if refs == nil {
		fmt.Fprintln(e.stdout, "note: sources, targets, receivers and plugins were not checked; give --config to check them")
	}
	return nil
}
