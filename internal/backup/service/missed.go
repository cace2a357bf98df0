package service

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
)

// CatchUpMissed queues one backup of every scheduled source whose last
// run was queued before a slot that has since passed — opsd was down
// when it fired — unless the source says missed: skip. A source with no
// backup at all has missed nothing: its schedule starts now. Several
// missed slots give one backup, not one per slot. It returns the sources
// queued.
func (s *Service) CatchUpMissed(ctx context.Context) ([]string, error) {
	cfg := s.opts.Config()
	now := s.opts.Now()
	names := make([]string, 0, len(cfg.Sources))
	for name := range cfg.Sources {
		names = append(names, name)
	}
	sort.Strings(names)
	var queued []string
	var errs []error
	for _, name := range names {
		sc := cfg.Sources[name]
		if sc.Schedule == "" || sc.Missed == config.MissedSkip {
			continue
		}
		sched, err := sc.Schedule.Schedule()
		if err != nil {
			continue // config check refuses it
		}
		last, err := s.opts.Store.LatestBackup(ctx, name)
		switch {
		case errors.Is(err, state.ErrNotFound):
			continue
		case err != nil:
			errs = append(errs, err)
			continue
		}
		if last.State == state.BackupQueued || last.State == state.BackupRunning {
			continue // River still holds it, or will retry it
		}
		slot := sched.Next(last.QueuedAt)
		if slot.IsZero() || slot.After(now) {
			continue
		}
		actx := action.WithActor(ctx, action.Actor{Kind: action.ActorScheduler, Name: "missed:backup:" + name})
		if _, err := s.Enqueue(actx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		s.log.Info("a scheduled backup was missed while opsd was down; running it now",
			"source", name, "missed_slot", slot.UTC().Format(time.RFC3339), "last_backup", last.ID)
		queued = append(queued, name)
	}
	return queued, errors.Join(errs...)
}
