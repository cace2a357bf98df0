// Package failpoint kills the process at named points, for crash tests
// only: cmd/opsd's kill -9 matrix (docs/RESILIENCE.md) starts a real opsd
// with OPSD_FAILPOINT set and checks what a restart makes of the state it
// left. Production never sets OPSD_FAILPOINT; unset, Hit is one bool
// check.
//
// OPSD_FAILPOINT=name kills at the first Hit(name); name:N at the Nth.
// The kill is a real SIGKILL sent to the process itself: no deferred
// function runs, no buffer is flushed, no file is closed.
package failpoint

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Env is the environment variable read once at start.
const Env = "OPSD_FAILPOINT"

// The armed point, parsed once: environment variables do not change
// under a running process, and Hit must cost nothing when unset.
var (
	armed bool
	point string
	nth   int64 = 1
	hits  atomic.Int64
)

func init() {
	v := os.Getenv(Env)
	if v == "" {
		return
	}
	point = v
	if i := strings.LastIndexByte(v, ':'); i > 0 {
		if n, err := strconv.ParseInt(v[i+1:], 10, 64); err == nil && n > 0 {
			point, nth = v[:i], n
		}
	}
	armed = true
}

// Hit kills the process with SIGKILL if OPSD_FAILPOINT names this point
// and this is the hit it asks for.
func Hit(name string) {
	if !armed || name != point {
		return
	}
	if hits.Add(1) != nth {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way; never run past the point
}
