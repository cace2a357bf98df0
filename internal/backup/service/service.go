// Package service runs backups inside the daemon: it keeps the backup
// catalog in the state store, queues backups as River jobs ("backup"),
// works them with backup.Run, records one audit entry per copy through the
// action dispatcher, exports the backup metrics of SPEC §8 and rebuilds an
// empty catalog from the targets' signed manifests.
//
// # Lifecycle of a backup
//
// Enqueue creates the catalog row (state queued) with a fresh id and
// inserts a "backup" job carrying that id; a periodic schedule inserts a
// job without an id, and the worker derives one from the job (its creation
// time and job id), so a retried periodic job keeps its id. The worker
// marks the row running, removes temporary objects older than an hour on
// every target (Cleanup), runs backup.Run with the catalog's id, and writes
// every copy and the final state (succeeded, partial, failed) back.
//
// # Re-runs
//
// A job whose worker died (kill -9, power loss) is rescued by River and runs
// again. If its catalog row is still running, the earlier attempt left
// at most objects that were never vouched for: the worker removes every
// object under <source>/<id>/ on every target before running again, so the
// new attempt starts clean and writes fresh objects under the same keys. A
// row already in a final state is not run again.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/jobs"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/storage"
)

// cleanupAge is how old a temporary object must be before a backup removes
// it while other backups are running: older than any upload in flight.
// When the catalog (shared by every replica) shows no other backup
// running, every temporary object started before the check is an orphan
// and goes, less cleanupSkew for the store's clock.
const (
	cleanupAge  = time.Hour
	cleanupSkew = 5 * time.Second
)

// cleanupBefore is the olderThan for Cleanup before backup id runs.
func (s *Service) cleanupBefore(ctx context.Context, id string) time.Time {
	now := s.opts.Now()
	running, _, err := s.opts.Store.ListBackups(ctx, state.BackupFilter{State: state.BackupRunning, Limit: 2})
	if err != nil {
		return now.Add(-cleanupAge)
	}
	for _, b := range running {
		if b.ID != id {
			return now.Add(-cleanupAge)
		}
	}
	return now.Add(-cleanupSkew)
}

// ErrUnknownSource: the source is not in the running config. It wraps
// state.ErrNotFound so API callers answer 404.
var ErrUnknownSource = fmt.Errorf("unknown source: %w", state.ErrNotFound)

// ErrTimeout: the backup ran longer than its source's timeout.
var ErrTimeout = errors.New("backup exceeded the source's timeout")

// Queue inserts jobs; *jobs.Engine implements it.
type Queue interface {
	Insert(ctx context.Context, args river.JobArgs, opts *river.InsertOpts) (jobs.JobInfo, error)
}

// Options are a Service's collaborators.
type Options struct {
	// Config returns the running config.
	Config func() *config.Config
	Store  state.Store
	// Target opens a configured target with its decorator stack.
	Target func(ctx context.Context, name string) (storage.Backend, error)
	// Signer signs manifests; Verifier checks them during a rebuild.
	Signer   note.Signer
	Verifier note.Verifier
	// SpoolDir receives lanes of slow targets (data_dir/spool).
	SpoolDir   string
	Metrics    *Metrics
	Logger     *slog.Logger
	Dispatcher *action.Dispatcher
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service runs backups. Construct it with New, register its worker with
// Register, then Attach the queue before Enqueue is called.
type Service struct {
	opts  Options
	log   *slog.Logger
	queue Queue
	live  sync.Map // backup id → *atomic.Pointer[backup.Progress], while running here
	locks lockState
	// slots bounds the backups moving data at once in this process
	// (state.backup_concurrency); job workers are more numerous so that
	// scheduled backups start, and queue, on time.
	slots chan struct{}

	metricsMu     sync.Mutex
	metricSources map[string][]string // source → targets with metric series

	changedMu sync.Mutex
	changed   chan struct{} // closed at the next state change; nil until asked for

	restores restores // API restores (restores.go)
}

// Changed returns a channel closed when a backup run by this process next
// changes state (running, or its outcome recorded): a waiter takes it,
// reads the catalog, and waits on it for the change after what it read.
// Backups run by other replicas do not close it; a waiter also re-reads
// the catalog now and then.
func (s *Service) Changed() <-chan struct{} {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// notifyChanged wakes every waiter of Changed.
func (s *Service) notifyChanged() {
	s.changedMu.Lock()
	defer s.changedMu.Unlock()
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// Progress reports the progress of a backup running in this process.
func (s *Service) Progress(id string) (backup.Progress, bool) {
	v, ok := s.live.Load(id)
	if !ok {
		return backup.Progress{}, false
	}
	p := v.(*atomic.Pointer[backup.Progress]).Load()
	if p == nil {
		return backup.Progress{Phase: "backup"}, true
	}
	return *p, true
}

// trackProgress starts recording id's progress, with prev's raw size as
// the expected total; the returned func stops.
func (s *Service) trackProgress(b, prev state.Backup) (func(backup.Progress), func()) {
	total := prev.RawBytes
	ptr := new(atomic.Pointer[backup.Progress])
	s.live.Store(b.ID, ptr)
	start := s.opts.Now()
	return func(p backup.Progress) {
			if total > 0 {
				p.Total = max(total, p.Bytes)
				if p.Rate > 0 {
					p.ETA = time.Duration(float64(p.Total-p.Bytes) / p.Rate * float64(time.Second))
				}
			}
			if p.Rate == 0 {
				if el := s.opts.Now().Sub(start).Seconds(); el > 0 {
					p.Rate = float64(p.Bytes) / el
				}
			}
			ptr.Store(&p)
		}, func() {
			s.live.Delete(b.ID)
		}
}

// New returns a Service.
func New(opts Options) (*Service, error) {
	if opts.Config == nil || opts.Store == nil || opts.Target == nil || opts.Signer == nil || opts.Dispatcher == nil {
		return nil, errors.New("backup service: Config, Store, Target, Signer and Dispatcher are required")
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := opts.Config().State.BackupConcurrency
	if n < 1 {
		n = config.DefaultBackupConcurrency
	}
	return &Service{opts: opts, log: log.With("component", "backup"), slots: make(chan struct{}, n)}, nil
}

// acquireSlot waits for one of the backup slots; the backup stays queued
// meanwhile.
func (s *Service) acquireSlot(ctx context.Context, log *slog.Logger) (release func(), err error) {
	select {
	case s.slots <- struct{}{}:
	default:
		log.Info("waiting for a backup slot", "backup_concurrency", cap(s.slots))
		select {
		case s.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return func() { <-s.slots }, nil
}

// Register adds the backup worker to workers.
func (s *Service) Register(workers *river.Workers) error {
	if err := river.AddWorkerSafely(workers, &Worker{svc: s}); err != nil {
		return err
	}
	if err := river.AddWorkerSafely(workers, &VerifyWorker{svc: s}); err != nil {
		return err
	}
	return river.AddWorkerSafely(workers, &CopyWorker{svc: s})
}

// Attach sets the queue Enqueue inserts into.
func (s *Service) Attach(q Queue) { s.queue = q }

// Args is the "backup" job.
type Args struct {
	// BackupID is the catalog row's id; empty for a periodic job (the
	// worker derives one from the job).
	BackupID string `json:"backup_id,omitempty"`
	Source   string `json:"source"`
}

// Kind implements river.JobArgs.
func (Args) Kind() string { return "backup" }

// AuditObject names the source in the job's audit records.
func (a Args) AuditObject() string { return "source/" + a.Source }

// Enqueue queues a backup of src as the actor carried by ctx and returns
// its catalog row (state queued).
func (s *Service) Enqueue(ctx context.Context, src string) (state.Backup, error) {
	cfg := s.opts.Config()
	sc, ok := cfg.Sources[src]
	if !ok {
		return state.Backup{}, fmt.Errorf("backup %q: %w", src, ErrUnknownSource)
	}
	if s.queue == nil {
		return state.Backup{}, errors.New("backup service: no job queue attached")
	}
	now := s.opts.Now().UTC()
	b := state.Backup{ID: manifest.NewID(now), Source: src, Type: sc.Type, State: state.BackupQueued,
		Actor: action.ActorFrom(ctx).String(), QueuedAt: now}
	// The job first, the catalog row second: a crash in between leaves a
	// job whose worker creates the row, never a row no job will work.
	info, err := s.queue.Insert(ctx, Args{BackupID: b.ID, Source: src}, nil)
	if err != nil {
		return state.Backup{}, fmt.Errorf("queue backup of %s: %w", src, err)
	}
	failpoint.Hit("backup.enqueued")
	b.JobID = info.ID
	switch err := s.opts.Store.CreateBackup(ctx, b); {
	case errors.Is(err, state.ErrConflict):
		// The worker was quicker and made the row.
		got, _, gerr := s.opts.Store.GetBackup(ctx, b.ID)
		if gerr != nil {
			return state.Backup{}, fmt.Errorf("queue backup of %s: %w", src, gerr)
		}
		return got, nil
	case err != nil:
		return state.Backup{}, fmt.Errorf("queue backup of %s: %w", src, err)
	}
	return b, nil
}

// ListBackups lists the catalog.
func (s *Service) ListBackups(ctx context.Context, f state.BackupFilter) ([]state.Backup, string, error) {
	return s.opts.Store.ListBackups(ctx, f)
}

// GetBackup returns a backup and its copies.
func (s *Service) GetBackup(ctx context.Context, id string) (state.Backup, []state.Copy, error) {
	return s.opts.Store.GetBackup(ctx, id)
}

// Periodic returns the periodic job of every configured source with a
// schedule, named "backup:<source>".
func Periodic(cfg *config.Config) []jobs.Periodic {
	var out []jobs.Periodic
	for name, sc := range cfg.Sources {
		if sc.Schedule == "" {
			continue
		}
		src, jitter := name, sc.Jitter
		out = append(out, jobs.Periodic{Name: "backup:" + src, Spec: string(sc.Schedule),
			Construct: func() (river.JobArgs, *river.InsertOpts) {
				if jitter <= 0 {
					return Args{Source: src}, nil
				}
				return Args{Source: src}, &river.InsertOpts{ScheduledAt: time.Now().Add(rand.N(jitter))}
			}})
	}
	// Verification schedules: the newest backup of the source, resolved
	// when the job runs.
	for name, sc := range cfg.Sources {
		src := name
		if sc.Verify.Checksum != "" {
			out = append(out, jobs.Periodic{Name: "verify-checksum:" + src, Spec: string(sc.Verify.Checksum),
				Construct: func() (river.JobArgs, *river.InsertOpts) {
					return VerifyArgs{Source: src, Level: state.LevelChecksum}, nil
				}})
		}
		if r := sc.Verify.Restore; r != nil && r.Schedule != "" {
			out = append(out, jobs.Periodic{Name: "verify-restore:" + src, Spec: string(r.Schedule),
				Construct: func() (river.JobArgs, *river.InsertOpts) {
					return VerifyArgs{Source: src, Level: state.LevelRestore}, nil
				}})
		}
	}
	return out
}

// Worker works "backup" jobs.
type Worker struct {
	river.WorkerDefaults[Args]
	svc *Service
}

// Work runs one backup. A backup that ran and failed is recorded and the
// job cancelled (a failed backup is not retried behind the operator's
// back; the next schedule tries again); catalog errors and shutdown return
// a plain error so River retries, and the retry starts clean.
func (w *Worker) Work(ctx context.Context, job *river.Job[Args]) error {
	return w.svc.work(ctx, job.ID, job.CreatedAt, job.Args)
}

func (s *Service) work(ctx context.Context, jobID int64, created time.Time, args Args) error {
	cfg := s.opts.Config()
	sc, ok := cfg.Sources[args.Source]
	if !ok {
		return river.JobCancel(fmt.Errorf("backup of %q: %w", args.Source, ErrUnknownSource))
	}
	id := args.BackupID
	if id == "" {
		id = created.UTC().Format("20060102T150405Z") + "-" + fmt.Sprintf("%08x", jobID)
	}
	log := s.log.With("source", args.Source, "backup", id)
	// Never two backups of one source at once (every replica shares the
	// lock through the state store).
	release, holder, err := s.acquireSource(ctx, args.Source, id)
	if err != nil {
		return fmt.Errorf("backup %s: %w", id, err)
	}
	if holder != "" {
		if args.BackupID == "" && sc.Overlap != config.OverlapQueue {
			log.Warn("scheduled backup skipped: the previous backup of this source is still running", "running", holder)
			return nil
		}
		log.Info("waiting: another backup of this source is running", "running", holder)
		return river.JobSnooze(overlapRetry)
	}
	defer release()
	b, _, err := s.opts.Store.GetBackup(ctx, id)
	switch {
	case errors.Is(err, state.ErrNotFound):
		b = state.Backup{ID: id, Source: args.Source, Type: sc.Type, State: state.BackupQueued,
			Actor: action.ActorFrom(ctx).String(), QueuedAt: created.UTC(), JobID: jobID}
		if err := s.opts.Store.CreateBackup(ctx, b); err != nil {
			return fmt.Errorf("backup %s: create catalog row: %w", id, err)
		}
	case err != nil:
		return fmt.Errorf("backup %s: %w", id, err)
	}
	switch b.State {
	case state.BackupSucceeded, state.BackupPartial, state.BackupFailed:
		log.Info("backup already finished; not running it again", "state", b.State)
		return nil
	case state.BackupRunning:
		log.Warn("backup was interrupted; starting it again clean")
		s.removeObjects(ctx, sc, args.Source+"/"+id+"/", log)
	}

	releaseSlot, err := s.acquireSlot(ctx, log)
	if err != nil {
		return fmt.Errorf("backup %s: waiting for a backup slot: %w", id, err)
	}
	defer releaseSlot()
	started := s.opts.Now().UTC()
	b.State, b.StartedAt, b.JobID, b.Error = state.BackupRunning, started, jobID, ""
	if err := s.opts.Store.UpdateBackup(ctx, b); err != nil {
		return fmt.Errorf("backup %s: mark running: %w", id, err)
	}
	s.notifyChanged()
	failpoint.Hit("backup.running")
	res, runErr := s.run(ctx, cfg, sc, b, log)
	if runErr != nil && ctx.Err() != nil {
		// Shutdown: leave the row running; River retries and the retry
		// starts clean.
		return fmt.Errorf("backup %s interrupted: %w", id, runErr)
	}
	finished := s.opts.Now().UTC()
	b.FinishedAt = finished
	b.State = state.BackupFailed
	if res != nil && res.State != "" {
		b.State = res.State
	}
	if runErr != nil {
		b.Error = truncate(runErr.Error())
	}
	if res != nil && res.Manifest != nil {
		b.RawBytes, b.StoredBytes = res.Manifest.Size.Raw, res.Manifest.Size.Stored
		if raw, err := manifest.Marshal(res.Manifest); err == nil {
			b.Manifest = raw
		}
	}
	if err := s.opts.Store.UpdateBackup(context.WithoutCancel(ctx), b); err != nil {
		return fmt.Errorf("backup %s: record outcome: %w", id, err)
	}
	s.notifyChanged()
	failpoint.Hit("backup.finished")
	s.observe(args.Source, b, finished.Sub(started))
	if b.State == state.BackupSucceeded || b.State == state.BackupPartial {
		// Every backup is read back once right away (SPEC §1.1), then the
		// source's retention runs.
		s.verifyAfterBackup(ctx, b)
		failpoint.Hit("backup.verify-queued")
		s.pruneAfterBackup(ctx, args.Source)
	}
	log.Info("backup finished", "state", b.State, "raw_bytes", b.RawBytes, "stored_bytes", b.StoredBytes,
		"duration", finished.Sub(started))
	if b.State == state.BackupFailed {
		return river.JobCancel(fmt.Errorf("backup %s of %s failed: %s", id, args.Source, b.Error))
	}
	return nil
}

// run prepares the source and targets, runs the backup and records the
// copies. A nil Result means nothing was written.
func (s *Service) run(ctx context.Context, cfg *config.Config, sc *config.Source, b state.Backup, log *slog.Logger) (*backup.Result, error) {
	src, err := source.New(b.Source, sc, source.Options{Logger: log})
	if err != nil {
		s.failAll(sc, b.Source, "source")
		return nil, err
	}
	var targets []storage.Backend
	var errs []error
	cleanBefore := s.cleanupBefore(ctx, b.ID)
	for _, name := range sc.Targets {
		t, err := s.opts.Target(ctx, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("open target %s: %w", name, err))
			s.metricFailure(b.Source, name, "target")
			s.recordCopy(ctx, b, backup.Copy{Target: name, State: backup.CopyFailed, Err: err}, b.StartedAt)
			continue
		}
		if n, err := t.Cleanup(ctx, cleanBefore); err != nil {
			log.Warn("cleanup of temporary objects", "target", name, "err", err)
		} else if n > 0 {
			log.Info("removed temporary objects", "target", name, "count", n)
		}
		targets = append(targets, t)
		failpoint.Hit("backup.target-ready")
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no target available: %w", errors.Join(errs...))
	}
	var recipients []age.Recipient
	noEnc := sc.Encryption == nil || sc.Encryption.None
	if !noEnc {
		if recipients, err = Recipients(sc.Encryption); err != nil {
			s.failAll(sc, b.Source, "encryption")
			return nil, err
		}
	}
	kind := src.Kind()
	key := b.Source + "/" + b.ID + "/" + manifest.DataName(kind, !noEnc)
	for _, t := range targets {
		if err := s.opts.Store.PutCopy(ctx, state.Copy{BackupID: b.ID, Target: t.Name(), State: state.CopyWriting,
			Key: key, StartedAt: b.StartedAt}); err != nil {
			return nil, fmt.Errorf("record copy on %s: %w", t.Name(), err)
		}
	}
	failpoint.Hit("backup.copies-writing")
	spool := s.opts.SpoolDir
	if spool != "" {
		if err := os.MkdirAll(spool, 0o700); err != nil {
			log.Warn("spool dir unavailable; slow targets will be dropped", "err", err)
			spool = ""
		}
	}
	// The previous backup sizes the progress estimate and upload parts.
	prev, err := s.opts.Store.LatestBackup(ctx, b.Source, state.BackupSucceeded, state.BackupPartial)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		log.Warn("previous backup unknown; no size estimate", "err", err)
	}
	progress, stopProgress := s.trackProgress(b, prev)
	defer stopProgress()
	// The source's timeout bounds the data phase; shutdown stays
	// distinguishable (ctx itself is not done).
	bctx := ctx
	if sc.Timeout > 0 {
		var cancel context.CancelFunc
		bctx, cancel = context.WithTimeoutCause(ctx, sc.Timeout, fmt.Errorf("%w: %s", ErrTimeout, sc.Timeout))
		defer cancel()
	}
	res, runErr := backup.Run(bctx, src, backup.Options{
		ID: b.ID, Source: b.Source, Type: sc.Type, Targets: targets, Recipients: recipients, NoEncryption: noEnc,
		ZstdLevel: sc.Compression.ZstdLevel, Signer: s.opts.Signer, SpoolDir: spool, Now: s.opts.Now, Logger: s.log, // Run adds source and backup
		Progress: progress, SizeHint: prev.StoredBytes,
	})
	if runErr != nil && ctx.Err() == nil && bctx.Err() != nil && !errors.Is(runErr, ErrTimeout) {
		runErr = fmt.Errorf("%w: %w", context.Cause(bctx), runErr)
	}
	if res == nil {
		s.failAll(sc, b.Source, "source")
		return nil, runErr
	}
	if ctx.Err() != nil {
		return res, runErr
	}
	sourceFailed := runErr != nil && res.Manifest == nil
	for _, c := range res.Copies {
		s.recordCopy(ctx, b, c, b.StartedAt)
		failpoint.Hit("backup.copy-recorded")
		switch {
		case c.State == backup.CopyComplete:
			if s.opts.Metrics != nil {
				s.opts.Metrics.bytes.WithLabelValues(b.Source, c.Target).Add(float64(c.Bytes))
			}
		case sourceFailed:
			s.metricFailure(b.Source, c.Target, "source")
		default:
			s.metricFailure(b.Source, c.Target, "target")
		}
	}
	if len(errs) > 0 && res.State == backup.StateSucceeded {
		res.State = backup.StatePartial
	}
	return res, runErr
}

// recordCopy writes a copy's outcome to the catalog and records it in the
// audit log as backup.copy.
func (s *Service) recordCopy(ctx context.Context, b state.Backup, c backup.Copy, started time.Time) {
	sc := state.Copy{BackupID: b.ID, Target: c.Target, State: c.State, Key: c.Key, Bytes: c.Bytes,
		StartedAt: started, FinishedAt: started.Add(c.Duration)}
	if c.State == backup.CopyComplete {
		sc.SHA256 = c.SHA256
	}
	if c.Err != nil {
		sc.Error = truncate(c.Err.Error())
	}
	rctx := context.WithoutCancel(ctx)
	if err := s.opts.Store.PutCopy(rctx, sc); err != nil {
		s.log.Error("record copy", "backup", b.ID, "target", c.Target, "err", err)
	}
	req := action.Request{Actor: action.ActorFrom(ctx), Action: "backup.copy", Object: "backup/" + b.ID + "/target/" + c.Target,
		Params: map[string]any{"source": b.Source, "state": c.State, "key": c.Key, "bytes": c.Bytes, "sha256": sc.SHA256,
			"duration_seconds": c.Duration.Seconds()}}
	_ = s.opts.Dispatcher.Do(rctx, req, func(context.Context) error { return c.Err })
}

// removeObjects deletes every object under prefix on the source's targets,
// signature first so a half-removed backup is never valid.
func (s *Service) removeObjects(ctx context.Context, sc *config.Source, prefix string, log *slog.Logger) {
	for _, name := range sc.Targets {
		t, err := s.opts.Target(ctx, name)
		if err != nil {
			continue
		}
		if err := removePrefix(ctx, t, prefix); err != nil {
			log.Warn("remove objects of interrupted backup", "target", name, "err", err)
		}
	}
}

func (s *Service) failAll(sc *config.Source, src, reason string) {
	for _, t := range sc.Targets {
		s.metricFailure(src, t, reason)
	}
}

func (s *Service) metricFailure(src, target, reason string) {
	if s.opts.Metrics != nil {
		s.opts.Metrics.failures.WithLabelValues(src, target, reason).Inc()
	}
}

func (s *Service) observe(src string, b state.Backup, d time.Duration) {
	if s.opts.Metrics == nil {
		return
	}
	s.opts.Metrics.duration.WithLabelValues(src).Observe(d.Seconds())
	if b.State == state.BackupSucceeded {
		s.opts.Metrics.lastSuccess.WithLabelValues(src).Set(float64(b.FinishedAt.Unix()))
	}
}

// InitMetrics sets opsd_backup_last_success_timestamp_seconds for every
// configured source: the newest succeeded backup's finish time, or 0 so
// alerts see sources that never succeeded.
//
// Every failure counter of a configured source and target starts at 0, so
// that the first failure is an increase a rule sees (a counter first seen
// at 1 is not). Called again after a reload, it drops the series of
// sources and targets no longer configured, so no alert fires for them.
func (s *Service) InitMetrics(ctx context.Context) {
	m := s.opts.Metrics
	if m == nil {
		return
	}
	cfg := s.opts.Config()
	for name, sc := range cfg.Sources {
		v := 0.0
		if b, err := s.opts.Store.LatestBackup(ctx, name, state.BackupSucceeded); err == nil {
			v = float64(b.FinishedAt.Unix())
		}
		m.lastSuccess.WithLabelValues(name).Set(v)
		for _, t := range sc.Targets {
			for _, r := range failureReasons {
				m.failures.WithLabelValues(name, t, r)
			}
		}
	}
	s.metricsMu.Lock()
	defer s.metricsMu.Unlock()
	for name := range s.metricSources {
		sc, ok := cfg.Sources[name]
		if !ok {
			for _, v := range []interface {
				DeletePartialMatch(prometheus.Labels) int
			}{m.lastSuccess, m.duration, m.bytes, m.failures, m.lastVerified, m.compliance, m.required} {
				v.DeletePartialMatch(prometheus.Labels{"source": name})
			}
			continue
		}
		for _, t := range s.metricSources[name] {
			if !slices.Contains(sc.Targets, t) {
				for _, v := range []interface {
					DeletePartialMatch(prometheus.Labels) int
				}{m.bytes, m.failures, m.lastVerified} {
					v.DeletePartialMatch(prometheus.Labels{"source": name, "target": t})
				}
			}
		}
	}
	s.metricSources = map[string][]string{}
	for name, sc := range cfg.Sources {
		s.metricSources[name] = slices.Clone(sc.Targets)
	}
}

// failureReasons are the reason label values of opsd_backup_failures_total.
var failureReasons = []string{"source", "target", "encryption", "interrupted", "checksum", "restore"}

// Recipients returns the age recipients of a source: the configured ones
// plus the recipient of its age_identity_file (which may have been
// generated after the config was loaded), without duplicates.
func Recipients(e *config.Encryption) ([]age.Recipient, error) {
	seen := map[string]bool{}
	var out []age.Recipient
	add := func(r age.Recipient) {
		k := fmt.Sprint(r)
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	for _, r := range e.Recipients {
		add(r)
	}
	if e.AgeIdentityFile != "" {
		f, err := os.Open(e.AgeIdentityFile)
		switch {
		case err == nil:
			ids, perr := age.ParseIdentities(f)
			f.Close()
			if perr != nil {
				// Never quote the file: it holds a secret key.
				return nil, fmt.Errorf("age identity file %s: not a valid age identity file", e.AgeIdentityFile)
			}
			for _, id := range ids {
				if x, ok := id.(*age.X25519Identity); ok {
					add(x.Recipient())
				}
			}
		case !errors.Is(err, os.ErrNotExist) || len(out) == 0:
			return nil, fmt.Errorf("age identity file: %w", err)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no age recipients")
	}
	return out, nil
}

// GenerateIdentities creates the age identity of every source whose
// encryption says generate: true and whose age_identity_file does not
// exist yet (mode 0600, parent directories 0700), and logs where it is.
func GenerateIdentities(cfg *config.Config, log *slog.Logger) error {
	done := map[string]bool{}
	for name, sc := range cfg.Sources {
		e := sc.Encryption
		if e == nil || !e.Generate || e.AgeIdentityFile == "" || done[e.AgeIdentityFile] {
			continue
		}
		done[e.AgeIdentityFile] = true
		if _, err := os.Stat(e.AgeIdentityFile); !errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(e.AgeIdentityFile), 0o700); err != nil {
			return fmt.Errorf("age identity of %s: %w", name, err)
		}
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return fmt.Errorf("age identity of %s: %w", name, err)
		}
		text := fmt.Sprintf("# created: %s\n# public key: %s\n%s\n", time.Now().UTC().Format(time.RFC3339), id.Recipient(), id)
		f, err := os.OpenFile(e.AgeIdentityFile, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("age identity of %s: %w", name, err)
		}
		_, werr := f.WriteString(text)
		serr := f.Sync()
		if cerr := f.Close(); werr == nil && serr == nil {
			werr = cerr
		} else if werr == nil {
			werr = serr
		}
		if werr != nil {
			return fmt.Errorf("age identity of %s: write %s: %w", name, e.AgeIdentityFile, werr)
		}
		shown := e.AgeIdentityFile
		if abs, err := filepath.Abs(shown); err == nil {
			shown = abs
		}
		log.Warn("generated the age identity that decrypts backups; copy it somewhere safe OFF this host: without it no backup can be restored",
			"source", name, "path", shown, "recipient", id.Recipient().String())
	}
	return nil
}

func truncate(s string) string {
	const max = 4096
	if len(s) > max {
		return s[:max]
	}
	return s
}
