package audit

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the audit log's Prometheus metrics (SPEC §8).
type Metrics struct {
	treeSize        prometheus.Gauge
	appendSeconds   prometheus.Histogram
	appendFailures  prometheus.Counter
	witnessFailures *prometheus.CounterVec
	checkpointAge   prometheus.GaugeFunc
	lastCheckpoint  atomic.Int64 // unix ns of the latest checkpoint; 0 = none
}

// NewMetrics creates the metrics and registers them with reg (nil: not
// registered). Use one Metrics per Log. Like prometheus' MustRegister it
// panics if reg already holds them.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		treeSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "opsd_audit_tree_size", Help: "Number of durable entries in the audit log."}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "opsd_audit_append_seconds", Help: "Time from an audit append to its fsync'd acknowledgement.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		appendFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "opsd_audit_append_failures_total", Help: "Audit entries that could not be made durable (their actions were refused)."}),
		witnessFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_audit_witness_failures_total", Help: "Checkpoint pushes to a witness that failed."}, []string{"witness"}),
	}
	m.checkpointAge = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "opsd_audit_checkpoint_age_seconds", Help: "Seconds since the whole audit log was last covered by a signed checkpoint (0 until the first)."},
		func() float64 {
			last := m.lastCheckpoint.Load()
			if last == 0 {
				return 0
			}
			return time.Since(time.Unix(0, last)).Seconds()
		})
	if reg != nil {
		reg.MustRegister(m.treeSize, m.appendSeconds, m.appendFailures, m.witnessFailures, m.checkpointAge)
	}
	return m
}

func (m *Metrics) setSize(n int64) { m.treeSize.Set(float64(n)) }
