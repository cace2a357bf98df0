// Package daemon assembles opsd's components in order and runs every
// long-lived part in one run group: the first to return stops the rest.
//
// Start order: config → logger → data_dir lock → signing key → audit log →
// state store → job engine → HTTP server. Each constructor error is wrapped
// with the component's name; nothing starts before the whole config has
// validated.
package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/oklog/run"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/riverqueue/river"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup/service"
	"github.com/opsd-dev/opsd/internal/buildinfo"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/httpapi"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/state"
)

// Options configure Run.
type Options struct {
	ConfigPath string
	Getenv     func(string) string
	// LogOutput receives the daemon's structured log.
	LogOutput io.Writer
	// Listening, when set, receives the bound address once the HTTP
	// server accepts connections (tests listen on port 0).
	Listening func(addr net.Addr)
}

// Daemon is a running opsd.
type Daemon struct {
	opts      Options
	log       *slog.Logger
	cfg       atomic.Pointer[loadedConfig]
	reloadMu  sync.Mutex
	startedAt time.Time
	replicaID string
	notify    notifier

	lock     *dirLock
	key      *signing.Key
	audit    auditLog
	targets  *targetSet
	store    state.Store
	jobs     jobEngine
	backups  *service.Service
	drills   *drillSet
	alerts   *alerting
	deadman  *prometheus.CounterVec
	dispatch *action.Dispatcher
	registry *prometheus.Registry
	api      *httpapi.Server
	ready    atomic.Bool
	sigs     chan os.Signal
}

type loadedConfig struct {
	*config.Config
	loadedAt time.Time
}

// Run loads the config, starts every component and blocks until ctx ends
// or SIGTERM/SIGINT arrives, then drains and returns nil. A config error is
// returned as config.Problems before anything starts.
func Run(ctx context.Context, opts Options) error {
	cfg, err := config.Load(opts.ConfigPath, opts.Getenv)
	if err != nil {
		return err
	}
	if opts.LogOutput == nil {
		opts.LogOutput = os.Stderr
	}
	d := &Daemon{opts: opts, startedAt: time.Now().UTC(), log: newLogger(opts.LogOutput, cfg.Server.Log)}
	d.notify = notifier{log: d.log}
	d.cfg.Store(&loadedConfig{Config: cfg, loadedAt: d.startedAt})
	d.replicaID = replicaID()
	defer d.close()
	d.setMemoryLimit(opts.Getenv)
	// Signals are caught from here on: SIGTERM during start-up aborts the
	// start cleanly instead of killing the process half-open.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	d.sigs = sigs
	if err := d.open(ctx, cfg); err != nil {
		d.log.Error("start failed", "err", err)
		return err
	}
	return d.run(ctx, cfg)
}

// Garbage-collector defaults when GOGC / GOMEMLIMIT are not set. A backup
// holds a bounded working set (compression frames, one upload buffer per
// object-store target, lane queues); collecting at half the live heap
// instead of all of it keeps a sidecar's RSS near that working set, and
// the soft limit makes the collector work harder before the heap grows
// past it (it never fails an allocation).
const (
	DefaultGCPercent   = 50
	DefaultMemoryLimit = 160 << 20
)

func (d *Daemon) setMemoryLimit(getenv func(string) string) {
	if getenv == nil {
		getenv = os.Getenv
	}
	gcPercent, limit := "GOGC", "GOMEMLIMIT"
	if v := getenv("GOGC"); v == "" {
		debug.SetGCPercent(DefaultGCPercent)
		gcPercent = fmt.Sprint(DefaultGCPercent)
	}
	if v := getenv("GOMEMLIMIT"); v == "" {
		debug.SetMemoryLimit(DefaultMemoryLimit)
		limit = fmt.Sprintf("%dMiB", DefaultMemoryLimit>>20)
	}
	d.log.Info("garbage collector", "gc_percent", gcPercent, "memory_limit", limit)
}

func (d *Daemon) open(ctx context.Context, cfg *config.Config) error {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data_dir: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return err
	}
	d.lock = lock
	if d.key, err = d.loadKey(cfg); err != nil {
		return fmt.Errorf("open signing key: %w", err)
	}
	d.registry = prometheus.NewRegistry()
	d.registry.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfoCollector(),
	)
	if d.targets, err = newTargetSet(cfg, d.registry, d.log); err != nil {
		return fmt.Errorf("storage metrics: %w", err)
	}
	auditLog, err := openAudit(ctx, cfg, d.key, d.targets, d.registry, d.log)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	d.audit = auditLog
	d.dispatch = action.NewDispatcher(d.audit)
	d.dispatch.OnRecordError = func(r action.Record, err error) {
		d.log.Error("audit: outcome not recorded", "action", r.Action, "outcome", r.Outcome, "err", err)
	}
	if d.store, err = openState(ctx, cfg, d.log); err != nil {
		return fmt.Errorf("open state store: %w", err)
	}
	if err := service.GenerateIdentities(cfg, d.log); err != nil {
		return fmt.Errorf("backup encryption: %w", err)
	}
	bm, err := service.NewMetrics(d.registry)
	if err != nil {
		return err
	}
	d.backups, err = service.New(service.Options{
		Config: func() *config.Config { return d.cfg.Load().Config }, Store: d.store, Target: d.targets.get,
		Signer: d.key.Signer, Verifier: d.key.Verifier, SpoolDir: filepath.Join(cfg.DataDir, "spool"),
		Metrics: bm, Logger: d.log, Dispatcher: d.dispatch,
	})
	if err != nil {
		return fmt.Errorf("backup service: %w", err)
	}
	workers := river.NewWorkers()
	if err := d.backups.Register(workers); err != nil {
		return fmt.Errorf("backup service: %w", err)
	}
	if err := river.AddWorkerSafely(workers, &drillWorker{d: d}); err != nil {
		return fmt.Errorf("drill schedules: %w", err)
	}
	eng, err := openJobs(ctx, cfg, d.store, d.dispatch, workers, d.replicaID, d.log)
	if err != nil {
		return fmt.Errorf("open job engine: %w", err)
	}
	d.jobs = engineAdapter{eng}
	d.backups.Attach(eng)
	if _, err := d.backups.Rebuild(ctx); err != nil {
		d.log.Error("catalog rebuild", "err", err)
	}
	// The embedded store belongs to this process alone (data_dir lock), so
	// a backup still marked running was cut short by a crash.
	if d.store.Kind() == state.KindSQLite {
		if _, err := d.backups.RecoverInterrupted(ctx); err != nil {
			return fmt.Errorf("recover interrupted backups: %w", err)
		}
		if _, err := d.backups.RecoverInterruptedCopies(ctx); err != nil {
			d.log.Error("recover interrupted catch-up copies", "err", err)
		}
	}
	d.backups.InitMetrics(ctx)
	// Slots that passed while opsd was down run once now (sources.*.missed).
	if _, err := d.backups.CatchUpMissed(ctx); err != nil {
		d.log.Error("catch up missed backups", "err", err)
	}
	if err := d.openAlerts(cfg); err != nil {
		return fmt.Errorf("open alerting: %w", err)
	}
	d.deadman = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opsd_heartbeat_pings_total",
		Help: "Dead man's switch pings (alerts.heartbeat) by result: ok, failed, skipped (opsd unhealthy)."}, []string{"result"})
	d.registry.MustRegister(d.deadman)
	if err := d.openDrills(cfg); err != nil {
		return fmt.Errorf("open runbook engine: %w", err)
	}
	d.api = httpapi.NewServer(httpapi.Deps{
		Logger:     d.log,
		Dispatcher: d.dispatch,
		Gatherer:   d.registry,
		Ready:      d.readiness,
		Status:     d.status,
		Cluster:    d.cluster,
		Reload:     d.reloadFromAPI,
		Audit:      auditAPI{d.audit},
		Backups:    d.backups,
		Sources:    d.sources,
		Source:     d.source,
		Runs:       d.drills,
		Alerts:     d.alerts,
	}, apiSettings(cfg), d.registry)
	return nil
}

func (d *Daemon) close() {
	// API restores still running are cancelled (they fail and say so).
	if d.backups != nil {
		d.backups.StopRestores()
	}
	// The alert-rules actor closes the local rules TSDB when it returns;
	// this closes it when the daemon stopped before running it.
	if d.alerts != nil {
		if err := d.alerts.eval.Close(); err != nil {
			d.log.Warn("close local rules storage", "err", err)
		}
	}
	if d.store != nil {
		if err := d.store.Close(); err != nil {
			d.log.Warn("close state store", "err", err)
		}
	}
	if d.audit != nil {
		if err := d.audit.Close(); err != nil {
			d.log.Warn("close audit log", "err", err)
		}
	}
	if d.targets != nil {
		d.targets.close()
	}
	if d.lock != nil {
		_ = d.lock.release()
	}
}

// run starts the actors and waits. Each actor runs until its context ends.
func (d *Daemon) run(ctx context.Context, cfg *config.Config) error {
	ln, err := listen(cfg)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Server.Listen, err)
	}
	httpSrv := &http.Server{
		Handler:           d.api,
		ReadTimeout:       cfg.Server.ReadTimeout,
		ReadHeaderTimeout: cfg.Server.ReadHeaderTimeout,
		WriteTimeout:      cfg.Server.WriteTimeout,
		IdleTimeout:       cfg.Server.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
		MaxHeaderBytes:    64 << 10,
	}
	httpSrv.Protocols = new(http.Protocols)
	httpSrv.Protocols.SetHTTP1(true)
	httpSrv.Protocols.SetHTTP2(true)
	if cfg.Server.TLS == nil {
		httpSrv.Protocols.SetUnencryptedHTTP2(true)
	}
	httpSrv.RegisterOnShutdown(d.api.Stopping) // long polls answer at once
	grace := cfg.Server.ShutdownGrace

	var g run.Group
	groupCtx, cancelAll := context.WithCancel(ctx)
	defer cancelAll()
	// actor adds a component whose Run(ctx) returns when ctx ends.
	actor := func(name string, fn func(ctx context.Context) error) {
		actx, cancel := context.WithCancel(groupCtx)
		g.Add(func() error {
			err := fn(actx)
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		}, func(error) { cancel() })
	}

	actor("signals", d.handleSignals)
	actor("http", func(ctx context.Context) error {
		errc := make(chan error, 1)
		go func() { errc <- httpSrv.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
		defer cancel()
		if err := httpSrv.Shutdown(sctx); err != nil {
			d.log.Warn("http drain incomplete", "err", err)
			_ = httpSrv.Close()
		}
		<-errc
		return nil
	})
	actor("jobs", d.jobs.Run)
	actor("audit", d.audit.Run)
	actor("heartbeat", d.heartbeat)
	actor("backup-maintenance", d.backups.RunMaintenance)
	actor("drills", d.drills.Run)
	actor("alert-rules", d.alerts.eval.Run)
	actor("alert-routing", d.alerts.router.Run)
	actor("alerting-lead", d.runAlertingLead)
	actor("dead-mans-switch", d.runDeadman)
	actor("watchdog", func(ctx context.Context) error { return d.notify.runWatchdog(ctx, d.healthy) })
	actor("ready", func(ctx context.Context) error {
		if err := d.waitReady(ctx); err != nil {
			return nil
		}
		d.ready.Store(true)
		sys := action.Actor{Kind: action.ActorSystem, Name: "opsd"}
		if err := d.dispatch.Do(ctx, action.Request{Actor: sys, Action: "daemon.start", Object: "replica/" + d.replicaID,
			Params: map[string]any{"version": buildinfo.Get().Version, "config_hash": cfg.Hash(), "state": d.store.Kind()}},
			func(context.Context) error { return nil }); err != nil {
			d.log.Error("audit daemon.start", "err", err)
		}
		d.log.Info("opsd ready", "listen", ln.Addr().String(), "data_dir", cfg.DataDir, "state", d.store.Kind(),
			"version", buildinfo.Get().Version)
		d.notify.ready()
		d.notify.status("ready")
		if d.opts.Listening != nil {
			d.opts.Listening(ln.Addr())
		}
		<-ctx.Done()
		return nil
	})

	d.beat(groupCtx)
	err = g.Run()
	d.notify.stopping()
	if rerr := d.dispatch.Do(context.WithoutCancel(ctx), action.Request{Actor: action.Actor{Kind: action.ActorSystem, Name: "opsd"},
		Action: "daemon.stop", Object: "replica/" + d.replicaID}, func(context.Context) error { return err }); rerr != nil && err == nil {
		d.log.Error("audit daemon.stop", "err", rerr)
	}
	d.log.Info("opsd stopped")
	return err
}

// handleSignals returns (stopping the group) on SIGTERM/SIGINT and reloads
// on SIGHUP.
func (d *Daemon) handleSignals(ctx context.Context) error {
	c := d.sigs
	for {
		select {
		case <-ctx.Done():
			return nil
		case sig := <-c:
			if sig == syscall.SIGHUP {
				actx := action.WithActor(ctx, action.Actor{Kind: action.ActorSystem, Name: "SIGHUP"})
				if err := d.reload(actx); err != nil {
					d.log.Error("reload on SIGHUP refused; keeping the running config", "err", err)
				}
				continue
			}
			d.log.Info("shutting down: draining in-flight work", "signal", sig.String(), "grace", d.cfg.Load().Server.ShutdownGrace.String())
			d.notify.stopping()
			return nil
		}
	}
}

// waitReady polls the components until all are ready.
func (d *Daemon) waitReady(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		ok := true
		for _, c := range d.checks(ctx) {
			if c.Err != nil {
				ok = false
			}
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func (d *Daemon) checks(ctx context.Context) []httpapi.Check {
	return []httpapi.Check{
		{Name: "state", Err: d.store.Ping(ctx)},
		{Name: "audit", Err: d.audit.Healthy()},
		{Name: "jobs", Err: d.jobs.Ready()},
	}
}

func (d *Daemon) readiness(ctx context.Context) []httpapi.Check {
	checks := d.checks(ctx)
	if !d.ready.Load() {
		checks = append(checks, httpapi.Check{Name: "daemon", Err: errors.New("starting")})
	}
	return checks
}

// healthy gates the systemd watchdog: the state store answers and the
// audit log can append.
func (d *Daemon) healthy(ctx context.Context) error {
	for _, c := range d.checks(ctx) {
		if c.Err != nil {
			return fmt.Errorf("%s: %w", c.Name, c.Err)
		}
	}
	return nil
}

// heartbeatInterval is how often a replica announces itself.
const heartbeatInterval = 15 * time.Second

// heartbeat records this replica in the state store for the cluster view.
// The first beat happens before the run group starts (see run), so the
// cluster view lists this replica as soon as it is ready.
func (d *Daemon) heartbeat(ctx context.Context) error {
	beat := func() { d.beat(ctx) }
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			beat()
			// Rows of replicas gone for a day only clutter the view.
			if _, err := d.store.PruneReplicas(ctx, time.Now().Add(-24*time.Hour)); err != nil && ctx.Err() == nil {
				d.log.Warn("prune replicas", "err", err)
			}
		}
	}
}

// beat records this replica in the state store once.
func (d *Daemon) beat(ctx context.Context) {
	host, _ := os.Hostname()
	err := d.store.Heartbeat(ctx, state.Replica{ID: d.replicaID, Hostname: host, Version: buildinfo.Get().Version,
		ConfigHash: d.cfg.Load().Hash(), StartedAt: d.startedAt})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("heartbeat", "err", err)
	}
}

// loadKey loads the signing key. A key at the default path inside data_dir
// is generated on first start; a key path set explicitly must exist, so a
// typo never silently starts a new, unrelated audit identity.
func (d *Daemon) loadKey(cfg *config.Config) (*signing.Key, error) {
	path := cfg.Audit.SigningKeyFile
	_, statErr := os.Stat(path)
	if errors.Is(statErr, os.ErrNotExist) && isDefaultKeyPath(cfg) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		g, err := signing.Generate(cfg.Audit.Origin)
		if err != nil {
			return nil, err
		}
		if err := signing.WriteFiles(path, g, false); err != nil {
			return nil, err
		}
		d.log.Warn("generated a new audit signing key; back it up and publish the verifier key",
			"path", path, "verifier_key", g.VerifierKey)
	}
	key, err := signing.Load(path)
	if err != nil {
		return nil, err
	}
	if key.Name != cfg.Audit.Origin {
		return nil, fmt.Errorf("key %s is named %q but audit.origin is %q: the checkpoint origin and the key name must match", path, key.Name, cfg.Audit.Origin)
	}
	return key, nil
}

func isDefaultKeyPath(cfg *config.Config) bool {
	return filepath.Clean(cfg.Audit.SigningKeyFile) == filepath.Join(cfg.DataDir, "keys", "audit.key")
}

func listen(cfg *config.Config) (net.Listener, error) {
	ln, err := net.Listen("tcp", cfg.Server.Listen)
	if err != nil {
		return nil, err
	}
	if cfg.Server.TLS == nil {
		return ln, nil
	}
	tc, err := tlsConfig(cfg.Server.TLS)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return tls.NewListener(ln, tc), nil
}

func tlsConfig(t *config.TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	tc := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if t.ClientCAFile != "" {
		pem, err := os.ReadFile(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("client CA %s holds no PEM certificate", t.ClientCAFile)
		}
		tc.ClientCAs, tc.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

func newLogger(w io.Writer, lc config.Log) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(lc.Level))
	opts := &slog.HandlerOptions{Level: level}
	if lc.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

func apiSettings(cfg *config.Config) httpapi.Settings {
	s := httpapi.Settings{
		MetricsPublic: cfg.Server.MetricsPublic,
		MaxBodyBytes:  int64(cfg.Server.MaxBodyBytes),
		RatePerSecond: cfg.Server.RateLimit.PerSecond,
		RateBurst:     cfg.Server.RateLimit.Burst,
		LogReads:      cfg.Audit.LogReads,
	}
	for _, t := range cfg.Server.Tokens {
		role, err := httpapi.ParseRole(t.Role)
		if err != nil {
			continue // config validation already refused it
		}
		s.Tokens = append(s.Tokens, httpapi.Token{Name: t.Name, Role: role, SHA256: t.SHA256})
	}
	return s
}

func buildInfoCollector() prometheus.Collector {
	info := buildinfo.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "opsd_build_info",
		Help:        "Build information of the running opsd; always 1.",
		ConstLabels: prometheus.Labels{"version": info.Version, "commit": info.Commit, "goversion": info.GoVersion},
	})
	g.Set(1)
	return g
}

func replicaID() string {
	host, _ := os.Hostname()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s-%d-%x", host, os.Getpid(), b)
}
