package main

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"
	"time"
)

// statusView is the part of GET /api/v1/status the table shows; --json
// prints the whole document.
type statusView struct {
	Version struct {
		Version string `json:"version"`
		Commit  string `json:"commit"`
	} `json:"version"`
	Replica       string    `json:"replica"`
	StartedAt     time.Time `json:"started_at"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	StateStore    string    `json:"state_store"`
	ConfigHash    string    `json:"config_hash"`
	Audit         *struct {
		TreeSize int64  `json:"tree_size"`
		Healthy  bool   `json:"healthy"`
		Error    string `json:"error"`
	} `json:"audit"`
	Sources []struct {
		Name     string    `json:"name"`
		Type     string    `json:"type"`
		Schedule string    `json:"schedule"`
		NextRun  time.Time `json:"next_run"`
		Targets  []string  `json:"targets"`
		Policy   string    `json:"policy"`
		Level    *string   `json:"level"`
		// Grading and freshness (see internal/daemon SourceStatus).
		MeetsPolicy         bool       `json:"meets_policy"`
		Missing             string     `json:"missing"`
		LastSuccess         *time.Time `json:"last_success"`
		LastChecksum        *time.Time `json:"last_checksum_verification"`
		LastProvenRestore   *time.Time `json:"last_proven_restore"`
		RPOSeconds          *float64   `json:"rpo_seconds"`
		RPOObjectiveSeconds float64    `json:"rpo_objective_seconds"`
		// LastBackup is the newest backup in the catalog, if any.
		LastBackup *struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"last_backup"`
	} `json:"sources"`
	Runs    []json.RawMessage `json:"runs"`
	Alerts  []json.RawMessage `json:"alerts"`
	Budgets []json.RawMessage `json:"budgets"`
}

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "status")
	newClient := clientFlags(e, fs)
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	if *asJSON {
		return c.do(ctx, "GET", "/api/v1/status", nil, e.stdout)
	}
	var st statusView
	if err := c.do(ctx, "GET", "/api/v1/status", nil, &st); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "opsd %s (%s), up %s, state %s, config %s\n", st.Version.Version, short(st.Version.Commit),
		(time.Duration(st.UptimeSeconds) * time.Second).String(), st.StateStore, short(st.ConfigHash))
	if st.Audit != nil {
		health := "healthy"
		if !st.Audit.Healthy {
			health = "UNHEALTHY: " + st.Audit.Error
		}
		fmt.Fprintf(e.stdout, "audit log: %d entries, %s\n", st.Audit.TreeSize, health)
	}
	fmt.Fprintln(e.stdout)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOURCE\tTYPE\tPOLICY\tLEVEL\tLAST BACKUP\tLAST SUCCESS\tREAD BACK\tPROVEN RESTORE\tRPO NOW/OBJ\tNEXT RUN")
	now := time.Now()
	var notes []string
	for _, s := range st.Sources {
		level := "-"
		if s.Level != nil {
			level = *s.Level
			if level == "" {
				level = "none"
			}
			if s.Policy != "" && !s.MeetsPolicy {
				level += " BELOW"
				notes = append(notes, fmt.Sprintf("%s: below its policy %s: %s", s.Name, s.Policy, s.Missing))
			} else if s.Missing != "" && s.Policy == "" {
				notes = append(notes, fmt.Sprintf("%s: %s", s.Name, s.Missing))
			}
		} else if s.Missing != "" {
			notes = append(notes, fmt.Sprintf("%s: %s", s.Name, s.Missing))
		}
		next := "-"
		if !s.NextRun.IsZero() {
			next = s.NextRun.UTC().Format(time.RFC3339)
		}
		last := "-"
		if s.LastBackup != nil {
			last = s.LastBackup.ID + " " + s.LastBackup.State
		}
		rpo := "-"
		if s.RPOSeconds != nil {
			rpo = roundAge(time.Duration(*s.RPOSeconds * float64(time.Second)))
			if s.RPOObjectiveSeconds > 0 {
				obj := time.Duration(s.RPOObjectiveSeconds * float64(time.Second))
				rpo += "/" + roundAge(obj)
				if *s.RPOSeconds > s.RPOObjectiveSeconds {
					rpo += " OVER"
				}
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Type, dash(s.Policy), level, last,
			ago(now, s.LastSuccess), ago(now, s.LastChecksum), ago(now, s.LastProvenRestore), rpo, next)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(e.stdout, n)
	}
	fmt.Fprintf(e.stdout, "\nruns: %d running, alerts: %d firing, budgets: %d\n", len(st.Runs), len(st.Alerts), len(st.Budgets))
	for _, raw := range st.Alerts {
		var a struct {
			Name     string    `json:"alertname"`
			Severity string    `json:"severity"`
			Source   string    `json:"source"`
			State    string    `json:"state"`
			Since    time.Time `json:"since"`
			Summary  string    `json:"summary"`
		}
		if json.Unmarshal(raw, &a) != nil {
			continue
		}
		state := ""
		if a.State == "suppressed" {
			state = " (silenced or inhibited)"
		}
		fmt.Fprintf(e.stdout, "  %s [%s]%s %s, since %s: %s\n", a.Name, dash(a.Severity), state, dash(a.Source),
			ago(now, &a.Since), dash(a.Summary))
	}
	return nil
}

// ago is "5m ago", "-" for never.
func ago(now time.Time, t *time.Time) string {
	if t == nil {
		return "-"
	}
	return roundAge(now.Sub(*t)) + " ago"
}

func roundAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	case d < 48*time.Hour:
		return d.Round(time.Minute).String()
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
