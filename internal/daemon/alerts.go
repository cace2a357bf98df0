package daemon

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
	"github.com/opsd-dev/opsd/internal/alerts/route"
	"github.com/opsd-dev/opsd/internal/alerts/rules"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/postgres"
)

// alerting is rule evaluation (Prometheus's engine, local and remote paths)
// feeding routing (Alertmanager's dispatcher, inhibitor and silences) and
// the receivers; it serves the alert, rule and silence routes.
type alerting struct {
	eval   *rules.Evaluator
	router *route.Router
	// lead is whether this replica sends notifications: always with the
	// embedded store; with PostgreSQL state, while it holds the alerting
	// lead (an advisory lock), so that replicas do not all send.
	lead     atomic.Bool
	notify   notify.Deps
	log      *slog.Logger
	mu       sync.Mutex // guards conf
	conf     config.Alerts
	external string
}

// openAlerts builds the evaluator and the router. Nothing is evaluated or
// sent before their actors run.
func (d *Daemon) openAlerts(cfg *config.Config) error {
	log := d.log.With("component", "alerts")
	nm, err := notify.NewMetrics(d.registry)
	if err != nil {
		return fmt.Errorf("notification metrics: %w", err)
	}
	a := &alerting{log: log, conf: cfg.Alerts, external: externalURL(cfg)}
	a.notify = notify.Deps{Messages: stateMessages{st: d.store}, Logger: log, Metrics: nm}
	ropts := route.Options{Config: cfg.Alerts, Notify: a.notify, ExternalURL: a.external, Logger: d.log, Sends: a.lead.Load}
	// Silences and the notification log live with the state: in data_dir
	// for the embedded store, in PostgreSQL (shared by replicas, merged
	// every few seconds) otherwise.
	if d.store.Kind() == state.KindPostgres {
		ropts.State = d.store
	} else {
		ropts.DataDir = cfg.DataDir
		a.lead.Store(true)
	}
	if a.router, err = route.New(ropts); err != nil {
		return err
	}
	remote, err := remoteDatasource(cfg.Alerts)
	if err != nil {
		return err
	}
	a.eval, err = rules.New(rules.Options{
		Dir:          filepath.Join(cfg.DataDir, "alerts", "tsdb"),
		Gatherer:     d.registry,
		EvalInterval: cfg.Alerts.EvaluationInterval,
		Builtin:      cfg.Alerts.Builtin,
		RuleFiles:    cfg.Alerts.RuleFiles,
		Remote:       remote,
		ExternalURL:  a.external,
		Notify:       rules.NotifyTo(a.external, a.push),
		Logger:       d.log,
		Registerer:   d.registry,
	})
	if err != nil {
		return err
	}
	d.registry.MustRegister(alertsCollector{a.eval}, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "opsd_alerting_lead",
		Help: "1 while this replica sends alert notifications (with PostgreSQL state, one replica holds the lead).",
	}, func() float64 {
		if a.lead.Load() {
			return 1
		}
		return 0
	}))
	d.alerts = a
	return nil
}

// runLead holds the alerting lead while it can (PostgreSQL state only).
func (d *Daemon) runAlertingLead(ctx context.Context) error {
	pg, ok := d.store.(*postgres.Store)
	if !ok {
		<-ctx.Done()
		return nil
	}
	return pg.Lead(ctx, postgres.LockAlertingLead, 5*time.Second, func(held bool) {
		d.alerts.lead.Store(held)
		if held {
			d.log.Info("this replica now sends alert notifications (alerting lead)", "replica", d.replicaID)
		} else {
			d.log.Info("alerting lead released; another replica sends notifications", "replica", d.replicaID)
		}
	})
}

// push hands the rules manager's alerts to routing, as Prometheus's
// notifier hands them to Alertmanager.
func (a *alerting) push(ctx context.Context, sent []rules.SentAlert) {
	out := make([]route.Alert, len(sent))
	for i, s := range sent {
		out[i] = route.Alert{Labels: s.Labels, Annotations: s.Annotations, StartsAt: s.StartsAt, EndsAt: s.EndsAt, GeneratorURL: s.GeneratorURL}
	}
	if err := a.router.Push(ctx, out...); err != nil {
		a.log.Error("alerts not routed", "alerts", len(out), "err", err)
	}
}

// apply reloads rules and routing with a new config, whole or not at all:
// both are checked before either changes.
func (a *alerting) apply(cfg *config.Config) error {
	remote, err := remoteDatasource(cfg.Alerts)
	if err != nil {
		return err
	}
	if _, err := route.Convert(cfg.Alerts); err != nil {
		return fmt.Errorf("alert routing: %w", err)
	}
	if err := rules.Check(cfg.Alerts.Builtin, false, cfg.Alerts.RuleFiles); err != nil {
		return fmt.Errorf("alert rules: %w", err)
	}
	if err := a.router.ApplyConfig(cfg.Alerts); err != nil {
		return fmt.Errorf("alert routing: %w", err)
	}
	if err := a.eval.Reload(cfg.Alerts.Builtin, false, cfg.Alerts.RuleFiles, remote, cfg.Alerts.EvaluationInterval); err != nil {
		return fmt.Errorf("alert rules: %w", err)
	}
	a.mu.Lock()
	a.conf = cfg.Alerts
	a.mu.Unlock()
	return nil
}

// Alerts lists routing's alerts (active or suppressed) and the rules'
// pending alerts, which routing never sees (SPEC §4 GET /api/v1/alerts).
func (a *alerting) Alerts(ctx context.Context) ([]route.AlertStatus, error) {
	out, err := a.router.Alerts(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range a.eval.ActiveAlerts() {
		if p.State != "pending" {
			continue
		}
		out = append(out, route.AlertStatus{
			Alert: route.Alert{Labels: p.Labels, Annotations: p.Annotations, StartsAt: p.ActiveAt},
			State: "pending", SilencedBy: []string{}, InhibitedBy: []string{}, Receivers: []string{},
		})
	}
	return out, nil
}

// Rules lists every rule group with its rules' health and alerts.
func (a *alerting) Rules(context.Context) ([]rules.GroupStatus, error) { return a.eval.Status(), nil }

func (a *alerting) AddSilence(ctx context.Context, matchers []string, startsAt, endsAt time.Time, createdBy, comment string) (string, error) {
	return a.router.AddSilence(ctx, matchers, startsAt, endsAt, createdBy, comment)
}

func (a *alerting) ExpireSilence(ctx context.Context, id string) error {
	return a.router.ExpireSilence(ctx, id)
}

func (a *alerting) GetSilence(ctx context.Context, id string) (route.Silence, error) {
	return a.router.GetSilence(ctx, id)
}

func (a *alerting) ListSilences(ctx context.Context, f route.SilenceFilter) ([]route.Silence, error) {
	return a.router.ListSilences(ctx, f)
}

// drillStarted silences the alerts of the sources a drill touches, when
// alerts.drill_silences allows; the silence names the run and lasts at most
// a day past the start (EndDrill expires it when the run ends).
func (a *alerting) drillStarted(ctx context.Context, runID, mode string, sources []string) {
	a.mu.Lock()
	enabled := a.conf.DrillSilences == nil || *a.conf.DrillSilences
	a.mu.Unlock()
	if !enabled || mode != "drill" {
		return
	}
	for _, src := range sources {
		// A resumed run keeps the silence it made before the restart.
		have, err := a.router.ListSilences(ctx, route.SilenceFilter{States: []string{route.SilenceActive, route.SilencePending},
			Labels: map[string]string{"source": src}})
		if err == nil && slices.ContainsFunc(have, func(s route.Silence) bool { return s.Annotations[route.AnnotationDrillRun] == runID }) {
			continue
		}
		id, err := a.router.SilenceForDrill(ctx, src, runID, time.Now().Add(24*time.Hour))
		if err != nil {
			a.log.Error("drill silence not created", "run", runID, "source", src, "err", err)
			continue
		}
		a.log.Info("alerts of the source silenced during the drill", "run", runID, "source", src, "silence", id)
	}
}

// drillEnded expires the run's drill silences.
func (a *alerting) drillEnded(ctx context.Context, runID string) {
	if err := a.router.EndDrill(ctx, runID); err != nil {
		a.log.Error("drill silences not expired", "run", runID, "err", err)
	}
}

// remoteDatasource maps the datasource rule files query (rule_datasource)
// to the evaluator's remote path; nil keeps them on the local TSDB.
func remoteDatasource(a config.Alerts) (*rules.Remote, error) {
	if a.RuleDatasource == "" {
		return nil, nil
	}
	ds := a.Datasources[a.RuleDatasource]
	if ds == nil {
		return nil, fmt.Errorf("alerts.rule_datasource: unknown datasource %q", a.RuleDatasource)
	}
	r := &rules.Remote{URL: ds.URL, Timeout: ds.Timeout, Headers: map[string]string{}}
	for k, v := range ds.Headers {
		r.Headers[k] = string(v)
	}
	var err error
	switch {
	case ds.BearerToken != "":
		r.BearerToken = string(ds.BearerToken)
	case ds.BearerTokenFile != "":
		if r.BearerToken, err = readTrimmed(ds.BearerTokenFile); err != nil {
			return nil, fmt.Errorf("datasource %s: bearer_token_file: %w", a.RuleDatasource, err)
		}
	case ds.BasicAuth != nil:
		r.BasicAuthUser, r.BasicAuthPassword = ds.BasicAuth.Username, string(ds.BasicAuth.Password)
		if ds.BasicAuth.PasswordFile != "" {
			if r.BasicAuthPassword, err = readTrimmed(ds.BasicAuth.PasswordFile); err != nil {
				return nil, fmt.Errorf("datasource %s: basic_auth.password_file: %w", a.RuleDatasource, err)
			}
		}
	}
	if ds.TLS != nil {
		if r.TLS, err = clientTLS(ds.TLS); err != nil {
			return nil, fmt.Errorf("datasource %s: tls: %w", a.RuleDatasource, err)
		}
	}
	return r, nil
}

func readTrimmed(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

func clientTLS(t *config.ClientTLS) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // the operator's explicit choice
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", t.CAFile)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// externalURL is server.external_url, or the listen address.
func externalURL(cfg *config.Config) string {
	if cfg.Server.ExternalURL != "" {
		return strings.TrimSuffix(cfg.Server.ExternalURL, "/")
	}
	scheme := "http"
	if cfg.Server.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + cfg.Server.Listen
}

// alertsCollector exports opsd_alerts{state}: the rules' pending and
// firing alerts.
type alertsCollector struct{ eval *rules.Evaluator }

var alertsDesc = prometheus.NewDesc("opsd_alerts", "Alerts of opsd's rules by state (pending, firing).", []string{"state"}, nil)

func (c alertsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- alertsDesc }

func (c alertsCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.eval.Counts()
	for _, s := range slices.Sorted(maps.Keys(counts)) {
		ch <- prometheus.MustNewConstMetric(alertsDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
}

// stateMessages keeps the Slack message and email thread of each alert
// group in the state store, so a restarted opsd updates the message it
// posted before (and replicas sharing PostgreSQL state do too).
type stateMessages struct{ st state.Store }

func (s stateMessages) key(k notify.MessageKey) string {
	h := sha256.Sum256([]byte(k.GroupKey))
	return "alerts/messages/" + k.Receiver + "/" + k.Integration + "/" + hex.EncodeToString(h[:16])
}

func (s stateMessages) GetMessage(ctx context.Context, k notify.MessageKey) (notify.MessageRef, bool, error) {
	v, ok, err := s.st.GetValue(ctx, s.key(k))
	if err != nil || !ok {
		return notify.MessageRef{}, false, err
	}
	var ref notify.MessageRef
	if err := json.Unmarshal([]byte(v), &ref); err != nil {
		return notify.MessageRef{}, false, fmt.Errorf("decode message ref: %w", err)
	}
	return ref, true, nil
}

func (s stateMessages) PutMessage(ctx context.Context, k notify.MessageKey, ref notify.MessageRef) error {
	b, err := json.Marshal(ref)
	if err != nil {
		return err
	}
	return s.st.PutValue(ctx, s.key(k), string(b))
}

// runbookNotifier sends runbook notify steps through the configured alert
// receivers, each message as its own alert group (a new Slack message, a
// new email thread), retrying what the sender says is worth retrying.
type runbookNotifier struct {
	a *alerting
	// fallback takes the messages when no receiver is configured at all
	// (the quickstart): they go to the log rather than failing the step.
	fallback dr.Notifier
	attempts int
	backoff  time.Duration
}

var _ dr.Notifier = (*runbookNotifier)(nil)

func (n *runbookNotifier) Notify(ctx context.Context, m dr.Notification) error {
	n.a.mu.Lock()
	rc, none := n.a.conf.Receivers[m.Receiver], len(n.a.conf.Receivers) == 0
	n.a.mu.Unlock()
	if none && n.fallback != nil {
		return n.fallback.Notify(ctx, m)
	}
	if rc == nil {
		return fmt.Errorf("unknown receiver %q", m.Receiver)
	}
	recv, err := notify.New(m.Receiver, *rc, n.a.notify)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	labels := map[string]string{"alertname": "RunbookNotification", "severity": m.Severity,
		"runbook": m.Runbook, "run": m.RunID, "step": m.StepID}
	annotations := map[string]string{"summary": m.Message, "description": m.Message}
	note := &notify.Notification{
		GroupKey: "runbook/" + m.RunID + "/" + m.StepID, Receiver: m.Receiver, Status: notify.StatusFiring,
		GroupLabels: map[string]string{"runbook": m.Runbook, "run": m.RunID}, CommonLabels: labels,
		CommonAnnotations: annotations, ExternalURL: n.a.external + "/api/v1/runs/" + m.RunID,
		Alerts: []notify.Alert{{Status: notify.StatusFiring, Labels: labels, Annotations: annotations, StartsAt: now,
			Fingerprint: m.RunID + "/" + m.StepID}},
	}
	wait := n.backoff
	for attempt := 1; ; attempt++ {
		retry, err := recv.Notify(ctx, note)
		if err == nil {
			return nil
		}
		if !retry || attempt >= n.attempts {
			return err
		}
		d := wait
		if ra, ok := notify.RetryAfter(err); ok && ra > d {
			d = ra
		}
		n.a.log.Warn("runbook notification failed, retrying", "receiver", m.Receiver, "run", m.RunID, "attempt", attempt, "in", d, "err", err)
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(d):
		}
		wait *= 2
	}
}

// runDeadman is the dead man's switch (alerts.heartbeat): while opsd is
// healthy it requests the configured URL every interval, so the service
// behind it alerts someone when the requests stop. An unhealthy opsd
// stops pinging on purpose.
func (d *Daemon) runDeadman(ctx context.Context) error {
	client := &http.Client{}
	var last time.Time
	for {
		hb := d.cfg.Load().Alerts.Heartbeat
		interval := time.Minute
		if hb != nil {
			interval = hb.Interval
		}
		if hb != nil && time.Since(last) >= interval {
			last = time.Now()
			d.deadmanPing(ctx, client, hb)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(min(interval, 5*time.Second)):
		}
	}
}

func (d *Daemon) deadmanPing(ctx context.Context, client *http.Client, hb *config.Heartbeat) {
	log := d.log.With("component", "heartbeat")
	if err := d.healthy(ctx); err != nil {
		log.Warn("dead man's switch not pinged: opsd is unhealthy", "err", err)
		d.deadman.WithLabelValues("skipped").Inc()
		return
	}
	u := string(hb.URL)
	if hb.URLFile != "" {
		var err error
		if u, err = readTrimmed(hb.URLFile); err != nil {
			log.Error("dead man's switch: url_file", "err", err)
			d.deadman.WithLabelValues("failed").Inc()
			return
		}
	}
	rctx, cancel := context.WithTimeout(ctx, min(hb.Interval, 10*time.Second))
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, hb.Method, u, nil)
	if err == nil {
		req.Header.Set("User-Agent", "opsd")
		var resp *http.Response
		if resp, err = client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				err = fmt.Errorf("answered %s", resp.Status)
			}
		}
	}
	if err != nil {
		// The URL usually holds a token: name only its host.
		log.Error("dead man's switch ping failed", "host", hostOf(u), "err", redactErr(err, u))
		d.deadman.WithLabelValues("failed").Inc()
		return
	}
	d.deadman.WithLabelValues("ok").Inc()
}

func hostOf(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
	}
	if i := strings.IndexAny(u, "/?#"); i >= 0 {
		u = u[:i]
	}
	if i := strings.LastIndex(u, "@"); i >= 0 {
		u = u[i+1:]
	}
	return u
}

func redactErr(err error, secret string) string {
	return strings.ReplaceAll(err.Error(), secret, "[REDACTED]")
}
