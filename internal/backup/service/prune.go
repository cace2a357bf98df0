package service

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/retention"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/storage"
)

// PruneDecision is retention's verdict on one backup, and what prune did.
type PruneDecision struct {
	Source   string    `json:"source"`
	BackupID string    `json:"backup_id"`
	Time     time.Time `json:"time"`
	Keep     bool      `json:"keep"`
	// Reasons name the rules that keep it (empty for a backup that goes).
	Reasons []string `json:"reasons"`
	// DeletableAt is when an object lock in force lets it go; nil if none.
	DeletableAt *time.Time `json:"deletable_at,omitempty"`
	// StoredBytes freed by deleting it, per copy summed.
	StoredBytes int64 `json:"stored_bytes"`
	// Deleted is true once its objects and catalog entry are gone (not in
	// a dry run); Error says why not.
	Deleted bool   `json:"deleted"`
	Error   string `json:"error,omitempty"`
}

// ErrNoRetention: the source has no retention policy; prune keeps all.
// It wraps state.ErrInvalid (a 400 over the API).
var ErrNoRetention = fmt.Errorf("%w: no retention policy", state.ErrInvalid)

// PruneResult is the API's prune document.
type PruneResult struct {
	DryRun bool            `json:"dry_run"`
	Items  []PruneDecision `json:"items"`
	// FreedBytes is what the deletions free (would free, in a dry run).
	FreedBytes int64 `json:"freed_bytes"`
}

// PruneDocument runs Prune for the API.
func (s *Service) PruneDocument(ctx context.Context, source string, dryRun bool) (any, error) {
	ds, err := s.Prune(ctx, source, dryRun)
	if err != nil {
		return nil, err
	}
	res := PruneResult{DryRun: dryRun, Items: ds}
	if res.Items == nil {
		res.Items = []PruneDecision{}
	}
	for _, d := range ds {
		if !d.Keep && (dryRun || d.Deleted) {
			res.FreedBytes += d.StoredBytes
		}
	}
	return res, nil
}

// Prune applies each source's retention (all sources when source is "")
// and deletes what it does not keep, unless dryRun. Backups of a source
// are only ever deleted by its own retention; failed backups, which have
// no complete copy, go with the backups retention removes.
func (s *Service) Prune(ctx context.Context, source string, dryRun bool) ([]PruneDecision, error) {
	cfg := s.opts.Config()
	var names []string
	if source != "" {
		if _, ok := cfg.Sources[source]; !ok {
			return nil, fmt.Errorf("source %q: %w", source, ErrUnknownSource)
		}
		names = []string{source}
	} else {
		for name := range cfg.Sources {
			names = append(names, name)
		}
		sort.Strings(names)
	}
	var out []PruneDecision
	for _, name := range names {
		ds, err := s.pruneSource(ctx, cfg, name, dryRun)
		if errors.Is(err, ErrNoRetention) && source == "" {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, ds...)
	}
	return out, nil
}

func (s *Service) pruneSource(ctx context.Context, cfg *config.Config, name string, dryRun bool) ([]PruneDecision, error) {
	sc := cfg.Sources[name]
	if sc.Retention == (config.Keep{}) {
		return nil, fmt.Errorf("source %s: %w (set sources.%s.retention)", name, ErrNoRetention, name)
	}
	backups, err := s.allBackups(ctx, name)
	if err != nil {
		return nil, err
	}
	now := s.opts.Now()
	var in []retention.Backup
	byID := map[string]state.Backup{}
	sizes := map[string]int64{}
	for _, b := range backups {
		if b.State != state.BackupSucceeded && b.State != state.BackupPartial {
			continue // queued/running are not finished; failed ones hold nothing
		}
		byID[b.ID] = b
		rb := retention.Backup{ID: b.ID, Time: dataTime(b)}
		_, copies, err := s.opts.Store.GetBackup(ctx, b.ID)
		if err != nil {
			return nil, err
		}
		for _, c := range copies {
			if c.State != state.CopyComplete {
				continue
			}
			sizes[b.ID] += c.Bytes
			if t, ok := cfg.Targets[c.Target]; ok && (t.ObjectLock != nil || t.Retention != nil) {
				if until := s.retainUntil(ctx, c); until.After(rb.RetainUntil) {
					rb.RetainUntil = until
				}
			}
		}
		vs, err := s.opts.Store.ListVerifications(ctx, b.ID)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			if v.OK {
				rb.ProvenGood = true
			}
		}
		in = append(in, rb)
	}
	decisions, err := retention.Apply(sc.Retention, in, now, time.Local)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", name, err)
	}
	out := make([]PruneDecision, 0, len(decisions))
	for _, d := range decisions {
		pd := PruneDecision{Source: name, BackupID: d.ID, Time: d.Time.UTC(), Keep: d.Keep, Reasons: d.Reasons,
			StoredBytes: sizes[d.ID]}
		if pd.Reasons == nil {
			pd.Reasons = []string{}
		}
		if !d.DeletableAt.IsZero() {
			t := d.DeletableAt.UTC()
			pd.DeletableAt = &t
		}
		if !d.Keep && !dryRun {
			if err := s.deleteBackup(ctx, sc, byID[d.ID]); err != nil {
				pd.Error = err.Error()
			} else {
				pd.Deleted = true
				failpoint.Hit("prune.deleted")
			}
		}
		out = append(out, pd)
	}
	return out, nil
}

// allBackups lists every catalogued backup of source.
func (s *Service) allBackups(ctx context.Context, source string) ([]state.Backup, error) {
	var all []state.Backup
	cursor := ""
	for {
		items, next, err := s.opts.Store.ListBackups(ctx, state.BackupFilter{Source: source, Limit: state.MaxListLimit, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		all = append(all, items...)
		if next == "" {
			return all, nil
		}
		cursor = next
	}
}

// deleteBackup removes a backup's objects from every target of its
// copies (signature first, so a half-deleted backup is never valid, and
// the catalog entry last), audited as backup.delete. A locked object
// stops it: the backup stays listed and prune tries again next time.
func (s *Service) deleteBackup(ctx context.Context, sc *config.Source, b state.Backup) error {
	req := action.Request{Actor: action.ActorFrom(ctx), Action: "backup.delete", Object: "backup/" + b.ID,
		Params: map[string]any{"source": b.Source, "reason": "retention"}}
	return s.opts.Dispatcher.Do(ctx, req, func(ctx context.Context) error {
		_, copies, err := s.opts.Store.GetBackup(ctx, b.ID)
		if err != nil {
			return err
		}
		targets := map[string]bool{}
		for _, c := range copies {
			targets[c.Target] = true
		}
		for _, name := range sc.Targets {
			targets[name] = true
		}
		prefix := b.Source + "/" + b.ID + "/"
		var errs []error
		for name := range targets {
			t, err := s.opts.Target(ctx, name)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				continue
			}
			if err := removePrefix(ctx, t, prefix); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		failpoint.Hit("prune.objects-removed")
		return s.opts.Store.DeleteBackup(ctx, b.ID)
	})
}

// removePrefix deletes every object under prefix, the signature first.
func removePrefix(ctx context.Context, t storage.Backend, prefix string) error {
	var keys []string
	if err := t.List(ctx, prefix, func(oi storage.ObjectInfo) error { keys = append(keys, oi.Key); return nil }); err != nil {
		return err
	}
	sort.Slice(keys, func(i, j int) bool {
		return strings.HasSuffix(keys[i], manifest.SignatureName) && !strings.HasSuffix(keys[j], manifest.SignatureName)
	})
	for _, k := range keys {
		if err := t.Remove(ctx, k); err != nil {
			return err
		}
		failpoint.Hit("remove.object")
	}
	return nil
}

// pruneAfterBackup applies the source's retention once a backup finished
// (as pgBackRest expires after each backup), when it has one.
func (s *Service) pruneAfterBackup(ctx context.Context, source string) {
	sc, ok := s.opts.Config().Sources[source]
	if !ok || sc.Retention == (config.Keep{}) {
		return
	}
	ds, err := s.Prune(context.WithoutCancel(ctx), source, false)
	if err != nil {
		s.log.Warn("prune after backup", "source", source, "err", err)
		return
	}
	for _, d := range ds {
		switch {
		case d.Deleted:
			s.log.Info("pruned backup", "source", source, "backup", d.BackupID)
		case !d.Keep && d.Error != "":
			s.log.Warn("prune: backup kept because its deletion failed", "source", source, "backup", d.BackupID, "err", d.Error)
		}
	}
}
