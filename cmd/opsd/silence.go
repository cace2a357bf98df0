package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"
)

// silenceView is a silence as /api/v1/silences shows it (docs/ROUTING.md).
type silenceView struct {
	ID          string            `json:"id"`
	Matchers    []string          `json:"matchers"`
	StartsAt    time.Time         `json:"startsAt"`
	EndsAt      time.Time         `json:"endsAt"`
	UpdatedAt   time.Time         `json:"updatedAt"`
	CreatedBy   string            `json:"createdBy"`
	Comment     string            `json:"comment"`
	State       string            `json:"state"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// silenceRequest is the body of POST /api/v1/silences.
type silenceRequest struct {
	Matchers  []string   `json:"matchers"`
	StartsAt  *time.Time `json:"startsAt,omitempty"`
	EndsAt    time.Time  `json:"endsAt"`
	CreatedBy string     `json:"createdBy"`
	Comment   string     `json:"comment"`
}

// runSilenceAdd: opsd alerts silence add [flags] MATCHER...
func runSilenceAdd(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "alerts silence add")
	newClient := clientFlags(e, fs)
	duration := fs.Duration("duration", time.Hour, "how long the silence lasts from its start")
	start := fs.String("start", "", "start time, RFC 3339 (default now)")
	end := fs.String("end", "", "end time, RFC 3339 (overrides --duration)")
	author := fs.String("author", "", "who silences (default $USER)")
	comment := fs.String("comment", "", "why")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, math.MaxInt); err != nil {
		return err
	}
	matchers := fs.Args()
	if len(matchers) == 0 {
		return usageError{`at least one matcher is required, e.g. alertname="BackupStale" source=~"orders-.*"`}
	}
	req := silenceRequest{Matchers: matchers, Comment: *comment, CreatedBy: *author}
	if req.CreatedBy == "" {
		req.CreatedBy = e.getenv("USER")
	}
	if req.CreatedBy == "" {
		req.CreatedBy = "opsd-cli"
	}
	from := time.Now().UTC()
	if *start != "" {
		t, err := time.Parse(time.RFC3339, *start)
		if err != nil {
			return usageError{fmt.Sprintf("--start: want RFC 3339 time: %v", err)}
		}
		from = t.UTC()
		req.StartsAt = &from
	}
	switch {
	case *end != "":
		t, err := time.Parse(time.RFC3339, *end)
		if err != nil {
			return usageError{fmt.Sprintf("--end: want RFC 3339 time: %v", err)}
		}
		req.EndsAt = t.UTC()
	case *duration <= 0:
		return usageError{"--duration must be positive"}
	default:
		req.EndsAt = from.Add(*duration)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	if *asJSON {
		return c.do(ctx, "POST", "/api/v1/silences", bytes.NewReader(body), e.stdout)
	}
	var s silenceView
	if err := c.do(ctx, "POST", "/api/v1/silences", bytes.NewReader(body), &s); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "silence %s %s until %s: %s\n", s.ID, s.State, s.EndsAt.UTC().Format(time.RFC3339), strings.Join(s.Matchers, " "))
	return nil
}

// runSilenceList: opsd alerts silence list [--state S] [--json]
func runSilenceList(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "alerts silence list")
	newClient := clientFlags(e, fs)
	state := fs.String("state", "", "only silences in this state: active, pending or expired")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	switch *state {
	case "", "active", "pending", "expired":
	default:
		return usageError{fmt.Sprintf("--state %q: want active, pending or expired", *state)}
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *state != "" {
		q.Set("state", *state)
	}
	var items []json.RawMessage
	var views []silenceView
	cursor := ""
	for {
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		path := "/api/v1/silences"
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		var page struct {
			Items      []json.RawMessage `json:"items"`
			NextCursor string            `json:"next_cursor"`
		}
		if err := c.do(ctx, "GET", path, nil, &page); err != nil {
			return err
		}
		for _, raw := range page.Items {
			var v silenceView
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("decode silence: %w", err)
			}
			items = append(items, raw)
			views = append(views, v)
		}
		if page.NextCursor == "" || page.NextCursor == cursor {
			break
		}
		cursor = page.NextCursor
	}
	if *asJSON {
		if items == nil {
			items = []json.RawMessage{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"items": items})
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tMATCHERS\tSTARTS\tENDS\tCREATED BY\tCOMMENT")
	for _, s := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.State, strings.Join(s.Matchers, " "),
			s.StartsAt.UTC().Format(time.RFC3339), s.EndsAt.UTC().Format(time.RFC3339), dash(s.CreatedBy), dash(s.Comment))
	}
	return tw.Flush()
}

// runSilenceExpire: opsd alerts silence expire ID...
func runSilenceExpire(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "alerts silence expire")
	newClient := clientFlags(e, fs)
	if err := parseFlags(fs, args, math.MaxInt); err != nil {
		return err
	}
	ids := fs.Args()
	if len(ids) == 0 {
		return usageError{"at least one silence ID is required (see opsd alerts silence list)"}
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	for _, id := range ids {
		if err := c.do(ctx, "DELETE", "/api/v1/silences/"+url.PathEscape(id), nil, nil); err != nil {
			return fmt.Errorf("expire silence %s: %w", id, err)
		}
		fmt.Fprintf(e.stdout, "silence %s expired\n", id)
	}
	return nil
}
