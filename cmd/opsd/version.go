package main

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/opsd-dev/opsd/internal/buildinfo"
)

func runVersion(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "version")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	info := buildinfo.Get()
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(info)
	}
	fmt.Fprintf(e.stdout, "opsd %s (commit %s, %s)\n", info.Version, info.Commit, info.GoVersion)
	return nil
}
