package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// errLagging fails a copy whose target fell too far behind with nowhere to
// spill.
var errLagging = errors.New("target fell too far behind")

// lane feeds one target's Save. The producer pushes chunks that are shared
// between lanes and never modified; Save reads them in order. Up to maxMem
// bytes wait in memory; beyond that the lane spills to an unlinked temp
// file in spoolDir and reads back from it until it has caught up, then
// returns to memory. Without a spool dir, or once the spool is larger than
// maxSpool or cannot be written (disk full), the lane fails: its copy
// fails and the other targets carry on.
type lane struct {
	target   string
	maxMem   int64
	spoolDir string
	maxSpool int64

	mu       sync.Mutex
	cond     sync.Cond
	queue    [][]byte
	head     int // read offset in queue[0]
	memBytes int64

	spool      *os.File
	spilling   bool
	wOff, rOff int64
	spilled    int64 // bytes that went through the spool, in total

	closed   bool  // producer finished
	closeErr error // producer failed: Read returns it instead of EOF
	dead     bool  // consumer gone or lane failed
	deadErr  error
	eof      bool // Read returned io.EOF
	read     int64
}

func newLane(ctx context.Context, target string, maxMem int64, spoolDir string, maxSpool int64) (*lane, func() bool) {
	l := &lane{target: target, maxMem: maxMem, spoolDir: spoolDir, maxSpool: maxSpool}
	l.cond.L = &l.mu
	stop := context.AfterFunc(ctx, func() { l.fail(context.Cause(ctx)) })
	return l, stop
}

// push queues p (shared, read-only) unless the lane is dead. It never
// blocks on the consumer.
func (l *lane) push(p []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead || l.closed {
		return
	}
	if !l.spilling && l.memBytes+int64(len(p)) <= l.maxMem {
		l.queue = append(l.queue, p)
		l.memBytes += int64(len(p))
		l.cond.Broadcast()
		return
	}
	if l.spoolDir == "" {
		l.failLocked(fmt.Errorf("%w: more than %d MiB unsent and no spool dir to spill to", errLagging, l.maxMem>>20))
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
			n := copy(b, l.queue[0][l.head:])
			l.head += n
			if l.head == len(l.queue[0]) {
				l.queue[0] = nil
				l.queue = l.queue[1:]
				l.head = 0
			}
			l.memBytes -= int64(n)
			l.read += int64(n)
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
	l.queue = nil
	l.memBytes = 0
	l.cond.Broadcast()
}

func (l *lane) alive() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.dead
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
	// The caller may reuse p; lanes share one immutable copy.
	c := make([]byte, len(p))
	copy(c, p)
	f.hash.Write(c)
	f.n += int64(len(c))
	live := 0
	for _, l := range f.lanes {
		l.push(c)
		if l.alive() {
			live++
		}
	}
	if live == 0 {
		return 0, errNoTargets
	}
	return len(p), nil
}
