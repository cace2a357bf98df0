package main

import (
	"context"

	"github.com/opsd-dev/opsd/internal/alerts/rules"
)

// runAlertsTestRules is `opsd alerts test-rules FILE...`: promtool's rule
// unit-test format, run with Prometheus's rules manager. Exit 0 when every
// test passes, 1 when an expectation fails, 2 when a file cannot be run.
func runAlertsTestRules(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "alerts test-rules")
	if err := parseFlags(fs, args, 1<<16); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return usageError{"usage: opsd alerts test-rules FILE..."}
	}
	if code := rules.RunUnitTests(ctx, e.stdout, fs.Args()...); code != exitOK {
		return exitError{code: code}
	}
	return nil
}
