package rules

import (
	"bufio"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/compression"
)

// The local path's storage is Prometheus's own TSDB (tsdb.DB): the head
// block in memory with its write-ahead log, then 2h blocks on disk, deleted
// past the retention. Prometheus's rules manager and PromQL engine use it
// as they use it in Prometheus (storage.Queryable, storage.AppendableV2).

// openLocalTSDB opens (or creates) the local path's TSDB in dir.
//
// The options are those of a Prometheus server (WAL on, snappy-compressed
// as `--storage.tsdb.wal-compression` defaults; no out-of-order window, so
// out-of-order and conflicting duplicate samples are refused as a scrape's
// would be) with the retention given and blocks sized for it: 2h blocks (a
// third of the retention if that is shorter), never compacted into longer
// ones. The head holds the last 2-3h in memory; every committed append is
// written to the WAL before Commit returns, so a kill -9 loses nothing
// committed (a power loss can lose what the OS had not yet written out).
//
// tsdb.Open ignores files in dir that are not its own (it reads only
// block directories, wal, chunks_head and its lock file), so the
// snapshot.gob that opsd's earlier local store left in the same dir does
// not stop it; that file is imported once and removed.
func openLocalTSDB(dir string, retention time.Duration, logger *slog.Logger) (*tsdb.DB, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	opts := tsdb.DefaultOptions()
	opts.RetentionDuration = retention.Milliseconds()
	block := max(min(tsdb.DefaultBlockDuration, retention.Milliseconds()/3), time.Minute.Milliseconds())
	opts.MinBlockDuration, opts.MaxBlockDuration = block, block
	opts.OutOfOrderTimeWindow = 0
	opts.WALCompression = compression.Snappy
	// Sized for opsd's own registry (hundreds to a few thousand series), not
	// a Prometheus server's millions: the defaults preallocate a 16,384-way
	// series map and a 4 MiB head-chunk write buffer, memory a backup's
	// buffers need more (the daemon aims at 200 MiB peak).
	opts.StripeSize = 1 << 8
	opts.HeadChunksWriteBufferSize = chunks.MinWriteBufferSize
	db, err := tsdb.Open(dir, tsdbLogger(logger), nil, opts, nil)
	if err != nil {
		return nil, err
	}
	importLegacySnapshot(db, dir, logger)
	return db, nil
}

// openTestTSDB opens a TSDB for one group of a rule unit-test file, as
// promtool's test storage (util/teststorage) does: 24h blocks, no
// retention, no out-of-order window. Unlike promtool's, it has no WAL and
// compacts nothing (nothing outlives the test group; queries see the same
// samples either way). The caller closes it and removes dir.
func openTestTSDB() (db *tsdb.DB, dir string, err error) {
	dir, err = os.MkdirTemp("", "opsd-rules-test-")
	if err != nil {
		return nil, "", fmt.Errorf("test storage: %w", err)
	}
	opts := tsdb.DefaultOptions()
	opts.MinBlockDuration = (24 * time.Hour).Milliseconds()
	opts.MaxBlockDuration = opts.MinBlockDuration
	opts.RetentionDuration = 0
	opts.OutOfOrderTimeWindow = 0
	opts.WALSegmentSize = -1 // no WAL
	opts.NoLockfile = true
	db, err = tsdb.Open(dir, nil, nil, opts, nil)
	if err != nil {
		os.RemoveAll(dir)
		return nil, "", fmt.Errorf("test storage: %w", err)
	}
	db.DisableCompactions()
	return db, dir, nil
}

// tsdbLogger passes on the TSDB's warnings and errors only: its info lines
// (WAL replay, head compaction, checkpoints, block deletion) come every
// couple of hours and say nothing an operator acts on.
func tsdbLogger(l *slog.Logger) *slog.Logger {
	return slog.New(minLevelHandler{l.Handler(), slog.LevelWarn}).With("storage", "tsdb")
}

type minLevelHandler struct {
	slog.Handler
	min slog.Level
}

func (h minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevelHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return minLevelHandler{h.Handler.WithAttrs(as), h.min}
}

func (h minLevelHandler) WithGroup(name string) slog.Handler {
	return minLevelHandler{h.Handler.WithGroup(name), h.min}
}

// legacySnapshot is the file in which opsd's own in-memory store (before
// the local path used Prometheus's TSDB) kept the last hour of samples: a
// gob stream of legacySeries.
const legacySnapshot = "snapshot.gob"

type legacySeries struct {
	Labels []string // name, value, name, value …
	T      []int64
	V      []float64
}

// importLegacySnapshot appends the samples of a snapshot.gob left in dir
// by an older opsd, so that the `for` state (ALERTS_FOR_STATE) and the
// last hour of series survive the upgrade, then removes the file. Samples
// the TSDB refuses (older than what it holds) are dropped; a damaged file
// costs history, not startup.
func importLegacySnapshot(db *tsdb.DB, dir string, logger *slog.Logger) {
	path := filepath.Join(dir, legacySnapshot)
	defer os.Remove(path + ".tmp")
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	if err != nil {
		logger.Warn("old local rules snapshot not imported", "file", path, "err", err)
		return
	}
	var series, samples, dropped int
	dec := gob.NewDecoder(bufio.NewReader(f))
	ctx := context.Background()
	for {
		var ls legacySeries
		if dec.Decode(&ls) != nil { // io.EOF ends the file
			break
		}
		if len(ls.Labels) == 0 || len(ls.Labels)%2 != 0 {
			continue
		}
		lset := labels.FromStrings(ls.Labels...)
		app := db.AppenderV2(ctx)
		for i := range min(len(ls.T), len(ls.V)) {
			if _, err := app.Append(0, lset, 0, ls.T[i], ls.V[i], nil, nil, storage.AOptions{}); err != nil {
				dropped++
				continue
			}
			samples++
		}
		if err := app.Commit(); err != nil {
			logger.Warn("old local rules snapshot: import", "err", err)
			break
		}
		series++
	}
	f.Close()
	if err := os.Remove(path); err != nil {
		logger.Warn("old local rules snapshot not removed", "file", path, "err", err)
		return
	}
	logger.Info("imported the old local rules snapshot into the TSDB", "file", path, "series", series, "samples", samples, "dropped", dropped)
}
