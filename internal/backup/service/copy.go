package service

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"time"

	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/storage"
)

// CopyArgs is the River job that gives a backup the copy a target missed.
type CopyArgs struct {
	BackupID string `json:"backup_id"`
	Target   string `json:"target"`
}

// Kind implements river.JobArgs.
func (CopyArgs) Kind() string { return "copy" }

// CopyWorker works "copy" jobs.
type CopyWorker struct {
	river.WorkerDefaults[CopyArgs]
	svc *Service
}

// Work copies; a copy that cannot be made from any good copy is recorded
// and cancelled (maintenance queues it again while the policy is unmet);
// a store error is retried with River's backoff.
func (w *CopyWorker) Work(ctx context.Context, job *river.Job[CopyArgs]) error {
	err := w.svc.CatchUpCopy(ctx, job.Args)
	if errors.Is(err, ErrNoGoodCopy) || errors.Is(err, state.ErrNotFound) {
		return river.JobCancel(err)
	}
	return err
}

// catchingUp prefixes the error a catch-up copy's writing row carries: why
// the copy was missed.
const catchingUp = "catching up; the previous attempt failed: "

// ErrNoGoodCopy: no other target holds a complete copy whose last checksum
// verification passed.
var ErrNoGoodCopy = errors.New("no verified copy to copy from")

// CatchUpCopy copies backup a.BackupID to a.Target from a complete copy
// whose latest checksum verification passed, streaming and checking size
// and SHA-256 against the manifest on the way; the manifest and its
// signature follow, last. A copy that does not match is removed.
func (s *Service) CatchUpCopy(ctx context.Context, a CopyArgs) error {
	b, copies, err := s.opts.Store.GetBackup(ctx, a.BackupID)
	if err != nil {
		return err
	}
	if len(b.Manifest) == 0 {
		return fmt.Errorf("%w: backup %s has no manifest", ErrNoGoodCopy, b.ID)
	}
	m, err := manifest.Unmarshal(b.Manifest)
	if err != nil {
		return err
	}
	var prev state.Copy // this target's row, if any (one per backup and target)
	for _, c := range copies {
		if c.Target == a.Target {
			prev = c
		}
	}
	if prev.State == state.CopyComplete {
		return nil // already there
	}
	from, err := s.goodCopy(ctx, b.ID, copies, a.Target)
	if err != nil {
		return err
	}
	src, err := s.opts.Target(ctx, from)
	if err != nil {
		return err
	}
	dst, err := s.opts.Target(ctx, a.Target)
	if err != nil {
		return err
	}
	started := s.opts.Now().UTC()
	// Recorded as writing first: a crash from here on leaves a row that
	// the next start finds and cleans (RecoverInterruptedCopies).
	w := state.Copy{BackupID: b.ID, Target: a.Target, State: state.CopyWriting, StartedAt: started}
	if prev.Error != "" {
		// The reason the copy is missing stays visible while it is made.
		w.Error = truncate(catchingUp + strings.TrimPrefix(prev.Error, catchingUp))
	}
	if obj, oerr := m.DataObject(); oerr == nil {
		w.Key = m.Key(obj.Name)
	}
	if err := s.opts.Store.PutCopy(ctx, w); err != nil {
		return err
	}
	// Only one copy job per backup and target runs at a time (unique
	// jobs), so whatever is under the backup's prefix on the target is
	// left over from an attempt that died.
	if err := removePrefix(ctx, dst, b.Source+"/"+b.ID+"/"); err != nil {
		return fmt.Errorf("remove leftovers of an earlier attempt on %s: %w", a.Target, err)
	}
	req := action.Request{Actor: action.ActorFrom(ctx), Action: "backup.copy", Object: "backup/" + b.ID + "/target/" + a.Target,
		Params: map[string]any{"source": b.Source, "from": from, "reason": "catch-up"}}
	var bytes int64
	err = s.opts.Dispatcher.Do(ctx, req, func(ctx context.Context) error {
		var err error
		failpoint.Hit("copy.start")
		bytes, err = copyObjects(ctx, src, dst, m)
		return err
	})
	failpoint.Hit("copy.objects-saved")
	c := state.Copy{BackupID: b.ID, Target: a.Target, State: state.CopyComplete, Bytes: bytes, StartedAt: started,
		FinishedAt: s.opts.Now().UTC()}
	if obj, oerr := m.DataObject(); oerr == nil {
		c.Key, c.SHA256 = m.Key(obj.Name), obj.SHA256
	}
	if err != nil {
		c.State, c.SHA256, c.Error = state.CopyFailed, "", truncate(err.Error())
	}
	if perr := s.opts.Store.PutCopy(context.WithoutCancel(ctx), c); perr != nil {
		return errors.Join(err, perr)
	}
	failpoint.Hit("copy.recorded")
	if err != nil {
		s.metricFailure(b.Source, a.Target, "target")
		return err
	}
	s.log.Info("caught up a missing copy", "backup", b.ID, "target", a.Target, "from", from, "bytes", bytes)
	if s.opts.Metrics != nil {
		s.opts.Metrics.bytes.WithLabelValues(b.Source, a.Target).Add(float64(bytes))
	}
	if s.queue != nil {
		_, _ = s.queue.Insert(context.WithoutCancel(ctx), VerifyArgs{BackupID: b.ID, Level: state.LevelChecksum, Target: a.Target}, nil)
	}
	return nil
}

// goodCopy picks a complete copy, not on target, whose newest checksum
// verification passed.
func (s *Service) goodCopy(ctx context.Context, id string, copies []state.Copy, target string) (string, error) {
	vs, err := s.opts.Store.ListVerifications(ctx, id)
	if err != nil {
		return "", err
	}
	verified := map[string]bool{}
	for _, v := range vs { // oldest first: the last result per target wins
		if v.Level == state.LevelChecksum {
			verified[v.Target] = v.OK
		}
	}
	for _, c := range copies {
		if c.Target != target && c.State == state.CopyComplete && verified[c.Target] {
			return c.Target, nil
		}
	}
	return "", fmt.Errorf("%w: backup %s", ErrNoGoodCopy, id)
}

// copyObjects streams the data object (checked against the manifest as
// it goes) and then the manifest and signature from src to dst.
func copyObjects(ctx context.Context, src, dst storage.Backend, m *manifest.Manifest) (int64, error) {
	obj, err := m.DataObject()
	if err != nil {
		return 0, err
	}
	key := m.Key(obj.Name)
	rc, err := src.Open(ctx, key, 0, -1)
	if err != nil {
		return 0, fmt.Errorf("read %s from %s: %w", key, src.Name(), err)
	}
	defer rc.Close()
	h := &hashingReader{r: rc, h: sha256.New()}
	info, err := dst.Save(ctx, key, h, storage.SaveOptions{NoOverwrite: true, ContentType: "application/octet-stream", SizeHint: obj.Size})
	if err == nil && (h.n != obj.Size || hex.EncodeToString(h.h.Sum(nil)) != obj.SHA256 || (info.Size > 0 && info.Size != obj.Size)) {
		err = fmt.Errorf("%w: %s read from %s does not match its manifest", backup.ErrChecksum, key, src.Name())
	}
	if err != nil {
		_ = dst.Remove(context.WithoutCancel(ctx), key)
		return h.n, err
	}
	failpoint.Hit("copy.data-saved")
	for _, name := range []string{manifest.ManifestName, manifest.SignatureName} {
		if err := copyOne(ctx, src, dst, m.Key(name)); err != nil {
			_ = dst.Remove(context.WithoutCancel(ctx), m.Key(manifest.ManifestName))
			_ = dst.Remove(context.WithoutCancel(ctx), key)
			return h.n, err
		}
	}
	return h.n, nil
}

func copyOne(ctx context.Context, src, dst storage.Backend, key string) error {
	rc, err := src.Open(ctx, key, 0, -1)
	if err != nil {
		return fmt.Errorf("read %s from %s: %w", key, src.Name(), err)
	}
	defer rc.Close()
	_, err = dst.Save(ctx, key, rc, storage.SaveOptions{NoOverwrite: true})
	failpoint.Hit("copy.meta-saved")
	return err
}

type hashingReader struct {
	r io.Reader
	h hash.Hash
	n int64
}

func (r *hashingReader) Read(p []byte) (int, error) {
	failpoint.Hit("copy.data")
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)
	return n, err
}

// queueCatchUps queues a copy job for every target of a source's newest
// backup that has no complete copy, unique per backup and target.
func (s *Service) queueCatchUps(ctx context.Context, source string) {
	sc, ok := s.opts.Config().Sources[source]
	if !ok || s.queue == nil {
		return
	}
	b, err := s.opts.Store.LatestBackup(ctx, source, state.BackupSucceeded, state.BackupPartial)
	if err != nil {
		return
	}
	_, copies, err := s.opts.Store.GetBackup(ctx, b.ID)
	if err != nil {
		return
	}
	have := map[string]bool{}
	for _, c := range copies {
		if c.State == state.CopyComplete {
			have[c.Target] = true
		}
	}
	if len(have) == 0 {
		return
	}
	for _, t := range sc.Targets {
		if have[t] {
			continue
		}
		opts := &river.InsertOpts{UniqueOpts: river.UniqueOpts{ByArgs: true, ByPeriod: time.Hour}}
		if _, err := s.queue.Insert(ctx, CopyArgs{BackupID: b.ID, Target: t}, opts); err != nil {
			s.log.Warn("queue catch-up copy", "backup", b.ID, "target", t, "err", err)
		}
	}
}

// RecoverInterruptedCopies finds catch-up copies a crash left `writing`
// on the newest backup of each source, removes what they wrote and marks
// them failed, so maintenance queues them again. Like RecoverInterrupted
// it is for the embedded store, where no other process can be writing.
func (s *Service) RecoverInterruptedCopies(ctx context.Context) (int, error) {
	cfg := s.opts.Config()
	n := 0
	var errs []error
	for name, sc := range cfg.Sources {
		b, err := s.opts.Store.LatestBackup(ctx, name, state.BackupSucceeded, state.BackupPartial)
		if err != nil {
			continue
		}
		_, copies, err := s.opts.Store.GetBackup(ctx, b.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, c := range copies {
			if c.State != state.CopyWriting {
				continue
			}
			if t, err := s.opts.Target(ctx, c.Target); err == nil {
				if err := removePrefix(ctx, t, b.Source+"/"+b.ID+"/"); err != nil {
					s.log.Warn("remove objects of an interrupted copy", "backup", b.ID, "target", c.Target, "err", err)
				}
			}
			c.State, c.Error, c.FinishedAt = state.CopyFailed, "interrupted: opsd stopped during the catch-up copy", s.opts.Now().UTC()
			if err := s.opts.Store.PutCopy(ctx, c); err != nil {
				errs = append(errs, err)
				continue
			}
			s.log.Warn("a catch-up copy was interrupted; its objects were removed and it will be made again",
				"source", name, "type", sc.Type, "backup", b.ID, "target", c.Target)
			n++
		}
	}
	return n, errors.Join(errs...)
}
