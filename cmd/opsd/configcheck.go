package main

import (
	"context"
	"fmt"

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
	fmt.Fprintf(e.stdout, "%s: OK (%d targets, %d sources)\n", p, len(cfg.Targets), len(cfg.Sources))
	return nil
}
