package audit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/buildinfo"
	"github.com/opsd-dev/opsd/internal/signing"
)

// Defaults for Options.
const (
	DefaultSegmentSize        = 64 << 20
	DefaultCheckpointInterval = 10 * time.Second
	DefaultWitnessTimeout     = 30 * time.Second
	maxBatch                  = 4096
)

// Errors callers branch on.
var (
	// ErrClosed is returned by appends after Close.
	ErrClosed = errors.New("audit log closed")
	// ErrCorrupt is returned by Open when the log on disk is damaged in a
	// way a crash cannot explain; run `opsd audit verify`.
	ErrCorrupt = errors.New("audit log corrupt")
	// ErrNotFound is returned for an index or size beyond the log.
	ErrNotFound = errors.New("audit index out of range")
)

type commitMode int

const (
	modeGroup  commitMode = iota // group commit: one fsync per batch
	modeNaive                    // one fsync per entry (benchmark baseline)
	modeNoSync                   // no fsync at all (benchmark ceiling; never acknowledges durability)
)

// Options configure a Log.
type Options struct {
	// Key signs checkpoints; Key.Name is the origin and Key.HMACKey hides
	// secret parameter values. Required.
	Key *signing.Key
	// SegmentSize is the size at which a segment is sealed and a new one
	// started (DefaultSegmentSize when 0).
	SegmentSize int64
	// CheckpointInterval is how often Run signs a checkpoint when the tree
	// grew (DefaultCheckpointInterval when 0).
	CheckpointInterval time.Duration
	// Witnesses receive every checkpoint.
	Witnesses []Witness
	// WitnessTimeout bounds one push to one witness.
	WitnessTimeout time.Duration
	// Metrics, when set, receives the log's metrics (see NewMetrics).
	Metrics *Metrics
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// FS defaults to OSFS.
	FS FS
	// Version is the opsd version written in the genesis entry.
	Version string
	// Now defaults to time.Now.
	Now func() time.Time

	mode commitMode
}

// Log is the append-only, signed audit log in one directory. It implements
// action.Recorder. All methods are safe for concurrent use.
type Log struct {
	dir     string
	fsys    FS
	key     *signing.Key
	opts    Options
	logger  *slog.Logger
	metrics *Metrics
	lock    io.Closer

	sendMu sync.RWMutex // held shared while sending to reqs; exclusively by Close
	closed bool
	reqs   chan *appendReq
	stop   chan struct{}
	done   chan struct{}

	// Owned by the committer goroutine (and Open before it starts).
	seg     File
	segOff  int64 // end of the last durable record in the active segment
	hashes  *hashStore
	wbuf    []byte
	hbuf    []byte
	pending []tlog.Hash
	broken  error // a failed append left state to repair before the next

	size atomic.Int64 // durable entries, published after fsync

	mu        sync.RWMutex
	segs      []segment // ascending; the last is active
	appendErr error
	changed   chan struct{} // closed and replaced when size grows

	ckMu      sync.Mutex // serializes checkpoint making
	ckFile    File
	ckOff     int64
	latest    []byte // guarded by mu
	latestCk  Checkpoint
	ckErr     error // guarded by mu
	pushed    map[int]int64
	closeOnce sync.Once
	closeErr  error
}

var _ action.Recorder = (*Log)(nil)

type appendReq struct {
	pre, post []byte
	done      chan appendResult
}

type appendResult struct {
	index int64
	err   error
}

// Open opens the log in dir, creating it with its genesis entry if it does
// not exist. A torn tail left by a crash is cut off (the bytes are kept
// under dir/quarantine) and the cut is recorded as an entry. Open fails with
// ErrCorrupt on damage a crash cannot explain, and with ErrLocked if another
// process has the log open. Close the log when done.
func Open(ctx context.Context, dir string, opts Options) (*Log, error) {
	if opts.Key == nil || opts.Key.Signer == nil {
		return nil, errors.New("open audit log: no signing key")
	}
	if opts.SegmentSize <= 0 {
		opts.SegmentSize = DefaultSegmentSize
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.WitnessTimeout <= 0 {
		opts.WitnessTimeout = DefaultWitnessTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.FS == nil {
		opts.FS = OSFS{}
	}
	if opts.Version == "" {
		opts.Version = buildinfo.Get().Version
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	l := &Log{
		dir: dir, fsys: opts.FS, key: opts.Key, opts: opts,
		logger: opts.Logger.With("component", "audit"), metrics: opts.Metrics,
		reqs: make(chan *appendReq, maxBatch), stop: make(chan struct{}), done: make(chan struct{}),
		changed: make(chan struct{}), pushed: map[int]int64{},
	}
	if err := l.open(ctx); err != nil {
		l.closeFiles()
		return nil, fmt.Errorf("open audit log %s: %w", dir, err)
	}
	return l, nil
}

// cut is a torn tail removed at open.
type cut struct {
	file       string
	offset     int64
	bytes      int64
	sha256     string
	quarantine string
	reason     string
}

func (l *Log) open(ctx context.Context) error {
	if err := l.fsys.MkdirAll(l.dir, 0o700); err != nil {
		return err
	}
	lk, err := l.fsys.Lock(filepath.Join(l.dir, "LOCK"))
	if err != nil {
		return err
	}
	l.lock = lk
	firsts, err := listSegments(l.fsys, l.dir)
	if err != nil {
		return err
	}
	var cuts []cut
	fresh := false
	if len(firsts) == 0 {
		if err := l.createSegment(0); err != nil {
			return err
		}
		l.segs = []segment{{first: 0}}
		fresh = true
	} else {
		c, err := l.openSegments(firsts)
		if err != nil {
			return err
		}
		cuts = append(cuts, c...)
	}
	active := l.segs[len(l.segs)-1]
	l.size.Store(active.first + active.count)
	if l.size.Load() == 0 {
		fresh = true
	}

	c, err := l.openCheckpoints()
	if err != nil {
		return err
	}
	cuts = append(cuts, c...)
	if err := l.openHashes(); err != nil {
		return err
	}
	l.metrics.setSize(l.size.Load())

	go l.committer()

	if fresh {
		g := Entry{Time: l.opts.Now().UTC(), Actor: action.Actor{Kind: action.ActorSystem, Name: "opsd"},
			Action: ActionGenesis, Object: "audit/" + l.key.Name, Outcome: action.Succeeded, AcceptedIndex: -1,
			Params: map[string]any{"origin": l.key.Name, "public_key": l.key.VerifierKey, "opsd_version": l.opts.Version}}
		if _, err := l.Append(ctx, g); err != nil {
			return fmt.Errorf("write genesis entry: %w", err)
		}
		if _, err := l.makeCheckpoint(); err != nil {
			return err
		}
	}
	for _, c := range cuts {
		l.logger.Warn("cut torn tail of audit log", "file", c.file, "offset", c.offset, "bytes", c.bytes, "reason", c.reason)
		e := Entry{Time: l.opts.Now().UTC(), Actor: action.Actor{Kind: action.ActorSystem, Name: "opsd"},
			Action: ActionRecover, Object: "audit/" + c.file, Outcome: action.Succeeded, AcceptedIndex: -1,
			Params: map[string]any{"file": c.file, "offset": c.offset, "bytes": c.bytes, "sha256": c.sha256,
				"quarantine": c.quarantine, "reason": c.reason}}
		if _, err := l.Append(ctx, e); err != nil {
			return fmt.Errorf("record torn-tail cut: %w", err)
		}
	}
	return nil
}

func (l *Log) path(name string) string { return filepath.Join(l.dir, name) }

// openSegments loads the segment list, scanning the active segment and
// cutting its torn tail.
func (l *Log) openSegments(firsts []int64) ([]cut, error) {
	next := int64(0)
	for k, first := range firsts {
		if first != next {
			return nil, fmt.Errorf("%w: segment %s starts at index %d, expected %d", ErrCorrupt, segName(first), first, next)
		}
		if k < len(firsts)-1 {
			offs, err := readIdx(l.fsys, l.dir, first)
			if err != nil {
				offs, err = l.reindex(first)
				if err != nil {
					return nil, err
				}
			}
			l.segs = append(l.segs, segment{first: first, count: int64(len(offs))})
			next = first + int64(len(offs))
			continue
		}
		f, err := l.fsys.OpenFile(l.path(segName(first)), os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		l.seg = f
		if st, err := f.Stat(); err == nil && st.Size() < segHeaderSize {
			// A crash while the segment was being created: it holds no entry.
			if _, err := f.WriteAt(segHeader(first), 0); err != nil {
				return nil, fmt.Errorf("rewrite header of %s: %w", segName(first), err)
			}
			if err := f.Sync(); err != nil {
				return nil, fmt.Errorf("rewrite header of %s: %w", segName(first), err)
			}
		}
		res, err := scanSegment(f, first)
		if err != nil {
			return nil, fmt.Errorf("%w: segment %s: %v", ErrCorrupt, segName(first), err)
		}
		var cuts []cut
		if res.bad != nil || res.goodEnd < res.size {
			reason := "trailing bytes"
			if res.bad != nil {
				reason = res.bad.Reason
			}
			c, err := l.cutTail(f, segName(first), res.goodEnd, res.size, reason)
			if err != nil {
				return nil, err
			}
			cuts = append(cuts, c)
		}
		l.segOff = res.goodEnd
		l.segs = append(l.segs, segment{first: first, count: int64(len(res.offsets)), offsets: res.offsets})
		return cuts, nil
	}
	return nil, nil
}

// reindex rebuilds a sealed segment's idx file.
func (l *Log) reindex(first int64) ([]int64, error) {
	f, err := l.fsys.OpenFile(l.path(segName(first)), os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res, err := scanSegment(f, first)
	if err != nil {
		return nil, fmt.Errorf("%w: segment %s: %v", ErrCorrupt, segName(first), err)
	}
	if res.bad != nil || res.goodEnd != res.size {
		return nil, fmt.Errorf("%w: sealed segment %s: %v", ErrCorrupt, segName(first), res.bad)
	}
	if err := writeIdx(l.fsys, l.dir, first, res.offsets); err != nil {
		return nil, fmt.Errorf("rewrite %s: %w", idxName(first), err)
	}
	return res.offsets, nil
}

// cutTail moves the bytes [from, to) of f to the quarantine directory and
// truncates f at from. Nothing is deleted: the torn bytes stay for forensics.
func (l *Log) cutTail(f File, name string, from, to int64, reason string) (cut, error) {
	raw := make([]byte, to-from)
	if _, err := f.ReadAt(raw, from); err != nil && err != io.EOF {
		return cut{}, fmt.Errorf("read torn tail of %s: %w", name, err)
	}
	sum := sha256.Sum256(raw)
	qdir := l.path("quarantine")
	if err := l.fsys.MkdirAll(qdir, 0o700); err != nil {
		return cut{}, err
	}
	qname := fmt.Sprintf("%s.%d.%d", name, from, l.opts.Now().UnixNano())
	q, err := l.fsys.OpenFile(filepath.Join(qdir, qname), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return cut{}, err
	}
	if _, err := q.WriteAt(raw, 0); err != nil {
		q.Close()
		return cut{}, err
	}
	if err := q.Sync(); err != nil {
		q.Close()
		return cut{}, err
	}
	if err := q.Close(); err != nil {
		return cut{}, err
	}
	if err := l.fsys.SyncDir(qdir); err != nil {
		return cut{}, err
	}
	if err := f.Truncate(from); err != nil {
		return cut{}, fmt.Errorf("truncate %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		return cut{}, fmt.Errorf("sync %s: %w", name, err)
	}
	return cut{file: name, offset: from, bytes: to - from, sha256: hex.EncodeToString(sum[:]),
		quarantine: "quarantine/" + qname, reason: reason}, nil
}

func (l *Log) createSegment(first int64) error {
	f, err := l.fsys.OpenFile(l.path(segName(first)), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create segment: %w", err)
	}
	if _, err := f.WriteAt(segHeader(first), 0); err != nil {
		f.Close()
		return fmt.Errorf("create segment: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("create segment: %w", err)
	}
	if err := l.fsys.SyncDir(l.dir); err != nil {
		f.Close()
		return fmt.Errorf("create segment: %w", err)
	}
	l.seg = f
	l.segOff = segHeaderSize
	return nil
}

// openHashes opens the hash store, keeps what the latest checkpoint covers
// (it was synced before that checkpoint was signed), and recomputes the rest
// from the entries.
func (l *Log) openHashes() error {
	f, err := l.fsys.OpenFile(l.path(hashFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	l.hashes = &hashStore{f: f}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() < hashHeaderSize {
		if _, err := f.WriteAt([]byte(hashHeader), 0); err != nil {
			return err
		}
	}
	have := max(0, (st.Size()-hashHeaderSize)/tlog.HashSize)
	size := l.size.Load()
	trusted := min(have, tlog.StoredHashCount(l.latestCk.Size))
	// n0 = the largest tree size whose hashes are all trusted.
	n0 := int64(sort.Search(int(size)+1, func(n int) bool { return tlog.StoredHashCount(int64(n)) > trusted })) - 1
	n0 = max(n0, 0)
	if err := f.Truncate(hashOffset(tlog.StoredHashCount(n0))); err != nil {
		return err
	}
	if n0 < size {
		next := tlog.StoredHashCount(n0)
		err := l.scanEntries(n0, size, func(i int64, raw []byte) error {
			r := &batchReader{store: l.hashes, base: next}
			hs, err := tlog.StoredHashes(i, raw, r)
			if err != nil {
				return err
			}
			if l.hbuf, err = l.hashes.write(next, hs, l.hbuf); err != nil {
				return err
			}
			next += int64(len(hs))
			return nil
		})
		if err != nil {
			return fmt.Errorf("rebuild stored hashes: %w", err)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if c := l.latestCk; c.Size > 0 {
		root, err := tlog.TreeHash(c.Size, l.hashes)
		if err != nil {
			return err
		}
		if root != c.Root {
			return fmt.Errorf("%w: entries do not match the latest checkpoint (size %d)", ErrCorrupt, c.Size)
		}
	}
	return nil
}

// Append writes e with the next index and returns that index once e is
// durable. Callers normally use Record; Append is for entries opsd writes
// about itself.
func (l *Log) Append(ctx context.Context, e Entry) (int64, error) {
	start := time.Now()
	pre, post, err := e.encodeParts()
	if err != nil {
		return -1, fmt.Errorf("encode audit entry: %w", err)
	}
	req := &appendReq{pre: pre, post: post, done: make(chan appendResult, 1)}
	l.sendMu.RLock()
	if l.closed {
		l.sendMu.RUnlock()
		return -1, ErrClosed
	}
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		l.sendMu.RUnlock()
		return -1, fmt.Errorf("append audit entry: %w", ctx.Err())
	}
	l.sendMu.RUnlock()
	// Once queued the entry may become durable, so wait for the verdict
	// even if ctx ends: the committer answers within one fsync.
	res := <-req.done
	if res.err == nil {
		l.metrics.appendSeconds.Observe(time.Since(start).Seconds())
	}
	return res.index, res.err
}

// Record implements action.Recorder: it turns r into an entry (secret
// parameters replaced by their HMAC) and returns its index once durable.
func (l *Log) Record(ctx context.Context, r action.Record) (int64, error) {
	e, err := entryFromRecord(l.key.HMACKey, r)
	if err != nil {
		return -1, fmt.Errorf("audit %s: %w", r.Action, err)
	}
	return l.Append(ctx, e)
}

// committer is the one goroutine that writes entries. It takes whatever
// requests queued up while the previous fsync ran, so concurrent appends
// share one fsync (group commit).
func (l *Log) committer() {
	defer close(l.done)
	batch := make([]*appendReq, 0, maxBatch)
	limit := maxBatch
	if l.opts.mode == modeNaive {
		limit = 1
	}
	for {
		batch = batch[:0]
		select {
		case r := <-l.reqs:
			batch = append(batch, r)
		case <-l.stop:
			// Close stopped new sends; finish what is queued.
			for {
				select {
				case r := <-l.reqs:
					l.commit([]*appendReq{r})
				default:
					return
				}
			}
		}
	drain:
		for len(batch) < limit {
			select {
			case r := <-l.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		l.commit(batch)
	}
}

func (l *Log) commit(batch []*appendReq) {
	n := 0
	for _, r := range batch {
		if r.pre == nil { // a disk probe from Run
			err := l.probeDisk()
			if err == nil {
				l.mu.Lock()
				l.appendErr = nil
				l.mu.Unlock()
				l.logger.Info("audit log healthy again")
			}
			r.done <- appendResult{index: -1, err: err}
			continue
		}
		batch[n] = r
		n++
	}
	batch = batch[:n]
	if len(batch) == 0 {
		return
	}
	err := l.write(batch)
	if err != nil {
		l.metrics.appendFailures.Add(float64(len(batch)))
		l.fail(err)
		for _, r := range batch {
			r.done <- appendResult{index: -1, err: fmt.Errorf("append audit entry: %w", err)}
		}
		return
	}
	first := l.size.Load()
	l.mu.Lock()
	active := &l.segs[len(l.segs)-1]
	active.count += int64(len(batch))
	l.size.Store(first + int64(len(batch)))
	l.appendErr = nil
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	l.metrics.setSize(first + int64(len(batch)))
	for i, r := range batch {
		r.done <- appendResult{index: first + int64(i)}
	}
}

// write makes batch durable or leaves the files as they were.
func (l *Log) write(batch []*appendReq) error {
	if l.broken != nil {
		if err := l.repair(); err != nil {
			return fmt.Errorf("log unusable since an earlier failure: %w", err)
		}
	}
	if l.segOff >= l.opts.SegmentSize && l.size.Load() > l.segs[len(l.segs)-1].first {
		if err := l.rotate(); err != nil {
			l.broken = err
			return fmt.Errorf("rotate segment: %w", err)
		}
	}
	n := l.size.Load()
	buf := l.wbuf[:0]
	offsets := make([]int64, len(batch))
	leaves := make([][2]int, len(batch))
	for i, r := range batch {
		offsets[i] = l.segOff + int64(len(buf))
		start := len(buf)
		buf = append(buf, make([]byte, recordHeaderSize)...)
		buf = joinParts(buf, r.pre, n+int64(i), r.post)
		putRecordHeader(buf[start:], buf[start+recordHeaderSize:])
		leaves[i] = [2]int{start + recordHeaderSize, len(buf)}
	}
	l.wbuf = buf
	if _, err := l.seg.WriteAt(buf, l.segOff); err != nil {
		l.broken = err
		return fmt.Errorf("write segment: %w", err)
	}
	base := tlog.StoredHashCount(n)
	l.pending = l.pending[:0]
	r := &batchReader{store: l.hashes, base: base}
	for i := range batch {
		r.pending = l.pending
		hs, err := tlog.StoredHashes(n+int64(i), buf[leaves[i][0]:leaves[i][1]], r)
		if err != nil {
			l.broken = err
			return fmt.Errorf("hash entry %d: %w", n+int64(i), err)
		}
		l.pending = append(l.pending, hs...)
	}
	var err error
	if l.hbuf, err = l.hashes.write(base, l.pending, l.hbuf); err != nil {
		l.broken = err
		return err
	}
	if l.opts.mode != modeNoSync {
		if err := l.seg.Sync(); err != nil {
			l.broken = err
			return fmt.Errorf("sync segment: %w", err)
		}
	}
	l.segOff += int64(len(buf))
	l.mu.Lock()
	active := &l.segs[len(l.segs)-1]
	active.offsets = append(active.offsets, offsets...)
	l.mu.Unlock()
	if cap(l.wbuf) > 4<<20 {
		l.wbuf = nil
	}
	return nil
}

// fail marks the log unhealthy and tries to cut back what the failed batch
// wrote.
func (l *Log) fail(err error) {
	l.logger.Error("audit append failed; refusing actions until the disk works", "err", err)
	l.mu.Lock()
	l.appendErr = fmt.Errorf("audit append failed: %w", err)
	l.mu.Unlock()
	if rerr := l.repair(); rerr != nil {
		l.logger.Error("audit log repair failed; will retry", "err", rerr)
	}
}

// repair truncates the active segment and the hash store back to the last
// durable state. After a failed fsync the page cache cannot be trusted, so
// the segment is reopened before it is cut and synced.
func (l *Log) repair() error {
	name := segName(l.segs[len(l.segs)-1].first)
	f, err := l.fsys.OpenFile(l.path(name), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("reopen %s: %w", name, err)
	}
	if err := f.Truncate(l.segOff); err != nil {
		f.Close()
		return fmt.Errorf("truncate %s: %w", name, err)
	}
	if err := l.hashes.f.Truncate(hashOffset(tlog.StoredHashCount(l.size.Load()))); err != nil {
		f.Close()
		return fmt.Errorf("truncate stored hashes: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	l.seg.Close()
	l.seg = f
	l.broken = nil
	return nil
}

// rotate seals the active segment and starts the next.
func (l *Log) rotate() error {
	l.mu.RLock()
	active := l.segs[len(l.segs)-1]
	l.mu.RUnlock()
	if err := writeIdx(l.fsys, l.dir, active.first, active.offsets); err != nil {
		return fmt.Errorf("seal %s: %w", segName(active.first), err)
	}
	old := l.seg
	next := l.size.Load()
	if err := l.createSegment(next); err != nil {
		l.seg = old
		return err
	}
	old.Close()
	l.mu.Lock()
	l.segs[len(l.segs)-1].offsets = nil
	l.segs = append(l.segs, segment{first: next})
	l.mu.Unlock()
	return nil
}

// Size returns the number of durable entries.
func (l *Log) Size() int64 { return l.size.Load() }

// Origin returns the checkpoint origin (the key name).
func (l *Log) Origin() string { return l.key.Name }

// Healthy returns nil when the log accepts appends and signs checkpoints;
// otherwise the reason, for /readyz.
func (l *Log) Healthy() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	select {
	case <-l.done:
		return ErrClosed
	default:
	}
	if l.appendErr != nil {
		return l.appendErr
	}
	return l.ckErr
}

// Wait blocks until the log holds more than after entries, ctx ends or the
// log closes, and returns the size; for `audit tail --follow`.
func (l *Log) Wait(ctx context.Context, after int64) (int64, error) {
	for {
		l.mu.RLock()
		ch := l.changed
		l.mu.RUnlock()
		if s := l.size.Load(); s > after {
			return s, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return l.size.Load(), ctx.Err()
		case <-l.done:
			return l.size.Load(), ErrClosed
		}
	}
}

// StoredEntry is an entry as stored: its index, the exact leaf bytes and the
// decoded entry. It marshals as SPEC §10's item shape.
type StoredEntry struct {
	Index int64  `json:"index"`
	Raw   []byte `json:"raw"`
	Entry Entry  `json:"entry"`
}

// Entries returns up to limit entries starting at index from. An empty
// result means from is at or past the end.
func (l *Log) Entries(from int64, limit int) ([]StoredEntry, error) {
	size := l.size.Load()
	if from < 0 {
		return nil, fmt.Errorf("entries from %d: %w", from, ErrNotFound)
	}
	if from >= size || limit <= 0 {
		return nil, nil
	}
	to := min(size, from+int64(limit))
	out := make([]StoredEntry, 0, to-from)
	err := l.scanEntries(from, to, func(i int64, raw []byte) error {
		e, err := DecodeEntry(raw)
		if err != nil {
			return fmt.Errorf("entry %d: %w", i, err)
		}
		out = append(out, StoredEntry{Index: i, Raw: append([]byte(nil), raw...), Entry: e})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read audit entries %d..%d: %w", from, to-1, err)
	}
	return out, nil
}

// Page is one page of GET /api/v1/audit/entries (SPEC §10).
type Page struct {
	Items []StoredEntry `json:"items"`
	// NextCursor is the index to ask for next as a decimal string, empty
	// at the end of the log.
	NextCursor string `json:"next_cursor"`
}

// EntriesPage returns a page for the API; limit is clamped to 1..1000.
func (l *Log) EntriesPage(from int64, limit int) (Page, error) {
	limit = min(max(limit, 1), 1000)
	items, err := l.Entries(from, limit)
	if err != nil {
		return Page{}, err
	}
	p := Page{Items: items}
	if p.Items == nil {
		p.Items = []StoredEntry{}
	}
	if next := from + int64(len(items)); len(items) > 0 && next < l.Size() {
		p.NextCursor = fmt.Sprint(next)
	}
	return p, nil
}

// scanEntries calls fn for each entry in [from, to), streaming segments.
func (l *Log) scanEntries(from, to int64, fn func(i int64, raw []byte) error) error {
	l.mu.RLock()
	segs := append([]segment(nil), l.segs...)
	l.mu.RUnlock()
	k := sort.Search(len(segs), func(k int) bool { return segs[k].first > from }) - 1
	i := from
	for ; k < len(segs) && i < to; k++ {
		s := segs[k]
		var start int64
		if s.offsets != nil || k == len(segs)-1 {
			if i-s.first >= int64(len(s.offsets)) {
				return fmt.Errorf("entry %d: no offset known", i)
			}
			start = s.offsets[i-s.first]
		} else {
			off, err := l.idxOffset(s.first, i)
			if err != nil {
				return err
			}
			start = off
		}
		f, err := l.fsys.OpenFile(l.path(segName(s.first)), os.O_RDONLY, 0)
		if err != nil {
			return err
		}
		rr := newRecordReader(io.NewSectionReader(f, start, 1<<62), start, 64<<10)
		for ; i < to && i < s.first+s.count; i++ {
			raw, _, err := rr.next()
			if err != nil {
				f.Close()
				return fmt.Errorf("segment %s entry %d: %w", segName(s.first), i, err)
			}
			if err := fn(i, raw); err != nil {
				f.Close()
				return err
			}
		}
		f.Close()
	}
	if i < to {
		return fmt.Errorf("entries %d..%d: %w", i, to-1, ErrNotFound)
	}
	return nil
}

func (l *Log) idxOffset(first, i int64) (int64, error) {
	f, err := l.fsys.OpenFile(l.path(idxName(first)), os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], (i-first)*8); err != nil {
		return 0, fmt.Errorf("read %s: %w", idxName(first), err)
	}
	return int64(uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])), nil
}

// TreeHash returns the root of the tree of the first size entries.
func (l *Log) TreeHash(size int64) (tlog.Hash, error) {
	if size < 1 || size > l.size.Load() {
		return tlog.Hash{}, fmt.Errorf("tree hash of size %d: %w", size, ErrNotFound)
	}
	return tlog.TreeHash(size, l.hashes)
}

// ProveRecord returns the inclusion proof of entry i in the tree of size
// size, in tlog.ProveRecord order (SPEC §10).
func (l *Log) ProveRecord(i, size int64) (tlog.RecordProof, error) {
	if i < 0 || i >= size || size > l.size.Load() {
		return nil, fmt.Errorf("prove entry %d in tree of size %d: %w", i, size, ErrNotFound)
	}
	p, err := tlog.ProveRecord(size, i, l.hashes)
	if err != nil {
		return nil, fmt.Errorf("prove entry %d in tree of size %d: %w", i, size, err)
	}
	return p, nil
}

// ProveTree returns the proof that the tree of size from is a prefix of the
// tree of size to, in tlog.ProveTree order (SPEC §10).
func (l *Log) ProveTree(from, to int64) (tlog.TreeProof, error) {
	if from < 1 || from > to || to > l.size.Load() {
		return nil, fmt.Errorf("prove tree %d..%d: %w", from, to, ErrNotFound)
	}
	p, err := tlog.ProveTree(to, from, l.hashes)
	if err != nil {
		return nil, fmt.Errorf("prove tree %d..%d: %w", from, to, err)
	}
	return p, nil
}

// RecordProofJSON is the body of GET /api/v1/audit/entries/{i}/proof.
type RecordProofJSON struct {
	Index    int64       `json:"index"`
	TreeSize int64       `json:"tree_size"`
	Hashes   []tlog.Hash `json:"hashes"`
}

// TreeProofJSON is the body of GET /api/v1/audit/consistency.
type TreeProofJSON struct {
	From   int64       `json:"from"`
	To     int64       `json:"to"`
	Hashes []tlog.Hash `json:"hashes"`
}

// Close stops the committer after the queued appends, signs a last
// checkpoint if the tree grew, and closes the files. Witness pushes on
// shutdown are Run's job.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.sendMu.Lock()
		l.closed = true
		l.sendMu.Unlock()
		close(l.stop)
		<-l.done
		if l.appendErr == nil {
			if _, err := l.makeCheckpoint(); err != nil {
				l.closeErr = err
			}
		}
		l.closeErr = errors.Join(l.closeErr, l.closeFiles())
	})
	return l.closeErr
}

func (l *Log) closeFiles() error {
	var errs []error
	if l.seg != nil {
		errs = append(errs, l.seg.Close())
	}
	if l.ckFile != nil {
		errs = append(errs, l.ckFile.Close())
	}
	if l.hashes != nil {
		errs = append(errs, l.hashes.f.Sync(), l.hashes.f.Close())
	}
	if l.lock != nil {
		errs = append(errs, l.lock.Close())
	}
	return errors.Join(errs...)
}
