package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/httpapi"
)

// backupView is the API's backup resource (internal/httpapi), as the CLI
// reads it.
type backupView = httpapi.BackupResource

func terminal(state string) bool {
	return state == "succeeded" || state == "partial" || state == "failed"
}

func etaOf(s *float64) time.Duration {
	if s == nil {
		return 0
	}
	return time.Duration(*s * float64(time.Second))
}

// progressLine shows a running backup's progress: rewritten in place on a
// terminal, one line every 10 s otherwise (logs of CI jobs).
type progressLine struct {
	w        io.Writer
	tty      bool
	dirty    bool
	lastLine time.Time
}

func newProgressLine(w io.Writer) *progressLine {
	return &progressLine{w: w, tty: isTerminal(w)}
}

func (l *progressLine) update(p backup.Progress) {
	text := progressText(p)
	if l.tty {
		fmt.Fprint(l.w, "\r"+text+strings.Repeat(" ", 8))
		l.dirty = true
		return
	}
	if time.Since(l.lastLine) >= 10*time.Second {
		l.lastLine = time.Now()
		fmt.Fprintln(l.w, text)
	}
}

func (l *progressLine) end() {
	if l.dirty {
		fmt.Fprintln(l.w)
		l.dirty = false
	}
}

// progressEvery is how often backup run --wait refreshes its progress
// line: each GET is a long poll (?wait=) that the daemon answers at once
// when the backup changes state, so the command returns the moment the
// backup ends, not at its next poll.
const progressEvery = 500 * time.Millisecond

// runBackupRun triggers a backup through the daemon; with --wait it polls
// until the backup ends and exits 1 unless it succeeded.
func runBackupRun(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backup run")
	client := clientFlags(e, fs)
	wait := fs.Bool("wait", false, "wait for the backup to finish; exit 1 unless it succeeded")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd backup run SOURCE [--wait]"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	var b backupView
	if err := c.do(ctx, "POST", "/api/v1/sources/"+url.PathEscape(fs.Arg(0))+"/backups", nil, &b); err != nil {
		return err
	}
	if !*wait {
		if *asJSON {
			return json.NewEncoder(e.stdout).Encode(b)
		}
		fmt.Fprintf(e.stdout, "queued backup %s of %s\n", b.ID, b.Source)
		return nil
	}
	fmt.Fprintf(e.stderr, "queued backup %s of %s; waiting\n", b.ID, b.Source)
	start, last := time.Now(), b.State
	show := newProgressLine(e.stderr)
	for !terminal(b.State) {
		asked, was := time.Now(), b.State
		if err := c.do(ctx, "GET", "/api/v1/backups/"+url.PathEscape(b.ID)+"?wait="+progressEvery.String(), nil, &b); err != nil {
			return err
		}
		// A daemon without long polls answers at once: poll then.
		if rest := progressEvery - time.Since(asked); b.State == was && rest > progressEvery/2 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(rest):
			}
		}
		if b.State != last {
			last = b.State
			show.end()
			fmt.Fprintf(e.stderr, "%s after %s\n", b.State, time.Since(start).Round(100*time.Millisecond))
		}
		if p := b.Progress; p != nil {
			show.update(backup.Progress{Phase: p.Phase, Bytes: p.Bytes, Total: p.TotalBytes, Rate: p.RateBytesPerSecond, ETA: etaOf(p.ETASeconds)})
		}
	}
	show.end()
	if err := printBackup(e, b, *asJSON); err != nil {
		return err
	}
	if b.State != "succeeded" {
		return exitError{code: exitFailure, err: fmt.Errorf("backup %s %s", b.ID, b.State)}
	}
	return nil
}

// listBackupsDaemon lists the daemon's catalog.
func listBackupsDaemon(ctx context.Context, e *env, c *apiClient, source, state string, asJSON bool) error {
	q := url.Values{}
	if source != "" {
		q.Set("source", source)
	}
	if state != "" {
		q.Set("state", state)
	}
	var all []backupView
	for {
		var page struct {
			Items      []backupView `json:"items"`
			NextCursor string       `json:"next_cursor"`
		}
		if err := c.do(ctx, "GET", "/api/v1/backups?"+q.Encode(), nil, &page); err != nil {
			return err
		}
		all = append(all, page.Items...)
		if page.NextCursor == "" {
			break
		}
		q.Set("cursor", page.NextCursor)
	}
	if asJSON {
		if all == nil {
			all = []backupView{}
		}
		return json.NewEncoder(e.stdout).Encode(map[string]any{"items": all})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSOURCE\tTYPE\tSTATE\tFINISHED\tRAW\tSTORED")
	for _, b := range all {
		fin := "-"
		if b.FinishedAt != nil {
			fin = *b.FinishedAt
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.ID, b.Source, b.Type, b.State, fin, humanBytes(b.RawBytes), humanBytes(b.StoredBytes))
	}
	return tw.Flush()
}

// runBackupShow prints one backup with its copies.
func runBackupShow(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backup show")
	client := clientFlags(e, fs)
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd backup show ID [--json]"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	var b backupView
	if err := c.do(ctx, "GET", "/api/v1/backups/"+url.PathEscape(fs.Arg(0)), nil, &b); err != nil {
		return err
	}
	return printBackup(e, b, *asJSON)
}

func printBackup(e *env, b backupView, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(b)
	}
	fmt.Fprintf(e.stdout, "backup %s\n  source:   %s (%s)\n  state:    %s\n  actor:    %s\n  queued:   %s\n", b.ID, b.Source, b.Type, b.State, b.Actor, b.QueuedAt)
	if b.FinishedAt != nil {
		fmt.Fprintf(e.stdout, "  finished: %s\n", *b.FinishedAt)
	}
	if b.DurationSeconds != nil {
		fmt.Fprintf(e.stdout, "  duration: %.1fs\n", *b.DurationSeconds)
	}
	fmt.Fprintf(e.stdout, "  size:     %s raw, %s stored\n", humanBytes(b.RawBytes), humanBytes(b.StoredBytes))
	if b.Error != "" {
		fmt.Fprintf(e.stdout, "  error:    %s\n", b.Error)
	}
	fmt.Fprintln(e.stdout, "  copies:")
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	for _, c := range b.Copies {
		line := fmt.Sprintf("    %s\t%s\t%s\t%s", c.Target, c.State, humanBytes(c.Bytes), c.Key)
		if c.SHA256 != "" {
			line += "\tsha256:" + c.SHA256[:16]
		}
		if c.Error != "" {
			line += "\t" + c.Error
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(b.Verifications) > 0 {
		fmt.Fprintln(e.stdout, "  verifications:")
		tw = tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		for _, v := range b.Verifications {
			result := "ok"
			if !v.OK {
				result = "FAILED " + v.Error
			}
			fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", v.FinishedAt, v.Target, v.Level, result)
		}
		return tw.Flush()
	}
	return nil
}
