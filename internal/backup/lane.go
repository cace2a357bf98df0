package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opsd-dev/opsd/internal/failpoint"
)

// errLagging fails a copy whose target fell too far behind with nowhere to
// spill.
var errLagging = errors.New("target fell too far behind")

// lane feeds one target's Save. The producer pushes chunks that are shared
// between lanes and never modified; Save reads them in order. Up to maxMem
// bytes wait in memory; beyond that the lane spills to an unlinked temp
// file in spoolDir and reads back from it until it has caught up, then
// returns to memory. Without a spool dir, or once the spool is larger than
// maxSpool or cannot be written (disk full), the producer waits up to
// stall for the consumer to make room (a burst from the compressor is
// not a dead target) and then the lane fails: its copy fails and the
// other targets carry on.
type lane struct {
	target   string
	maxMem   int64
	spoolDir string
	maxSpool int64
	stall    time.Duration

	mu       sync.Mutex
	cond     sync.Cond
	queue    []*chunk
	head     int // read offset in queue[0]
	memBytes int64

	spool      *os.File
	spilling   bool
	wOff, rOff int64
	spilled    int64 // bytes that went through the spool, in total

	waiting  bool  // producer waits for room
	closed   bool  // producer finished
	closeErr error // producer failed: Read returns it instead of EOF
	dead     bool  // consumer gone or lane failed
	deadErr  error
	eof      bool // Read returned io.EOF
	read     int64
}

func newLane(ctx context.Context, target string, maxMem int64, spoolDir string, maxSpool int64, stall time.Duration) (*lane, func() bool) {
	l := &lane{target: target, maxMem: maxMem, spoolDir: spoolDir, maxSpool: maxSpool, stall: stall}
	l.cond.L = &l.mu
	stop := context.AfterFunc(ctx, func() { l.fail(context.Cause(ctx)) })
	return l, stop
}

// push queues c (shared, read-only) unless the lane is dead, and takes
// over one of its references. It blocks on the consumer only when it can
// neither queue nor spill, and then for at most l.stall. It reports
// whether the lane is still alive afterwards.
func (l *lane) push(c *chunk) (alive bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	defer func() { alive = !l.dead }() // runs first, under the lock
	if l.dead || l.closed {
		c.release()
		return
	}
	p := c.b
	fits := func() bool { return !l.spilling && l.memBytes+int64(len(p)) <= l.maxMem }
	if !fits() && l.spoolDir == "" {
		l.waitLocked(fits)
	}
	if l.dead {
		c.release()
		return
	}
	if fits() {
		l.queue = append(l.queue, c)
		l.memBytes += int64(len(p))
		l.cond.Broadcast()
		return
	}
	// Spilled or failed: the lane does not keep c.
	defer c.release()
	if l.spoolDir == "" {
		l.failLocked(fmt.Errorf("%w: more than %d KiB unsent for %v and no spool dir to spill to", errLagging, l.maxMem>>10, l.stall))
		return
	}
	if l.spool == nil {
		f, err := os.CreateTemp(l.spoolDir, "opsd-lane-*")
		if err != nil {
			l.failLocked(fmt.Errorf("%w: create spool file: %v", errLagging, err))
			return
		}
		// Unlinked at once: a crash leaves nothing in the spool dir.
		_ = os.Remove(f.Name())
		l.spool = f
	}
	if l.maxSpool > 0 && l.wOff+int64(len(p)) > l.maxSpool {
		l.failLocked(fmt.Errorf("%w: more than %d MiB spooled", errLagging, l.maxSpool>>20))
		return
	}
	if _, err := l.spool.WriteAt(p, l.wOff); err != nil {
		l.failLocked(fmt.Errorf("%w: spool: %v", errLagging, err))
		return
	}
	l.spilling = true
	l.wOff += int64(len(p))
	l.spilled += int64(len(p))
	l.cond.Broadcast()
	return
}

// waitLocked waits until ok(), the lane dies or l.stall passes.
func (l *lane) waitLocked(ok func() bool) {
	if l.stall <= 0 {
		return
	}
	deadline := time.Now().Add(l.stall)
	timer := time.AfterFunc(l.stall, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.cond.Broadcast()
	})
	defer timer.Stop()
	l.waiting = true
	defer func() { l.waiting = false }()
	for !ok() && !l.dead && time.Now().Before(deadline) {
		l.cond.Wait()
	}
}

// Read gives Save the next bytes, in order.
func (l *lane) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		switch {
		case l.dead:
			return 0, l.deadErr
		case len(l.queue) > 0:
			n := copy(b, l.queue[0].b[l.head:])
			l.head += n
			if l.head == len(l.queue[0].b) {
				l.queue[0].release()
				l.queue[0] = nil
				l.queue = l.queue[1:]
				l.head = 0
			}
			l.memBytes -= int64(n)
			l.read += int64(n)
			if l.waiting {
				l.cond.Broadcast()
			}
			return n, nil
		case l.spilling && l.rOff < l.wOff:
			n, err := l.spool.ReadAt(b[:min(int64(len(b)), l.wOff-l.rOff)], l.rOff)
			l.rOff += int64(n)
			l.read += int64(n)
			if err != nil && err != io.EOF {
				l.failLocked(fmt.Errorf("read spool: %w", err))
				return n, l.deadErr
			}
			return n, nil
		case l.spilling:
			// Caught up: back to memory, reuse the spool from its start.
			l.spilling = false
			l.rOff, l.wOff = 0, 0
		case l.closed:
			if l.closeErr != nil {
				return 0, l.closeErr
			}
			l.eof = true
			return 0, io.EOF
		default:
			l.cond.Wait()
		}
	}
}

// close ends the stream: EOF for the consumer if err is nil, err otherwise.
func (l *lane) close(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	l.closeErr = err
	l.cond.Broadcast()
}

// fail kills the lane: Read returns err from now on, push drops.
func (l *lane) fail(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failLocked(err)
}

func (l *lane) failLocked(err error) {
	if l.dead {
		return
	}
	l.dead = true
	l.deadErr = err
	for _, c := range l.queue {
		c.release()
	}
	l.queue = nil
	l.memBytes = 0
	l.cond.Broadcast()
}

func (l *lane) reason() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadErr
}

// stats reports how much the consumer read, whether it saw EOF, and how
// much went through the spool.
func (l *lane) stats() (read int64, eof bool, spilled int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.read, l.eof, l.spilled
}

// release closes the spool file.
func (l *lane) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.spool != nil {
		_ = l.spool.Close()
		l.spool = nil
	}
}

// fanout writes every chunk once to all live lanes, hashing and counting
// what it writes.
type fanout struct {
	lanes []*lane
	hash  interface{ Write([]byte) (int, error) }
	n     int64
}

// errNoTargets: every lane has failed; stop reading the source.
var errNoTargets = errors.New("every target failed")

func (f *fanout) Write(p []byte) (int, error) {
	// The caller may reuse p; lanes share one immutable copy, which goes
	// back to the pool when the last lane is done with it.
	failpoint.Hit("backup.data")
	c := newChunk(p, len(f.lanes))
	f.hash.Write(p)
	f.n += int64(len(p))
	live := 0
	for _, l := range f.lanes {
		if l.push(c) {
			live++
		}
	}
	if live == 0 {
		return 0, errNoTargets
	}
	return len(p), nil
}

// chunk is a piece of the stored stream shared by every lane. Each lane
// releases it once, when it has sent, spilled or dropped it; the last
// release returns it to the pool, which keeps the fan-out from making
// garbage at the stream's rate.
type chunk struct {
	b    []byte
	refs atomic.Int32
}

// chunkCap fits age's 64 KiB payload chunks with their tag; bigger writes
// get their own buffer and are not pooled.
const chunkCap = 64<<10 + 64

var chunkPool = sync.Pool{New: func() any { return &chunk{b: make([]byte, 0, chunkCap)} }}

func newChunk(p []byte, refs int) *chunk {
	var c *chunk
	if len(p) <= chunkCap {
		c = chunkPool.Get().(*chunk)
	} else {
		c = &chunk{}
	}
	c.b = append(c.b[:0], p...)
	c.refs.Store(int32(refs))
	return c
}

func (c *chunk) release() {
	switch n := c.refs.Add(-1); {
	case n == 0 && cap(c.b) == chunkCap:
		c.b = c.b[:0]
		chunkPool.Put(c)
	case n < 0:
		panic("backup: chunk released more often than it was shared")
	}
}
