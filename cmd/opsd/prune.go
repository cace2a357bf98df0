package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/service"
	"github.com/opsd-dev/opsd/internal/httpapi"
)

// runBackupPrune applies retention through the daemon (admin): every
// backup with the rule that keeps it, or deleted. --dry-run deletes
// nothing and shows what would go.
func runBackupPrune(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backup prune")
	client := clientFlags(e, fs)
	source := fs.String("source", "", "one source (default: every source with a retention policy)")
	dryRun := fs.Bool("dry-run", false, "list what would be deleted and why the rest is kept; delete nothing")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	body, err := json.Marshal(httpapi.PruneRequest{Source: *source, DryRun: *dryRun})
	if err != nil {
		return err
	}
	var res service.PruneResult
	if err := c.do(ctx, "POST", "/api/v1/prune", bytes.NewReader(body), &res); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(e.stdout).Encode(res)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tBACKUP\tTIME\tSIZE\tDECISION\tWHY")
	failed := 0
	for _, d := range res.Items {
		decision, why := "keep", strings.Join(d.Reasons, "; ")
		switch {
		case d.Keep:
		case d.Error != "":
			decision, why = "KEEP (delete failed)", d.Error
			failed++
		case res.DryRun:
			decision, why = "would delete", "no rule keeps it"
		default:
			decision, why = "deleted", "no rule keeps it"
		}
		if d.DeletableAt != nil {
			why += " (deletable after " + d.DeletableAt.Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d.Source, d.BackupID, d.Time.Format(time.RFC3339), humanBytes(d.StoredBytes), decision, why)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	verb := "freed"
	if res.DryRun {
		verb = "would free"
	}
	fmt.Fprintf(e.stdout, "%s %s\n", verb, humanBytes(res.FreedBytes))
	if failed > 0 {
		return exitError{code: exitFailure, err: fmt.Errorf("%d backup(s) could not be deleted", failed)}
	}
	return nil
}
