package dr

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opsd-dev/opsd/internal/state"
)

// Metrics are the drill gauges of SPEC §8, set when a drill run ends.
type Metrics struct {
	rto     *prometheus.GaugeVec
	rpo     *prometheus.GaugeVec
	success *prometheus.GaugeVec
}

// NewMetrics registers the drill metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		rto: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsd_drill_last_rto_seconds",
			Help: "RTO measured by the last drill of the runbook (start of disruption to end of the step marked recovered)."},
			[]string{"runbook"}),
		rpo: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsd_drill_last_rpo_seconds",
			Help: "RPO measured by the last drill of the runbook (disruption back to the restored backup's snapshot)."},
			[]string{"runbook"}),
		success: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "opsd_drill_last_success",
			Help: "1 if the last drill of the runbook succeeded and met its measured objectives, else 0."},
			[]string{"runbook"}),
	}
	for _, c := range []prometheus.Collector{m.rto, m.rpo, m.success} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register drill metrics: %w", err)
		}
	}
	return m, nil
}

func (m *Metrics) observe(rep *Report) {
	ok := rep.State == state.RunSucceeded
	if rep.RTO != nil {
		m.rto.WithLabelValues(rep.Runbook).Set(rep.RTO.Seconds)
		if rep.RTO.Met != nil && !*rep.RTO.Met {
			ok = false
		}
	}
	if rep.RPO != nil {
		m.rpo.WithLabelValues(rep.Runbook).Set(rep.RPO.Seconds)
		if rep.RPO.Met != nil && !*rep.RPO.Met {
			ok = false
		}
	}
	v := 0.0
	if ok {
		v = 1
	}
	m.success.WithLabelValues(rep.Runbook).Set(v)
}

// RTOGauge, RPOGauge and SuccessGauge return the gauges of runbook, for
// tests and the daemon's status page.
func (m *Metrics) RTOGauge(runbook string) prometheus.Gauge { return m.rto.WithLabelValues(runbook) }

// RPOGauge returns opsd_drill_last_rpo_seconds{runbook}.
func (m *Metrics) RPOGauge(runbook string) prometheus.Gauge { return m.rpo.WithLabelValues(runbook) }

// SuccessGauge returns opsd_drill_last_success{runbook}.
func (m *Metrics) SuccessGauge(runbook string) prometheus.Gauge {
	return m.success.WithLabelValues(runbook)
}

// RestoreMetrics sets the drill gauges of each runbook from its newest
// ended drill in the journal, so that a restart neither forgets a failed
// drill (resolving DrillFailed) nor one that met its objectives.
func (e *Engine) RestoreMetrics(ctx context.Context, runbooks []string) {
	if e.cfg.Metrics == nil {
		return
	}
	for _, name := range runbooks {
		runs, _, err := e.cfg.Store.ListRuns(ctx, state.RunFilter{Runbook: name,
			States: []string{state.RunSucceeded, state.RunFailed, state.RunCancelled}, Limit: 100})
		if err != nil {
			e.logger.WarnContext(ctx, "drill metrics not restored", "runbook", name, "err", err)
			continue
		}
		for _, r := range runs {
			if r.Mode != "drill" || r.DryRun {
				continue
			}
			if rep, err := e.buildReport(ctx, r.ID); err == nil {
				e.cfg.Metrics.observe(rep)
			}
			break
		}
	}
}
