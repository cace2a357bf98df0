package service

import (
	"context"
	"fmt"
	"sort"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/state"
)

// rebuildActor is the actor recorded on backups imported from targets.
const rebuildActor = "system:catalog-rebuild"

// Rebuild imports every target's signed backups into an empty catalog
// (SPEC §1.2: the storage is the catalog). It does nothing when the catalog
// has a backup. Manifests that do not verify are skipped and logged; a
// target that cannot be listed is logged and skipped. It returns how many
// backups it imported.
func (s *Service) Rebuild(ctx context.Context) (int, error) {
	have, _, err := s.opts.Store.ListBackups(ctx, state.BackupFilter{Limit: 1})
	if err != nil {
		return 0, fmt.Errorf("rebuild catalog: %w", err)
	}
	if len(have) > 0 || s.opts.Verifier == nil {
		return 0, nil
	}
	cfg := s.opts.Config()
	names := make([]string, 0, len(cfg.Targets))
	for name := range cfg.Targets {
		names = append(names, name)
	}
	sort.Strings(names)
	type found struct {
		m      manifest.Manifest
		copies []string
	}
	byID := map[string]*found{}
	for _, name := range names {
		t, err := s.opts.Target(ctx, name)
		if err != nil {
			s.log.Warn("catalog rebuild: target unavailable", "target", name, "err", err)
			continue
		}
		ms, lerr := backup.List(ctx, t, s.opts.Verifier)
		if lerr != nil {
			s.log.Warn("catalog rebuild: manifests skipped", "target", name, "err", lerr)
		}
		for _, m := range ms {
			f := byID[m.ID]
			if f == nil {
				f = &found{m: m}
				byID[m.ID] = f
			}
			f.copies = append(f.copies, name)
		}
	}
	n := 0
	for id, f := range byID {
		m := f.m
		raw, err := manifest.Marshal(&m)
		if err != nil {
			return n, fmt.Errorf("rebuild catalog: %s: %w", id, err)
		}
		b := state.Backup{ID: id, Source: m.Source, Type: m.Type, State: state.BackupSucceeded, Actor: rebuildActor,
			QueuedAt: m.Started, StartedAt: m.Started, FinishedAt: m.Finished, RawBytes: m.Size.Raw,
			StoredBytes: m.Size.Stored, Manifest: raw}
		if err := s.opts.Store.CreateBackup(ctx, b); err != nil {
			return n, fmt.Errorf("rebuild catalog: %s: %w", id, err)
		}
		obj, _ := m.DataObject()
		for _, target := range f.copies {
			c := state.Copy{BackupID: id, Target: target, State: state.CopyComplete, Key: m.Key(obj.Name),
				Bytes: obj.Size, SHA256: obj.SHA256, StartedAt: m.Started, FinishedAt: m.Finished}
			if err := s.opts.Store.PutCopy(ctx, c); err != nil {
				return n, fmt.Errorf("rebuild catalog: %s on %s: %w", id, target, err)
			}
		}
		n++
	}
	s.log.Info("rebuilt the backup catalog from the targets' signed manifests", "backups", n, "targets", len(names))
	return n, nil
}

// RecoverInterrupted marks every backup still `running` in the catalog as
// failed and removes its partial objects. Call it only at start and only
// when this process owns the state exclusively (the embedded SQLite store,
// guarded by the data_dir lock): then a running row can only belong to a
// process that died. With shared PostgreSQL state another replica may be
// running it, and River's rescue of stuck jobs handles the dead ones.
// Recovery passes the choke point as action backup.recover.
func (s *Service) RecoverInterrupted(ctx context.Context) (int, error) {
	var running []state.Backup
	cursor := ""
	for {
		page, next, err := s.opts.Store.ListBackups(ctx, state.BackupFilter{State: state.BackupRunning, Cursor: cursor, Limit: state.MaxListLimit})
		if err != nil {
			return 0, fmt.Errorf("list running backups: %w", err)
		}
		running = append(running, page...)
		if next == "" {
			break
		}
		cursor = next
	}
	cfg := s.opts.Config()
	sys := action.Actor{Kind: action.ActorSystem, Name: "opsd"}
	for _, b := range running {
		log := s.log.With("source", b.Source, "backup", b.ID)
		err := s.opts.Dispatcher.Do(ctx, action.Request{Actor: sys, Action: "backup.recover", Object: "backup/" + b.ID,
			Params: map[string]any{"source": b.Source, "state": b.State}}, func(ctx context.Context) error {
			if sc, ok := cfg.Sources[b.Source]; ok {
				s.removeObjects(ctx, sc, b.Source+"/"+b.ID+"/", log)
				s.failAll(sc, b.Source, "interrupted")
			}
			b.State, b.FinishedAt = state.BackupFailed, s.opts.Now().UTC()
			b.Error = "interrupted: opsd stopped or crashed while this backup ran; its partial objects were removed"
			return s.opts.Store.UpdateBackup(ctx, b)
		})
		if err != nil {
			return 0, fmt.Errorf("recover backup %s: %w", b.ID, err)
		}
		log.Warn("backup was interrupted by a crash; marked failed and its partial objects removed")
	}
	return len(running), nil
}
