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
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
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
	// postings index the series by label (name, then value), each list
	// sorted by labels. A query's candidates are the smallest list an
	// equality (or alternation) matcher selects, as the TSDB's postings
	// do, rather than every series of the metric; and a single list needs
	// no sorting.
	postings map[string]map[string][]*memSeries
}

type memSeries struct {
	lset labels.Labels
	// pts are the samples, ascending by time; never modified in place
	// below len, so readers may keep sub-slices. They are PromQL's own
	// points, so a query iterates them in place (promql.StorageSeries).
	pts []promql.FPoint
}

// searchT returns the index of the first point at or after t.
func searchT(pts []promql.FPoint, t int64) int {
	return sort.Search(len(pts), func(i int) bool { return pts[i].T >= t })
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
		postings:  map[string]map[string][]*memSeries{},
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
		n := min(len(ss.T), len(ss.V))
		ms.pts = make([]promql.FPoint, n)
		for i := range n {
			ms.pts[i] = promql.FPoint{T: ss.T[i], F: ss.V[i]}
		}
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
			i := searchT(ms.pts, mint)
			if i == len(ms.pts) {
				continue
			}
			ss := snapshotSeries{T: make([]int64, 0, len(ms.pts)-i), V: make([]float64, 0, len(ms.pts)-i)}
			for _, p := range ms.pts[i:] {
				ss.T, ss.V = append(ss.T, p.T), append(ss.V, p.F)
			}
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
			i := searchT(ms.pts, mint)
			if i == len(ms.pts) {
				s.unindex(ms)
				continue
			}
			if i > 0 {
				// Copy, so readers holding the old slices are unaffected.
				ms.pts = slices.Clone(ms.pts[i:])
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
	ms.lset.Range(func(l labels.Label) {
		values := s.postings[l.Name]
		if values == nil {
			values = map[string][]*memSeries{}
			s.postings[l.Name] = values
		}
		list := values[l.Value]
		i, _ := slices.BinarySearchFunc(list, ms, compareSeries)
		values[l.Value] = slices.Insert(list, i, ms)
	})
	return ms
}

func compareSeries(a, b *memSeries) int { return labels.Compare(a.lset, b.lset) }

// unindex removes ms from the postings; mu must be held for writing.
func (s *Store) unindex(ms *memSeries) {
	ms.lset.Range(func(l labels.Label) {
		values := s.postings[l.Name]
		list := values[l.Value]
		if i, ok := slices.BinarySearchFunc(list, ms, compareSeries); ok {
			list = slices.Delete(list, i, i+1)
		}
		if len(list) == 0 {
			delete(values, l.Value)
		} else {
			values[l.Value] = list
		}
		if len(values) == 0 {
			delete(s.postings, l.Name)
		}
	})
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
	if ms != nil && len(ms.pts) > 0 {
		last := ms.pts[len(ms.pts)-1]
		lt := last.T
		switch {
		case t < lt:
			a.s.mu.RUnlock()
			return 0, storage.ErrOutOfOrderSample
		case t == lt:
			same := math.Float64bits(last.F) == math.Float64bits(v)
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
		if n := len(ms.pts); n > 0 && p.t <= ms.pts[n-1].T {
			continue // lost a race with another appender; the TSDB would refuse it too
		}
		ms.pts = append(ms.pts, promql.FPoint{T: p.t, F: p.v})
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

// candidates returns a superset of the series ms select: those in the
// smallest postings list an equality matcher (or the alternation of
// values of a regexp matcher, such as a|b) selects, every series if no
// matcher narrows; sorted reports whether they are in label order.
// Callers still check every matcher. mu must be held.
func (q *querier) candidates(ms []*labels.Matcher) (_ []*memSeries, sorted bool) {
	var (
		best     [][]*memSeries
		bestSize = -1
	)
	for _, m := range ms {
		var sets [][]*memSeries
		switch {
		case m.Type == labels.MatchEqual && m.Value != "":
			sets = append(sets, q.s.postings[m.Name][m.Value])
		case m.Type == labels.MatchRegexp && !m.Matches(""):
			values := m.SetMatches()
			if len(values) == 0 {
				continue
			}
			for _, v := range values {
				if set := q.s.postings[m.Name][v]; len(set) > 0 {
					sets = append(sets, set)
				}
			}
		default:
			continue
		}
		size := 0
		for _, set := range sets {
			size += len(set)
		}
		if bestSize < 0 || size < bestSize {
			best, bestSize = sets, size
		}
		if size == 0 {
			return nil, true
		}
	}
	switch {
	case bestSize < 0:
		out := make([]*memSeries, 0, len(q.s.series))
		for _, list := range q.s.series {
			out = append(out, list...)
		}
		return out, false
	case len(best) == 1:
		return best[0], true
	}
	// Distinct values of one label select disjoint series.
	return slices.Concat(best...), false
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
	var out []storage.Series
	cands, sorted := q.candidates(matchers)
	for _, ms := range cands {
		if !matchAll(ms.lset, matchers) {
			continue
		}
		i := searchT(ms.pts, mint)
		rest := ms.pts[i:]
		j := i + sort.Search(len(rest), func(k int) bool { return rest[k].T > maxt })
		if i >= j {
			continue
		}
		out = append(out, promql.NewStorageSeries(promql.Series{Metric: ms.lset, Floats: ms.pts[i:j:j]}))
	}
	q.s.mu.RUnlock()
	// Sorted whether asked or not: the rules manager's for-state restore
	// and PromQL's merges assume label order, and it is cheap here.
	_ = sortSeries
	if !sorted {
		sort.Slice(out, func(i, j int) bool { return labels.Compare(out[i].Labels(), out[j].Labels()) < 0 })
	}
	return &seriesSet{list: out, i: -1}
}

func (q *querier) LabelValues(_ context.Context, name string, _ *storage.LabelHints, matchers ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	q.s.mu.RLock()
	defer q.s.mu.RUnlock()
	seen := map[string]struct{}{}
	cands, _ := q.candidates(matchers)
	for _, ms := range cands {
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
	cands, _ := q.candidates(matchers)
	for _, ms := range cands {
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
	list []storage.Series
	i    int
}

func (s *seriesSet) Next() bool                        { s.i++; return s.i < len(s.list) }
func (s *seriesSet) At() storage.Series                { return s.list[s.i] }
func (s *seriesSet) Err() error                        { return nil }
func (s *seriesSet) Warnings() annotations.Annotations { return nil }
