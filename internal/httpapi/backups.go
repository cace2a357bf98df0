package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/state"
)

// Backups is what the backup routes need: the backup service.
type Backups interface {
	// Enqueue queues a backup of source as the actor in ctx; an unknown
	// source is an error wrapping state.ErrNotFound.
	Enqueue(ctx context.Context, source string) (state.Backup, error)
	ListBackups(ctx context.Context, f state.BackupFilter) ([]state.Backup, string, error)
	GetBackup(ctx context.Context, id string) (state.Backup, []state.Copy, error)
	// Progress reports a running backup's progress; ok is false when it
	// is not running in this process.
	Progress(id string) (p backup.Progress, ok bool)
	// Changed returns a channel closed when a backup run by this process
	// next changes state (GET /api/v1/backups/{id}?wait=).
	Changed() <-chan struct{}
	// EnqueueVerify queues a verification of backup id at level
	// (checksum|restore) of the copy on target ("" = every complete copy
	// for checksum, the first good one for restore). Errors wrap
	// state.ErrNotFound, state.ErrInvalid or backup.ErrNotVerifiable (409).
	EnqueueVerify(ctx context.Context, id, level, target string) (request string, err error)
	// Verifications lists backup id's verifications, oldest first.
	Verifications(ctx context.Context, id string) ([]state.Verification, error)
	// StartRestore checks a restore of backup id and starts it in the
	// background; errors as EnqueueVerify's. GetRestore returns one
	// (state.ErrNotFound when this daemon does not know it).
	StartRestore(ctx context.Context, id string, req backup.RestoreRequest) (backup.RestoreJob, error)
	GetRestore(id string) (backup.RestoreJob, error)
	// PruneDocument applies retention to source ("" = every source with a
	// policy), deleting unless dryRun, and returns the decisions document.
	PruneDocument(ctx context.Context, source string, dryRun bool) (any, error)
}

// PruneRequest is the body of POST /api/v1/prune.
type PruneRequest struct {
	Source string `json:"source,omitempty"`
	DryRun bool   `json:"dry_run"`
}

// VerificationResource is one verification of one copy.
type VerificationResource struct {
	Target          string          `json:"target"`
	Level           string          `json:"level"`
	OK              bool            `json:"ok"`
	StartedAt       string          `json:"started_at"`
	FinishedAt      string          `json:"finished_at"`
	DurationSeconds float64         `json:"duration_seconds"`
	Error           string          `json:"error,omitempty"`
	Report          json.RawMessage `json:"report,omitempty"`
	// Request is the id POST .../verify answered with; empty for the
	// verification after each backup and scheduled ones.
	Request string `json:"request,omitempty"`
}

// VerifyQueued is the answer to POST /api/v1/backups/{id}/verify.
type VerifyQueued struct {
	BackupID string `json:"backup_id"`
	Level    string `json:"level"`
	Target   string `json:"target"`
	State    string `json:"state"`
	Request  string `json:"request"`
}

// VerifyRequest is the body of POST /api/v1/backups/{id}/verify.
type VerifyRequest struct {
	Level  string `json:"level"`
	Target string `json:"target,omitempty"`
}

// ProgressResource is a running backup's progress.
type ProgressResource struct {
	Phase string `json:"phase"`
	// Bytes read from the source so far.
	Bytes int64 `json:"bytes"`
	// TotalBytes is an estimate (the previous backup's size), 0 if none.
	TotalBytes         int64    `json:"total_bytes"`
	RateBytesPerSecond float64  `json:"rate_bytes_per_second"`
	ETASeconds         *float64 `json:"eta_seconds"`
}

// BackupResource is a backup as the API shows it (SPEC §4).
type BackupResource struct {
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	State           string          `json:"state"`
	Actor           string          `json:"actor"`
	JobID           int64           `json:"job_id,omitempty"`
	QueuedAt        string          `json:"queued_at"`
	StartedAt       *string         `json:"started_at"`
	FinishedAt      *string         `json:"finished_at"`
	DurationSeconds *float64        `json:"duration_seconds"`
	RawBytes        int64           `json:"raw_bytes"`
	StoredBytes     int64           `json:"stored_bytes"`
	Error           string          `json:"error,omitempty"`
	Copies          []CopyResource  `json:"copies,omitempty"`
	Manifest        json.RawMessage `json:"manifest,omitempty"`
	// Verifications of the copies, oldest first; GET /api/v1/backups/{id} only.
	Verifications []VerificationResource `json:"verifications,omitempty"`
	// Progress of a running backup; GET /api/v1/backups/{id} only.
	Progress *ProgressResource `json:"progress,omitempty"`
}

// CopyResource is one copy of a backup on one target.
type CopyResource struct {
	Target          string   `json:"target"`
	State           string   `json:"state"`
	Key             string   `json:"key"`
	Bytes           int64    `json:"bytes"`
	SHA256          string   `json:"sha256"`
	StartedAt       *string  `json:"started_at"`
	FinishedAt      *string  `json:"finished_at"`
	DurationSeconds *float64 `json:"duration_seconds"`
	Error           string   `json:"error,omitempty"`
}

type backupList struct {
	Items      []BackupResource `json:"items"`
	NextCursor string           `json:"next_cursor"`
}

func timeText(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

func durationOf(start, end time.Time) *float64 {
	if start.IsZero() || end.IsZero() {
		return nil
	}
	d := end.Sub(start).Seconds()
	return &d
}

func toBackupResource(b state.Backup) BackupResource {
	return BackupResource{ID: b.ID, Source: b.Source, Type: b.Type, State: b.State, Actor: b.Actor, JobID: b.JobID,
		QueuedAt: b.QueuedAt.UTC().Format(time.RFC3339Nano), StartedAt: timeText(b.StartedAt), FinishedAt: timeText(b.FinishedAt),
		DurationSeconds: durationOf(b.StartedAt, b.FinishedAt), RawBytes: b.RawBytes, StoredBytes: b.StoredBytes, Error: b.Error}
}

func (s *Server) handleRunBackup(w http.ResponseWriter, r *http.Request) {
	var body struct{}
	if !decodeJSON(w, r, &body) {
		return
	}
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	b, err := s.deps.Backups.Enqueue(r.Context(), r.PathValue("name"))
	if err != nil {
		s.backupError(w, r, "queue backup", err)
		return
	}
	w.Header().Set("Location", "/api/v1/backups/"+b.ID)
	writeJSON(w, http.StatusAccepted, toBackupResource(b))
}

func (s *Server) handleListBackups(w http.ResponseWriter, r *http.Request) {
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	q := r.URL.Query()
	f := state.BackupFilter{Source: q.Get("source"), State: q.Get("state"), Cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeProblem(w, r, probBadRequest.with("limit must be a positive integer"))
			return
		}
		f.Limit = n
	}
	items, next, err := s.deps.Backups.ListBackups(r.Context(), f)
	if err != nil {
		s.backupError(w, r, "list backups", err)
		return
	}
	out := backupList{Items: make([]BackupResource, 0, len(items)), NextCursor: next}
	for _, b := range items {
		out.Items = append(out.Items, toBackupResource(b))
	}
	writeJSON(w, http.StatusOK, out)
}

// maxBackupWait bounds GET /api/v1/backups/{id}?wait=, well inside the
// server's write timeout (default 60s).
const maxBackupWait = 30 * time.Second

// backupRecheck is how often a waiting GET re-reads the catalog, for a
// backup another replica runs (this process's changes wake it at once).
const backupRecheck = time.Second

func (s *Server) handleGetBackup(w http.ResponseWriter, r *http.Request) {
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > maxBackupWait {
			writeProblem(w, r, probBadRequest.with("wait must be a duration from 0s to "+maxBackupWait.String()+", e.g. 500ms"))
			return
		}
		wait = d
	}
	b, copies, err := s.waitBackup(r.Context(), r.PathValue("id"), wait)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client went away while waiting
		}
		s.backupError(w, r, "get backup", err)
		return
	}
	out := toBackupResource(b)
	out.Copies = make([]CopyResource, 0, len(copies))
	for _, c := range copies {
		out.Copies = append(out.Copies, CopyResource{Target: c.Target, State: c.State, Key: c.Key, Bytes: c.Bytes, SHA256: c.SHA256,
			StartedAt: timeText(c.StartedAt), FinishedAt: timeText(c.FinishedAt), DurationSeconds: durationOf(c.StartedAt, c.FinishedAt), Error: c.Error})
	}
	if len(b.Manifest) > 0 && json.Valid(b.Manifest) {
		out.Manifest = b.Manifest
	}
	vs, err := s.deps.Backups.Verifications(r.Context(), b.ID)
	if err != nil {
		s.backupError(w, r, "list verifications", err)
		return
	}
	for _, v := range vs {
		vr := VerificationResource{Target: v.Target, Level: v.Level, OK: v.OK, StartedAt: v.StartedAt.UTC().Format(time.RFC3339Nano),
			FinishedAt: v.FinishedAt.UTC().Format(time.RFC3339Nano), DurationSeconds: v.FinishedAt.Sub(v.StartedAt).Seconds(), Error: v.Error,
			Request: v.Request}
		if json.Valid(v.Report) {
			vr.Report = v.Report
		}
		out.Verifications = append(out.Verifications, vr)
	}
	if p, ok := s.deps.Backups.Progress(b.ID); ok && b.State == state.BackupRunning {
		out.Progress = &ProgressResource{Phase: p.Phase, Bytes: p.Bytes, TotalBytes: p.Total, RateBytesPerSecond: p.Rate}
		if p.ETA > 0 {
			eta := p.ETA.Seconds()
			out.Progress.ETASeconds = &eta
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// waitBackup reads backup id; with wait > 0 and the backup queued or
// running, it answers as soon as the backup's state changes, or after
// wait (a long poll: `opsd backup run --wait` returns the moment the
// backup ends instead of at its next poll).
func (s *Server) waitBackup(ctx context.Context, id string, wait time.Duration) (state.Backup, []state.Copy, error) {
	changed := s.deps.Backups.Changed()
	b, copies, err := s.deps.Backups.GetBackup(ctx, id)
	if err != nil || wait <= 0 || (b.State != state.BackupQueued && b.State != state.BackupRunning) {
		return b, copies, err
	}
	was := b.State
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	recheck := time.NewTicker(backupRecheck)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return b, copies, ctx.Err()
		case <-deadline.C:
			return b, copies, nil
		case <-s.stopping:
			return b, copies, nil
		case <-changed:
		case <-recheck.C:
		}
		changed = s.deps.Backups.Changed()
		if b, copies, err = s.deps.Backups.GetBackup(ctx, id); err != nil || b.State != was {
			return b, copies, err
		}
	}
}

func (s *Server) handleVerifyBackup(w http.ResponseWriter, r *http.Request) {
	var body VerifyRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	if body.Level == "" {
		body.Level = state.LevelChecksum
	}
	id := r.PathValue("id")
	req, err := s.deps.Backups.EnqueueVerify(r.Context(), id, body.Level, body.Target)
	if err != nil {
		s.backupError(w, r, "queue verification", err)
		return
	}
	w.Header().Set("Location", "/api/v1/backups/"+id)
	writeJSON(w, http.StatusAccepted, VerifyQueued{BackupID: id, Level: body.Level, Target: body.Target, State: "queued", Request: req})
}

// RestoreRequestBody is the body of POST /api/v1/backups/{id}/restore.
type RestoreRequestBody struct {
	Target     string `json:"target,omitempty"`
	ToDir      string `json:"to_dir,omitempty"`
	ToPostgres string `json:"to_postgres,omitempty"`
	Force      bool   `json:"force,omitempty"`
}

// RestoreResource is an API restore (GET /api/v1/restores/{id}).
type RestoreResource struct {
	ID              string   `json:"id"`
	BackupID        string   `json:"backup_id"`
	Source          string   `json:"source"`
	Actor           string   `json:"actor"`
	Destination     string   `json:"destination"`
	Force           bool     `json:"force"`
	Target          string   `json:"target,omitempty"`
	State           string   `json:"state"`
	Bytes           int64    `json:"bytes"`
	Error           string   `json:"error,omitempty"`
	Rejected        []string `json:"rejected,omitempty"`
	StartedAt       *string  `json:"started_at"`
	FinishedAt      *string  `json:"finished_at"`
	DurationSeconds *float64 `json:"duration_seconds,omitempty"`
}

func toRestoreResource(j backup.RestoreJob) RestoreResource {
	return RestoreResource{ID: j.ID, BackupID: j.BackupID, Source: j.Source, Actor: j.Actor, Destination: j.Destination, Force: j.Force,
		Target: j.Target, State: j.State, Bytes: j.Bytes, Error: j.Error, Rejected: j.Rejected, StartedAt: timeText(j.StartedAt),
		FinishedAt: timeText(j.FinishedAt), DurationSeconds: durationOf(j.StartedAt, j.FinishedAt)}
}

// handleRestoreBackup starts a restore on the daemon's host: 202 with the
// restore and its Location. Restoring over a non-empty directory or
// database (force) takes an admin token.
func (s *Server) handleRestoreBackup(w http.ResponseWriter, r *http.Request) {
	var body RestoreRequestBody
	if !decodeJSON(w, r, &body) {
		return
	}
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	if info := reqInfoFrom(r.Context()); body.Force && info.role < RoleAdmin {
		writeProblem(w, r, probForbidden.with("force restores over existing data: token "+info.token+" has role "+info.role.String()+"; this needs admin"))
		return
	}
	j, err := s.deps.Backups.StartRestore(r.Context(), r.PathValue("id"),
		backup.RestoreRequest{Target: body.Target, ToDir: body.ToDir, ToPostgres: body.ToPostgres, Force: body.Force})
	if err != nil {
		s.backupError(w, r, "start restore", err)
		return
	}
	w.Header().Set("Location", "/api/v1/restores/"+j.ID)
	writeJSON(w, http.StatusAccepted, toRestoreResource(j))
}

func (s *Server) handleGetRestore(w http.ResponseWriter, r *http.Request) {
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	j, err := s.deps.Backups.GetRestore(r.PathValue("id"))
	if err != nil {
		s.backupError(w, r, "get restore", err)
		return
	}
	writeJSON(w, http.StatusOK, toRestoreResource(j))
}

func (s *Server) handlePrune(w http.ResponseWriter, r *http.Request) {
	var body PruneRequest
	if !decodeJSON(w, r, &body) {
		return
	}
	if s.deps.Backups == nil {
		writeProblem(w, r, probUnavailable.with("backups not available"))
		return
	}
	doc, err := s.deps.Backups.PruneDocument(r.Context(), body.Source, body.DryRun)
	if err != nil {
		s.backupError(w, r, "prune", err)
		return
	}
	writeJSON(w, http.StatusOK, doc)
}

// backupError maps the service's errors to problems.
func (s *Server) backupError(w http.ResponseWriter, r *http.Request, what string, err error) {
	switch {
	case errors.Is(err, state.ErrNotFound):
		writeProblem(w, r, probNotFound.with(err.Error()))
	case errors.Is(err, state.ErrInvalid):
		writeProblem(w, r, probBadRequest.with(err.Error()))
	case errors.Is(err, backup.ErrNotVerifiable):
		writeProblem(w, r, probNotVerifiable.with(err.Error()))
	case errors.Is(err, backup.ErrRestoreBusy):
		writeProblem(w, r, probRestoreBusy.with(err.Error()))
	default:
		s.log.Error(what, "err", err, "request_id", requestIDFrom(r.Context()))
		writeProblem(w, r, probInternal.with(what+" failed; see the daemon log for request "+requestIDFrom(r.Context())))
	}
}

func (s *Server) handleSources(w http.ResponseWriter, r *http.Request) {
	s.serveDocument(w, r, "source list", s.deps.Sources)
}

func (s *Server) handleSource(w http.ResponseWriter, r *http.Request) {
	if s.deps.Source == nil {
		writeProblem(w, r, probUnavailable.with("sources not available"))
		return
	}
	doc, err := s.deps.Source(r.Context(), r.PathValue("name"))
	if err != nil {
		s.backupError(w, r, "get source", err)
		return
	}
	writeJSON(w, http.StatusOK, doc)
}
