package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
	"github.com/opsd-dev/opsd/internal/backup/verify"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/storage"
)

// ErrNotVerifiable: the backup has no complete copy, or no manifest, to
// verify.
var ErrNotVerifiable = backup.ErrNotVerifiable

// VerifyArgs is the River job that verifies a backup's copies.
type VerifyArgs struct {
	BackupID string `json:"backup_id"`
	Level    string `json:"level"`             // state.LevelChecksum | state.LevelRestore
	Target   string `json:"target,omitempty"`  // one copy; empty = every complete copy (checksum) or the first good one (restore)
	Request  string `json:"request,omitempty"` // request id recorded with the results
	// Source, with no BackupID, verifies the source's newest succeeded or
	// partial backup (scheduled verification).
	Source string `json:"source,omitempty"`
}

// Kind implements river.JobArgs.
func (VerifyArgs) Kind() string { return "verify" }

// VerifyWorker works "verify" jobs.
type VerifyWorker struct {
	river.WorkerDefaults[VerifyArgs]
	svc *Service
}

// Work verifies; a verification that ran and failed is recorded, not
// retried (its result is the point); errors before that are retried.
func (w *VerifyWorker) Work(ctx context.Context, job *river.Job[VerifyArgs]) error {
	_, err := w.svc.Verify(ctx, job.Args)
	if errors.Is(err, ErrNotVerifiable) || errors.Is(err, state.ErrNotFound) {
		return river.JobCancel(err)
	}
	if err == nil && job.Args.Level == state.LevelChecksum {
		// A verified copy is what a catch-up copies from: a target that
		// missed this backup (it was down) gets its copy now rather than
		// at the next maintenance round; the copy job retries with
		// backoff while the target stays down.
		if b, _, gerr := w.svc.opts.Store.GetBackup(ctx, job.Args.BackupID); gerr == nil && b.State == state.BackupPartial {
			w.svc.queueCatchUps(ctx, b.Source)
		}
	}
	return err
}

// Verifications lists a backup's verifications, oldest first.
func (s *Service) Verifications(ctx context.Context, id string) ([]state.Verification, error) {
	return s.opts.Store.ListVerifications(ctx, id)
}

// EnqueueVerify checks the request and queues a verify job of backup id
// at level on target ("" = every complete copy, or the first good one
// for restore).
func (s *Service) EnqueueVerify(ctx context.Context, id, level, target string) (string, error) {
	a := VerifyArgs{BackupID: id, Level: level, Target: target, Request: newRequestID(s.opts.Now())}
	return a.Request, s.enqueueVerify(ctx, a)
}

func newRequestID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

func (s *Service) enqueueVerify(ctx context.Context, a VerifyArgs) error {
	if a.Level != state.LevelChecksum && a.Level != state.LevelRestore {
		return fmt.Errorf("%w: level %q is not %s or %s", state.ErrInvalid, a.Level, state.LevelChecksum, state.LevelRestore)
	}
	b, copies, err := s.opts.Store.GetBackup(ctx, a.BackupID)
	if err != nil {
		return err
	}
	if _, err := verifiableCopies(b, copies, a.Target); err != nil {
		return err
	}
	if s.queue == nil {
		return errors.New("verify: no job queue attached")
	}
	_, err = s.queue.Insert(ctx, a, nil)
	return err
}

// verifiableCopies are the complete copies of b (on target, if set).
func verifiableCopies(b state.Backup, copies []state.Copy, target string) ([]state.Copy, error) {
	if len(b.Manifest) == 0 {
		return nil, fmt.Errorf("%w: backup %s has no manifest (state %s)", ErrNotVerifiable, b.ID, b.State)
	}
	var out []state.Copy
	for _, c := range copies {
		if c.State == state.CopyComplete && (target == "" || c.Target == target) {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		where := ""
		if target != "" {
			where = " on " + target
		}
		return nil, fmt.Errorf("%w: backup %s has no complete copy%s", ErrNotVerifiable, b.ID, where)
	}
	return out, nil
}

// Verify runs a verification now and records one result per copy
// checked. It returns the results; an error means nothing was checked.
func (s *Service) Verify(ctx context.Context, a VerifyArgs) ([]state.Verification, error) {
	if a.BackupID == "" && a.Source != "" {
		latest, err := s.opts.Store.LatestBackup(ctx, a.Source, state.BackupSucceeded, state.BackupPartial)
		if err != nil {
			return nil, fmt.Errorf("scheduled %s verification of %s: %w", a.Level, a.Source, err)
		}
		a.BackupID = latest.ID
	}
	b, copies, err := s.opts.Store.GetBackup(ctx, a.BackupID)
	if err != nil {
		return nil, err
	}
	todo, err := verifiableCopies(b, copies, a.Target)
	if err != nil {
		return nil, err
	}
	log := s.log.With("backup", b.ID, "source", b.Source, "level", a.Level)
	var out []state.Verification
	switch a.Level {
	case state.LevelChecksum:
		for _, c := range todo {
			out = append(out, s.verifyChecksum(ctx, b, c))
		}
	case state.LevelRestore:
		out = append(out, s.verifyRestore(ctx, b, todo))
	default:
		return nil, fmt.Errorf("%w: level %q", state.ErrInvalid, a.Level)
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	failpoint.Hit("verify.checked")
	for i := range out {
		out[i].Request = a.Request
	}
	for _, v := range out {
		s.recordVerification(ctx, b, v)
		failpoint.Hit("verify.recorded")
		if v.OK {
			log.Info("verification passed", "target", v.Target)
		} else {
			log.Warn("verification failed", "target", v.Target, "err", v.Error)
		}
	}
	return out, nil
}

// verifyChecksum reads the copy's signed manifest back from its target
// and the data object, comparing size and SHA-256.
func (s *Service) verifyChecksum(ctx context.Context, b state.Backup, c state.Copy) state.Verification {
	v := state.Verification{BackupID: b.ID, Target: c.Target, Level: state.LevelChecksum, StartedAt: s.opts.Now().UTC()}
	err := func() error {
		t, err := s.opts.Target(ctx, c.Target)
		if err != nil {
			return fmt.Errorf("open target: %w", err)
		}
		m, err := backup.ReadManifest(ctx, t, b.Source, b.ID, s.opts.Verifier)
		if err != nil {
			return err
		}
		return backup.VerifyCopy(ctx, t, m)
	}()
	v.FinishedAt = s.opts.Now().UTC()
	v.OK = err == nil
	if err != nil {
		v.Error = truncate(err.Error())
	}
	return v
}

// verifyRestore restores the backup into scratch from the first copy that
// reads back intact and runs the source's checks.
func (s *Service) verifyRestore(ctx context.Context, b state.Backup, copies []state.Copy) state.Verification {
	v := state.Verification{BackupID: b.ID, Target: copies[0].Target, Level: state.LevelRestore, StartedAt: s.opts.Now().UTC()}
	rep, err := s.restoreCheck(ctx, b, copies)
	v.FinishedAt = s.opts.Now().UTC()
	switch {
	case err != nil:
		v.Error = truncate(err.Error())
	case rep != nil:
		if rep.Target != "" {
			v.Target = rep.Target
		}
		v.OK = rep.OK
		if !rep.OK {
			v.Error = truncate(reportFailure(rep))
		}
		v.Report, _ = json.Marshal(rep)
	}
	return v
}

func reportFailure(rep *verify.Report) string {
	if rep.Error != "" {
		return rep.Error
	}
	for _, c := range rep.Checks {
		if !c.OK {
			msg := fmt.Sprintf("check %q expected %s, got %s", c.SQL, c.Expect, c.Got)
			if c.Error != "" {
				msg = fmt.Sprintf("check %q: %s", c.SQL, c.Error)
			}
			return msg
		}
	}
	return "restore check failed"
}

func (s *Service) restoreCheck(ctx context.Context, b state.Backup, copies []state.Copy) (*verify.Report, error) {
	sc, ok := s.opts.Config().Sources[b.Source]
	if !ok {
		return nil, fmt.Errorf("source %q is no longer configured: its restore checks are unknown", b.Source)
	}
	targets, err := s.copyTargets(ctx, copies)
	if err != nil {
		return nil, err
	}
	ids, err := sourceIdentities(sc)
	if err != nil {
		return nil, err
	}
	ropts := backup.RestoreOptions{Targets: targets, Source: b.Source, ID: b.ID, Verifier: s.opts.Verifier,
		Identities: ids, SpoolDir: s.opts.SpoolDir, Logger: s.log}
	switch sc.Type {
	case config.SourcePostgres:
		if sc.Verify.Restore == nil || sc.Verify.Restore.Into == "" {
			return nil, fmt.Errorf("source %s has no verify.restore.into: a scratch database is needed to prove a restore", b.Source)
		}
		ropts.PGRestore = pgtool.Finder{Configured: restoreTool(sc.PGDump)}
		checks := make([]verify.Check, 0, len(sc.Verify.Restore.Checks))
		for _, c := range sc.Verify.Restore.Checks {
			checks = append(checks, verify.Check(c))
		}
		return verify.RestorePostgres(ctx, verify.PostgresOptions{Restore: ropts, Into: string(sc.Verify.Restore.Into),
			Checks: checks, Logger: s.log})
	case config.SourceFiles:
		return verify.RestoreFiles(ctx, verify.FilesOptions{Restore: ropts, ScratchDir: s.opts.SpoolDir, Logger: s.log})
	default:
		return nil, fmt.Errorf("no restore check exists for %s sources: verify them at level checksum", sc.Type)
	}
}

// restoreTool derives pg_restore's path from a configured pg_dump path
// (same directory); "" lets the finder match the server's version.
func restoreTool(pgDump string) string {
	dir, ok := strings.CutSuffix(pgDump, "pg_dump")
	if !ok || dir == "" {
		return ""
	}
	return dir + "pg_restore"
}

// copyTargets opens the targets of copies, in order, skipping those that
// cannot be opened; none at all is an error.
func (s *Service) copyTargets(ctx context.Context, copies []state.Copy) ([]storage.Backend, error) {
	var targets []storage.Backend
	for _, c := range copies {
		if t, err := s.opts.Target(ctx, c.Target); err == nil {
			targets = append(targets, t)
		}
	}
	if len(targets) == 0 {
		return nil, errors.New("no target of a complete copy can be opened")
	}
	return targets, nil
}

// sourceIdentities reads the age identity that decrypts a source's
// backups; the daemon holds it only when the source names one.
func sourceIdentities(sc *config.Source) ([]age.Identity, error) {
	if sc.Encryption == nil || sc.Encryption.None {
		return nil, nil
	}
	if sc.Encryption.AgeIdentityFile == "" {
		return nil, errors.New("a restore check needs the source's encryption.age_identity_file (the daemon holds only recipients)")
	}
	f, err := os.Open(sc.Encryption.AgeIdentityFile)
	if err != nil {
		return nil, fmt.Errorf("age identity: %w", err)
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("age identity file %s: not a valid age identity file", sc.Encryption.AgeIdentityFile)
	}
	return ids, nil
}

// recordVerification stores v, audits it as backup.verify and updates
// the metrics.
func (s *Service) recordVerification(ctx context.Context, b state.Backup, v state.Verification) {
	rctx := context.WithoutCancel(ctx)
	if _, err := s.opts.Store.AddVerification(rctx, v); err != nil {
		s.log.Error("record verification", "backup", b.ID, "target", v.Target, "err", err)
	}
	req := action.Request{Actor: action.ActorFrom(ctx), Action: "backup.verify", Object: "backup/" + b.ID + "/target/" + v.Target,
		Params: map[string]any{"source": b.Source, "level": v.Level, "ok": v.OK, "error": v.Error,
			"duration_seconds": v.FinishedAt.Sub(v.StartedAt).Seconds()}}
	_ = s.opts.Dispatcher.Do(rctx, req, func(context.Context) error {
		if !v.OK {
			return errors.New(v.Error)
		}
		return nil
	})
	if m := s.opts.Metrics; m != nil {
		if v.OK {
			m.lastVerified.WithLabelValues(b.Source, v.Target).Set(float64(v.FinishedAt.Unix()))
		} else {
			m.failures.WithLabelValues(b.Source, v.Target, v.Level).Inc()
		}
	}
}

// verifyAfterBackup queues the checksum verification every backup gets.
func (s *Service) verifyAfterBackup(ctx context.Context, b state.Backup) {
	if s.queue == nil {
		return
	}
	if _, err := s.queue.Insert(context.WithoutCancel(ctx), VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum}, nil); err != nil {
		s.log.Warn("queue checksum verification", "backup", b.ID, "err", err)
	}
}
