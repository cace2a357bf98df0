package route_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
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

	"github.com/opsd-dev/opsd/internal/alerts/notify"
	"github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// The routing benchmark: 10,000 firing alerts (10 alert names x 100
// sources x 10 instances) into routing grouped by alertname and source
// (1,000 groups of 10), group_wait 1s, one webhook receiver on loopback;
// the same route for Debian's Alertmanager and for a Router. Alerts go in
// as Prometheus's notifier sends them: batches of 256, one after the
// other, each alert name's alerts together (as one rule's evaluation
// produces them). Measured: from the first batch sent until the receiver
// has been notified of all 10,000 alerts.
const (
	routeBenchAlerts = 10_000
	routeBenchBatch  = 256 // Prometheus's notifier sends at most 256 alerts per request (maxBatchSize)
)

const routeBenchAMConfig = `
route:
  receiver: hook
  group_by: [alertname, source]
  group_wait: 1s
  group_interval: 1m
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs: [{url: %q}]
`

// routeBenchConfig is routeBenchAMConfig in opsd's terms.
func routeBenchConfig(url string) config.Alerts {
	return config.Alerts{
		Route: &config.Route{
			Receiver:       "hook",
			GroupBy:        []string{"alertname", "source"},
			GroupWait:      time.Second,
			GroupInterval:  time.Minute,
			RepeatInterval: time.Hour,
		},
		Receivers: map[string]*config.Receiver{"hook": webhook(url)},
	}
}

// routeBenchAlertSet returns the alerts in the order they are sent,
// starting now: the runners build them right before sending, since an
// alert that started more than group_wait ago is flushed at once, as
// Alertmanager does.
func routeBenchAlertSet() []route.Alert {
	now := time.Now()
	out := make([]route.Alert, 0, routeBenchAlerts)
	for n := range 10 {
		for s := range 100 {
			for i := range 10 {
				out = append(out, route.Alert{
					Labels: map[string]string{
						"alertname": fmt.Sprintf("BenchAlert%d", n),
						"source":    fmt.Sprintf("s%03d", s),
						"instance":  fmt.Sprintf("host%d:9100", i),
						"job":       "opsd",
						"severity":  []string{"warning", "critical"}[n%2],
					},
					Annotations: map[string]string{
						"summary":     fmt.Sprintf("BenchAlert%d on s%03d host%d", n, s, i),
						"description": "A benchmark alert with an annotation of ordinary length, as rule templates produce them.",
					},
					StartsAt:     now,
					GeneratorURL: "http://opsd.example/graph?g0.expr=up",
				})
			}
		}
	}
	return out
}

func batches(alerts []route.Alert) [][]route.Alert {
	var out [][]route.Alert
	for len(alerts) > 0 {
		n := min(routeBenchBatch, len(alerts))
		out = append(out, alerts[:n])
		alerts = alerts[n:]
	}
	return out
}

// benchHook is the webhook receiver, bench/alertsbench/webhook, in a
// process of its own for both sides: in the benchmark's process it would
// share a Go runtime (CPU, GC) with opsd's Router but not with
// Alertmanager.
type benchHook struct {
	url   string
	base  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// webhookBin builds bench/alertsbench/webhook once, unless
// OPSD_BENCH_WEBHOOK names a built one.
var webhookBin = sync.OnceValues(func() (string, error) {
	if p := os.Getenv("OPSD_BENCH_WEBHOOK"); p != "" {
		return p, nil
	}
	dir, err := os.MkdirTemp("", "opsd-bench-webhook-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "webhook")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/opsd-dev/opsd/bench/alertsbench/webhook").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build bench/alertsbench/webhook: %v\n%s", err, out)
	}
	return bin, nil
})

func newBenchHook(tb testing.TB) *benchHook {
	tb.Helper()
	bin, err := webhookBin()
	if err != nil {
		tb.Fatal(err)
	}
	h := &benchHook{cmd: exec.Command(bin, "-expect", strconv.Itoa(routeBenchAlerts))}
	h.cmd.Stderr = os.Stderr
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", bin, err)
	}
	tb.Cleanup(h.stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("webhook receiver: %v", err)
	}
	h.base = strings.TrimSpace(line)
	h.url = h.base + "/hook"
	return h
}

func (h *benchHook) stop() {
	h.stdin.Close() // it exits when its stdin closes
	_ = h.cmd.Wait()
}

// hookStats is the receiver's GET /stats.
type hookStats struct {
	Payloads  int   `json:"payloads"`
	Alerts    int   `json:"alerts"`
	Notified  int   `json:"notified"`
	FirstNano int64 `json:"first_unix_nano"`
	DoneNano  int64 `json:"done_unix_nano"`
	Errors    int   `json:"errors"`
}

func (h *benchHook) stats(tb testing.TB) hookStats {
	tb.Helper()
	resp, err := http.Get(h.base + "/stats")
	if err != nil {
		tb.Fatalf("webhook receiver stats: %v", err)
	}
	defer resp.Body.Close()
	var s hookStats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		tb.Fatalf("webhook receiver stats: %v", err)
	}
	return s
}

// routeRun is one measurement.
type routeRun struct {
	total    time.Duration // first batch sent .. last alert notified
	first    time.Duration // first batch sent .. first payload received
	ingest   time.Duration // first batch sent .. last batch accepted
	payloads int
	alerts   int // alerts delivered in payloads (repeats included)
	notified int // distinct alerts notified
}

func (r routeRun) rate() float64 { return float64(r.notified) / r.total.Seconds() }

// wait polls the receiver until every alert was notified, up to timeout.
// Polling every 10ms costs the receiver little and adds nothing to the
// times, which the receiver takes itself.
func (h *benchHook) wait(tb testing.TB, t0 time.Time, timeout time.Duration) routeRun {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var s hookStats
	for {
		s = h.stats(tb)
		if s.DoneNano != 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if s.Errors > 0 {
		tb.Fatalf("webhook receiver: %d payloads did not decode", s.Errors)
	}
	if s.DoneNano == 0 {
		tb.Fatalf("%d of %d alerts notified within %s (%d payloads)", s.Notified, routeBenchAlerts, timeout, s.Payloads)
	}
	return routeRun{
		total:    time.Unix(0, s.DoneNano).Sub(t0),
		first:    time.Unix(0, s.FirstNano).Sub(t0),
		payloads: s.Payloads,
		alerts:   s.Alerts,
		notified: s.Notified,
	}
}

// lookAlertmanagerB is lookAlertmanager for benchmarks.
func lookAlertmanagerB(tb testing.TB) string {
	tb.Helper()
	path, err := exec.LookPath(alertmanagerBin)
	if err == nil {
		return path
	}
	msg := fmt.Sprintf("Debian package %s is not installed (%v): the routing benchmark cannot run", alertmanagerBin, err)
	testenv.Missing(tb, "%s", msg)
	return ""
}

// runAlertmanager starts Alertmanager with the benchmark's route to a new
// receiver, posts the alerts to /api/v2/alerts and measures; Alertmanager
// is stopped before it returns.
func runAlertmanager(tb testing.TB, bin string) routeRun {
	tb.Helper()
	h := newBenchHook(tb)
	dir, err := os.MkdirTemp("", "opsd-route-bench-")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.RemoveAll(dir)
	base, stop := launchAlertmanager(tb, bin, dir, fmt.Sprintf(routeBenchAMConfig, h.url))
	defer stop()

	// Encoded beforehand: only sending counts, as only Push counts for opsd.
	type postable struct {
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations,omitempty"`
		StartsAt     time.Time         `json:"startsAt"`
		GeneratorURL string            `json:"generatorURL,omitempty"`
	}
	var bodies [][]byte
	for _, batch := range batches(routeBenchAlertSet()) {
		ps := make([]postable, len(batch))
		for i, a := range batch {
			ps[i] = postable{Labels: a.Labels, Annotations: a.Annotations, StartsAt: a.StartsAt, GeneratorURL: a.GeneratorURL}
		}
		b, err := json.Marshal(ps)
		if err != nil {
			tb.Fatal(err)
		}
		bodies = append(bodies, b)
	}
	client := &http.Client{Timeout: 30 * time.Second}
	t0 := time.Now()
	for _, b := range bodies {
		resp, err := client.Post(base+"/api/v2/alerts", "application/json", bytes.NewReader(b))
		if err != nil {
			tb.Fatalf("post alerts: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			tb.Fatalf("post alerts: %s", resp.Status)
		}
	}
	ingest := time.Since(t0)
	r := h.wait(tb, t0, 2*time.Minute)
	r.ingest = ingest
	client.CloseIdleConnections()
	return r
}

// runOpsd runs a Router configured as the daemon configures it (snapshots
// in a data_dir, notification metrics) with the benchmark's route to a new
// receiver, pushes the alerts as the rules evaluator does, and measures;
// the Router is stopped before it returns.
func runOpsd(tb testing.TB) routeRun {
	tb.Helper()
	h := newBenchHook(tb)
	dir, err := os.MkdirTemp("", "opsd-route-bench-")
	if err != nil {
		tb.Fatal(err)
	}
	defer os.RemoveAll(dir)
	nm, err := notify.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		tb.Fatal(err)
	}
	r, err := route.New(route.Options{
		Config:  routeBenchConfig(h.url),
		DataDir: dir,
		Notify:  notify.Deps{Metrics: nm},
	})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	}()
	bs := batches(routeBenchAlertSet())
	t0 := time.Now()
	for _, b := range bs {
		if err := r.Push(ctx, b...); err != nil {
			tb.Fatalf("Push: %v", err)
		}
	}
	ingest := time.Since(t0)
	run := h.wait(tb, t0, 2*time.Minute)
	run.ingest = ingest
	return run
}

// BenchmarkRouting10k runs opsd's Router and Debian's Alertmanager in
// turn, BENCH_ROUNDS times each (default 3), fresh each time, and reports
// the medians: notified alerts per second (10,000 over the time until the
// last was notified), that time, and the webhook payloads. Run with
// -benchtime=1x (bench/alerts.sh).
func BenchmarkRouting10k(b *testing.B) {
	bin := lookAlertmanagerB(b)
	rounds := 3
	if v := os.Getenv("BENCH_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		rounds = n
	}
	var am, opsd []routeRun
	for range b.N {
		for i := range rounds {
			// Alternated, so both see the same machine.
			if i%2 == 0 {
				opsd = append(opsd, runOpsd(b))
				am = append(am, runAlertmanager(b, bin))
			} else {
				am = append(am, runAlertmanager(b, bin))
				opsd = append(opsd, runOpsd(b))
			}
		}
	}
	for i := range am {
		b.Logf("round %d: opsd %s (ingest %s, first payload %s, %d payloads, %d alerts in them); alertmanager %s (ingest %s, first payload %s, %d payloads, %d alerts in them)",
			i+1, opsd[i].total.Round(time.Millisecond), opsd[i].ingest.Round(time.Millisecond), opsd[i].first.Round(time.Millisecond), opsd[i].payloads, opsd[i].alerts,
			am[i].total.Round(time.Millisecond), am[i].ingest.Round(time.Millisecond), am[i].first.Round(time.Millisecond), am[i].payloads, am[i].alerts)
	}
	om, amm := medianRun(opsd), medianRun(am)
	b.ReportMetric(om.rate(), "opsd-alerts/s")
	b.ReportMetric(amm.rate(), "alertmanager-alerts/s")
	b.ReportMetric(om.total.Seconds(), "opsd-s")
	b.ReportMetric(amm.total.Seconds(), "alertmanager-s")
	b.ReportMetric(float64(om.payloads), "opsd-payloads")
	b.ReportMetric(float64(amm.payloads), "alertmanager-payloads")
	b.ReportMetric(om.ingest.Seconds(), "opsd-ingest-s")
	b.ReportMetric(amm.ingest.Seconds(), "alertmanager-ingest-s")
}

// medianRun is the run with the median total time.
func medianRun(rs []routeRun) routeRun {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b routeRun) int { return int(a.total - b.total) })
	return s[len(s)/2]
}
