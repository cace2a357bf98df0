package audit

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Checkpoint is the body of a C2SP tlog-checkpoint:
//
//	<origin>\n<tree size>\n<base64 root hash>\n
//
// opsd writes no extension lines; ParseCheckpoint accepts and ignores them.
type Checkpoint struct {
	Origin string
	Size   int64
	Root   tlog.Hash
}

// FormatCheckpoint returns c's checkpoint text (tlog.FormatTree is not used:
// it hard-codes the Go checksum database's origin).
func FormatCheckpoint(c Checkpoint) []byte {
	return fmt.Appendf(nil, "%s\n%d\n%s\n", c.Origin, c.Size, base64.StdEncoding.EncodeToString(c.Root[:]))
}

// ParseCheckpoint parses checkpoint text.
func ParseCheckpoint(text string) (Checkpoint, error) {
	if !strings.HasSuffix(text, "\n") {
		return Checkpoint{}, errors.New("checkpoint: missing final newline")
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return Checkpoint{}, errors.New("checkpoint: want origin, size and root lines")
	}
	if lines[0] == "" {
		return Checkpoint{}, errors.New("checkpoint: empty origin")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("checkpoint: bad tree size %q", lines[1])
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != tlog.HashSize {
		return Checkpoint{}, fmt.Errorf("checkpoint: bad root hash %q", lines[2])
	}
	c := Checkpoint{Origin: lines[0], Size: size}
	copy(c.Root[:], root)
	return c, nil
}

// OpenCheckpoint checks the signature of a signed checkpoint note with v and
// that its origin is v's name, and returns the checkpoint.
func OpenCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		var unverified *note.UnverifiedNoteError
		if errors.As(err, &unverified) && len(unverified.Note.UnverifiedSigs) > 0 {
			s := unverified.Note.UnverifiedSigs[0]
			return Checkpoint{}, fmt.Errorf("checkpoint not signed by the trusted key %s+%08x (signed by %s+%08x)", v.Name(), v.KeyHash(), s.Name, s.Hash)
		}
		return Checkpoint{}, fmt.Errorf("checkpoint signature: %w", err)
	}
	c, err := ParseCheckpoint(n.Text)
	if err != nil {
		return Checkpoint{}, err
	}
	if c.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("checkpoint origin %q is not the key name %q", c.Origin, v.Name())
	}
	return c, nil
}

// The checkpoint file keeps every checkpoint ever signed, in order, as
// framed records after a 16-byte header.
const (
	ckFileName = "checkpoints.log"
	ckMagic    = "OPSD-AUDIT-CKP1\n"
)

func (l *Log) openCheckpoints() ([]cut, error) {
	f, err := l.fsys.OpenFile(l.path(ckFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	l.ckFile = f
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < int64(len(ckMagic)) {
		if _, err := f.WriteAt([]byte(ckMagic), 0); err != nil {
			return nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, err
		}
		if err := l.fsys.SyncDir(l.dir); err != nil {
			return nil, err
		}
		l.ckOff = int64(len(ckMagic))
		return nil, nil
	}
	head := make([]byte, len(ckMagic))
	if _, err := f.ReadAt(head, 0); err != nil || string(head) != ckMagic {
		return nil, fmt.Errorf("%w: %s: bad header", ErrCorrupt, ckFileName)
	}
	rr := newRecordReader(io.NewSectionReader(f, int64(len(ckMagic)), st.Size()), int64(len(ckMagic)), 64<<10)
	l.ckOff = int64(len(ckMagic))
	for {
		payload, _, err := rr.next()
		if err == io.EOF {
			break
		}
		var bad *errBadRecord
		if errors.As(err, &bad) {
			c, err := l.cutTail(f, ckFileName, l.ckOff, st.Size(), bad.Reason)
			if err != nil {
				return nil, err
			}
			return []cut{c}, nil
		}
		if err != nil {
			return nil, err
		}
		c, err := OpenCheckpoint(payload, l.key.Verifier)
		if err != nil {
			return nil, fmt.Errorf("%w: %s at offset %d: %v", ErrCorrupt, ckFileName, l.ckOff, err)
		}
		if c.Size < l.latestCk.Size {
			return nil, fmt.Errorf("%w: %s: checkpoint of size %d after one of size %d", ErrCorrupt, ckFileName, c.Size, l.latestCk.Size)
		}
		l.latest = append([]byte(nil), payload...)
		l.latestCk = c
		l.ckOff = rr.off
	}
	if l.latestCk.Size > l.size.Load() {
		return nil, fmt.Errorf("%w: log has %d entries but checkpoint of size %d was signed: entries were removed",
			ErrCorrupt, l.size.Load(), l.latestCk.Size)
	}
	if l.latest != nil {
		l.metrics.lastCheckpoint.Store(l.opts.Now().UnixNano())
	}
	return nil, nil
}

// makeCheckpoint signs and stores a checkpoint of the current tree if it
// grew since the last one.
func (l *Log) makeCheckpoint() (bool, error) {
	l.ckMu.Lock()
	defer l.ckMu.Unlock()
	size := l.size.Load()
	l.mu.RLock()
	have := l.latest != nil && l.latestCk.Size >= size
	l.mu.RUnlock()
	if size == 0 || have {
		if have {
			// The whole log is covered by a signed checkpoint: it is as
			// fresh as it can be, so an idle log never looks stale.
			l.metrics.lastCheckpoint.Store(l.opts.Now().UnixNano())
		}
		return false, nil
	}
	signed, c, err := l.signCheckpoint(size)
	if err == nil {
		rec := appendRecord(nil, signed)
		if _, err = l.ckFile.WriteAt(rec, l.ckOff); err == nil {
			err = l.ckFile.Sync()
		}
		if err != nil {
			if terr := l.ckFile.Truncate(l.ckOff); terr != nil {
				err = errors.Join(err, terr)
			}
		} else {
			l.ckOff += int64(len(rec))
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.ckErr = fmt.Errorf("audit checkpoint: %w", err)
		l.logger.Error("audit checkpoint failed", "size", size, "err", err)
		return false, l.ckErr
	}
	l.latest, l.latestCk, l.ckErr = signed, c, nil
	l.metrics.lastCheckpoint.Store(l.opts.Now().UnixNano())
	return true, nil
}

func (l *Log) signCheckpoint(size int64) ([]byte, Checkpoint, error) {
	// The stored hashes a checkpoint covers must be durable before it is
	// signed: Open trusts them without recomputing.
	if err := l.hashes.f.Sync(); err != nil {
		return nil, Checkpoint{}, fmt.Errorf("sync stored hashes: %w", err)
	}
	root, err := tlog.TreeHash(size, l.hashes)
	if err != nil {
		return nil, Checkpoint{}, err
	}
	c := Checkpoint{Origin: l.key.Name, Size: size, Root: root}
	signed, err := note.Sign(&note.Note{Text: string(FormatCheckpoint(c))}, l.key.Signer)
	if err != nil {
		return nil, Checkpoint{}, fmt.Errorf("sign checkpoint: %w", err)
	}
	return signed, c, nil
}

// Checkpoint returns the latest signed checkpoint note (SPEC §10), the body
// of GET /api/v1/audit/checkpoint.
func (l *Log) Checkpoint() ([]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.latest == nil {
		return nil, errors.New("audit log has no checkpoint yet")
	}
	return bytes.Clone(l.latest), nil
}

// LatestCheckpoint returns the parsed latest checkpoint.
func (l *Log) LatestCheckpoint() Checkpoint {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.latestCk
}

// Run signs a checkpoint every CheckpointInterval when the tree grew, pushes
// it to the witnesses and, while the log is unhealthy, probes the disk so
// the log recovers when it works again. When ctx ends Run signs and pushes
// a final checkpoint and returns nil. Close the log after Run returned.
func (l *Log) Run(ctx context.Context) error {
	tick := time.NewTicker(l.opts.CheckpointInterval)
	defer tick.Stop()
	probe := time.NewTicker(time.Second)
	defer probe.Stop()
	l.checkpointAndPush(ctx)
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.opts.WitnessTimeout)
			l.checkpointAndPush(fctx)
			cancel()
			return nil
		case <-tick.C:
			l.checkpointAndPush(ctx)
		case <-probe.C:
			l.probe(ctx)
		case <-l.done:
			return ErrClosed
		}
	}
}

func (l *Log) checkpointAndPush(ctx context.Context) {
	if _, err := l.makeCheckpoint(); err != nil {
		return // recorded in Healthy and logged
	}
	l.mu.RLock()
	signed, c := l.latest, l.latestCk
	l.mu.RUnlock()
	if signed == nil {
		return
	}
	for i, w := range l.opts.Witnesses {
		if l.pushed[i] >= c.Size {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, l.opts.WitnessTimeout)
		err := w.PutCheckpoint(wctx, c.Origin, c.Size, signed)
		cancel()
		if err != nil {
			name := witnessName(w, i)
			l.metrics.witnessFailures.WithLabelValues(name).Inc()
			l.logger.Warn("push audit checkpoint to witness", "witness", name, "size", c.Size, "err", err)
			continue
		}
		l.pushed[i] = c.Size
	}
}

// probe asks the committer to check the disk while the log is unhealthy.
func (l *Log) probe(ctx context.Context) {
	l.mu.RLock()
	bad := l.appendErr != nil
	l.mu.RUnlock()
	if !bad {
		return
	}
	req := &appendReq{done: make(chan appendResult, 1)}
	l.sendMu.RLock()
	if l.closed {
		l.sendMu.RUnlock()
		return
	}
	select {
	case l.reqs <- req:
	case <-ctx.Done():
		l.sendMu.RUnlock()
		return
	}
	l.sendMu.RUnlock()
	<-req.done
}

// probeDisk runs on the committer: repair what a failed append left, then
// prove the file system takes a synced write again.
func (l *Log) probeDisk() error {
	if l.broken != nil {
		if err := l.repair(); err != nil {
			return err
		}
	}
	name := l.path(".probe")
	f, err := l.fsys.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, werr := f.WriteAt(make([]byte, 4096), 0)
	serr := f.Sync()
	cerr := f.Close()
	rerr := l.fsys.Remove(name)
	return errors.Join(werr, serr, cerr, rerr)
}

func witnessName(w Witness, i int) string {
	if s, ok := w.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("witness-%d", i)
}
