package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// LockAlertingLead is the advisory lock key held by the replica that sends
// alert notifications ("opsdalrt").
const LockAlertingLead int64 = 0x6f707364616c7274

// Lead holds the session-level advisory lock key on a connection of its own
// for as long as it can: onChange(true) when this replica gets it,
// onChange(false) when it loses it (the connection broke; the server frees
// the lock with the session). A replica without it tries again every
// interval. Lead returns when ctx ends, releasing the lock.
func (s *Store) Lead(ctx context.Context, key int64, interval time.Duration, onChange func(held bool)) error {
	var conn *pgxpool.Conn
	held := false
	set := func(v bool) {
		if v != held {
			held = v
			onChange(v)
		}
	}
	drop := func() {
		if conn != nil {
			// A closed connection is destroyed by the pool on release.
			_ = conn.Conn().Close(context.WithoutCancel(ctx))
			conn.Release()
			conn = nil
		}
		set(false)
	}
	defer func() {
		if conn != nil && held {
			uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if _, err := conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", key); err != nil {
				_ = conn.Conn().Close(uctx)
			}
			cancel()
		}
		if conn != nil {
			conn.Release()
		}
		set(false)
	}()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if conn == nil {
			if c, err := s.pool.Acquire(ctx); err == nil {
				conn = c
			} else if ctx.Err() == nil {
				s.logger.Warn("alerting lead: no connection", "err", err)
			}
		}
		if conn != nil {
			qctx, cancel := context.WithTimeout(ctx, interval)
			if held {
				if err := conn.Ping(qctx); err != nil && ctx.Err() == nil {
					s.logger.Warn("alerting lead lost: connection broken", "err", err)
					drop()
				}
			} else {
				var ok bool
				if err := conn.QueryRow(qctx, "SELECT pg_try_advisory_lock($1)", key).Scan(&ok); err != nil {
					if ctx.Err() == nil {
						s.logger.Warn("alerting lead: try lock", "err", err)
					}
					drop()
				} else {
					set(ok)
				}
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
