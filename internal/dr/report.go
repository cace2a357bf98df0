package dr

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/audit"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/state"
)

// ReportFormat names the version of the report's JSON shape.
const ReportFormat = "opsd-drill-report/v1"

// Outputs of backup.restore the report and RPO read. The daemon's
// backup.restore action must set them (docs/RUNBOOKS.md): SnapshotTimeOutput
// is the time of the restored backup's snapshot from its manifest (a
// time.Time, or an RFC 3339 string), the RPO reference.
const (
	SnapshotTimeOutput   = "snapshot_time"
	BackupIDOutput       = "backup_id"
	ManifestSHA256Output = "manifest_sha256"
	TargetOutput         = "target"
)

// AuditRanger gives the audit log's index range of entries written between
// two times and a signed checkpoint covering them; the daemon's audit log
// implements it. It returns an error wrapping ErrNoAuditEntries when no
// entry lies between the times: the report then has no audit range.
type AuditRanger interface {
	AuditRange(ctx context.Context, start, end time.Time) (first, last int64, checkpoint string, err error)
}

// ErrNoAuditEntries: the audit log holds no entry for a run's time span.
var ErrNoAuditEntries = errors.New("no audit entries in the run's time span")

// Report is the evidence of one run (SPEC §4 GET /runs/{id}/report).
type Report struct {
	Format        string         `json:"format"`
	RunID         string         `json:"run_id"`
	Runbook       string         `json:"runbook"`
	RunbookSHA256 string         `json:"runbook_sha256"`
	RunbookFile   string         `json:"runbook_file,omitempty"`
	Mode          string         `json:"mode"`
	DryRun        bool           `json:"dry_run,omitempty"`
	State         string         `json:"state"`
	Error         string         `json:"error,omitempty"`
	StartedBy     string         `json:"started_by"`
	StartedAt     time.Time      `json:"started_at"`
	FinishedAt    time.Time      `json:"finished_at,omitzero"`
	Params        map[string]any `json:"params"`
	Approvals     []Approval     `json:"approvals,omitempty"`
	Cancelled     *Decision      `json:"cancelled,omitempty"`
	Steps         []StepView     `json:"steps"`
	// DisruptionStart is where RTO and RPO are measured from; its source
	// says why: "run_start", "param:disruption_start" or "step:ID".
	DisruptionStart       time.Time   `json:"disruption_start"`
	DisruptionStartSource string      `json:"disruption_start_source"`
	DisruptionEnd         time.Time   `json:"disruption_end,omitzero"`
	RTO                   *Measure    `json:"rto,omitempty"`
	RPO                   *Measure    `json:"rpo,omitempty"`
	Backup                *BackupUsed `json:"backup,omitempty"`
	Audit                 *AuditSpan  `json:"audit,omitempty"`
	GeneratedAt           time.Time   `json:"generated_at"`
}

// Approval is one decision on an approval step.
type Approval struct {
	Step string `json:"step"`
	Decision
}

// Measure is a measured objective against its target.
type Measure struct {
	Seconds float64 `json:"seconds"`
	// ObjectiveSeconds is the runbook's objective, 0 when it states none.
	ObjectiveSeconds float64   `json:"objective_seconds,omitempty"`
	Met              *bool     `json:"met,omitempty"`
	From             time.Time `json:"from"`
	To               time.Time `json:"to"`
}

// BackupUsed is the backup a run restored.
type BackupUsed struct {
	Step           string    `json:"step"`
	ID             string    `json:"id"`
	ManifestSHA256 string    `json:"manifest_sha256,omitempty"`
	SnapshotTime   time.Time `json:"snapshot_time,omitzero"`
	Target         string    `json:"target,omitempty"`
}

// AuditSpan is the audit log range covering the run.
type AuditSpan struct {
	First      int64  `json:"first"`
	Last       int64  `json:"last"`
	Checkpoint string `json:"checkpoint,omitempty"`
}

// Report builds the report of run id from the journal; with an AuditRanger
// configured (Config.Audit) it names the audit range of the run.
func (e *Engine) Report(ctx context.Context, id string) (*Report, error) {
	rep, err := e.buildReport(ctx, id)
	if err != nil {
		return nil, err
	}
	if e.cfg.Audit != nil {
		end := rep.FinishedAt
		if end.IsZero() {
			end = rep.GeneratedAt
		}
		first, last, cp, err := e.cfg.Audit.AuditRange(ctx, rep.StartedAt, end)
		switch {
		case errors.Is(err, ErrNoAuditEntries):
			return rep, nil
		case err != nil:
			return nil, fmt.Errorf("report %s: audit range: %w", id, err)
		}
		rep.Audit = &AuditSpan{First: first, Last: last, Checkpoint: cp}
	}
	return rep, nil
}

func (e *Engine) buildReport(ctx context.Context, id string) (*Report, error) {
	r, err := e.cfg.Store.GetRun(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("report %s: %w", id, err)
	}
	sts, err := e.cfg.Store.GetStepStates(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("report %s: %w", id, err)
	}
	v, err := view(r, sts)
	if err != nil {
		return nil, fmt.Errorf("report %s: %w", id, err)
	}
	var data runData
	_ = json.Unmarshal([]byte(r.Data), &data)
	rep := &Report{Format: ReportFormat, RunID: r.ID, Runbook: r.Runbook, RunbookSHA256: r.RunbookSHA256,
		RunbookFile: data.File, Mode: r.Mode, DryRun: r.DryRun, State: r.State, Error: r.Error,
		StartedBy: r.Actor, StartedAt: r.StartedAt, FinishedAt: r.FinishedAt, Params: v.Params,
		Cancelled: data.Cancelled, Steps: v.Steps, GeneratedAt: state.Timestamp(e.clock.Now())}
	var steps []string
	for s := range data.Approvals {
		steps = append(steps, s)
	}
	sort.Strings(steps)
	for _, s := range steps {
		rep.Approvals = append(rep.Approvals, Approval{Step: s, Decision: data.Approvals[s]})
	}
	measure(rep, data)
	return rep, nil
}

// measure fills in RTO, RPO and the backup used.
func measure(rep *Report, data runData) {
	rep.DisruptionStart, rep.DisruptionStartSource = rep.StartedAt, "run_start"
	if data.DisruptionStart != nil {
		rep.DisruptionStart, rep.DisruptionStartSource = *data.DisruptionStart, "param:"+disruptionParam
	}
	var recovered *StepView
	for i := range rep.Steps {
		s := &rep.Steps[i]
		for _, m := range s.Marks {
			switch runbook.Mark(m) {
			case runbook.MarkDisruptionStart:
				if data.DisruptionStart == nil && !s.StartedAt.IsZero() {
					rep.DisruptionStart, rep.DisruptionStartSource = s.StartedAt, "step:"+s.ID
				}
			case runbook.MarkDisruptionEnd:
				if s.State == state.StepSucceeded || s.State == state.StepCompensated {
					rep.DisruptionEnd = s.FinishedAt
				}
			case runbook.MarkRecovered:
				recovered = s
			}
		}
		if s.Uses == "backup.restore" && (s.State == state.StepSucceeded || s.State == state.StepCompensated) && rep.Backup == nil {
			b := &BackupUsed{Step: s.ID, ID: fmt.Sprint(orEmpty(s.Outputs[BackupIDOutput])),
				ManifestSHA256: fmt.Sprint(orEmpty(s.Outputs[ManifestSHA256Output])),
				Target:         fmt.Sprint(orEmpty(s.Outputs[TargetOutput]))}
			b.SnapshotTime = asTime(s.Outputs[SnapshotTimeOutput])
			rep.Backup = b
		}
	}
	if recovered != nil && (recovered.State == state.StepSucceeded || recovered.State == state.StepCompensated) {
		m := &Measure{Seconds: recovered.FinishedAt.Sub(rep.DisruptionStart).Seconds(), ObjectiveSeconds: data.RTOObjective,
			From: rep.DisruptionStart, To: recovered.FinishedAt}
		if data.RTOObjective > 0 {
			met := m.Seconds <= data.RTOObjective
			m.Met = &met
		}
		rep.RTO = m
	}
	if rep.Backup != nil && !rep.Backup.SnapshotTime.IsZero() {
		// A drill that takes its own backup after the disruption point
		// restores data newer than it: nothing was lost, RPO 0.
		m := &Measure{Seconds: max(0, rep.DisruptionStart.Sub(rep.Backup.SnapshotTime).Seconds()),
			ObjectiveSeconds: data.RPOObjective, From: rep.Backup.SnapshotTime, To: rep.DisruptionStart}
		if data.RPOObjective > 0 {
			met := m.Seconds <= data.RPOObjective
			m.Met = &met
		}
		rep.RPO = m
	}
}

func orEmpty(v any) any {
	if v == nil {
		return ""
	}
	return v
}

func asTime(v any) time.Time {
	switch x := v.(type) {
	case time.Time:
		return x.UTC()
	case string:
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil {
			return t.UTC()
		}
	}
	return time.Time{}
}

// JSON is the report's canonical JSON (indented, ending in a newline): the
// text that SignReport signs.
func (r *Report) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// SignReport returns the report as a signed note (golang.org/x/mod/sumdb/note)
// whose text is the report's JSON, signed with the audit key. With markdown
// set, the text is the Markdown rendering, which ends with the JSON in a
// fenced block, so either form verifies and yields the report.
func SignReport(r *Report, signer note.Signer, markdown bool) ([]byte, error) {
	js, err := r.JSON()
	if err != nil {
		return nil, fmt.Errorf("sign report %s: %w", r.RunID, err)
	}
	text := string(js)
	if markdown {
		text = r.Markdown(js)
	}
	signed, err := note.Sign(&note.Note{Text: text}, signer)
	if err != nil {
		return nil, fmt.Errorf("sign report %s: %w", r.RunID, err)
	}
	return signed, nil
}

// ErrReportTampered: the report's signature does not verify.
var ErrReportTampered = errors.New("report signature does not verify")

// jsonFence opens the machine-readable block of a Markdown report.
const jsonFence = "\n```json\n"

// VerifyReport checks a signed report (JSON or Markdown form) with verifier
// and returns the report it holds. A report whose text or signature changed
// is ErrReportTampered; one without a signature by verifier's key is an error
// wrapping note.UnverifiedNoteError or note.UnknownVerifierError.
func VerifyReport(data []byte, verifier note.Verifier) (*Report, error) {
	n, err := note.Open(data, note.VerifierList(verifier))
	if err != nil {
		var unknown *note.UnknownVerifierError
		var unverified *note.UnverifiedNoteError
		if errors.As(err, &unknown) || errors.As(err, &unverified) {
			return nil, fmt.Errorf("verify report: no signature by this key (signed by another key?): %w", err)
		}
		return nil, fmt.Errorf("verify report: %w: %w", ErrReportTampered, err)
	}
	js := n.Text
	if !strings.HasPrefix(js, "{") {
		i := strings.LastIndex(js, jsonFence)
		if i < 0 {
			return nil, errors.New("verify report: signed, but holds no report")
		}
		js = js[i+len(jsonFence):]
		if j := strings.Index(js, "\n```"); j >= 0 {
			js = js[:j]
		}
	}
	var rep Report
	dec := json.NewDecoder(bytes.NewReader([]byte(js)))
	if err := dec.Decode(&rep); err != nil {
		return nil, fmt.Errorf("verify report: signed, but not a report: %w", err)
	}
	if rep.Format != ReportFormat {
		return nil, fmt.Errorf("verify report: format %q, want %q", rep.Format, ReportFormat)
	}
	if a := rep.Audit; a != nil && a.Checkpoint != "" {
		// The checkpoint is signed with the same audit key; it must cover
		// the range the report names.
		c, err := audit.OpenCheckpoint([]byte(a.Checkpoint), verifier)
		if err != nil {
			return nil, fmt.Errorf("verify report: audit checkpoint: %w", err)
		}
		if a.First < 0 || a.Last < a.First || c.Size <= a.Last {
			return nil, fmt.Errorf("verify report: audit checkpoint of %d entries does not cover entries %d..%d", c.Size, a.First, a.Last)
		}
	}
	return &rep, nil
}

// Markdown renders the report for people; js is its JSON, appended as a
// fenced block so the signed Markdown carries the exact data.
func (r *Report) Markdown(js []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Drill report: %s\n\n", r.Runbook)
	row := func(k, v string) { fmt.Fprintf(&b, "| %s | %s |\n", k, mdEscape(v)) }
	b.WriteString("| | |\n|---|---|\n")
	row("run", r.RunID)
	row("runbook SHA-256", r.RunbookSHA256)
	row("mode", r.Mode)
	row("state", r.State)
	if r.Error != "" {
		row("error", r.Error)
	}
	row("started by", r.StartedBy)
	row("started", fmtTime(r.StartedAt))
	row("finished", fmtTime(r.FinishedAt))
	row("disruption start", fmtTime(r.DisruptionStart)+" ("+r.DisruptionStartSource+")")
	if !r.DisruptionEnd.IsZero() {
		row("disruption end", fmtTime(r.DisruptionEnd))
	}
	b.WriteString("\n## Objectives\n\n| | measured | objective | met |\n|---|---|---|---|\n")
	for _, m := range []struct {
		name string
		m    *Measure
	}{{"RTO", r.RTO}, {"RPO", r.RPO}} {
		if m.m == nil {
			fmt.Fprintf(&b, "| %s | not measured | | |\n", m.name)
			continue
		}
		obj, met := "none", ""
		if m.m.ObjectiveSeconds > 0 {
			obj = fmtSeconds(m.m.ObjectiveSeconds)
		}
		if m.m.Met != nil {
			met = map[bool]string{true: "yes", false: "**NO**"}[*m.m.Met]
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", m.name, fmtSeconds(m.m.Seconds), obj, met)
	}
	if r.Backup != nil {
		b.WriteString("\n## Backup used\n\n| | |\n|---|---|\n")
		row("backup", r.Backup.ID)
		row("manifest SHA-256", r.Backup.ManifestSHA256)
		row("snapshot", fmtTime(r.Backup.SnapshotTime))
		row("target", r.Backup.Target)
		row("step", r.Backup.Step)
	}
	if len(r.Params) > 0 {
		b.WriteString("\n## Parameters\n\n| name | value |\n|---|---|\n")
		var keys []string
		for k := range r.Params {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			row(k, fmt.Sprint(r.Params[k]))
		}
	}
	if len(r.Approvals) > 0 || r.Cancelled != nil {
		b.WriteString("\n## Decisions\n\n| step | decision | by | at | comment |\n|---|---|---|---|---|\n")
		for _, a := range r.Approvals {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", a.Step, map[bool]string{true: "approved", false: "rejected"}[a.Approved],
				mdEscape(a.Actor+" ("+a.Role+")"), fmtTime(a.Time), mdEscape(a.Comment))
		}
		if c := r.Cancelled; c != nil {
			fmt.Fprintf(&b, "| (run) | cancelled | %s | %s | %s |\n", mdEscape(c.Actor), fmtTime(c.Time), mdEscape(c.Comment))
		}
	}
	b.WriteString("\n## Steps\n\n| step | action | state | attempts | started | duration | error |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Steps {
		stepRow(&b, s.ID, s)
		if s.Compensation != nil {
			stepRow(&b, s.ID+" (compensation)", *s.Compensation)
		}
	}
	if r.Audit != nil {
		b.WriteString("\n## Audit log\n\n")
		fmt.Fprintf(&b, "Entries %d to %d cover this run.\n", r.Audit.First, r.Audit.Last)
		if r.Audit.Checkpoint != "" {
			fmt.Fprintf(&b, "\nCheckpoint:\n\n```\n%s```\n", strings.TrimRight(r.Audit.Checkpoint, "\n")+"\n")
		}
	}
	b.WriteString("\n## Machine-readable report\n")
	b.WriteString(jsonFence)
	b.Write(js)
	b.WriteString("```\n")
	return b.String()
}

func stepRow(b *strings.Builder, name string, s StepView) {
	dur := ""
	if !s.StartedAt.IsZero() && !s.FinishedAt.IsZero() {
		dur = fmtSeconds(s.FinishedAt.Sub(s.StartedAt).Seconds())
	}
	fmt.Fprintf(b, "| %s | %s | %s | %d | %s | %s | %s |\n", mdEscape(name), mdEscape(s.Uses), s.State, len(s.Attempts),
		fmtTime(s.StartedAt), dur, mdEscape(s.Error))
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func fmtSeconds(s float64) string {
	return (time.Duration(s * float64(time.Second))).Round(time.Millisecond).String()
}

func mdEscape(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	return s
}
