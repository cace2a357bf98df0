package service

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/compliance"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/storage/lockprobe"
)

// Maintenance intervals.
const (
	healthInterval = time.Minute    // compliance metric refresh
	probeInterval  = 24 * time.Hour // object-lock canary per locked target
)

// Health is a source at a glance: its 3-2-1-1-0 level and what is missing,
// and when its data was last backed up, read back and proven restorable.
type Health struct {
	Compliance compliance.Result
	// BackupID is the newest succeeded or partial backup graded; empty if
	// none.
	BackupID string
	// LastSuccess, LastChecksum and LastProvenRestore are zero when never.
	LastSuccess       time.Time
	LastChecksum      time.Time
	LastProvenRestore time.Time
	// RPO is the age of the newest usable backup's data (its snapshot or
	// start time) now; 0 when there is none. Objective is the configured
	// objectives.rpo, 0 if unset.
	RPO, RPOObjective time.Duration
}

// lockState remembers each locked target's canary finding.
type lockState struct {
	mu       sync.Mutex
	enforced map[string]lockprobe.Result
}

func (l *lockState) find(target string) (lockprobe.Result, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	r, ok := l.enforced[target]
	return r, ok
}

// get is the finding as compliance takes it: nil while unknown.
func (l *lockState) get(target string) *bool {
	r, ok := l.find(target)
	if !ok {
		return nil
	}
	return &r.Enforced
}

func (l *lockState) set(target string, r lockprobe.Result) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.enforced == nil {
		l.enforced = map[string]lockprobe.Result{}
	}
	l.enforced[target] = r
}

// LockFinding reports a target's latest canary result.
func (s *Service) LockFinding(target string) (lockprobe.Result, bool) {
	return s.locks.find(target)
}

// Health grades source now.
func (s *Service) Health(ctx context.Context, source string) (Health, error) {
	cfg := s.opts.Config()
	sc, ok := cfg.Sources[source]
	if !ok {
		return Health{}, fmt.Errorf("source %q: %w", source, ErrUnknownSource)
	}
	now := s.opts.Now().UTC()
	h := Health{RPOObjective: sc.Objectives.RPO}
	targets := map[string]compliance.Target{}
	for _, name := range sc.Targets {
		t, ok := cfg.Targets[name]
		if !ok {
			continue
		}
		targets[name] = compliance.Target{Name: name, Medium: t.Medium(), Offsite: t.IsOffsite(),
			Immutable: t.ObjectLock != nil || t.Retention != nil, LockEnforced: s.locks.get(name)}
	}
	var copies []compliance.Copy
	b, err := s.opts.Store.LatestBackup(ctx, source, state.BackupSucceeded, state.BackupPartial)
	switch {
	case errors.Is(err, state.ErrNotFound):
	case err != nil:
		return Health{}, err
	default:
		h.BackupID = b.ID
		h.RPO = now.Sub(dataTime(b))
		if copies, err = s.gradeCopies(ctx, cfg, b); err != nil {
			return Health{}, err
		}
	}
	h.Compliance = compliance.Evaluate(string(sc.Policy), targets, copies, now)
	if last, err := s.opts.Store.LatestBackup(ctx, source, state.BackupSucceeded); err == nil {
		h.LastSuccess = last.FinishedAt
	}
	if v, err := s.opts.Store.LatestVerification(ctx, source, state.LevelChecksum, true); err == nil {
		h.LastChecksum = v.FinishedAt
	}
	if v, err := s.opts.Store.LatestVerification(ctx, source, state.LevelRestore, true); err == nil {
		h.LastProvenRestore = v.FinishedAt
	}
	if m := s.opts.Metrics; m != nil {
		m.compliance.WithLabelValues(source).Set(h.Compliance.Numeric)
		if n, err := compliance.ParsePolicy(string(sc.Policy)); err == nil {
			m.required.WithLabelValues(source).Set(float64(n))
		}
	}
	return h, nil
}

// dataTime is when a backup's data was taken: the start of the run (the
// source's snapshot is taken then).
func dataTime(b state.Backup) time.Time {
	if !b.StartedAt.IsZero() {
		return b.StartedAt
	}
	return b.QueuedAt
}

// gradeCopies turns b's copies and their verifications into compliance
// inputs, asking each locked target how long the copy is locked for.
func (s *Service) gradeCopies(ctx context.Context, cfg *config.Config, b state.Backup) ([]compliance.Copy, error) {
	_, copies, err := s.opts.Store.GetBackup(ctx, b.ID)
	if err != nil {
		return nil, err
	}
	vs, err := s.opts.Store.ListVerifications(ctx, b.ID)
	if err != nil {
		return nil, err
	}
	out := make([]compliance.Copy, 0, len(copies))
	for _, c := range copies {
		cc := compliance.Copy{Target: c.Target, Complete: c.State == state.CopyComplete}
		// Verifications are oldest first: the last checksum result decides;
		// failures after the last pass are errors.
		for _, v := range vs {
			if v.Target != c.Target {
				continue
			}
			switch {
			case v.Level == state.LevelChecksum && v.OK:
				cc.ChecksumVerified, cc.VerifyErrors = true, 0
			case v.Level == state.LevelChecksum:
				cc.ChecksumVerified = false
				cc.VerifyErrors++
			case !v.OK:
				cc.VerifyErrors++
			}
		}
		if t, ok := cfg.Targets[c.Target]; ok && cc.Complete && (t.ObjectLock != nil || t.Retention != nil) {
			cc.RetainUntil = s.retainUntil(ctx, c)
		}
		out = append(out, cc)
	}
	return out, nil
}

// retainUntil asks the store for the data object's lock, at check time.
func (s *Service) retainUntil(ctx context.Context, c state.Copy) time.Time {
	t, err := s.opts.Target(ctx, c.Target)
	if err != nil {
		return time.Time{}
	}
	info, err := t.Stat(ctx, c.Key)
	if err != nil || info.Retention == nil {
		return time.Time{}
	}
	return info.Retention.Until
}

// RunMaintenance grades every source once a minute (keeping
// opsd_backup_compliance_level current, and queueing catch-up copies for
// targets the newest backup missed) and probes every object-locked
// target's lock enforcement at start and daily, until ctx ends.
func (s *Service) RunMaintenance(ctx context.Context) error {
	probe := time.NewTimer(0)
	defer probe.Stop()
	grade := time.NewTicker(healthInterval)
	defer grade.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-probe.C:
			s.ProbeLocks(ctx)
			s.gradeAll(ctx)
			probe.Reset(probeInterval)
		case <-grade.C:
			s.gradeAll(ctx)
		}
	}
}

func (s *Service) gradeAll(ctx context.Context) {
	cfg := s.opts.Config()
	names := make([]string, 0, len(cfg.Sources))
	for name := range cfg.Sources {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if _, err := s.Health(ctx, name); err != nil && ctx.Err() == nil {
			s.log.Warn("grade source", "source", name, "err", err)
		}
		// A target that missed the newest backup gets its copy later.
		s.queueCatchUps(ctx, name)
	}
}

// ProbeLocks writes a lock canary to every target configured with object
// lock or retention and tries to delete it: a store that lets it go does
// not enforce locks, and its copies stop counting as immutable.
func (s *Service) ProbeLocks(ctx context.Context) {
	cfg := s.opts.Config()
	for name, t := range cfg.Targets {
		if t.ObjectLock == nil && t.Retention == nil {
			continue
		}
		b, err := s.opts.Target(ctx, name)
		if err != nil {
			s.log.Warn("lock canary: open target", "target", name, "err", err)
			continue
		}
		mode := ""
		if t.ObjectLock != nil {
			mode = t.ObjectLock.Mode
		}
		r, err := lockprobe.Probe(ctx, b, mode, s.opts.Now())
		if err != nil {
			// Unknown: keep the previous finding.
			s.log.Warn("lock canary failed; keeping the previous finding", "target", name, "err", err)
			continue
		}
		s.locks.set(name, r)
		if r.Enforced {
			s.log.Info("object lock enforced", "target", name, "canary", r.Key)
		} else {
			s.log.Error("object lock NOT enforced: the store accepted a lock and let the object be deleted; copies here do not count as immutable",
				"target", name, "detail", r.Detail)
		}
	}
}
