package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"text/tabwriter"
	"time"

	"github.com/opsd-dev/opsd/internal/httpapi"
)

// runBackupVerify queues a verification through the daemon; with --wait
// it polls until the results are recorded and exits 1 if any failed.
func runBackupVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backup verify")
	client := clientFlags(e, fs)
	level := fs.String("level", "checksum", "checksum (re-read every copy) or restore (restore into scratch and run the checks)")
	target := fs.String("target", "", "verify only the copy on this target")
	wait := fs.Bool("wait", false, "wait for the results; exit 1 if a verification failed")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if *level != "checksum" && *level != "restore" {
		return usageError{"--level is checksum or restore"}
	}
	c, err := client()
	if err != nil {
		return err
	}
	id := fs.Arg(0)
	path := "/api/v1/backups/" + url.PathEscape(id)
	var before backupView
	if err := c.do(ctx, "GET", path, nil, &before); err != nil {
		return err
	}
	body, err := json.Marshal(httpapi.VerifyRequest{Level: *level, Target: *target})
	if err != nil {
		return err
	}
	var queued httpapi.VerifyQueued
	if err := c.do(ctx, "POST", path+"/verify", bytes.NewReader(body), &queued); err != nil {
		return err
	}
	if !*wait {
		fmt.Fprintf(e.stdout, "queued %s verification of %s\n", *level, id)
		return nil
	}
	want := 1
	if *level == "checksum" && *target == "" {
		want = 0
		for _, cp := range before.Copies {
			if cp.State == "complete" {
				want++
			}
		}
	}
	fmt.Fprintf(e.stderr, "queued %s verification of %s; waiting\n", *level, id)
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	var results []httpapi.VerificationResource
	for {
		var after backupView
		if err := c.do(ctx, "GET", path, nil, &after); err != nil {
			return err
		}
		results = results[:0]
		for _, v := range after.Verifications {
			if v.Request == queued.Request {
				results = append(results, v)
			}
		}
		if len(results) >= want {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	if *asJSON {
		if err := json.NewEncoder(e.stdout).Encode(results); err != nil {
			return err
		}
	} else {
		printVerifications(e, results)
	}
	for _, v := range results {
		if !v.OK {
			return exitError{code: exitFailure, err: fmt.Errorf("verification of %s on %s failed", id, v.Target)}
		}
	}
	return nil
}

func printVerifications(e *env, vs []httpapi.VerificationResource) {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tLEVEL\tRESULT\tDURATION\tDETAIL")
	for _, v := range vs {
		result := "ok"
		if !v.OK {
			result = "FAILED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.Target, v.Level, result,
			(time.Duration(v.DurationSeconds * float64(time.Second))).Round(time.Millisecond), v.Error)
	}
	_ = tw.Flush()
}
