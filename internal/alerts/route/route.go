// Package route routes opsd's alerts to receivers the way Alertmanager does,
// by embedding Alertmanager itself, as Grafana and Mimir do: the config's
// alerts.route and alerts.inhibit_rules become an Alertmanager routing tree
// and inhibition rules (validated by Alertmanager's config loader), and a
// Router runs Alertmanager's dispatcher (grouping, group_wait,
// group_interval, repeat_interval), inhibitor, silences, in-memory alert
// provider, notification log and notification pipeline (inhibit and silence
// mute stages, then per integration: dedup against the notification log,
// retry with backoff, record in the log). Only the last step differs: each
// integration's Notifier is an adapter calling opsd's own Slack, email or
// webhook sender from package notify, with Alertmanager's group key as the
// notification's GroupKey, so a Slack message is updated in place.
//
// Silences and the notification log are snapshotted, in Alertmanager's own
// format, under data_dir/alerts/ (or in the state store): on every change of
// a silence, shortly after every notification, on an interval and at
// shutdown. A restarted Router therefore neither re-sends a notification
// sent within repeat_interval nor forgets a silence. See docs/ROUTING.md.
package route

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/alertmanager/alert"
	amconfig "github.com/prometheus/alertmanager/config"
	"github.com/prometheus/alertmanager/dispatch"
	"github.com/prometheus/alertmanager/eventrecorder"
	"github.com/prometheus/alertmanager/featurecontrol"
	"github.com/prometheus/alertmanager/inhibit"
	"github.com/prometheus/alertmanager/marker"
	"github.com/prometheus/alertmanager/nflog"
	"github.com/prometheus/alertmanager/nflog/nflogpb"
	amnotify "github.com/prometheus/alertmanager/notify"
	"github.com/prometheus/alertmanager/provider/mem"
	"github.com/prometheus/alertmanager/silence"
	"github.com/prometheus/alertmanager/timeinterval"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
)

// Sentinel errors callers (the HTTP API) branch on.
var (
	// ErrNotFound: no silence with that ID.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a silence or alert was rejected (bad matcher, end
	// before start, no labels).
	ErrInvalid = errors.New("invalid input")
)

// Defaults of Options.
const (
	DefaultMaintenanceInterval = 5 * time.Minute
	DefaultRetention           = 120 * time.Hour
	DefaultResolveTimeout      = 5 * time.Minute
	DefaultSyncInterval        = 10 * time.Second
)

// Options configure a Router. Config is required; everything else is
// optional.
type Options struct {
	// Config is the alerts section: route, inhibit_rules, receivers.
	Config config.Alerts
	// DataDir is opsd's data_dir; snapshots go to DataDir/alerts/. Empty
	// (and no State) keeps them in memory only.
	DataDir string
	// State, when set, keeps the snapshots in the state store (keys
	// alerts/silences, alerts/nflog) instead of files. The daemon sets it
	// when state.postgres is configured, so replicas share silences.
	State state.Store
	// Notify are the senders' dependencies (HTTP client, Slack message
	// store, metrics).
	Notify notify.Deps
	// ExternalURL is opsd's URL, for links in notifications.
	ExternalURL string
	// Logger defaults to discarding.
	Logger *slog.Logger
	// Registerer receives Alertmanager's own metrics (alertmanager_*);
	// nil registers them with a private registry nobody scrapes.
	Registerer prometheus.Registerer
	// MaintenanceInterval is how often silences and the notification log
	// are garbage-collected and snapshotted besides on change.
	MaintenanceInterval time.Duration
	// Retention is how long expired silences and notification log
	// entries are kept (Alertmanager's --data.retention).
	Retention time.Duration
	// ResolveTimeout resolves an alert pushed without EndsAt that is not
	// pushed again within it (Alertmanager's global.resolve_timeout).
	ResolveTimeout time.Duration
	// Sends, when set, says whether this replica delivers notifications.
	// Replicas sharing a state store all route (so each shows the same
	// alerts and keeps the notification log warm) but only the one
	// holding the alerting lead sends; the others record the notification
	// as done without sending it, as Alertmanager's peers do once a peer
	// has sent it.
	Sends func() bool
	// SyncInterval is how often silences and the notification log are
	// merged with the state store's copy when State is set (default 10s),
	// so that replicas converge: a silence added on one reaches the others.
	SyncInterval time.Duration
}

// Alert is one alert as rule evaluation produces it.
type Alert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"` // zero: firing until pushed resolved or ResolveTimeout passes
	GeneratorURL string            `json:"generatorURL"`
}

// Alert states as Alertmanager reports them.
const (
	StateActive     = "active"
	StateSuppressed = "suppressed"
)

// AlertStatus is a current alert with its routing state.
type AlertStatus struct {
	Alert
	Fingerprint string    `json:"fingerprint"`
	UpdatedAt   time.Time `json:"updatedAt"`
	// State is StateActive or StateSuppressed (silenced or inhibited).
	State       string   `json:"state"`
	SilencedBy  []string `json:"silencedBy"`  // silence IDs
	InhibitedBy []string `json:"inhibitedBy"` // fingerprints of inhibiting alerts
	Receivers   []string `json:"receivers"`
}

// Router routes alerts to receivers. Create it with New, start it with Run;
// Push, Alerts, the silence methods and ApplyConfig are safe for concurrent
// use before, during and after Run.
type Router struct {
	logger         *slog.Logger
	store          snapshotStore
	notifyDeps     notify.Deps
	externalURL    string
	maintenance    time.Duration
	retention      time.Duration
	resolveTimeout time.Duration
	sends          func() bool
	shared         bool // the snapshots live in a store other replicas share

	reg         prometheus.Registerer
	rec         eventrecorder.Recorder
	silences    *silence.Silences
	silencer    *silence.Silencer
	nflog       *nflog.Log
	nflogDirty  chan struct{}
	alerts      *mem.Alerts
	stopAlerts  context.CancelFunc
	groupMarker marker.GroupMarker
	pipeline    *amnotify.PipelineBuilder
	dispMetrics *dispatch.DispatcherMetrics

	silMu   sync.Mutex // serialises silence changes with their snapshots
	nflogMu sync.Mutex // serialises nflog snapshots

	mu         sync.Mutex
	gen        *generation
	running    bool
	ran        bool
	inhibitor  *inhibit.Inhibitor
	dispatcher *dispatch.Dispatcher
}

// generation is one applied configuration.
type generation struct {
	conf      *amconfig.Config
	route     *dispatch.Route
	receivers map[string][]amnotify.Integration
}

// New validates the configuration, builds the receivers, and loads the
// silences and notification log snapshots. Nothing is sent before Run.
func New(opts Options) (*Router, error) {
	r := &Router{
		logger:         opts.Logger,
		notifyDeps:     opts.Notify,
		externalURL:    opts.ExternalURL,
		maintenance:    opts.MaintenanceInterval,
		retention:      opts.Retention,
		resolveTimeout: opts.ResolveTimeout,
		sends:          opts.Sends,
		reg:            opts.Registerer,
		rec:            eventrecorder.NopRecorder(),
		nflogDirty:     make(chan struct{}, 1),
		groupMarker:    marker.NewGroupMarker(),
	}
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	r.logger = r.logger.With("component", "alerts.route")
	if r.maintenance <= 0 {
		r.maintenance = DefaultMaintenanceInterval
	}
	if r.retention <= 0 {
		r.retention = DefaultRetention
	}
	if r.resolveTimeout <= 0 {
		r.resolveTimeout = DefaultResolveTimeout
	}
	if r.reg == nil {
		r.reg = prometheus.NewRegistry()
	}
	switch {
	case opts.State != nil:
		r.store = stateSnapshots{st: opts.State}
		r.shared = true
		if opts.SyncInterval <= 0 {
			opts.SyncInterval = DefaultSyncInterval
		}
		r.maintenance = min(r.maintenance, opts.SyncInterval)
	case opts.DataDir != "":
		r.store = fileSnapshots{dir: filepath.Join(opts.DataDir, "alerts")}
	default:
		r.store = memSnapshots{}
	}

	gen, err := r.build(opts.Config)
	if err != nil {
		return nil, err
	}
	r.gen = gen

	// Loading snapshots needs a ctx for the state store; New has none and
	// the load is bounded.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	silSnap, err := r.store.load(ctx, snapSilences)
	if err != nil {
		return nil, fmt.Errorf("read silences from %s: %w", r.store.where(snapSilences), err)
	}
	silOpts := silence.Options{
		Retention:     r.retention,
		Logger:        r.logger.With("component", "alerts.silences"),
		Metrics:       r.reg,
		EventRecorder: r.rec,
	}
	if silSnap != nil {
		silOpts.SnapshotReader = bytes.NewReader(silSnap)
	}
	r.silences, err = silence.New(silOpts)
	if err != nil {
		return nil, fmt.Errorf("load silences from %s: %w", r.store.where(snapSilences), err)
	}
	r.silencer = silence.NewSilencer(r.silences, r.logger, r.rec)

	nfSnap, err := r.store.load(ctx, snapNflog)
	if err != nil {
		return nil, fmt.Errorf("read notification log from %s: %w", r.store.where(snapNflog), err)
	}
	nfOpts := nflog.Options{
		Retention: r.retention,
		Logger:    r.logger.With("component", "alerts.nflog"),
		Metrics:   r.reg,
	}
	if nfSnap != nil {
		nfOpts.SnapshotReader = bytes.NewReader(nfSnap)
	}
	r.nflog, err = nflog.New(nfOpts)
	if err != nil {
		return nil, fmt.Errorf("load notification log from %s: %w", r.store.where(snapNflog), err)
	}

	r.pipeline = amnotify.NewPipelineBuilder(r.reg, featurecontrol.NoopFlags{}, r.rec)
	r.dispMetrics = dispatch.NewDispatcherMetrics(false, r.reg, featurecontrol.NoopFlags{})

	// The provider starts its garbage collector now; Run stops it.
	actx, acancel := context.WithCancel(context.Background())
	r.alerts, err = mem.NewAlerts(actx, 30*time.Minute, 0, r.silencer, r.logger, r.rec, r.reg, featurecontrol.NoopFlags{})
	if err != nil {
		acancel()
		return nil, fmt.Errorf("create alert provider: %w", err)
	}
	r.stopAlerts = acancel
	return r, nil
}

// build converts conf and creates the receivers' senders; it has no side
// effect, so a failed reload leaves the running configuration alone.
func (r *Router) build(conf config.Alerts) (*generation, error) {
	amc, err := Convert(conf)
	if err != nil {
		return nil, err
	}
	gen := &generation{
		conf:      amc,
		route:     dispatch.NewRoute(amc.Route, nil),
		receivers: make(map[string][]amnotify.Integration, len(amc.Receivers)),
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(conf.Receivers)) {
		rc := conf.Receivers[name]
		if rc == nil {
			errs = append(errs, fmt.Errorf("receiver %q: empty", name))
			continue
		}
		recv, err := notify.New(name, *rc, r.notifyDeps)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var ints []amnotify.Integration
		for _, in := range recv.Integrations() {
			ad := &adapter{receiver: name, integration: in.Name, n: in.Notifier, router: r}
			ints = append(ints, amnotify.NewIntegration(ad, sendResolved{}, in.Name, 0, name))
		}
		gen.receivers[name] = ints
	}
	if _, ok := gen.receivers[noReceiver]; !ok && conf.Route == nil {
		gen.receivers[noReceiver] = nil
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("alerts receivers: %w", err)
	}
	gen.route.Walk(func(rt *dispatch.Route) {
		if rt.RouteOpts.RepeatInterval > r.retention {
			r.logger.Warn("repeat_interval is longer than the notification log retention; notifications may repeat more often",
				"route", rt.Key(), "repeat_interval", rt.RouteOpts.RepeatInterval, "retention", r.retention)
		}
	})
	return gen, nil
}

// sendResolved: every opsd sender reports resolution (Slack updates the
// message, email replies in the thread, webhooks get status "resolved").
type sendResolved struct{}

func (sendResolved) SendResolved() bool { return true }

// ApplyConfig replaces the route tree, inhibit rules and receivers, whole or
// not at all: on error the running configuration stays. Silences, the
// notification log and current alerts are kept; groups are rebuilt, and the
// notification log keeps them from notifying again what they already did.
func (r *Router) ApplyConfig(conf config.Alerts) error {
	gen, err := r.build(conf)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gen = gen
	if r.running {
		r.stopLocked()
		r.startLocked()
	}
	return nil
}

// startLocked starts an inhibitor and a dispatcher for r.gen, as
// Alertmanager's reloader does: inhibitor first, loaded, so that nothing is
// notified that should have been inhibited.
func (r *Router) startLocked() {
	gen := r.gen
	ih := inhibit.NewInhibitor(r.alerts, gen.conf.InhibitRules, r.logger, r.rec)
	stage := r.pipeline.New(
		gen.receivers,
		func() time.Duration { return 0 }, // no cluster peers to wait for
		ih,
		r.silencer,
		timeinterval.NewIntervener(nil),
		r.groupMarker,
		notifiedLog{log: r.nflog, dirty: r.nflogDirty},
		nil,
	)
	d := dispatch.NewDispatcher(r.alerts, gen.route, stage, r.groupMarker, notifyTimeout,
		30*time.Second, nil, r.logger, r.rec, r.dispMetrics, nil)
	go ih.Run()
	ih.WaitForLoading()
	go d.Run(time.Now())
	d.WaitForLoading()
	r.inhibitor, r.dispatcher = ih, d
}

func (r *Router) stopLocked() {
	if r.inhibitor != nil {
		r.inhibitor.Stop()
	}
	if r.dispatcher != nil {
		r.dispatcher.Stop()
	}
	r.inhibitor, r.dispatcher = nil, nil
}

// notifyTimeout bounds one flush's notifications, as Alertmanager does.
func notifyTimeout(d time.Duration) time.Duration {
	return max(d, amnotify.MinTimeout)
}

// notifiedLog is the notification log as the pipeline sees it: every
// recorded notification asks for a snapshot, so a crash right after a
// notification does not send it again.
type notifiedLog struct {
	log   *nflog.Log
	dirty chan struct{}
}

func (l notifiedLog) Query(params ...nflog.QueryParam) ([]*nflogpb.Entry, error) {
	return l.log.Query(params...)
}

func (l notifiedLog) Log(r *nflogpb.Receiver, gkey string, firing, resolved []uint64, store *nflog.Store, expiry time.Duration) error {
	err := l.log.Log(r, gkey, firing, resolved, store, expiry)
	if err == nil {
		select {
		case l.dirty <- struct{}{}:
		default:
		}
	}
	return err
}

// Run dispatches alerts until ctx ends, then stops the dispatcher and
// writes the final snapshots. It returns nil on a clean shutdown and is
// called once; every goroutine of the Router has ended when it returns.
func (r *Router) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.ran {
		r.mu.Unlock()
		return errors.New("alert router: Run called twice")
	}
	r.ran, r.running = true, true
	r.startLocked()
	r.mu.Unlock()

	var wg sync.WaitGroup
	wg.Go(func() { r.maintain(ctx) })
	<-ctx.Done()

	r.mu.Lock()
	r.running = false
	r.stopLocked()
	r.mu.Unlock()
	wg.Wait()

	// Final snapshots, after the last notification was recorded.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := errors.Join(r.persistSilences(fctx), r.persistNflog(fctx))
	r.alerts.Close()
	r.stopAlerts()
	if err != nil {
		return fmt.Errorf("alert router shutdown: %w", err)
	}
	return nil
}

// maintain garbage-collects and snapshots on an interval, and snapshots the
// notification log whenever a notification was recorded. It is
// Alertmanager's Maintenance loop, with a ctx (the state store needs one)
// and an on-change trigger (Maintenance only knows its ticker).
func (r *Router) maintain(ctx context.Context) {
	t := time.NewTicker(r.maintenance)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.persistSilences(ctx); err != nil {
				r.logger.Error("silences maintenance", "err", err)
			}
			if err := r.persistNflog(ctx); err != nil {
				r.logger.Error("notification log maintenance", "err", err)
			}
		case <-r.nflogDirty:
			if err := r.persistNflog(ctx); err != nil {
				r.logger.Error("notification log snapshot", "err", err)
			}
		}
	}
}

func (r *Router) persistSilences(ctx context.Context) error {
	r.silMu.Lock()
	defer r.silMu.Unlock()
	return r.persistSilencesLocked(ctx)
}

func (r *Router) persistSilencesLocked(ctx context.Context) error {
	if err := r.mergeShared(ctx, snapSilences, r.silences.Merge); err != nil {
		return err
	}
	return persist(ctx, r.store, snapSilences, r.silences.GC, func(b *bytes.Buffer) (int64, error) { return r.silences.Snapshot(b) })
}

func (r *Router) persistNflog(ctx context.Context) error {
	r.nflogMu.Lock()
	defer r.nflogMu.Unlock()
	if err := r.mergeShared(ctx, snapNflog, r.nflog.Merge); err != nil {
		return err
	}
	return persist(ctx, r.store, snapNflog, r.nflog.GC, func(b *bytes.Buffer) (int64, error) { return r.nflog.Snapshot(b) })
}

// mergeShared merges the shared store's snapshot into the local state
// before it is written back, so replicas do not overwrite each other's
// silences and notifications: entries merge as Alertmanager's gossip
// merges them (the most recently updated wins).
func (r *Router) mergeShared(ctx context.Context, name string, merge func([]byte) error) error {
	if !r.shared {
		return nil
	}
	b, err := r.store.load(ctx, name)
	if err != nil {
		return fmt.Errorf("read shared %s from %s: %w", name, r.store.where(name), err)
	}
	if len(b) == 0 {
		return nil
	}
	if err := merge(b); err != nil {
		return fmt.Errorf("merge shared %s from %s: %w", name, r.store.where(name), err)
	}
	return nil
}

// Push hands alerts to the router, as a Prometheus server posts them to
// Alertmanager: an alert with EndsAt in the past is resolved; one without
// EndsAt fires until pushed again with one or until ResolveTimeout. Invalid
// alerts are reported (wrapping ErrInvalid) and the valid ones kept.
func (r *Router) Push(ctx context.Context, alerts ...Alert) error {
	now := time.Now()
	valid := make([]*alert.Alert, 0, len(alerts))
	var errs []error
	for i, a := range alerts {
		am := &alert.Alert{
			Alert: model.Alert{
				Labels:       labelSet(a.Labels),
				Annotations:  labelSet(a.Annotations),
				StartsAt:     a.StartsAt,
				EndsAt:       a.EndsAt,
				GeneratorURL: a.GeneratorURL,
			},
			UpdatedAt: now,
		}
		// As Alertmanager's API: a missing start is now (or the end),
		// a missing end is a timeout.
		if am.StartsAt.IsZero() {
			am.StartsAt = now
			if !am.EndsAt.IsZero() {
				am.StartsAt = am.EndsAt
			}
		}
		if am.EndsAt.IsZero() {
			am.Timeout = true
			am.EndsAt = now.Add(r.resolveTimeout)
		}
		if err := am.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("%w: alert %d %v: %w", ErrInvalid, i, am.Labels, err))
			continue
		}
		valid = append(valid, am)
	}
	if len(valid) > 0 {
		if err := r.alerts.Put(ctx, valid...); err != nil {
			errs = append(errs, fmt.Errorf("store alerts: %w", err))
		}
	}
	return errors.Join(errs...)
}

func labelSet(m map[string]string) model.LabelSet {
	ls := make(model.LabelSet, len(m))
	for k, v := range m {
		ls[model.LabelName(k)] = model.LabelValue(v)
	}
	return ls
}

func stringMap(ls model.LabelSet) map[string]string {
	m := make(map[string]string, len(ls))
	for k, v := range ls {
		m[string(k)] = string(v)
	}
	return m
}

// Alerts returns the current (not resolved) alerts, sorted by labels, with
// whether each is silenced or inhibited and which receivers it routes to.
func (r *Router) Alerts(ctx context.Context) ([]AlertStatus, error) {
	r.mu.Lock()
	gen, ih := r.gen, r.inhibitor
	r.mu.Unlock()

	it := r.alerts.GetPending()
	defer it.Close()
	now := time.Now()
	var out []AlertStatus
	for a := range it.Next() {
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("list alerts: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if a.Data.ResolvedAt(now) {
			continue
		}
		am := a.Data
		m := marker.NewAlertMarker()
		mctx := marker.WithContext(ctx, m)
		if ih != nil {
			ih.Mutes(mctx, am.Labels)
		}
		r.silencer.Mutes(mctx, am.Labels)
		st := m.Status(am.Fingerprint())
		state := StateActive
		if len(st.SilencedBy) > 0 || len(st.InhibitedBy) > 0 {
			state = StateSuppressed
		}
		var receivers []string
		for _, rt := range gen.route.Match(am.Labels) {
			if !slices.Contains(receivers, rt.RouteOpts.Receiver) {
				receivers = append(receivers, rt.RouteOpts.Receiver)
			}
		}
		s := AlertStatus{
			Alert: Alert{
				Labels:       stringMap(am.Labels),
				Annotations:  stringMap(am.Annotations),
				StartsAt:     am.StartsAt.UTC(),
				GeneratorURL: am.GeneratorURL,
			},
			Fingerprint: am.Fingerprint().String(),
			UpdatedAt:   am.UpdatedAt.UTC(),
			State:       state,
			SilencedBy:  st.SilencedBy,
			InhibitedBy: st.InhibitedBy,
			Receivers:   receivers,
		}
		if !am.Timeout {
			s.EndsAt = am.EndsAt.UTC()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool {
		return labelSet(out[i].Labels).Before(labelSet(out[j].Labels))
	})
	return out, nil
}
