package main

import (
	"context"
	"fmt"

	"github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/alerts/rules"
	"github.com/opsd-dev/opsd/internal/config"
)

func runConfigCheck(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "config check")
	path := fs.String("config", "", "config file (default $OPSD_CONFIG or /etc/opsd/opsd.yaml)")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	p := configPath(e, *path)
	if fs.NArg() == 1 {
		p = fs.Arg(0)
	}
	cfg, err := config.Load(p, e.getenv)
	if err != nil {
		return err
	}
	// What the daemon loads next: the rule files (Prometheus's parser, every
	// problem with its file and line) and the routing tree.
	if err := rules.Check(cfg.Alerts.Builtin, false, cfg.Alerts.RuleFiles); err != nil {
		return fmt.Errorf("%s: alerts.rule_files:\n%w", p, err)
	}
	if _, err := route.Convert(cfg.Alerts); err != nil {
		return fmt.Errorf("%s: alerts routing: %w", p, err)
	}
	fmt.Fprintf(e.stdout, "%s: OK (%d targets, %d sources)\n", p, len(cfg.Targets), len(cfg.Sources))
	return nil
}
