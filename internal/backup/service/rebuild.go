package service

import (
	"context"
	"fmt"
	"sort"

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
