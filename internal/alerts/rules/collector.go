package rules

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
)

// DefaultCollectInterval is how often the local path reads opsd's registry.
const DefaultCollectInterval = 5 * time.Second

// Collector turns a prometheus.Gatherer into samples in local storage, the
// way Prometheus's scrape loop turns a /metrics page into samples: classic
// histograms become _bucket{le}, _sum and _count series, summaries become
// {quantile}, _sum and _count, the target labels are attached, an `up`
// series is written, and a series that disappears gets a staleness marker so
// PromQL stops returning it at once instead of after the 5m lookback.
type Collector struct {
	gatherer prometheus.Gatherer
	app      storage.AppendableV2
	target   labels.Labels
	logger   *slog.Logger
	now      func() time.Time

	// last holds the series written by the previous collection, by hash.
	last map[uint64]labels.Labels
}

// NewCollector returns a Collector appending g's metrics to app. target are
// the labels Prometheus would attach to the scrape target (job, instance);
// a metric's own label of the same name wins, as with honor_labels.
func NewCollector(g prometheus.Gatherer, app storage.AppendableV2, target map[string]string, logger *slog.Logger) *Collector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{
		gatherer: g,
		app:      app,
		target:   labels.FromMap(target),
		logger:   logger,
		now:      time.Now,
		last:     map[uint64]labels.Labels{},
	}
}

// Run collects every interval until ctx ends.
func (c *Collector) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultCollectInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := c.Collect(ctx); err != nil {
			c.logger.Warn("collect opsd metrics for local rules", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Collect gathers once and appends the samples in one transaction. A
// gathering error still appends what was gathered (Gather returns partial
// results), as a scrape of a partly broken page would not; the error is
// returned after the commit.
func (c *Collector) Collect(ctx context.Context) error {
	ts := c.now().UnixMilli()
	mfs, gatherErr := c.gatherer.Gather()

	app := c.app.AppenderV2(ctx)
	seen := make(map[uint64]labels.Labels, len(c.last))
	var failed int
	add := func(ls labels.Labels, t int64, v float64) {
		if _, err := app.Append(0, ls, 0, t, v, nil, nil, storage.AOptions{}); err != nil {
			// Out-of-order and duplicate samples are dropped one by one, as
			// the scrape loop does; the rest of the batch still counts.
			failed++
			return
		}
		seen[ls.Hash()] = ls
	}

	b := labels.NewScratchBuilder(8)
	for _, mf := range mfs {
		name := mf.GetName()
		for _, m := range mf.GetMetric() {
			t := ts
			if m.TimestampMs != nil {
				t = m.GetTimestampMs()
			}
			series := func(suffix, extraName, extraValue string) labels.Labels {
				return c.labels(&b, name+suffix, m.GetLabel(), extraName, extraValue)
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				add(series("", "", ""), t, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(series("", "", ""), t, m.GetGauge().GetValue())
			case dto.MetricType_UNTYPED:
				add(series("", "", ""), t, m.GetUntyped().GetValue())
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				for _, q := range s.GetQuantile() {
					add(series("", "quantile", formatFloat(q.GetQuantile())), t, q.GetValue())
				}
				add(series("_sum", "", ""), t, s.GetSampleSum())
				add(series("_count", "", ""), t, float64(s.GetSampleCount()))
			case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
				h := m.GetHistogram()
				var sawInf bool
				for _, bk := range h.GetBucket() {
					if math.IsInf(bk.GetUpperBound(), 1) {
						sawInf = true
					}
					add(series("_bucket", "le", formatFloat(bk.GetUpperBound())), t, float64(bk.GetCumulativeCount()))
				}
				if !sawInf {
					add(series("_bucket", "le", "+Inf"), t, float64(h.GetSampleCount()))
				}
				add(series("_sum", "", ""), t, h.GetSampleSum())
				add(series("_count", "", ""), t, float64(h.GetSampleCount()))
			}
		}
	}
	add(c.labels(&b, "up", nil, "", ""), ts, 1)

	// Staleness markers for every series that was there last time.
	for h, ls := range c.last {
		if _, ok := seen[h]; ok {
			continue
		}
		if _, err := app.Append(0, ls, 0, ts, math.Float64frombits(value.StaleNaN), nil, nil, storage.AOptions{}); err != nil {
			failed++
		}
	}
	if err := app.Commit(); err != nil {
		return fmt.Errorf("commit collected samples: %w", err)
	}
	c.last = seen
	if failed > 0 {
		c.logger.Debug("samples dropped by local storage", "count", failed)
	}
	if gatherErr != nil {
		return fmt.Errorf("gather: %w", gatherErr)
	}
	return nil
}

func (c *Collector) labels(b *labels.ScratchBuilder, name string, lps []*dto.LabelPair, extraName, extraValue string) labels.Labels {
	b.Reset()
	b.Add(model.MetricNameLabel, name)
	own := make(map[string]struct{}, len(lps)+1)
	for _, lp := range lps {
		b.Add(lp.GetName(), lp.GetValue())
		own[lp.GetName()] = struct{}{}
	}
	if extraName != "" {
		b.Add(extraName, extraValue)
		own[extraName] = struct{}{}
	}
	c.target.Range(func(l labels.Label) {
		if _, ok := own[l.Name]; !ok {
			b.Add(l.Name, l.Value)
		}
	})
	b.Sort()
	return b.Labels()
}

// formatFloat writes le and quantile values as the text exposition format
// does, so `le="0.5"` and `le="+Inf"` match what Prometheus would store.
func formatFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	case math.IsNaN(f):
		return "NaN"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
