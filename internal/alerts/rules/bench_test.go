package rules

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/prometheus/model/labels"
	promrules "github.com/prometheus/prometheus/rules"

	"github.com/opsd-dev/opsd/internal/testenv"
)

// The evaluation benchmarks run 1,000 alerting rules over the metrics of a
// synthetic opsd with 300 sources backed up to 30 targets (about 12,000
// series): the real metric names, labels and histogram buckets of opsd's
// /metrics, one hour of samples every 15s (a default Prometheus scrape
// interval). benchRuleFile holds the rules: the ten built-in rules as they
// ship, then 990 of their kind narrowed per source, target or runbook, as
// deploy/prometheus/opsd-rules.yaml tells users to copy them.
const (
	benchSources  = 300
	benchTargets  = 30
	benchRunbooks = 100
	benchRules    = 1000
	benchStep     = 15 * time.Second
	benchTicks    = 240 // one hour of benchStep; tick 0 .. benchTicks
)

// benchExporter is the synthetic opsd: a prometheus.Collector whose
// samples at tick k carry the explicit timestamp start + k*benchStep, so a
// Prometheus server scraping it and opsd's Collector reading it store the
// very same samples.
type benchExporter struct {
	start time.Time

	mu   sync.Mutex
	tick int
}

func (e *benchExporter) Describe(chan<- *prometheus.Desc) {} // unchecked collector

func (e *benchExporter) setTick(k int) {
	e.mu.Lock()
	e.tick = k
	e.mu.Unlock()
}

func (e *benchExporter) now() (int, time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.tick, e.start.Add(time.Duration(e.tick) * benchStep)
}

var (
	descLastSuccess = prometheus.NewDesc("opsd_backup_last_success_timestamp_seconds", "Finish time of the source's newest backup.", []string{"source"}, nil)
	descDuration    = prometheus.NewDesc("opsd_backup_duration_seconds", "Wall time of backups.", []string{"source"}, nil)
	descBytes       = prometheus.NewDesc("opsd_backup_bytes_total", "Stored bytes of complete backup copies, per target.", []string{"source", "target"}, nil)
	descFailures    = prometheus.NewDesc("opsd_backup_failures_total", "Failed backup copies by reason.", []string{"source", "target", "reason"}, nil)
	descVerified    = prometheus.NewDesc("opsd_backup_last_verified_timestamp_seconds", "Finish time of the newest passed verification.", []string{"source", "target"}, nil)
	descCompliance  = prometheus.NewDesc("opsd_backup_compliance_level", "3-2-1-1-0 rules met.", []string{"source"}, nil)
	descRequired    = prometheus.NewDesc("opsd_backup_compliance_required", "3-2-1-1-0 rules required.", []string{"source"}, nil)
	descDrillOK     = prometheus.NewDesc("opsd_drill_last_success", "1 if the last drill succeeded.", []string{"runbook"}, nil)
	descDrillRTO    = prometheus.NewDesc("opsd_drill_last_rto_seconds", "RTO of the last drill.", []string{"runbook"}, nil)
	descDrillRPO    = prometheus.NewDesc("opsd_drill_last_rpo_seconds", "RPO of the last drill.", []string{"runbook"}, nil)
	descStorageOps  = prometheus.NewDesc("opsd_storage_operations_total", "Storage operations.", []string{"target", "op"}, nil)
	descStorageErrs = prometheus.NewDesc("opsd_storage_errors_total", "Failed storage operations.", []string{"target", "op"}, nil)
	descStorageDur  = prometheus.NewDesc("opsd_storage_operation_duration_seconds", "Storage operation latency.", []string{"target", "op"}, nil)
	descNotif       = prometheus.NewDesc("opsd_notifications_total", "Notification attempts.", []string{"receiver", "result"}, nil)
	descForecast    = prometheus.NewDesc("opsd_cost_forecast", "Forecast spend this month.", []string{"budget"}, nil)
	descLimit       = prometheus.NewDesc("opsd_budget_limit", "Budget limit.", []string{"budget"}, nil)
	descCheckpoint  = prometheus.NewDesc("opsd_audit_checkpoint_age_seconds", "Age of the newest audit checkpoint.", nil, nil)
	descAuditFail   = prometheus.NewDesc("opsd_audit_append_failures_total", "Failed audit appends.", nil, nil)

	backupBuckets  = prometheus.ExponentialBuckets(1, 2, 16)
	storageBuckets = prometheus.ExponentialBuckets(0.005, 4, 10)
	storageOps     = []string{"put", "get", "list", "delete"}
)

func benchSource(i int) string  { return fmt.Sprintf("s%03d", i) }
func benchTarget(i int) string  { return fmt.Sprintf("t%02d", i%benchTargets) }
func benchRunbook(i int) string { return fmt.Sprintf("r%03d", i) }

// sourceTargets are the three targets source i writes to.
func sourceTargets(i int) [3]string {
	return [3]string{benchTarget(i), benchTarget(i + 7), benchTarget(i + 13)}
}

func (e *benchExporter) Collect(ch chan<- prometheus.Metric) {
	_, now := e.now()
	nowS := float64(now.Unix())
	emit := func(m prometheus.Metric) { ch <- prometheus.NewMetricWithTimestamp(now, m) }
	for i := range benchSources {
		src := benchSource(i)
		// A backup every 20 minutes, each source at its own minute; every
		// 37th source stopped succeeding 30 hours ago.
		period := int64(20 * 60)
		phase := int64(i*41) % period
		done := (now.Unix() - phase) / period // backups finished so far
		last := float64(done*period + phase)
		if i%37 == 0 {
			last = nowS - 30*3600
		}
		emit(prometheus.MustNewConstMetric(descLastSuccess, prometheus.GaugeValue, last, src))
		dur := float64(30 * (1 + i%50))
		buckets := make(map[float64]uint64, len(backupBuckets))
		n := uint64(done % 100_000)
		for _, ub := range backupBuckets {
			if dur <= ub {
				buckets[ub] = n
			} else if 0.8*dur <= ub {
				buckets[ub] = n / 3
			}
		}
		emit(prometheus.MustNewConstHistogram(descDuration, n, float64(n)*dur, buckets, src))
		level, required := 5.0, 5.0
		if i%19 == 0 {
			level = 3
		}
		if i%3 == 0 {
			required = 3
		}
		emit(prometheus.MustNewConstMetric(descCompliance, prometheus.GaugeValue, level, src))
		emit(prometheus.MustNewConstMetric(descRequired, prometheus.GaugeValue, required, src))
		for j, tg := range sourceTargets(i) {
			size := float64((i+1)*(j+1)) * 1e6
			emit(prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(done%100_000)*size, src, tg))
			failed := 0.0
			if i%23 == j {
				failed = float64(done % 100_000)
			}
			emit(prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, failed, src, tg, "target"))
			emit(prometheus.MustNewConstMetric(descFailures, prometheus.CounterValue, 0, src, tg, "checksum"))
			verified := last - 3600
			if i%41 == j {
				verified = nowS - 3*86400
			}
			emit(prometheus.MustNewConstMetric(descVerified, prometheus.GaugeValue, verified, src, tg))
		}
	}
	for r := range benchRunbooks {
		rb := benchRunbook(r)
		ok := 1.0
		if r%17 == 0 {
			ok = 0
		}
		emit(prometheus.MustNewConstMetric(descDrillOK, prometheus.GaugeValue, ok, rb))
		emit(prometheus.MustNewConstMetric(descDrillRTO, prometheus.GaugeValue, float64(300+r*7), rb))
		emit(prometheus.MustNewConstMetric(descDrillRPO, prometheus.GaugeValue, float64(600+r*13), rb))
	}
	ticks := float64(now.Unix() / int64(benchStep/time.Second) % 1_000_000)
	for t := range benchTargets {
		tg := benchTarget(t)
		for o, op := range storageOps {
			ops := ticks * float64((t+1)*(o+1))
			errs := 0.0
			if t%11 == o {
				errs = ops / 10
			}
			emit(prometheus.MustNewConstMetric(descStorageOps, prometheus.CounterValue, ops, tg, op))
			emit(prometheus.MustNewConstMetric(descStorageErrs, prometheus.CounterValue, errs, tg, op))
			buckets := make(map[float64]uint64, len(storageBuckets))
			for k, ub := range storageBuckets {
				buckets[ub] = uint64(ops) * uint64(k+1) / uint64(len(storageBuckets))
			}
			emit(prometheus.MustNewConstHistogram(descStorageDur, uint64(ops), ops*0.2, buckets, tg, op))
		}
	}
	for r := range 5 {
		rc := fmt.Sprintf("receiver%d", r)
		emit(prometheus.MustNewConstMetric(descNotif, prometheus.CounterValue, ticks*3, rc, "success"))
		failures := 0.0
		if r == 4 {
			failures = ticks
		}
		emit(prometheus.MustNewConstMetric(descNotif, prometheus.CounterValue, failures, rc, "failure"))
	}
	for b := range 10 {
		bg := fmt.Sprintf("budget%d", b)
		emit(prometheus.MustNewConstMetric(descForecast, prometheus.GaugeValue, float64(100*b+50), bg))
		emit(prometheus.MustNewConstMetric(descLimit, prometheus.GaugeValue, float64(100*b+200*(b%2)), bg))
	}
	emit(prometheus.MustNewConstMetric(descCheckpoint, prometheus.GaugeValue, 8))
	emit(prometheus.MustNewConstMetric(descAuditFail, prometheus.CounterValue, 0))
}

// benchRuleFile writes the rule file: one group of benchRules alerting
// rules.
func benchRuleFile(tb testing.TB, dir string) string {
	tb.Helper()
	var sb strings.Builder
	sb.WriteString("groups:\n  - name: bench\n    rules:\n")
	builtin := string(BuiltinRules)
	_, rules, ok := strings.Cut(builtin, "    rules:\n")
	if !ok {
		tb.Fatal("built-in rules: no rules list")
	}
	sb.WriteString(rules)
	n := strings.Count(rules, "- alert:")
	add := func(kind, expr, forDur, severity, summary string) {
		fmt.Fprintf(&sb, "      - alert: %s_%03d\n        expr: %s\n        for: %s\n        labels: {severity: %s}\n        annotations:\n          summary: %q\n", kind, n, expr, forDur, severity, summary)
		n++
	}
	for i := 0; n < benchRules; i++ {
		s, t, r := benchSource(i%benchSources), benchTarget(i%benchTargets), benchRunbook(i%benchRunbooks)
		switch i % 8 {
		case 0:
			add("BackupStale", fmt.Sprintf(`time() - opsd_backup_last_success_timestamp_seconds{source=%q} > %d * 3600`, s, 20+i%10), "10m", "critical",
				"No successful backup of {{ $labels.source }} for {{ $value | humanizeDuration }}")
		case 1:
			add("BackupFailures", fmt.Sprintf(`sum by (instance, source, target, reason) (increase(opsd_backup_failures_total{source=%q}[1h])) > 0`, s), "1m", "warning",
				"Backups of {{ $labels.source }} to {{ $labels.target }} are failing ({{ $labels.reason }})")
		case 2:
			add("BackupSlow", fmt.Sprintf(`histogram_quantile(0.9, sum by (le, source) (rate(opsd_backup_duration_seconds_bucket{source=%q}[1h]))) > 600`, s), "30m", "warning",
				"Backups of {{ $labels.source }} take {{ $value | humanizeDuration }} (p90)")
		case 3:
			add("BackupNotVerified", fmt.Sprintf(`time() - opsd_backup_last_verified_timestamp_seconds{source=%q} > 2 * 86400`, s), "30m", "warning",
				"Backups of {{ $labels.source }} on {{ $labels.target }} not verified for {{ $value | humanizeDuration }}")
		case 4:
			add("ComplianceBelowPolicy", fmt.Sprintf(`opsd_backup_compliance_level{source=%q} < on (instance, source) opsd_backup_compliance_required`, s), "2h", "warning",
				"{{ $labels.source }} is below its policy (level {{ $value }})")
		case 5:
			add("BackupThroughputLow", fmt.Sprintf(`sum by (instance, source, target) (rate(opsd_backup_bytes_total{source=%q}[15m])) < 1e4`, s), "15m", "info",
				"{{ $labels.source }} wrote {{ $value | humanize }}B/s to {{ $labels.target }}")
		case 6:
			add("StorageErrors", fmt.Sprintf(`sum by (instance, target, op) (rate(opsd_storage_errors_total{target=%q}[5m])) / sum by (instance, target, op) (rate(opsd_storage_operations_total{target=%q}[5m])) > 0.05`, t, t), "5m", "warning",
				"{{ $labels.op }} on {{ $labels.target }} fails {{ $value | humanizePercentage }} of the time")
		case 7:
			add("DrillRTOBreached", fmt.Sprintf(`opsd_drill_last_rto_seconds{runbook=%q} > 900 or opsd_drill_last_success{runbook=%q} == 0`, r, r), "1m", "critical",
				"Drill {{ $labels.runbook }}: RTO {{ $value | humanizeDuration }}")
		}
	}
	p := filepath.Join(dir, "bench.rules.yaml")
	if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := CheckRuleFiles(p); err != nil {
		tb.Fatal(err)
	}
	return p
}

// benchTargetLabels are the labels Prometheus attaches to the scrape of
// the exporter at addr; opsd's Collector attaches the same.
func benchTargetLabels(addr string) map[string]string {
	return map[string]string{"job": "opsd", "instance": addr}
}

// benchLocal is opsd's local path as the Evaluator builds it: its TSDB
// (openLocalTSDB: Prometheus's tsdb with the WAL, in a temporary dir), its
// PromQL engine, its rules manager (Evaluator.newManager) with the
// rule file loaded, and the Collector reading the exporter.
type benchLocal struct {
	ev        *Evaluator
	group     *promrules.Group
	collector *Collector
}

func newBenchLocal(tb testing.TB, ctx context.Context, ruleFile string, interval time.Duration, exp *benchExporter, targetLabels map[string]string) *benchLocal {
	tb.Helper()
	ev, err := New(Options{Dir: tb.TempDir(), DisableBuiltin: true, RuleFiles: []string{ruleFile}, EvalInterval: interval})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := ev.Close(); err != nil {
			tb.Error(err)
		}
	})
	m := ev.newManager(ctx, promrules.EngineQueryFunc(ev.engine, ev.db), "local")
	groups, errs := m.LoadGroups(interval, labels.EmptyLabels(), "", nil, false, ruleFile)
	if errs != nil {
		tb.Fatal(errs)
	}
	if len(groups) != 1 {
		tb.Fatalf("%d rule groups, want 1", len(groups))
	}
	l := &benchLocal{ev: ev}
	for _, g := range groups {
		l.group = g
	}
	if n := len(l.group.Rules()); n != benchRules {
		tb.Fatalf("%d rules, want %d", n, benchRules)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(exp)
	l.collector = NewCollector(reg, ev.db, targetLabels, nil)
	return l
}

// round runs one evaluation round as the rules manager's loop does and
// returns its duration, the value of
// prometheus_rule_group_last_duration_seconds.
func (l *benchLocal) round(ctx context.Context) time.Duration {
	promrules.DefaultEvalIterationFunc(ctx, l.group, l.group.EvalTimestamp(time.Now().UnixNano()))
	return l.group.GetEvaluationTime()
}

// warmUp runs the first rounds as the rules manager's loop does: two
// rounds, then the restore of the alerts' `for` state from
// ALERTS_FOR_STATE, after which rounds also write ALERTS and
// ALERTS_FOR_STATE.
func (l *benchLocal) warmUp(ctx context.Context) {
	l.round(ctx)
	l.round(ctx)
	l.group.RestoreForState(time.Now())
}

// activeAlerts counts pending and firing alerts.
func (l *benchLocal) activeAlerts() int {
	n := 0
	for _, r := range l.group.AlertingRules() {
		n += len(r.ActiveAlerts())
	}
	return n
}

// BenchmarkEvalRound measures one evaluation round of the 1,000 rules over
// the local TSDB holding the hour of samples, alone (for profiling:
// -cpuprofile). BenchmarkEvalRoundVsPrometheus is the comparison.
func BenchmarkEvalRound(b *testing.B) {
	ctx := context.Background()
	exp := &benchExporter{start: time.Now().Add(-benchTicks * benchStep).Truncate(benchStep)}
	l := newBenchLocal(b, ctx, benchRuleFile(b, b.TempDir()), 15*time.Second, exp, benchTargetLabels("127.0.0.1:9100"))
	for k := 0; k <= benchTicks; k++ {
		exp.setTick(k)
		if err := l.collector.Collect(ctx); err != nil {
			b.Fatal(err)
		}
	}
	l.warmUp(ctx)
	b.ResetTimer()
	for range b.N {
		l.round(ctx)
	}
	b.ReportMetric(float64(l.activeAlerts()), "alerts")
}

const prometheusBin = "prometheus"

// lookPrometheus finds Debian's Prometheus server, failing under CI=true
// and skipping loudly otherwise when it is missing.
func lookPrometheus(tb testing.TB) string {
	tb.Helper()
	path, err := exec.LookPath(prometheusBin)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("Debian package prometheus is not installed (%v): the comparison with the Prometheus server cannot run", err)
	testenv.Missing(tb, "%s", msg)
	return ""
}

// scrapeServer serves the exporter's current tick in the text format and
// counts, per tick, the complete responses it wrote.
type scrapeServer struct {
	exp *benchExporter
	reg *prometheus.Registry

	mu     sync.Mutex
	body   []byte
	bodyOf int
	served map[int]int
	cond   *sync.Cond
}

func newScrapeServer(exp *benchExporter) *scrapeServer {
	s := &scrapeServer{exp: exp, reg: prometheus.NewPedanticRegistry(), bodyOf: -1, served: map[int]int{}}
	s.reg.MustRegister(exp)
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *scrapeServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	tick, _ := s.exp.now()
	s.mu.Lock()
	if s.bodyOf != tick {
		mfs, err := s.reg.Gather()
		if err != nil {
			s.mu.Unlock()
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		var buf bytes.Buffer
		for _, mf := range mfs {
			if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
				s.mu.Unlock()
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		s.body, s.bodyOf = buf.Bytes(), tick
	}
	body := s.body
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if _, err := w.Write(body); err != nil {
		return
	}
	s.mu.Lock()
	s.served[tick]++
	s.cond.Broadcast()
	s.mu.Unlock()
}

// waitServed waits until tick has been served completely n times.
func (s *scrapeServer) waitServed(tick, n int, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	stop := time.AfterFunc(timeout, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	defer stop.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.served[tick] < n {
		if time.Now().After(deadline) {
			return false
		}
		s.cond.Wait()
	}
	return true
}

// promServer is a Debian Prometheus server on loopback.
type promServer struct {
	base     string
	cfgPath  string
	cmd      *exec.Cmd
	logs     *bytes.Buffer
	ruleFile string
	stopOnce sync.Once
}

const promConfig = `global:
  scrape_interval: %[1]s
  scrape_timeout: %[1]s
  evaluation_interval: %[2]s
rule_files: [%[3]q]
scrape_configs:
  - job_name: opsd
    honor_timestamps: true
    static_configs: [{targets: [%[4]q]}]
`

func startPrometheus(tb testing.TB, bin, dir, ruleFile, target string, evalInterval time.Duration) *promServer {
	tb.Helper()
	p := &promServer{cfgPath: filepath.Join(dir, "prometheus.yml"), logs: &bytes.Buffer{}, ruleFile: ruleFile}
	p.writeConfig(tb, "100ms", evalInterval, target)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p.cmd = exec.Command(bin,
		"--config.file="+p.cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr,
		"--web.enable-lifecycle",
		"--log.level=warn",
	)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", bin, err)
	}
	tb.Cleanup(func() {
		p.stop()
		if tb.Failed() {
			tb.Logf("prometheus output:\n%s", p.logs.String())
		}
	})
	p.base = "http://" + addr
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(p.base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("prometheus not ready at %s: %v\n%s", p.base, err, p.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop kills the server and waits for it; a second call does nothing.
func (p *promServer) stop() {
	p.stopOnce.Do(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	})
}

func (p *promServer) writeConfig(tb testing.TB, scrapeInterval string, evalInterval time.Duration, target string) {
	tb.Helper()
	cfg := fmt.Sprintf(promConfig, scrapeInterval, evalInterval, p.ruleFile, target)
	if err := os.WriteFile(p.cfgPath, []byte(cfg), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// reload applies the configuration file (POST /-/reload returns once it
// is applied).
func (p *promServer) reload(tb testing.TB) {
	tb.Helper()
	resp, err := http.Post(p.base+"/-/reload", "", nil)
	if err != nil {
		tb.Fatalf("reload prometheus: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("reload prometheus: %s %s", resp.Status, body)
	}
}

// groupRound reads the rule group's last evaluation (its slot) and
// duration from Prometheus's own /metrics.
func (p *promServer) groupRound(tb testing.TB) (slot time.Time, dur time.Duration) {
	tb.Helper()
	resp, err := http.Get(p.base + "/metrics")
	if err != nil {
		tb.Fatalf("prometheus /metrics: %v", err)
	}
	defer resp.Body.Close()
	key := fmt.Sprintf(`rule_group=%q`, p.ruleFile+";bench")
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	var ts, d float64
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, key) {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			tb.Fatalf("prometheus /metrics: %q: %v", line, err)
		}
		switch {
		case strings.HasPrefix(line, "prometheus_rule_group_last_evaluation_timestamp_seconds{"):
			ts = v
		case strings.HasPrefix(line, "prometheus_rule_group_last_duration_seconds{"):
			d = v
		}
	}
	if ts <= 0 {
		return time.Time{}, 0
	}
	sec, frac := math.Modf(ts)
	return time.Unix(int64(sec), int64(frac*1e9)), time.Duration(d * float64(time.Second))
}

// query runs an instant PromQL query on Prometheus's HTTP API and returns
// the scalar of a single-sample result.
func (p *promServer) query(tb testing.TB, q string) float64 {
	return p.queryAt(tb, q, time.Now())
}

func (p *promServer) queryAt(tb testing.TB, q string, at time.Time) float64 {
	tb.Helper()
	resp, err := http.Get(p.base + "/api/v1/query?query=" + url.QueryEscape(q) + fmt.Sprintf("&time=%.3f", float64(at.UnixMilli())/1000))
	if err != nil {
		tb.Fatalf("prometheus query %s: %v", q, err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string
		Error  string
		Data   struct {
			Result []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		tb.Fatalf("prometheus query %s: %s %s %v", q, r.Status, r.Error, err)
	}
	if len(r.Data.Result) != 1 {
		return 0
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

// localQuery runs an instant PromQL query over opsd's local TSDB.
func (l *benchLocal) query(tb testing.TB, ctx context.Context, q string) float64 {
	return l.queryAt(tb, ctx, q, time.Now())
}

func (l *benchLocal) queryAt(tb testing.TB, ctx context.Context, q string, at time.Time) float64 {
	tb.Helper()
	qry, err := l.ev.engine.NewInstantQuery(ctx, l.ev.db, nil, q, at.Truncate(time.Millisecond))
	if err != nil {
		tb.Fatal(err)
	}
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		tb.Fatal(res.Err)
	}
	v, err := res.Vector()
	if err != nil {
		tb.Fatal(err)
	}
	if len(v) != 1 {
		return 0
	}
	return v[0].F
}

// BenchmarkEvalRoundVsPrometheus runs the same 1,000 rules over the same
// series in opsd's local path and in Debian's Prometheus server, and
// reports one round's wall time of each (the median of benchRounds), as
// prometheus_rule_group_last_duration_seconds measures it on both sides.
//
// The exporter's samples carry explicit timestamps: tick k of the hour is
// served until Prometheus (scraping every 100ms) has fetched it once and
// opsd's Collector has read it once, then the next; so both store the same
// 241 samples per series, in Prometheus's head block as in the head of
// opsd's local TSDB. Prometheus then scrapes only every 10 minutes, and the rounds
// alternate: Prometheus evaluates in its slot, opsd half an interval later,
// so neither runs while the other evaluates.
//
// Run with -benchtime=1x (bench/alerts.sh); b.N rounds are not meaningful.
func BenchmarkEvalRoundVsPrometheus(b *testing.B) {
	bin := lookPrometheus(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	interval := 10 * time.Second
	if v := os.Getenv("BENCH_EVAL_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		interval = d
	}
	rounds := 5
	if v := os.Getenv("BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		rounds = n
	}
	dir := b.TempDir()
	ruleFile := benchRuleFile(b, dir)
	var (
		local *benchLocal
		prom  *promServer
	)
	for attempt := 1; local == nil; attempt++ {
		if attempt > 3 {
			b.Fatal("no backfill gave both stores the same samples in 3 attempts")
		}
		local, prom = benchPair(b, ctx, bin, filepath.Join(dir, strconv.Itoa(attempt)), ruleFile, interval)
	}

	// Find Prometheus's slot: a round that started after the reload.
	reloaded := time.Now()
	var slot time.Time
	for {
		s, _ := prom.groupRound(b)
		if s.After(reloaded) {
			slot = s
			break
		}
		if time.Since(reloaded) > 3*interval {
			b.Fatalf("prometheus evaluated no round within %s", 3*interval)
		}
		time.Sleep(interval / 20)
	}
	b.ResetTimer()
	var opsdRounds, promRounds []time.Duration
	seen := map[time.Time]bool{slot: true} // the first round after the reload is a warm-up
	local.warmUp(ctx)
	for i := 1; len(opsdRounds) < rounds || len(promRounds) < rounds; i++ {
		// Half an interval after Prometheus's slot: its round is done.
		time.Sleep(time.Until(slot.Add(time.Duration(i)*interval + interval/2)))
		if len(opsdRounds) < rounds {
			opsdRounds = append(opsdRounds, local.round(ctx))
		}
		s, d := prom.groupRound(b)
		if !seen[s] {
			seen[s] = true
			promRounds = append(promRounds, d)
		}
		if i > 4*rounds {
			b.Fatalf("prometheus evaluated %d rounds in %d intervals", len(promRounds), i)
		}
	}
	b.StopTimer()
	opsdMed, promMed := median(opsdRounds), median(promRounds)
	b.Logf("opsd rounds: %v", opsdRounds)
	b.Logf("prometheus rounds: %v", promRounds)
	// Both evaluate in the same slots over the same samples, so they
	// should hold the same ALERTS series (pending and firing).
	pa, la := prom.query(b, `count(ALERTS)`), local.query(b, ctx, `count(ALERTS)`)
	b.Logf("ALERTS series (pending or firing): opsd %.0f, prometheus %.0f; opsd's last slot %s", la, pa, local.group.GetLastEvalTimestamp().Format(time.RFC3339Nano))
	if bad := prom.unhealthyRules(b); bad > 0 {
		b.Logf("prometheus: %d rules not healthy", bad)
	}
	for _, r := range local.group.Rules() {
		if r.Health() != promrules.HealthGood {
			b.Errorf("opsd rule %s: %s %v", r.Name(), r.Health(), r.LastError())
		}
	}
	b.ReportMetric(float64(opsdMed)/1e6, "opsd-ms")
	b.ReportMetric(float64(promMed)/1e6, "prometheus-ms")
	b.ReportMetric(float64(opsdMed)/float64(promMed), "opsd/prometheus")
	b.ReportMetric(local.query(b, ctx, `count({__name__=~"opsd_.+"})`), "series")
	b.ReportMetric(la, "opsd-alerts")
	b.ReportMetric(pa, "prometheus-alerts")
}

// unhealthyRules counts the rules /api/v1/rules does not call "ok".
func (p *promServer) unhealthyRules(tb testing.TB) int {
	tb.Helper()
	resp, err := http.Get(p.base + "/api/v1/rules")
	if err != nil {
		tb.Fatalf("prometheus rules: %v", err)
	}
	defer resp.Body.Close()
	var rr struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name, Health, LastError string
				}
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&rr); err != nil {
		tb.Fatalf("prometheus rules: %v", err)
	}
	bad := 0
	for _, g := range rr.Data.Groups {
		for _, r := range g.Rules {
			if r.Health != "ok" {
				bad++
				tb.Logf("prometheus rule %s: %s %s", r.Name, r.Health, r.LastError)
			}
		}
	}
	return bad
}

// benchMetricNames are the names of the series benchExporter exposes.
func benchMetricNames() []string {
	var names []string
	for _, d := range []*prometheus.Desc{descLastSuccess, descBytes, descFailures, descVerified, descCompliance, descRequired,
		descDrillOK, descDrillRTO, descDrillRPO, descStorageOps, descStorageErrs, descNotif, descForecast, descLimit, descCheckpoint, descAuditFail} {
		names = append(names, descName(d))
	}
	for _, d := range []*prometheus.Desc{descDuration, descStorageDur} {
		n := descName(d)
		names = append(names, n+"_bucket", n+"_sum", n+"_count")
	}
	return names
}

func descName(d *prometheus.Desc) string {
	_, rest, _ := strings.Cut(d.String(), `fqName: "`)
	name, _, _ := strings.Cut(rest, `"`)
	return name
}

// benchPair starts the exporter, opsd's local path and a Prometheus server
// scraping the exporter, and backfills the hour into both, tick by tick.
// It returns nil if the two stores do not end up with the same samples (a
// scrape Prometheus gave up on under load), after stopping the server.
func benchPair(b *testing.B, ctx context.Context, bin, dir, ruleFile string, interval time.Duration) (*benchLocal, *promServer) {
	b.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	start := time.Now().Add(-benchTicks * benchStep).Truncate(time.Second)
	exp := &benchExporter{start: start}
	srv := newScrapeServer(exp)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = hs.Serve(ln) }()
	b.Cleanup(func() { hs.Close() })
	target := ln.Addr().String()

	local := newBenchLocal(b, ctx, ruleFile, interval, exp, benchTargetLabels(target))
	prom := startPrometheus(b, bin, dir, ruleFile, target, interval)

	// Tick k is collected by opsd once Prometheus has fetched it, so that
	// the collection does not compete with Prometheus's 100ms scrape
	// timeout; the next scrape then fetches tick k+1.
	t0 := time.Now()
	for k := 0; k <= benchTicks; k++ {
		exp.setTick(k)
		if !srv.waitServed(k, 1, 30*time.Second) {
			b.Fatalf("prometheus did not scrape tick %d within 30s\n%s", k, prom.logs.String())
		}
		if err := local.collector.Collect(ctx); err != nil {
			b.Fatal(err)
		}
	}
	// A scrape that began after the last tick was served means that tick's
	// samples are committed.
	srv.mu.Lock()
	last := srv.served[benchTicks]
	srv.mu.Unlock()
	if !srv.waitServed(benchTicks, last+1, 30*time.Second) {
		b.Fatal("prometheus stopped scraping")
	}
	prom.writeConfig(b, "10m", interval, target)
	prom.reload(b)
	b.Logf("backfilled %d ticks into both in %s", benchTicks+1, time.Since(t0).Round(time.Millisecond))

	// Same data on both sides: every opsd_* series with all its samples.
	var ps, ls, pn, lsn float64
	for _, name := range benchMetricNames() {
		seriesQ, countQ := "count("+name+")", "sum(count_over_time("+name+"[2h]))"
		ps += prom.query(b, seriesQ)
		ls += local.query(b, ctx, seriesQ)
		pn += prom.query(b, countQ)
		lsn += local.query(b, ctx, countQ)
	}
	b.Logf("opsd_* series: prometheus %.0f, opsd %.0f; samples: prometheus %.0f, opsd %.0f", ps, ls, pn, lsn)
	if ps != ls || pn != lsn || ps == 0 {
		b.Logf("the two stores do not hold the same data (series %.0f vs %.0f, samples %.0f vs %.0f); starting over", ps, ls, pn, lsn)
		prom.stop()
		hs.Close()
		return nil, nil
	}
	return local, prom
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
