package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/signing"
)

// runDrillVerifyReport checks a signed drill report (JSON or Markdown form)
// offline: exit 0 when the signature verifies, 1 when the report was altered,
// is not a signed report or was signed by another key, 2 when it cannot be
// checked (no file, no key).
func runDrillVerifyReport(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "drill verify-report")
	cfgFlag := fs.String("config", "", "config file, for the default key (<audit.signing_key_file>.pub)")
	pubkey := fs.String("pubkey", "", "verifier key file or text (default <signing_key_file>.pub from the config)")
	asJSON := fs.Bool("json", false, "print the verified report as JSON")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd drill verify-report [--pubkey KEY] FILE"}
	}
	if *pubkey == "" {
		cfg, err := config.Load(configPath(e, *cfgFlag), e.getenv)
		if err != nil {
			return exitError{code: exitUsage, err: fmt.Errorf("no --pubkey and the config cannot be read: %w", err)}
		}
		*pubkey = cfg.Audit.SigningKeyFile + ".pub"
	}
	verifier, err := signing.LoadVerifier(*pubkey)
	if err != nil {
		return exitError{code: exitUsage, err: err}
	}
	data, err := os.ReadFile(fs.Arg(0))
	if err != nil {
		return exitError{code: exitUsage, err: err}
	}
	rep, err := dr.VerifyReport(data, verifier)
	if err != nil {
		return exitError{code: exitFailure, err: fmt.Errorf("%s: %w", fs.Arg(0), err)}
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(rep)
	}
	fmt.Fprintf(e.stdout, "%s: signature OK (key %s)\n", fs.Arg(0), verifier.Name())
	fmt.Fprintf(e.stdout, "run %s of runbook %s (sha256 %s), %s, %s\n", rep.RunID, rep.Runbook, rep.RunbookSHA256, rep.Mode, rep.State)
	for _, m := range []struct {
		name string
		m    *dr.Measure
	}{{"RTO", rep.RTO}, {"RPO", rep.RPO}} {
		switch {
		case m.m == nil:
			fmt.Fprintf(e.stdout, "%s: not measured\n", m.name)
		case m.m.Met == nil:
			fmt.Fprintf(e.stdout, "%s: %.3fs (no objective)\n", m.name, m.m.Seconds)
		default:
			verdict := "met"
			if !*m.m.Met {
				verdict = "MISSED"
			}
			fmt.Fprintf(e.stdout, "%s: %.3fs, objective %.0fs: %s\n", m.name, m.m.Seconds, m.m.ObjectiveSeconds, verdict)
		}
	}
	if rep.Backup != nil {
		fmt.Fprintf(e.stdout, "backup %s (manifest sha256 %s)\n", rep.Backup.ID, rep.Backup.ManifestSHA256)
	}
	if rep.Audit != nil {
		fmt.Fprintf(e.stdout, "audit entries %d..%d\n", rep.Audit.First, rep.Audit.Last)
	}
	return nil
}
