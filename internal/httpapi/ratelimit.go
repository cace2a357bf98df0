package httpapi

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// limiters hands out one token-bucket limiter per key (a token name, or a
// client address for unauthenticated failures). Idle entries are dropped so
// the map cannot grow without bound under a flood of distinct addresses.
type limiters struct {
	mu      sync.Mutex
	perSec  rate.Limit
	burst   int
	entries map[string]*limiterEntry
	now     func() time.Time
}

type limiterEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

const limiterIdle = 10 * time.Minute

func newLimiters(perSec float64, burst int) *limiters {
	return &limiters{perSec: rate.Limit(perSec), burst: burst, entries: map[string]*limiterEntry{}, now: time.Now}
}

// allow reports whether key may make a request now.
func (l *limiters) allow(key string) bool {
	if l.perSec <= 0 {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	e, ok := l.entries[key]
	if !ok {
		if len(l.entries) > 10000 {
			l.sweep(now)
		}
		e = &limiterEntry{lim: rate.NewLimiter(l.perSec, l.burst)}
		l.entries[key] = e
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

func (l *limiters) sweep(now time.Time) {
	for k, e := range l.entries {
		if now.Sub(e.seen) > limiterIdle {
			delete(l.entries, k)
		}
	}
}
