package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestScheduledDrill: a runbooks.schedules entry starts runs of its
// runbook on its cron, as the scheduler, in drill mode.
func TestScheduledDrill(t *testing.T) {
	dir := t.TempDir()
	cfgPath := writeDrillConfig(t, dir)
	raw, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(raw), "runbooks: {dir: ./runbooks}",
		`runbooks: {dir: ./runbooks, schedules: [{runbook: tick, cron: "@every 2s", mode: drill}]}`, 1)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	tick := `name: tick
description: a scheduled no-op drill
steps:
  - id: check
    uses: assert
    with: {that: "${{ mode == 'drill' }}", message: scheduled runs are drills}
  - id: live-only
    uses: wait
    with: {duration: 1ms}
    live_only: true
`
	if err := os.WriteFile(filepath.Join(dir, "runbooks", "tick.yaml"), []byte(tick), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, cfgPath, true)
	type run struct {
		ID, Runbook, Mode, State, Actor string
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(250 * time.Millisecond) {
		var list struct {
			Items []run `json:"items"`
		}
		if code := d.api(t, "GET", "/api/v1/runs?runbook=tick", testToken, &list); code != 200 {
			t.Fatalf("GET runs = %d", code)
		}
		done := 0
		for _, r := range list.Items {
			if r.Actor != "scheduler:drill:tick (operator)" && !strings.HasPrefix(r.Actor, "scheduler:drill:tick") {
				t.Fatalf("run %s started by %q, want the scheduler", r.ID, r.Actor)
			}
			if r.Mode != "drill" {
				t.Fatalf("scheduled run %s in mode %s, want drill", r.ID, r.Mode)
			}
			if r.State == "succeeded" {
				done++
			}
		}
		if done >= 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fewer than two scheduled runs succeeded in 30s: %+v", list.Items)
		}
	}
}
