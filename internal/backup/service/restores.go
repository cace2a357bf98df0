package service

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sync"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
	"github.com/opsd-dev/opsd/internal/state"
)

// maxRestores bounds the finished restores kept for GET.
const maxRestores = 100

// restores tracks API restores: those running and the last finished.
type restores struct {
	mu    sync.Mutex
	byID  map[string]*backup.RestoreJob
	order []string // ids, oldest first
	wg    sync.WaitGroup
	stop  context.CancelFunc
	ctx   context.Context
}

func (r *restores) init() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.byID == nil {
		r.byID = map[string]*backup.RestoreJob{}
		r.ctx, r.stop = context.WithCancel(context.Background())
	}
}

// StartRestore checks req against backup id and starts restoring it in
// the background. Bad requests wrap state.ErrInvalid, an unknown backup
// state.ErrNotFound, a backup without a manifest or complete copy
// ErrNotVerifiable, a destination another restore of this daemon is
// writing to backup.ErrRestoreBusy; nothing is started then.
func (s *Service) StartRestore(ctx context.Context, id string, req backup.RestoreRequest) (backup.RestoreJob, error) {
	s.restores.init()
	var dest string
	switch {
	case (req.ToDir == "") == (req.ToPostgres == ""):
		return backup.RestoreJob{}, fmt.Errorf("%w: give exactly one of to_dir and to_postgres", state.ErrInvalid)
	case req.ToDir != "" && !filepath.IsAbs(req.ToDir):
		return backup.RestoreJob{}, fmt.Errorf("%w: to_dir must be an absolute path on the daemon's host, got %q", state.ErrInvalid, req.ToDir)
	case req.ToDir != "":
		dest = filepath.Clean(req.ToDir)
	default:
		conn, err := pgtool.Split(req.ToPostgres)
		if err != nil {
			return backup.RestoreJob{}, fmt.Errorf("%w: to_postgres: %v", state.ErrInvalid, err)
		}
		dest = conn.Redacted
	}
	b, copies, err := s.opts.Store.GetBackup(ctx, id)
	if err != nil {
		return backup.RestoreJob{}, err
	}
	good, err := verifiableCopies(b, copies, req.Target)
	if err != nil {
		return backup.RestoreJob{}, err
	}
	sc, ok := s.opts.Config().Sources[b.Source]
	if !ok {
		return backup.RestoreJob{}, fmt.Errorf("%w: source %q is no longer configured: its age identity is unknown (use opsd backup restore --identity)", state.ErrInvalid, b.Source)
	}
	ids, err := sourceIdentities(sc)
	if err != nil {
		return backup.RestoreJob{}, fmt.Errorf("%w: %v", state.ErrInvalid, err)
	}
	targets, err := s.copyTargets(ctx, good)
	if err != nil {
		return backup.RestoreJob{}, fmt.Errorf("%w: backup %s: %v", ErrNotVerifiable, id, err)
	}
	r := &backup.RestoreJob{ID: newRequestID(s.opts.Now()), BackupID: b.ID, Source: b.Source, Actor: action.ActorFrom(ctx).String(),
		Destination: dest, Force: req.Force, State: backup.RestoreRunning, StartedAt: s.opts.Now().UTC()}
	ropts := backup.RestoreOptions{Targets: targets, Source: b.Source, ID: b.ID, Verifier: s.opts.Verifier, Identities: ids,
		SpoolDir: s.opts.SpoolDir, Logger: s.log, ToDir: req.ToDir, ToPostgres: req.ToPostgres, Force: req.Force,
		PGRestore: pgtool.Finder{Configured: restoreTool(sc.PGDump)},
		Progress: func(p backup.Progress) {
			if p.Phase == "restore" {
				s.restores.update(r.ID, func(r *backup.RestoreJob) { r.Bytes = p.Bytes })
			}
		}}
	rs := &s.restores
	rs.mu.Lock()
	for _, x := range rs.byID {
		if x.State == backup.RestoreRunning && x.Destination == dest {
			rs.mu.Unlock()
			return backup.RestoreJob{}, fmt.Errorf("%w: restore %s is writing to %s", backup.ErrRestoreBusy, x.ID, dest)
		}
	}
	rs.byID[r.ID] = r
	rs.order = append(rs.order, r.ID)
	rs.mu.Unlock()
	actx := action.WithActor(rs.ctx, action.ActorFrom(ctx))
	rs.wg.Go(func() { s.runRestore(actx, r.ID, ropts) })
	return *r, nil
}

func (s *Service) runRestore(ctx context.Context, id string, ropts backup.RestoreOptions) {
	rr, err := backup.Restore(ctx, ropts)
	var r backup.RestoreJob
	s.restores.update(id, func(x *backup.RestoreJob) {
		x.FinishedAt = s.opts.Now().UTC()
		x.State = backup.RestoreSucceeded
		if rr != nil {
			x.Target, x.Bytes = rr.Target, rr.Bytes
			for _, rej := range rr.Rejected {
				x.Rejected = append(x.Rejected, rej.Error())
			}
		}
		if err != nil {
			x.State, x.Error = backup.RestoreFailed, truncate(err.Error())
		}
		r = *x
	})
	s.restores.prune()
	log := s.log.With("restore", r.ID, "backup", r.BackupID, "destination", r.Destination)
	if err != nil {
		log.Error("restore failed", "err", err)
	} else {
		log.Info("restore succeeded", "target", r.Target, "bytes", r.Bytes)
	}
	req := action.Request{Actor: action.ActorFrom(ctx), Action: "backup.restored", Object: "backup/" + r.BackupID,
		Params: map[string]any{"restore": r.ID, "destination": r.Destination, "force": r.Force, "target": r.Target,
			"bytes": r.Bytes, "duration_seconds": r.FinishedAt.Sub(r.StartedAt).Seconds()}}
	_ = s.opts.Dispatcher.Do(context.WithoutCancel(ctx), req, func(context.Context) error { return err })
}

func (r *restores) update(id string, fn func(*backup.RestoreJob)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if x, ok := r.byID[id]; ok {
		fn(x)
	}
}

// prune forgets the oldest finished restores past maxRestores.
func (r *restores) prune() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := 0; len(r.order) > maxRestores && i < len(r.order); {
		if x := r.byID[r.order[i]]; x.State != backup.RestoreRunning {
			delete(r.byID, r.order[i])
			r.order = slices.Delete(r.order, i, i+1)
			continue
		}
		i++
	}
}

// GetRestore returns an API restore this daemon ran or runs.
func (s *Service) GetRestore(id string) (backup.RestoreJob, error) {
	s.restores.init()
	s.restores.mu.Lock()
	defer s.restores.mu.Unlock()
	r, ok := s.restores.byID[id]
	if !ok {
		return backup.RestoreJob{}, fmt.Errorf("restore %s (restores are kept by the daemon that ran them, the last %d): %w", id, maxRestores, state.ErrNotFound)
	}
	out := *r
	out.Rejected = slices.Clone(r.Rejected)
	return out, nil
}

// StopRestores cancels the running API restores and waits for them (the
// daemon's shutdown). A cancelled restore fails and says so.
func (s *Service) StopRestores() {
	s.restores.init()
	s.restores.stop()
	s.restores.wg.Wait()
}
