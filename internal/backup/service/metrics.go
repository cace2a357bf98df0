package service

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the backup metrics of SPEC §8.
type Metrics struct {
	lastSuccess *prometheus.GaugeVec
	duration    *prometheus.HistogramVec
	bytes       *prometheus.CounterVec
	failures    *prometheus.CounterVec
	// lastVerified is the finish time of the newest passed verification
	// (any level) of a source's copies on a target.
	lastVerified *prometheus.GaugeVec
	// compliance is the number of 3-2-1-1-0 rules met in order (0..5).
	compliance *prometheus.GaugeVec
	// required is the number of rules the source's policy asks for.
	required *prometheus.GaugeVec
}

// NewMetrics registers the backup metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "opsd_backup_last_success_timestamp_seconds",
			Help: "Finish time of the source's newest backup with every copy complete; 0 if none.",
		}, []string{"source"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "opsd_backup_duration_seconds",
			Help:    "Wall time of backups, from start to the final state.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 16),
		}, []string{"source"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_backup_bytes_total",
			Help: "Stored bytes of complete backup copies, per target.",
		}, []string{"source", "target"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_backup_failures_total",
			Help: "Failed backup copies by reason: source, target or encryption; failed verifications of a copy: checksum or restore.",
		}, []string{"source", "target", "reason"}),
		lastVerified: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "opsd_backup_last_verified_timestamp_seconds",
			Help: "Finish time of the newest passed verification (checksum or restore) of a copy on the target.",
		}, []string{"source", "target"}),
	}
	m.compliance = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "opsd_backup_compliance_level",
		Help: "3-2-1-1-0 rules the source's newest backup meets, in order (0-5; 5 = 3-2-1-1-0), counting only checksum-verified copies.",
	}, []string{"source"})
	m.required = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "opsd_backup_compliance_required",
		Help: "3-2-1-1-0 rules the source's policy requires (0-5); below it when opsd_backup_compliance_level is lower.",
	}, []string{"source"})
	for _, c := range []prometheus.Collector{m.lastSuccess, m.duration, m.bytes, m.failures, m.lastVerified, m.compliance, m.required} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register backup metrics: %w", err)
		}
	}
	return m, nil
}
