package service

import (
	"context"
	"errors"
	"time"

	"github.com/opsd-dev/opsd/internal/state"
)

// overlapRetry is how long a backup waits (River snooze) before trying
// again while another backup of its source runs.
const overlapRetry = 15 * time.Second

// sourceLockKey names the state-store value that says which backup of a
// source is running: the store is shared by every replica, so this holds
// across processes.
func sourceLockKey(source string) string { return "backup/running/" + source }

// acquireSource makes id the one running backup of source. It returns
// holder != "" when another backup holds it and is still live; a holder
// whose catalog row finished (or is gone: a crash) is taken over.
func (s *Service) acquireSource(ctx context.Context, source, id string) (release func(), holder string, err error) {
	key := sourceLockKey(source)
	release = func() {
		rctx := context.WithoutCancel(ctx)
		if v, ok, err := s.opts.Store.GetValue(rctx, key); err == nil && ok && v == id {
			_ = s.opts.Store.DeleteValue(rctx, key)
		}
	}
	for range 3 {
		err := s.opts.Store.CreateValue(ctx, key, id)
		if err == nil {
			return release, "", nil
		}
		if !errors.Is(err, state.ErrConflict) {
			return nil, "", err
		}
		cur, ok, err := s.opts.Store.GetValue(ctx, key)
		switch {
		case err != nil:
			return nil, "", err
		case !ok:
			continue // released meanwhile
		case cur == id:
			return release, "", nil // a retry of the same backup
		}
		hb, _, err := s.opts.Store.GetBackup(ctx, cur)
		if err == nil && (hb.State == state.BackupQueued || hb.State == state.BackupRunning) {
			return nil, cur, nil
		}
		if err != nil && !errors.Is(err, state.ErrNotFound) {
			return nil, "", err
		}
		// Stale: its holder finished or never recorded a row.
		if err := s.opts.Store.CompareAndSwapValue(ctx, key, cur, id); err == nil {
			return release, "", nil
		} else if !errors.Is(err, state.ErrConflict) && !errors.Is(err, state.ErrNotFound) {
			return nil, "", err
		}
	}
	return nil, "", errors.New("backup lock contended; will retry")
}
