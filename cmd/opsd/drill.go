package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

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
		fmt.Fprintf(e.stdout, "audit entries %d..%d", rep.Audit.First, rep.Audit.Last)
		if rep.Audit.Checkpoint != "" {
			// VerifyReport checked it: signed by the audit key, covering the range.
			lines := strings.SplitN(rep.Audit.Checkpoint, "\n", 3)
			if len(lines) >= 2 {
				fmt.Fprintf(e.stdout, ", covered by the signed checkpoint %s at tree size %s: OK", lines[0], lines[1])
			}
		}
		fmt.Fprintln(e.stdout)
	}
	return nil
}

// runDrillRun starts a run of a runbook through the daemon (a drill unless
// --live). With --follow it prints the run's events as they happen and
// exits 0 only if the run succeeded.
func runDrillRun(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "drill run")
	client := clientFlags(e, fs)
	var params stringList
	fs.Var(&params, "param", "a parameter as NAME=VALUE (repeatable)")
	live := fs.Bool("live", false, "a live run, not a drill (admin)")
	dryRun := fs.Bool("dry-run", false, "resolve parameters and expressions and record the plan; run nothing")
	follow := fs.Bool("follow", false, "print the run's steps live; exit 1 unless it succeeds")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd drill run RUNBOOK [--param NAME=VALUE]... [--live] [--dry-run] [--follow]"}
	}
	body := map[string]any{"params": map[string]any{}, "mode": "drill", "dry_run": *dryRun}
	for _, p := range params {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return usageError{"--param wants NAME=VALUE"}
		}
		body["params"].(map[string]any)[k] = v
	}
	if *live {
		body["mode"] = "live"
	}
	c, err := client()
	if err != nil {
		return err
	}
	js, _ := json.Marshal(body)
	var run dr.RunView
	if err := c.do(ctx, "POST", "/api/v1/runbooks/"+url.PathEscape(fs.Arg(0))+"/runs", bytes.NewReader(js), &run); err != nil {
		return err
	}
	if !*follow {
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(run)
		}
		fmt.Fprintf(e.stdout, "started run %s of %s (%s)\n", run.ID, run.Runbook, run.Mode)
		return nil
	}
	fmt.Fprintf(e.stderr, "started run %s of %s (%s); following\n", run.ID, run.Runbook, run.Mode)
	if err := followRun(ctx, e, c, run.ID); err != nil {
		return err
	}
	if err := c.do(ctx, "GET", "/api/v1/runs/"+url.PathEscape(run.ID), nil, &run); err != nil {
		return err
	}
	if *asJSON {
		if err := json.NewEncoder(e.stdout).Encode(run); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(e.stdout, "run %s %s\n", run.ID, run.State)
	}
	if run.State != "succeeded" {
		msg := fmt.Sprintf("run %s %s", run.ID, run.State)
		if run.Error != "" {
			msg += ": " + run.Error
		}
		return exitError{code: exitFailure, err: errors.New(msg)}
	}
	return nil
}

// runEvent is the data of one event of GET /api/v1/runs/{id}/events.
type runEvent struct {
	Seq     int64     `json:"seq"`
	Time    time.Time `json:"time"`
	Type    string    `json:"type"`
	Step    string    `json:"step"`
	State   string    `json:"state"`
	Message string    `json:"message"`
}

// followRun prints run id's events from the daemon's event stream until
// the run ends; a dropped connection is resumed after the last event seen.
func followRun(ctx context.Context, e *env, c *apiClient, id string) error {
	stream := &http.Client{} // no overall timeout: the stream lasts as long as the run
	var last int64
	for attempt := 0; ; attempt++ {
		done, err := streamEvents(ctx, e, c, stream, id, &last)
		if done || ctx.Err() != nil {
			return err
		}
		var ae *apiError
		if errors.As(err, &ae) || attempt >= 5 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// streamEvents reads one connection of the event stream; done reports
// that the stream ended normally (the run ended).
func streamEvents(ctx context.Context, e *env, c *apiClient, hc *http.Client, id string, last *int64) (done bool, err error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+"/api/v1/runs/"+url.PathEscape(id)+"/events", nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if *last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(*last, 10))
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, fmt.Errorf("reach opsd at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		p := &apiError{Status: resp.StatusCode, Title: http.StatusText(resp.StatusCode)}
		_ = json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(p)
		return false, p
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var data string
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "" && data != "":
			var ev runEvent
			if json.Unmarshal([]byte(data), &ev) == nil {
				*last = ev.Seq
				printEvent(e.stderr, ev)
			}
			data = ""
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	return true, nil
}

// printEvent prints one run event as a line: time, step, transition.
func printEvent(w io.Writer, ev runEvent) {
	ts := ev.Time.Local().Format("15:04:05")
	switch ev.Type {
	case "log":
		fmt.Fprintf(w, "%s   %s: %s\n", ts, ev.Step, ev.Message)
	case "run":
		fmt.Fprintf(w, "%s run %s%s\n", ts, ev.State, suffix(ev.Message))
	default:
		who := ev.Step
		if who == "" {
			who = ev.Type
		}
		fmt.Fprintf(w, "%s %-8s %s %s%s\n", ts, ev.Type, who, ev.State, suffix(ev.Message))
	}
}

func suffix(msg string) string {
	if msg == "" {
		return ""
	}
	return " (" + msg + ")"
}

// runDrillList lists runs, newest first.
func runDrillList(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "drill list")
	client := clientFlags(e, fs)
	rb := fs.String("runbook", "", "only runs of this runbook")
	st := fs.String("state", "", "only runs in these states (comma-separated)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *rb != "" {
		q.Set("runbook", *rb)
	}
	if *st != "" {
		q.Set("state", *st)
	}
	var list struct {
		Items      []dr.RunView `json:"items"`
		NextCursor string       `json:"next_cursor"`
	}
	if err := c.do(ctx, "GET", "/api/v1/runs?"+q.Encode(), nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tRUNBOOK\tMODE\tSTATE\tSTARTED\tBY")
	for _, r := range list.Items {
		mode := r.Mode
		if r.DryRun {
			mode += " (dry run)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.Runbook, mode, r.State, r.CreatedAt.Local().Format(time.DateTime), r.Actor)
	}
	return tw.Flush()
}

// runDrillShow prints a run with its steps.
func runDrillShow(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "drill show")
	client := clientFlags(e, fs)
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd drill show RUN"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	var r dr.RunView
	if err := c.do(ctx, "GET", "/api/v1/runs/"+url.PathEscape(fs.Arg(0)), nil, &r); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(r)
	}
	fmt.Fprintf(e.stdout, "run %s of %s (%s), %s, started by %s\n", r.ID, r.Runbook, r.Mode, r.State, r.Actor)
	if r.Error != "" {
		fmt.Fprintf(e.stdout, "error: %s\n", r.Error)
	}
	if r.Waiting != nil {
		fmt.Fprintf(e.stdout, "waiting for an operator on step %s: %s\n", r.Waiting.StepID, r.Waiting.Reason)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tUSES\tSTATE\tATTEMPTS\tDURATION\tNOTE")
	for _, s := range r.Steps {
		dur := "-"
		if !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() {
			dur = s.FinishedAt.Sub(s.StartedAt).Round(time.Millisecond).String()
		}
		note := s.Error
		if s.Approval != nil {
			verdict := "rejected"
			if s.Approval.Approved {
				verdict = "approved"
			}
			note = verdict + " by " + s.Approval.Actor + suffix(s.Approval.Comment)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", s.ID, s.Uses, s.State, len(s.Attempts), dur, note)
	}
	return tw.Flush()
}

// runDrillApprove approves a waiting approval step.
func runDrillApprove(ctx context.Context, e *env, args []string) error {
	return decideStep(ctx, e, args, "approve")
}

// runDrillReject rejects a waiting approval step; the step fails.
func runDrillReject(ctx context.Context, e *env, args []string) error {
	return decideStep(ctx, e, args, "reject")
}

// runDrillRetry runs again a step a resumed run waits for an operator on.
func runDrillRetry(ctx context.Context, e *env, args []string) error {
	return decideStep(ctx, e, args, "retry")
}

// runDrillSkip considers such a step done; the run goes on.
func runDrillSkip(ctx context.Context, e *env, args []string) error {
	return decideStep(ctx, e, args, "skip")
}

func decideStep(ctx context.Context, e *env, args []string, verb string) error {
	fs := newFlags(e, "drill "+verb)
	client := clientFlags(e, fs)
	comment := fs.String("comment", "", "why (recorded in the journal, the audit log and the report)")
	if err := parseFlags(fs, args, 2); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usageError{"usage: opsd drill " + verb + " RUN STEP [--comment TEXT]"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	js, _ := json.Marshal(map[string]string{"comment": *comment})
	var r dr.RunView
	path := "/api/v1/runs/" + url.PathEscape(fs.Arg(0)) + "/steps/" + url.PathEscape(fs.Arg(1)) + "/" + verb
	if err := c.do(ctx, "POST", path, bytes.NewReader(js), &r); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "%s step %s of run %s (run %s)\n", map[string]string{"approve": "approved", "reject": "rejected", "retry": "retrying", "skip": "skipped"}[verb], fs.Arg(1), r.ID, r.State)
	return nil
}

// runDrillCancel cancels a run: compensations, then finally steps.
func runDrillCancel(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "drill cancel")
	client := clientFlags(e, fs)
	comment := fs.String("comment", "", "why (recorded in the journal, the audit log and the report)")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd drill cancel RUN [--comment TEXT]"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	js, _ := json.Marshal(map[string]string{"comment": *comment})
	var r dr.RunView
	if err := c.do(ctx, "POST", "/api/v1/runs/"+url.PathEscape(fs.Arg(0))+"/cancel", bytes.NewReader(js), &r); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "cancelling run %s\n", r.ID)
	return nil
}

// runDrillReport fetches a run's signed report (JSON, or Markdown with
// --md) to stdout or --out.
func runDrillReport(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "drill report")
	client := clientFlags(e, fs)
	md := fs.Bool("md", false, "the Markdown rendering (it carries the JSON too)")
	out := fs.String("out", "", "write the report to this file instead of stdout")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd drill report RUN [--md] [--out FILE]"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	path := "/api/v1/runs/" + url.PathEscape(fs.Arg(0)) + "/report"
	if *md {
		path += "?format=md"
	}
	var buf bytes.Buffer
	if err := c.do(ctx, "GET", path, nil, &buf); err != nil {
		return err
	}
	if *out == "" {
		_, err := e.stdout.Write(buf.Bytes())
		return err
	}
	if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "wrote %s (check it with opsd drill verify-report %s)\n", *out, *out)
	return nil
}

// runRunbookList lists the runbooks the daemon loaded.
func runRunbookList(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "runbook list")
	client := clientFlags(e, fs)
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	var list struct {
		Items []struct {
			Name        string `json:"name"`
			Description string `json:"description"`
			File        string `json:"file"`
			Params      []struct {
				Name     string `json:"name"`
				Required bool   `json:"required"`
			} `json:"params"`
		} `json:"items"`
		NextCursor string `json:"next_cursor"`
	}
	if err := c.do(ctx, "GET", "/api/v1/runbooks", nil, &list); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNBOOK\tPARAMS\tFILE\tDESCRIPTION")
	for _, rb := range list.Items {
		var ps []string
		for _, p := range rb.Params {
			if p.Required {
				ps = append(ps, p.Name+"*")
			} else {
				ps = append(ps, p.Name)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", rb.Name, dash(strings.Join(ps, ",")), rb.File, rb.Description)
	}
	return tw.Flush()
}
