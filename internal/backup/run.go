package backup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pzstd"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/buildinfo"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/storage"
)

// Backup states (SPEC §4).
const (
	StateSucceeded = "succeeded" // every copy complete
	StatePartial   = "partial"   // some copies complete
	StateFailed    = "failed"    // no copy complete
)

// Copy states (SPEC §4).
const (
	CopyWriting  = "writing"
	CopyComplete = "complete"
	CopyFailed   = "failed"
)

// Defaults for Options.
const (
	DefaultMaxLag    = 8 << 20
	DefaultMaxStall  = 5 * time.Second
	DefaultZstdLevel = 3
)

// Options configure one backup.
type Options struct {
	// ID is the backup id (manifest.NewID's shape); empty means a new one
	// from the clock. The daemon passes the id of its catalog row so the
	// catalog, the manifest and the object keys agree.
	ID string
	// Source is the source's name (the first key segment); Type its config
	// type (postgres, files, command, plugin:<name>).
	Source string
	Type   string
	// Targets receive a copy each.
	Targets []storage.Backend
	// Recipients encrypt the data. Empty is an error unless NoEncryption.
	Recipients   []age.Recipient
	NoEncryption bool
	// ZstdLevel is the configured zstd level (1..22); 0 means 3.
	ZstdLevel int
	// CompressionWorkers compress chunks of the stream at once; 0 means
	// GOMAXPROCS, at most pzstd.DefaultMaxWorkers.
	CompressionWorkers int
	// CompressionChunk is the uncompressed size of one zstd frame; 0
	// means pzstd.DefaultChunkSize. A lane receives a chunk's compressed
	// bytes at once, so MaxLag should exceed it.
	CompressionChunk int
	// Signer signs the manifest (the audit key).
	Signer note.Signer
	// SpoolDir receives lanes of targets that fall behind; "" drops them.
	SpoolDir string
	// MaxLag is the memory one lane may hold; 0 means DefaultMaxLag.
	MaxLag int64
	// MaxSpool caps one lane's spool file; 0 means only the disk limits it.
	MaxSpool int64
	// MaxStall is how long the producer waits for a lane that can neither
	// queue nor spill before that lane's copy fails; 0 means
	// DefaultMaxStall, negative means no wait.
	MaxStall time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives per-copy outcomes; nil discards.
	Logger *slog.Logger
	// SizeHint is the expected stored size (the previous backup's), 0 if
	// unknown; object stores size their upload parts from it.
	SizeHint int64
	// Progress, if set, is called about twice a second with the bytes read
	// from the source so far.
	Progress func(Progress)
}

// Result is the outcome of a backup.
type Result struct {
	ID    string
	State string
	// Manifest as written; nil if the data phase failed everywhere.
	Manifest *manifest.Manifest
	Copies   []Copy
	// SourceLog is the source's diagnostic output (bounded stderr tail).
	SourceLog string
}

// Copy is the outcome on one target.
type Copy struct {
	Target string
	State  string
	// Key of the data object.
	Key      string
	Bytes    int64
	SHA256   string
	Duration time.Duration
	// Spilled counts bytes that went through the spool for this target.
	Spilled int64
	Err     error
}

// Progress reports a running backup or restore.
type Progress struct {
	// Phase is "backup", "download" (reading and verifying a stored copy)
	// or "restore" (writing to the destination).
	Phase string
	Bytes int64         // bytes done (source bytes read; restored bytes written)
	Total int64         // expected total, 0 if unknown
	Rate  float64       // bytes per second since start
	ETA   time.Duration // 0 if unknown
}

// Run makes one backup of src to every target. It returns an error only
// when no copy completed; a partial backup returns its Result with State
// partial and per-copy errors.
func Run(ctx context.Context, src source.Source, opts Options) (*Result, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	started := now().UTC()
	id := opts.ID
	if id == "" {
		id = manifest.NewID(started)
	}
	m := &manifest.Manifest{
		FormatVersion: manifest.FormatVersion,
		ID:            id,
		Source:        opts.Source,
		Type:          opts.Type,
		Kind:          src.Kind(),
		Started:       started,
		Compression:   manifest.Compression{Algorithm: "zstd", Level: opts.level(), Encoder: zstd.EncoderLevelFromZstd(opts.level()).String()},
		Encryption:    manifest.Encryption{Algorithm: "none"},
		Opsd:          manifest.Opsd{Version: buildinfo.Get().Version, Commit: buildinfo.Get().Commit},
	}
	if !opts.NoEncryption {
		m.Encryption = manifest.Encryption{Algorithm: "age", Recipients: recipientStrings(opts.Recipients)}
	}
	dataName := manifest.DataName(src.Kind(), !opts.NoEncryption)
	dataKey := m.Key(dataName)
	log = log.With("source", opts.Source, "backup", id)

	res := &Result{ID: id, Copies: make([]Copy, len(opts.Targets))}
	dataCtx, cancelData := context.WithCancelCause(ctx)
	defer cancelData(nil)

	// Start one Save per target, each reading its lane.
	maxLag := opts.MaxLag
	if maxLag <= 0 {
		maxLag = DefaultMaxLag
	}
	stall := opts.MaxStall
	if stall == 0 {
		stall = DefaultMaxStall
	}
	lanes := make([]*lane, len(opts.Targets))
	var wg sync.WaitGroup
	for i, t := range opts.Targets {
		l, stop := newLane(dataCtx, t.Name(), maxLag, opts.SpoolDir, opts.MaxSpool, stall)
		lanes[i] = l
		res.Copies[i] = Copy{Target: t.Name(), State: CopyWriting, Key: dataKey}
		wg.Go(func() {
			defer stop()
			t0 := now()
			info, err := t.Save(dataCtx, dataKey, l, storage.SaveOptions{NoOverwrite: true, ContentType: "application/octet-stream", SizeHint: opts.SizeHint})
			if err != nil {
				// Stop feeding it; keep the lane's own reason if it failed first.
				if r := l.reason(); r != nil {
					err = r
				}
				l.fail(err)
			}
			read, eof, spilled := l.stats()
			c := &res.Copies[i]
			c.Duration, c.Spilled, c.Bytes = now().Sub(t0), spilled, read
			switch {
			case err != nil:
				c.State, c.Err = CopyFailed, fmt.Errorf("save %s to %s: %w", dataKey, t.Name(), err)
			case !eof:
				c.State, c.Err = CopyFailed, fmt.Errorf("save %s to %s: the backend returned before the end of the data", dataKey, t.Name())
			case info.Size > 0 && info.Size != read:
				c.State, c.Err = CopyFailed, fmt.Errorf("save %s to %s: stored %d bytes, sent %d", dataKey, t.Name(), info.Size, read)
			default:
				c.State = CopyComplete
			}
		})
	}

	srcRes, raw, digest, stored, dataErr := produce(dataCtx, src, opts, lanes)
	if dataErr != nil {
		cancelData(dataErr)
	}
	wg.Wait()
	for _, l := range lanes {
		l.release()
	}
	res.SourceLog = srcRes.Log
	if dataErr != nil {
		for i := range res.Copies {
			c := &res.Copies[i]
			if c.State != CopyFailed || c.Err == nil || errors.Is(c.Err, context.Canceled) {
				c.State, c.Err = CopyFailed, fmt.Errorf("backup %s of %s: %w", id, opts.Source, dataErr)
			}
		}
		res.State = StateFailed
		log.Error("backup failed", "err", dataErr)
		return res, fmt.Errorf("backup %s of %s: %w", id, opts.Source, dataErr)
	}

	failpoint.Hit("backup.data-done")
	m.Finished = now().UTC()
	m.Size = manifest.Size{Raw: raw, Stored: stored}
	m.Objects = []manifest.Object{{Name: dataName, Size: stored, SHA256: digest}}
	m.SourceMeta = srcRes.Meta
	m.Warnings = srcRes.Warnings
	mraw, sig, err := manifest.Sign(m, opts.Signer)
	if err != nil {
		return res, err
	}
	res.Manifest = m

	// Manifest, then signature, only where the data copy completed.
	var mwg sync.WaitGroup
	for i, t := range opts.Targets {
		c := &res.Copies[i]
		c.SHA256 = digest
		if c.State != CopyComplete {
			continue
		}
		mwg.Go(func() {
			for _, obj := range []struct {
				name string
				data []byte
				ct   string
			}{{manifest.ManifestName, mraw, "application/json"}, {manifest.SignatureName, sig, "text/plain; charset=utf-8"}} {
				if _, err := t.Save(ctx, m.Key(obj.name), bytes.NewReader(obj.data), storage.SaveOptions{NoOverwrite: true, ContentType: obj.ct}); err != nil {
					c.State, c.Err = CopyFailed, fmt.Errorf("save %s to %s: %w", m.Key(obj.name), t.Name(), err)
					// No manifest, no backup: do not leave an orphan copy.
					rctx := context.WithoutCancel(ctx)
					_ = t.Remove(rctx, m.Key(manifest.ManifestName))
					_ = t.Remove(rctx, dataKey)
					return
				}
				failpoint.Hit("backup.meta-saved")
			}
		})
	}
	mwg.Wait()
	failpoint.Hit("backup.signed")

	complete := 0
	for _, c := range res.Copies {
		if c.State == CopyComplete {
			complete++
			log.Info("copy complete", "target", c.Target, "bytes", c.Bytes, "spilled", c.Spilled, "duration", c.Duration)
		} else {
			log.Warn("copy failed", "target", c.Target, "err", c.Err)
		}
	}
	switch complete {
	case len(res.Copies):
		res.State = StateSucceeded
	case 0:
		res.State = StateFailed
		return res, fmt.Errorf("backup %s of %s: no copy completed: %w", id, opts.Source, copyErrors(res.Copies))
	default:
		res.State = StatePartial
	}
	return res, nil
}

// produce streams the source through zstd, age and SHA-256 into the lanes.
func produce(ctx context.Context, src source.Source, opts Options, lanes []*lane) (_ source.Result, raw int64, digest string, stored int64, err error) {
	h := sha256.New()
	fan := &fanout{lanes: lanes, hash: h}
	defer func() {
		for _, l := range lanes {
			l.close(err)
		}
	}()
	stream, err := src.Open(ctx)
	if err != nil {
		return source.Result{}, 0, "", 0, fmt.Errorf("open source: %w", err)
	}
	var enc io.WriteCloser = nopWriteCloser{fan}
	if !opts.NoEncryption {
		if enc, err = age.Encrypt(fan, opts.Recipients...); err != nil {
			_, _ = stream.Finish()
			return source.Result{}, 0, "", 0, fmt.Errorf("encrypt: %w", err)
		}
	}
	// Independent frames compressed on every core (up to a bound), in
	// order: one valid zstd stream that any decoder reads.
	zw, err := pzstd.NewWriter(enc, pzstd.Options{Level: zstd.EncoderLevelFromZstd(opts.level()), Workers: opts.CompressionWorkers, ChunkSize: opts.CompressionChunk})
	if err != nil {
		_, _ = stream.Finish()
		return source.Result{}, 0, "", 0, fmt.Errorf("zstd: %w", err)
	}
	cr := &countingReader{r: stream, progress: opts.Progress, start: time.Now()}
	_, copyErr := zw.ReadFrom(cr)
	res, finErr := stream.Finish()
	zerr := zw.Close()
	eerr := enc.Close()
	switch {
	case finErr != nil:
		// The producer's own error explains a read error best.
		return res, cr.n, "", 0, finErr
	case copyErr != nil:
		if errors.Is(copyErr, errNoTargets) {
			return res, cr.n, "", 0, fmt.Errorf("%w: %w", errNoTargets, laneErrors(lanes))
		}
		return res, cr.n, "", 0, copyErr
	case zerr != nil:
		return res, cr.n, "", 0, fmt.Errorf("zstd: %w", zerr)
	case eerr != nil:
		return res, cr.n, "", 0, fmt.Errorf("encrypt: %w", eerr)
	}
	if err := ctx.Err(); err != nil {
		return res, cr.n, "", 0, context.Cause(ctx)
	}
	return res, cr.n, hex.EncodeToString(h.Sum(nil)), fan.n, nil
}

func laneErrors(lanes []*lane) error {
	var errs []error
	for _, l := range lanes {
		if r := l.reason(); r != nil {
			errs = append(errs, fmt.Errorf("%s: %w", l.target, r))
		}
	}
	return errors.Join(errs...)
}

func copyErrors(copies []Copy) error {
	var errs []error
	for _, c := range copies {
		if c.Err != nil {
			errs = append(errs, c.Err)
		}
	}
	return errors.Join(errs...)
}

func (o *Options) level() int {
	if o.ZstdLevel <= 0 {
		return DefaultZstdLevel
	}
	return o.ZstdLevel
}

func (o *Options) check() error {
	var problems []string
	if err := storage.CheckKey(o.Source); err != nil || strings.Contains(o.Source, "/") {
		problems = append(problems, fmt.Sprintf("source name %q cannot be a key segment", o.Source))
	}
	if len(o.Targets) == 0 {
		problems = append(problems, "no targets")
	}
	if o.ID != "" {
		if err := manifest.CheckID(o.ID); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if o.Signer == nil {
		problems = append(problems, "no signing key")
	}
	if !o.NoEncryption && len(o.Recipients) == 0 {
		problems = append(problems, "no age recipients (set encryption: none explicitly to store plaintext)")
	}
	if o.ZstdLevel < 0 || o.ZstdLevel > 22 {
		problems = append(problems, fmt.Sprintf("zstd level %d outside 1..22", o.ZstdLevel))
	}
	if len(problems) > 0 {
		return fmt.Errorf("backup %s: %s", o.Source, strings.Join(problems, "; "))
	}
	return nil
}

func recipientStrings(rs []age.Recipient) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		if s, ok := r.(fmt.Stringer); ok {
			out = append(out, s.String())
		} else {
			out = append(out, fmt.Sprintf("(%T)", r))
		}
	}
	return out
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// countingReader counts source bytes and reports progress.
type countingReader struct {
	r        io.Reader
	n        int64
	progress func(Progress)
	start    time.Time
	last     time.Time
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.progress != nil {
		if now := time.Now(); now.Sub(c.last) >= 500*time.Millisecond || err == io.EOF {
			c.last = now
			c.progress(progressAt("backup", c.n, 0, c.start, now))
		}
	}
	return n, err
}

func progressAt(phase string, done, total int64, start, now time.Time) Progress {
	p := Progress{Phase: phase, Bytes: done, Total: total}
	if el := now.Sub(start).Seconds(); el > 0 {
		p.Rate = float64(done) / el
	}
	if total > 0 && p.Rate > 0 && done <= total {
		p.ETA = time.Duration(float64(total-done) / p.Rate * float64(time.Second))
	}
	return p
}
