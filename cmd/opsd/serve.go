package main

import (
	"context"

	"github.com/opsd-dev/opsd/internal/daemon"
)

func runServe(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "serve")
	path := fs.String("config", "", "config file (default $OPSD_CONFIG or /etc/opsd/opsd.yaml)")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	return daemon.Run(ctx, daemon.Options{ConfigPath: configPath(e, *path), Getenv: e.getenv, LogOutput: e.stderr})
}
