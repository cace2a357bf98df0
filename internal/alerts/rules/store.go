package rules

import (
	"bufio"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

// Store is the local path's time-series storage: float series in memory,
// trimmed to a retention, with a snapshot file so ALERTS_FOR_STATE (and the
// recent samples rate() needs) survive a restart. It implements the two
// interfaces Prometheus's rules manager and PromQL engine use,
// storage.AppendableV2 and storage.Queryable, with the TSDB head's
// append rules (out-of-order and conflicting duplicate samples refused).
//
// It stands in for tsdb.DB: the tsdb package needs modules this repository's
// go.mod does not list yet (see docs/ALERTS.md). Native histograms are not
// stored; opsd exports classic histograms only.
type Store struct {
	retention time.Duration
	path      string // snapshot file; "" keeps nothing across restarts
	now       func() time.Time

	mu     sync.RWMutex
	series map[uint64][]*memSeries
	byName map[string]map[*memSeries]struct{}
}

type memSeries struct {
	lset labels.Labels
	ts   []int64 // ascending; never modified in place below len, so readers may keep sub-slices
	vs   []float64
}

var (
	_ storage.AppendableV2 = (*Store)(nil)
	_ storage.Queryable    = (*Store)(nil)
)

// OpenStore opens (or creates) the store whose snapshot lives in dir.
// dir "" gives a purely in-memory store, as the unit-test runner uses.
func OpenStore(dir string, retention time.Duration) (*Store, error) {
	s := &Store{
		retention: retention,
		now:       time.Now,
		series:    map[uint64][]*memSeries{},
		byName:    map[string]map[*memSeries]struct{}{},
	}
	if dir == "" {
		return s, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	s.path = filepath.Join(dir, "snapshot.gob")
	if err := s.load(); err != nil {
		return nil, err
	}
	return s, nil
}

// snapshotSeries is one series in the snapshot file.
type snapshotSeries struct {
	Labels []string // name, value, name, value …
	T      []int64
	V      []float64
}

func (s *Store) load() error {
	f, err := os.Open(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open rules snapshot: %w", err)
	}
	defer f.Close()
	dec := gob.NewDecoder(bufio.NewReader(f))
	for {
		var ss snapshotSeries
		if err := dec.Decode(&ss); err != nil {
			// io.EOF ends the file; anything else is a damaged snapshot,
			// which costs history, not startup.
			return nil
		}
		ms := s.getOrCreate(labels.FromStrings(ss.Labels...))
		ms.ts, ms.vs = ss.T, ss.V
	}
}

// Snapshot writes the samples of the last window (all if window <= 0) to
// the snapshot file, atomically.
func (s *Store) Snapshot(window time.Duration) error {
	if s.path == "" {
		return nil
	}
	mint := int64(math.MinInt64)
	if window > 0 {
		mint = s.now().Add(-window).UnixMilli()
	}
	tmp := s.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("write rules snapshot: %w", err)
	}
	w := bufio.NewWriter(f)
	enc := gob.NewEncoder(w)
	s.mu.RLock()
	var encErr error
	for _, list := range s.series {
		for _, ms := range list {
			i := sort.Search(len(ms.ts), func(i int) bool { return ms.ts[i] >= mint })
			if i == len(ms.ts) {
				continue
			}
			ss := snapshotSeries{T: ms.ts[i:], V: ms.vs[i:]}
			ms.lset.Range(func(l labels.Label) { ss.Labels = append(ss.Labels, l.Name, l.Value) })
			if encErr = enc.Encode(&ss); encErr != nil {
				break
			}
		}
	}
	s.mu.RUnlock()
	err = errors.Join(encErr, w.Flush(), f.Sync(), f.Close())
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write rules snapshot: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("write rules snapshot: %w", err)
	}
	return nil
}

// Trim drops samples older than the retention and series left empty.
func (s *Store) Trim() {
	if s.retention <= 0 {
		return
	}
	mint := s.now().Add(-s.retention).UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	for h, list := range s.series {
		kept := list[:0]
		for _, ms := range list {
			i := sort.Search(len(ms.ts), func(i int) bool { return ms.ts[i] >= mint })
			if i == len(ms.ts) {
				delete(s.byName[ms.lset.Get(model.MetricNameLabel)], ms)
				continue
			}
			if i > 0 {
				// Copy, so readers holding the old slices are unaffected.
				ms.ts = slices.Clone(ms.ts[i:])
				ms.vs = slices.Clone(ms.vs[i:])
			}
			kept = append(kept, ms)
		}
		if len(kept) == 0 {
			delete(s.series, h)
		} else {
			s.series[h] = kept
		}
	}
}

// Run trims and snapshots every interval until ctx ends, then snapshots
// once more.
func (s *Store) Run(ctx context.Context, interval, window time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return s.Snapshot(window)
		case <-t.C:
			s.Trim()
			if err := s.Snapshot(window); err != nil {
				return err
			}
		}
	}
}

// getOrCreate must be called with mu held for writing.
func (s *Store) getOrCreate(ls labels.Labels) *memSeries {
	h := ls.Hash()
	for _, ms := range s.series[h] {
		if labels.Equal(ms.lset, ls) {
			return ms
		}
	}
	ms := &memSeries{lset: ls.Copy()}
	s.series[h] = append(s.series[h], ms)
	name := ls.Get(model.MetricNameLabel)
	if s.byName[name] == nil {
		s.byName[name] = map[*memSeries]struct{}{}
	}
	s.byName[name][ms] = struct{}{}
	return ms
}

func (s *Store) get(ls labels.Labels) *memSeries {
	for _, ms := range s.series[ls.Hash()] {
		if labels.Equal(ms.lset, ls) {
			return ms
		}
	}
	return nil
}

// AppenderV2 implements storage.AppendableV2.
func (s *Store) AppenderV2(context.Context) storage.AppenderV2 {
	return &appender{s: s, last: map[uint64]int64{}}
}

type pending struct {
	lset labels.Labels
	t    int64
	v    float64
}

type appender struct {
	s       *Store
	samples []pending
	last    map[uint64]int64 // newest pending timestamp per series hash
}

func (a *appender) Append(_ storage.SeriesRef, ls labels.Labels, _, t int64, v float64, h *histogram.Histogram, fh *histogram.FloatHistogram, _ storage.AOptions) (storage.SeriesRef, error) {
	if h != nil || fh != nil {
		return 0, errors.New("native histograms are not stored by the local rules storage")
	}
	if ls.Get(model.MetricNameLabel) == "" {
		return 0, errors.New("sample without a metric name")
	}
	hash := ls.Hash()
	if lt, ok := a.last[hash]; ok && t <= lt {
		return 0, storage.ErrOutOfOrderSample
	}
	a.s.mu.RLock()
	ms := a.s.get(ls)
	if ms != nil && len(ms.ts) > 0 {
		lt := ms.ts[len(ms.ts)-1]
		switch {
		case t < lt:
			a.s.mu.RUnlock()
			return 0, storage.ErrOutOfOrderSample
		case t == lt:
			same := math.Float64bits(ms.vs[len(ms.vs)-1]) == math.Float64bits(v)
			a.s.mu.RUnlock()
			if same {
				return storage.SeriesRef(hash), nil // an idempotent resend, as the TSDB head accepts
			}
			return 0, storage.ErrDuplicateSampleForTimestamp
		}
	}
	a.s.mu.RUnlock()
	a.last[hash] = t
	a.samples = append(a.samples, pending{lset: ls.Copy(), t: t, v: v})
	return storage.SeriesRef(hash), nil
}

func (a *appender) Commit() error {
	a.s.mu.Lock()
	defer a.s.mu.Unlock()
	for _, p := range a.samples {
		ms := a.s.getOrCreate(p.lset)
		if n := len(ms.ts); n > 0 && p.t <= ms.ts[n-1] {
			continue // lost a race with another appender; the TSDB would refuse it too
		}
		ms.ts = append(ms.ts, p.t)
		ms.vs = append(ms.vs, p.v)
	}
	a.samples = nil
	return nil
}

func (a *appender) Rollback() error {
	a.samples = nil
	return nil
}

// Querier implements storage.Queryable.
func (s *Store) Querier(mint, maxt int64) (storage.Querier, error) {
	return &querier{s: s, mint: mint, maxt: maxt}, nil
}

type querier struct {
	s          *Store
	mint, maxt int64
}

func (q *querier) Close() error { return nil }

func (q *querier) candidates(ms []*labels.Matcher) []*memSeries {
	for _, m := range ms {
		if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
			out := make([]*memSeries, 0, len(q.s.byName[m.Value]))
			for s := range q.s.byName[m.Value] {
				out = append(out, s)
			}
			return out
		}
	}
	var out []*memSeries
	for _, list := range q.s.series {
		out = append(out, list...)
	}
	return out
}

func matchAll(ls labels.Labels, ms []*labels.Matcher) bool {
	for _, m := range ms {
		if !m.Matches(ls.Get(m.Name)) {
			return false
		}
	}
	return true
}

func (q *querier) Select(_ context.Context, sortSeries bool, hints *storage.SelectHints, matchers ...*labels.Matcher) storage.SeriesSet {
	mint, maxt := q.mint, q.maxt
	if hints != nil {
		mint, maxt = max(mint, hints.Start), min(maxt, hints.End)
	}
	q.s.mu.RLock()
	var out []*listSeries
	for _, ms := range q.candidates(matchers) {
		if !matchAll(ms.lset, matchers) {
			continue
		}
		i := sort.Search(len(ms.ts), func(i int) bool { return ms.ts[i] >= mint })
		j := sort.Search(len(ms.ts), func(i int) bool { return ms.ts[i] > maxt })
		if i >= j {
			continue
		}
		out = append(out, &listSeries{lset: ms.lset, ts: ms.ts[i:j:j], vs: ms.vs[i:j:j]})
	}
	q.s.mu.RUnlock()
	// Sorted whether asked or not: the rules manager's for-state restore
	// and PromQL's merges assume label order, and it is cheap here.
	_ = sortSeries
	sort.Slice(out, func(i, j int) bool { return labels.Compare(out[i].lset, out[j].lset) < 0 })
	return &seriesSet{list: out, i: -1}
}

func (q *querier) LabelValues(_ context.Context, name string, _ *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	q.s.mu.RLock()
	defer q.s.mu.RUnlock()
	seen := map[string]struct{}{}
	for _, ms := range q.candidates(matchers) {
		if v := ms.lset.Get(name); v != "" && matchAll(ms.lset, matchers) {
			seen[v] = struct{}{}
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out, nil, nil
}

func (q *querier) LabelNames(_ context.Context, _ *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	q.s.mu.RLock()
	defer q.s.mu.RUnlock()
	seen := map[string]struct{}{}
	for _, ms := range q.candidates(matchers) {
		if matchAll(ms.lset, matchers) {
			ms.lset.Range(func(l labels.Label) { seen[l.Name] = struct{}{} })
		}
	}
	out := make([]string, 0, len(seen))
	for v := range seen {
		out = append(out, v)
	}
	sort.Strings(out)
	return out, nil, nil
}

type seriesSet struct {
	list []*listSeries
	i    int
}

func (s *seriesSet) Next() bool                        { s.i++; return s.i < len(s.list) }
func (s *seriesSet) At() storage.Series                { return s.list[s.i] }
func (s *seriesSet) Err() error                        { return nil }
func (s *seriesSet) Warnings() annotations.Annotations { return nil }

type listSeries struct {
	lset labels.Labels
	ts   []int64
	vs   []float64
}

func (s *listSeries) Labels() labels.Labels { return s.lset }

func (s *listSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	return storage.NewListSeriesIterator(floatSamples{ts: s.ts, vs: s.vs})
}

// floatSamples adapts the two slices to storage.Samples.
type floatSamples struct {
	ts []int64
	vs []float64
}

func (f floatSamples) Get(i int) chunks.Sample { return fsample{t: f.ts[i], f: f.vs[i]} }
func (f floatSamples) Len() int                { return len(f.ts) }

type fsample struct {
	t int64
	f float64
}

func (s fsample) T() int64                      { return s.t }
func (s fsample) ST() int64                     { return 0 }
func (s fsample) F() float64                    { return s.f }
func (s fsample) H() *histogram.Histogram       { return nil }
func (s fsample) FH() *histogram.FloatHistogram { return nil }
func (s fsample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s fsample) Copy() chunks.Sample           { return s }
