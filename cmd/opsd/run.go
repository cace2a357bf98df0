package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/opsd-dev/opsd/internal/config"
)

// Exit codes (SPEC §3).
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// env is what every command gets: the process's environment and streams,
// injected so tests call run directly.
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// command is one CLI command.
type command struct {
	name    string // words after "opsd", e.g. "config check"
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

// usageError marks bad usage: exit 2.
type usageError struct{ msg string }

func (u usageError) Error() string { return u.msg }

// exitError carries a specific exit code, e.g. 1 for "audit log tampered".
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e exitError) Unwrap() error { return e.err }

func commands() []command {
	return []command{
		{"serve", "run the daemon", runServe},
		{"config check", "validate a config file offline; every problem as file:line:col", runConfigCheck},
		{"keygen", "make an Ed25519 signing key (and an age identity on request)", runKeygen},
		{"version", "print version, commit and Go version", runVersion},
		{"status", "daemon status: sources, backups, drills, alerts, budgets", runStatus},
		{"backup run", "trigger a backup now (--wait: until it ends)", runBackupRun},
		{"backup list", "list backups through the daemon; with --target read the target's signed manifests, offline", runBackupList},
		{"backup show", "a backup's state, copies and manifest", runBackupShow},
		{"backup verify", "verify a backup's copies: checksum (read back, SHA-256) or restore (into scratch, run the checks)", runBackupVerify},
		{"backup prune", "apply retention (admin): each backup with the rule that keeps it; --dry-run deletes nothing", runBackupPrune},
		{"backup restore", "restore a backup from the first good copy, offline (SHA-256 checked)", runBackupRestore},
		{"runbook check", "check runbook files offline: schema, steps, references, expressions; every problem as file:line:col", runRunbookCheck},
		{"alerts list", "firing and pending alerts (--state, --label k=v, --json)", runAlertsList},
		{"alerts test-rules", "run promtool-format rule unit tests: exit 0 pass, 1 failures, 2 bad input", runAlertsTestRules},
		{"alerts silence add", "silence alerts matching MATCHER... (--duration/--end, --comment)", runSilenceAdd},
		{"alerts silence list", "list silences (--state active|pending|expired)", runSilenceList},
		{"alerts silence expire", "expire silences by ID", runSilenceExpire},
		{"runbook list", "list the runbooks the daemon loaded", runRunbookList},
		{"drill run", "start a run of a runbook (a drill unless --live; --dry-run plans only; --follow shows it live, exit 1 unless it succeeds)", runDrillRun},
		{"drill list", "list runs, newest first (--runbook, --state)", runDrillList},
		{"drill show", "a run with its steps: state, attempts, durations, approvals", runDrillShow},
		{"drill approve", "approve a waiting approval step (--comment)", runDrillApprove},
		{"drill reject", "reject a waiting approval step; the step fails (--comment)", runDrillReject},
		{"drill retry", "run again a step a resumed run waits for an operator on (--comment)", runDrillRetry},
		{"drill skip", "skip a step a resumed run waits for an operator on; the run goes on (--comment)", runDrillSkip},
		{"drill cancel", "cancel a run: compensations, then finally steps", runDrillCancel},
		{"drill report", "fetch a run's signed report (--md for Markdown, --out FILE)", runDrillReport},
		{"drill verify-report", "check a signed drill report offline (JSON or Markdown): exit 0 valid, 1 tampered or not signed by the key, 2 cannot verify", runDrillVerifyReport},
		{"audit verify", "check the audit log offline: exit 0 intact, 1 tampered, 2 cannot verify", runAuditVerify},
		{"audit tail", "print the newest audit entries (--follow for new ones)", runAuditTail},
		{"audit prove", "prove an entry is in the signed tree", runAuditProve},
	}
}

// run executes the CLI and returns the process exit code.
func run(ctx context.Context, args []string, getenv func(string) string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{getenv: getenv, stdin: stdin, stdout: stdout, stderr: stderr}
	cmds := commands()
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(stdout, cmds)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, rest, ok := findCommand(cmds, args)
	if !ok {
		fmt.Fprintf(stderr, "opsd: unknown command %q\n\n", strings.Join(args, " "))
		printUsage(stderr, cmds)
		return exitUsage
	}
	err := cmd.run(ctx, e, rest)
	return exitCode(stderr, cmd.name, err)
}

func exitCode(stderr io.Writer, name string, err error) int {
	if err == nil {
		return exitOK
	}
	var (
		usage    usageError
		problems config.Problems
		ex       exitError
	)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "opsd %s: %s\n", name, usage.msg)
		return exitUsage
	case errors.As(err, &problems):
		for _, p := range problems {
			fmt.Fprintln(stderr, p.String())
		}
		fmt.Fprintf(stderr, "opsd %s: %d problem(s) in the configuration\n", name, len(problems))
		return exitUsage
	case errors.As(err, &ex):
		if ex.err != nil {
			fmt.Fprintf(stderr, "opsd %s: %v\n", name, ex.err)
		}
		return ex.code
	default:
		fmt.Fprintf(stderr, "opsd %s: %v\n", name, err)
		return exitFailure
	}
}

// findCommand matches the longest command name at the start of args.
func findCommand(cmds []command, args []string) (command, []string, bool) {
	var best command
	bestLen := 0
	for _, c := range cmds {
		words := strings.Fields(c.name)
		if len(words) <= len(args) && len(words) > bestLen && equalWords(words, args[:len(words)]) {
			best, bestLen = c, len(words)
		}
	}
	return best, args[bestLen:], bestLen > 0
}

func equalWords(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func printUsage(w io.Writer, cmds []command) {
	fmt.Fprintln(w, "usage: opsd <command> [flags]")
	fmt.Fprintln(w)
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].name < cmds[j].name })
	for _, c := range cmds {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands that talk to a running daemon use --addr (OPSD_ADDR, default http://127.0.0.1:8470) and OPSD_TOKEN.")
	fmt.Fprintln(w, "Exit status: 0 success, 1 failure, 2 bad usage or configuration.")
}

// newFlags returns a flag set for a command that reports errors as usage
// errors instead of exiting.
func newFlags(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("opsd "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	return fs
}

// parseFlags parses args, allowing flags after positional arguments
// (`opsd backup restore ID --to-dir D`, as SPEC §3 writes them), turning
// flag errors into usage errors and rejecting positional arguments beyond
// maxArgs. The positional arguments are then fs.Args().
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int) error {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return err
			}
			return usageError{err.Error()}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		if args[0] == "--" {
			positional = append(positional, args[1:]...)
			break
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
	if len(positional) > maxArgs {
		return usageError{fmt.Sprintf("unexpected arguments: %s", strings.Join(positional[maxArgs:], " "))}
	}
	// Leave the positional arguments where callers look for them.
	_ = fs.Parse(append([]string{"--"}, positional...))
	return nil
}

// configPath resolves --config, then OPSD_CONFIG, then the default.
func configPath(e *env, flagValue string) string {
	if flagValue != "" {
		return flagValue
	}
	if p := e.getenv("OPSD_CONFIG"); p != "" {
		return p
	}
	return "/etc/opsd/opsd.yaml"
}
