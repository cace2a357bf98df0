// Package jobs runs all of opsd's background work as River jobs
// (github.com/riverqueue/river) on the state store's database: SQLite for a
// single daemon, PostgreSQL when several replicas share the work (River then
// claims jobs and elects the leader that enqueues periodic jobs there).
//
// Every job execution passes through the action choke point: a River worker
// middleware wraps each run in action.Dispatcher.Do with the actor who
// enqueued the job (stored in the job's metadata at Insert time), so workers
// never write audit entries themselves. If the dispatcher refuses a run
// because the audit log is unavailable, the job is cancelled (see
// dispatchMiddleware): fail closed, and never retried behind the operator's
// back.
package jobs

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
	"github.com/robfig/cron/v3"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
)

// Defaults for Options fields left zero.
const (
	DefaultConcurrency   = 10
	DefaultJobTimeout    = 30 * time.Minute
	DefaultShutdownGrace = 30 * time.Second
	DefaultFetchCooldown = time.Millisecond
	DefaultEnqueueAhead  = time.Second
	// hardStopTimeout bounds the wait for jobs to return after their
	// contexts were cancelled; a job that ignores its context is abandoned
	// (River's rescuer retries it later on some replica).
	hardStopTimeout = 10 * time.Second
)

// Metadata keys opsd sets on every job it inserts.
const (
	metaActor  = "opsd_actor"
	metaObject = "opsd_object"
)

// ErrNotFound is returned by Job for an unknown job id.
var ErrNotFound = errors.New("job not found")

// Options configure an Engine.
type Options struct {
	// Logger receives the engine's and River's logs. Nil discards them.
	Logger *slog.Logger
	// Dispatcher is the action choke point every job run passes through.
	// Required.
	Dispatcher *action.Dispatcher
	// Workers holds the job kinds this replica works. Nil means a new bundle;
	// the engine always adds the built-in kinds (ping) to it.
	Workers *river.Workers
	// Concurrency is how many jobs run at once on this replica (config
	// state.workers). Default DefaultConcurrency.
	Concurrency int
	// JobTimeout is the default time a job may run before its context is
	// cancelled; a worker's Timeout method overrides it. -1 means no timeout.
	// Default DefaultJobTimeout.
	JobTimeout time.Duration
	// RescueStuckJobsAfter is how long a job may stay running before River
	// assumes its replica died and retries it; it must exceed JobTimeout.
	// Default: JobTimeout + 1h.
	RescueStuckJobsAfter time.Duration
	// ShutdownGrace is how long Run waits, once its context is done, for
	// running jobs to finish before cancelling them. Default
	// DefaultShutdownGrace.
	ShutdownGrace time.Duration
	// MaxAttempts is the default number of attempts per job (River's default
	// 25 when zero).
	MaxAttempts int
	// ID identifies this replica to River (leader election, attempts). It must
	// be unique among running replicas; empty means random.
	ID string
	// Periodic jobs to register at construction (AddPeriodic adds more).
	Periodic []Periodic
	// FetchPollInterval and FetchCooldown tune how often River looks for new
	// jobs: polling when idle (River's default 1s when zero; producers are
	// also woken by River's insert notifications and, for periodic jobs, at
	// the slot) and the least pause between fetches while jobs keep coming
	// (DefaultFetchCooldown when zero, River's minimum: a producer fetches
	// again as soon as a worker is free; River's default 100 ms capped a
	// burst of scheduled jobs at Concurrency×10 starts a second, the
	// previous 20 ms at Concurrency×50).
	FetchPollInterval time.Duration
	FetchCooldown     time.Duration
	// EnqueueAhead is how long before its slot a periodic job is inserted
	// (with the slot as its ScheduledAt, so that it does not start early):
	// the insert of every job due in the same second is then done when the
	// slot comes, and the producers are woken at the slot to fetch them.
	// Zero means DefaultEnqueueAhead, negative inserts at the slot (River's
	// own timing); at most one minute. See periodic.go.
	EnqueueAhead time.Duration

	// testOnly sets River's TestOnly (no jittered start of maintenance).
	testOnly bool
	// retryPolicy overrides River's retry schedule in tests.
	retryPolicy river.ClientRetryPolicy
	// extraMiddleware is appended to River's middleware (benchmarks time
	// the periodic insert with it).
	extraMiddleware []rivertype.Middleware
	// riverPeriodic registers periodic jobs as River alone would (inserted
	// at the slot, ScheduledAt left to River): the benchmark's baseline.
	riverPeriodic bool
}

// Periodic is a job inserted on a cron schedule by the leader replica.
type Periodic struct {
	// Name identifies the schedule; it becomes the actor
	// {kind: scheduler, name: Name} of every job it inserts.
	Name string
	// Spec is a cron spec as in the configuration (see ParseSchedule).
	Spec string
	// Construct returns the job to insert each time the schedule fires.
	Construct func() (river.JobArgs, *river.InsertOpts)
}

// JobInfo is what callers learn about a job.
type JobInfo struct {
	ID          int64
	Kind        string
	Queue       string
	State       string // River's state: available, scheduled, running, retryable, completed, cancelled, discarded, pending
	Attempt     int
	ScheduledAt time.Time
	LastError   string // error of the latest failed attempt, if any
	Actor       action.Actor
	// Duplicate is true when a unique job was not inserted because an
	// equivalent one exists; ID is then that job's.
	Duplicate bool
}

// AuditObjecter can be implemented by job args to name what the job acts on
// (e.g. "source/orders-db") in the audit record of each run. Without it the
// object is "job/<id>".
type AuditObjecter interface {
	AuditObject() string
}

// client is the part of *river.Client[TTx] the engine uses; it hides TTx so
// that the rest of opsd sees one Engine type for both drivers.
type client interface {
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	StopAndCancel(ctx context.Context) error
	Stopped() <-chan struct{}
	Insert(ctx context.Context, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
	JobGet(ctx context.Context, id int64) (*rivertype.JobRow, error)
	PeriodicJobs() *river.PeriodicJobBundle
}

// Engine runs River on the state store's database. Construct it with New,
// NewSQLite or NewPostgres; run it with Run.
type Engine struct {
	client  client
	backend string
	logger  *slog.Logger
	grace   time.Duration
	ahead   time.Duration
	waker   *waker
	// riverPeriodic: see Options.riverPeriodic.
	riverPeriodic bool

	slotsMu sync.Mutex
	slots   map[string]time.Time // periodic name → last slot inserted for

	runOnce atomic.Bool
	phase   atomic.Int32
}

// Engine phases, for Ready.
const (
	phaseNew int32 = iota
	phaseRunning
	phaseStopped
)

// New builds an Engine on store, which must be a *sqlite.Store or a
// *postgres.Store.
func New(ctx context.Context, store state.Store, opts Options) (*Engine, error) {
	switch s := store.(type) {
	case *sqlite.Store:
		return NewSQLite(ctx, s, opts)
	case *postgres.Store:
		return NewPostgres(ctx, s, opts)
	default:
		return nil, fmt.Errorf("jobs: unsupported state store %T", store)
	}
}

// NewSQLite builds an Engine on the SQLite store, migrating River's tables.
func NewSQLite(ctx context.Context, store *sqlite.Store, opts Options) (*Engine, error) {
	migrate := func(ctx context.Context, m func(ctx context.Context) error) error { return m(ctx) }
	return build(ctx, state.KindSQLite, riversqlite.New(store.DB()), store, migrate, opts)
}

// NewPostgres builds an Engine on the PostgreSQL store, migrating River's
// tables under an advisory lock so replicas starting together do not race.
func NewPostgres(ctx context.Context, store *postgres.Store, opts Options) (*Engine, error) {
	migrate := func(ctx context.Context, m func(ctx context.Context) error) error {
		return store.WithAdvisoryLock(ctx, postgres.LockRiverMigrations, func(ctx context.Context, _ *pgx.Conn) error {
			return m(ctx)
		})
	}
	return build(ctx, state.KindPostgres, riverpgxv5.New(store.Pool()), store, migrate, opts)
}

func build[TTx any](ctx context.Context, backend string, driver riverdriver.Driver[TTx], store state.Store,
	migrate func(context.Context, func(context.Context) error) error, opts Options,
) (*Engine, error) {
	if opts.Dispatcher == nil {
		return nil, errors.New("jobs: Options.Dispatcher is required (every job runs through the action choke point)")
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "jobs", "backend", backend)

	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("jobs: river migrator: %w", err)
	}
	err = migrate(ctx, func(ctx context.Context) error {
		res, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
		if err != nil {
			return err
		}
		for _, v := range res.Versions {
			logger.InfoContext(ctx, "applied river migration", "version", v.Version, "name", v.Name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("jobs: migrate river schema: %w", err)
	}

	workers := opts.Workers
	if workers == nil {
		workers = river.NewWorkers()
	}
	if err := river.AddWorkerSafely(workers, &PingWorker{Store: store}); err != nil {
		return nil, fmt.Errorf("jobs: register ping worker: %w", err)
	}

	ahead, err := enqueueAhead(opts.EnqueueAhead)
	if err != nil {
		return nil, err
	}
	wk := newWaker(driver.GetExecutor(), logger)
	cfg, err := riverConfig(opts, workers, wk, logger)
	if err != nil {
		return nil, err
	}
	rc, err := river.NewClient(driver, cfg)
	if err != nil {
		return nil, fmt.Errorf("jobs: river client: %w", err)
	}
	e := &Engine{
		client:  rc,
		backend: backend,
		logger:  logger,
		grace:   opts.ShutdownGrace,
		ahead:   ahead,
		waker:   wk,

		riverPeriodic: opts.riverPeriodic,
	}
	if e.grace <= 0 {
		e.grace = DefaultShutdownGrace
	}
	for _, p := range opts.Periodic {
		if err := e.AddPeriodic(p.Name, p.Spec, p.Construct); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func riverConfig(opts Options, workers *river.Workers, wk *waker, logger *slog.Logger) (*river.Config, error) {
	concurrency := opts.Concurrency
	if concurrency <= 0 {
		concurrency = DefaultConcurrency
	}
	timeout := opts.JobTimeout
	if timeout == 0 {
		timeout = DefaultJobTimeout
	}
	rescue := opts.RescueStuckJobsAfter
	if rescue == 0 && timeout > 0 {
		rescue = timeout + time.Hour
	}
	if rescue > 0 && timeout > 0 && rescue <= timeout {
		return nil, fmt.Errorf("jobs: RescueStuckJobsAfter (%v) must exceed JobTimeout (%v)", rescue, timeout)
	}
	return &river.Config{
		ID:                   opts.ID,
		Logger:               logger,
		Workers:              workers,
		Queues:               map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: concurrency}},
		JobTimeout:           timeout,
		RescueStuckJobsAfter: rescue,
		MaxAttempts:          opts.MaxAttempts,
		FetchPollInterval:    opts.FetchPollInterval,
		FetchCooldown:        cmp.Or(opts.FetchCooldown, DefaultFetchCooldown),
		RetryPolicy:          opts.retryPolicy,
		TestOnly:             opts.testOnly,
		Middleware: append([]rivertype.Middleware{
			&dispatchMiddleware{d: opts.Dispatcher, logger: logger},
			&periodicMiddleware{waker: wk},
		}, opts.extraMiddleware...),
	}, nil
}

// Backend is the state store kind the engine runs on.
func (e *Engine) Backend() string { return e.backend }

// Run starts River, blocks until ctx is done, then stops gracefully: running
// jobs get Options.ShutdownGrace to finish, after which their contexts are
// cancelled. It returns nil after a clean stop. Run may be called once.
func (e *Engine) Run(ctx context.Context) error {
	if !e.runOnce.CompareAndSwap(false, true) {
		return errors.New("jobs: Run called twice")
	}
	// River begins stopping when the context given to Start ends; Run
	// controls the stop itself (grace, then cancel) instead.
	if err := e.client.Start(context.WithoutCancel(ctx)); err != nil {
		e.phase.Store(phaseStopped)
		return fmt.Errorf("jobs: start river: %w", err)
	}
	e.phase.Store(phaseRunning)
	e.logger.InfoContext(ctx, "job engine started")

	var unexpected error
	select {
	case <-ctx.Done():
	case <-e.client.Stopped():
		unexpected = errors.New("jobs: river client stopped unexpectedly")
	}
	e.phase.Store(phaseStopped)
	err := e.stop(context.WithoutCancel(ctx))
	e.waker.stop()
	if err != nil {
		return err
	}
	return unexpected
}

func (e *Engine) stop(ctx context.Context) error {
	softCtx, cancel := context.WithTimeout(ctx, e.grace)
	defer cancel()
	err := e.client.Stop(softCtx)
	if err == nil {
		e.logger.InfoContext(ctx, "job engine stopped")
		return nil
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("jobs: stop: %w", err)
	}
	e.logger.WarnContext(ctx, "jobs still running after shutdown grace; cancelling them", "grace", e.grace)
	hardCtx, cancel := context.WithTimeout(ctx, hardStopTimeout)
	defer cancel()
	if err := e.client.StopAndCancel(hardCtx); err != nil {
		return fmt.Errorf("jobs: hard stop: jobs ignored cancellation for %v: %w", hardStopTimeout, err)
	}
	return nil
}

// Ready returns nil while the engine is running (for /readyz).
func (e *Engine) Ready() error {
	switch e.phase.Load() {
	case phaseNew:
		return errors.New("jobs: not started")
	case phaseStopped:
		return errors.New("jobs: stopped")
	}
	return nil
}

// Insert enqueues a job. The actor carried by ctx (action.ActorFrom) is
// recorded in the job's metadata and becomes the actor of every run of it.
// opts may be nil; it is not modified.
func (e *Engine) Insert(ctx context.Context, args river.JobArgs, opts *river.InsertOpts) (JobInfo, error) {
	o, err := withOpsdMetadata(opts, action.ActorFrom(ctx), args, time.Time{})
	if err != nil {
		return JobInfo{}, fmt.Errorf("jobs: insert %s: %w", args.Kind(), err)
	}
	res, err := e.client.Insert(ctx, args, o)
	if err != nil {
		return JobInfo{}, fmt.Errorf("jobs: insert %s: %w", args.Kind(), err)
	}
	info := jobInfo(res.Job)
	info.Duplicate = res.UniqueSkippedAsDuplicate
	return info, nil
}

// Job returns the job with id, or an error wrapping ErrNotFound.
func (e *Engine) Job(ctx context.Context, id int64) (JobInfo, error) {
	row, err := e.client.JobGet(ctx, id)
	if errors.Is(err, rivertype.ErrNotFound) {
		return JobInfo{}, fmt.Errorf("jobs: job %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return JobInfo{}, fmt.Errorf("jobs: job %d: %w", id, err)
	}
	return jobInfo(row), nil
}

// ParseSchedule parses a cron spec with the configuration's parser
// (config.Cron): five fields, descriptors (@hourly, @daily, ...),
// @every <duration> and an optional CRON_TZ=<zone> prefix; a spec that can
// never fire is refused.
func ParseSchedule(spec string) (cron.Schedule, error) {
	s, err := config.Cron(spec).Schedule()
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	return s, nil
}

// AddPeriodic registers a job inserted each time spec fires, by whichever
// replica is River's leader. Jobs it inserts run as actor
// {kind: scheduler, name: name}. name must be unique, 2-127 characters of
// letters, digits and _-[]<>/.·:+ (River's rule for periodic job IDs). It
// may be called before or while Run runs.
func (e *Engine) AddPeriodic(name, spec string, construct func() (river.JobArgs, *river.InsertOpts)) error {
	if err := checkPeriodicName(name); err != nil {
		return err
	}
	sched, err := ParseSchedule(spec)
	if err != nil {
		return fmt.Errorf("jobs: periodic %q: %w", name, err)
	}
	if construct == nil {
		return fmt.Errorf("jobs: periodic %q: no constructor", name)
	}
	actor := action.Actor{Kind: action.ActorScheduler, Name: name}
	logger := e.logger
	if e.riverPeriodic {
		// The benchmark's baseline: River's own timing, as before
		// aheadSchedule.
		return e.addRiverPeriodic(name, sched, actor, construct)
	}
	// River inserts the job ahead of the slot (aheadSchedule); the job
	// carries the slot as ScheduledAt and in its metadata, and
	// periodicMiddleware makes it available at the slot.
	e.slotsMu.Lock()
	as := &aheadSchedule{sched: sched, ahead: e.ahead, done: e.slots[name]}
	e.slotsMu.Unlock()
	pj := river.NewPeriodicJob(as, func() (river.JobArgs, *river.InsertOpts) {
		called, slot := time.Now(), as.current()
		e.slotsMu.Lock()
		if e.slots == nil {
			e.slots = map[string]time.Time{}
		}
		e.slots[name] = slot
		e.slotsMu.Unlock()
		args, opts := construct()
		opts = periodicOpts(opts, slot, called)
		o, err := withOpsdMetadata(opts, actor, args, slot)
		if err != nil {
			// Only a constructor returning invalid metadata gets here; insert
			// the job without the actor rather than skip the schedule.
			logger.Error("periodic job metadata", "periodic", name, "err", err)
			return args, opts
		}
		return args, o
	}, &river.PeriodicJobOpts{ID: name})
	if _, err := e.client.PeriodicJobs().AddSafely(pj); err != nil {
		return fmt.Errorf("jobs: periodic %q: %w", name, err)
	}
	return nil
}

func (e *Engine) addRiverPeriodic(name string, sched cron.Schedule, actor action.Actor, construct func() (river.JobArgs, *river.InsertOpts)) error {
	pj := river.NewPeriodicJob(sched, func() (river.JobArgs, *river.InsertOpts) {
		args, opts := construct()
		o, err := withOpsdMetadata(opts, actor, args, time.Time{})
		if err != nil {
			return args, opts
		}
		return args, o
	}, &river.PeriodicJobOpts{ID: name})
	if _, err := e.client.PeriodicJobs().AddSafely(pj); err != nil {
		return fmt.Errorf("jobs: periodic %q: %w", name, err)
	}
	return nil
}

// periodicName is River's rule for periodic job IDs, checked up front so
// that ReplacePeriodic cannot fail halfway.
var periodicName = regexp.MustCompile(`\A[\w][\w\-\[\]<>/.·:+]+\z`)

func checkPeriodicName(name string) error {
	if len(name) >= 128 || !periodicName.MatchString(name) {
		return fmt.Errorf("jobs: periodic name %q: want 2-127 characters of letters, digits and _-[]<>/.·:+", name)
	}
	return nil
}

// RemovePeriodic unregisters the periodic job name; it reports whether
// there was one.
func (e *Engine) RemovePeriodic(name string) bool {
	return e.client.PeriodicJobs().RemoveByID(name)
}

// ReplacePeriodic makes ps the complete set of periodic jobs (for a config
// reload). Every spec is checked first; on error nothing changes.
func (e *Engine) ReplacePeriodic(ps []Periodic) error {
	seen := map[string]bool{}
	for _, p := range ps {
		if _, err := ParseSchedule(p.Spec); err != nil {
			return fmt.Errorf("jobs: periodic %q: %w", p.Name, err)
		}
		if err := checkPeriodicName(p.Name); err != nil {
			return err
		}
		if p.Construct == nil || seen[p.Name] {
			return fmt.Errorf("jobs: periodic %q: duplicate name or no constructor", p.Name)
		}
		seen[p.Name] = true
	}
	e.client.PeriodicJobs().Clear()
	for _, p := range ps {
		if err := e.AddPeriodic(p.Name, p.Spec, p.Construct); err != nil {
			return err
		}
	}
	return nil
}

// withOpsdMetadata returns a copy of opts whose metadata also records the
// actor and audit object, and the slot of a periodic job (when not zero).
func withOpsdMetadata(opts *river.InsertOpts, actor action.Actor, args river.JobArgs, slot time.Time) (*river.InsertOpts, error) {
	var o river.InsertOpts
	if opts != nil {
		o = *opts
	}
	meta := map[string]any{}
	if len(o.Metadata) > 0 {
		if err := json.Unmarshal(o.Metadata, &meta); err != nil {
			return nil, fmt.Errorf("metadata must be a JSON object: %w", err)
		}
	}
	meta[metaActor] = actor
	if ob, ok := args.(AuditObjecter); ok {
		meta[metaObject] = ob.AuditObject()
	}
	if !slot.IsZero() {
		meta[metaSlot] = slotMeta(slot)
	}
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("encode metadata: %w", err)
	}
	o.Metadata = b
	return &o, nil
}

type opsdMeta struct {
	Actor  *action.Actor `json:"opsd_actor"`
	Object string        `json:"opsd_object"`
}

func readMeta(row *rivertype.JobRow) opsdMeta {
	var m opsdMeta
	_ = json.Unmarshal(row.Metadata, &m) // River always stores an object; missing keys stay zero
	return m
}

func jobInfo(row *rivertype.JobRow) JobInfo {
	info := JobInfo{
		ID:          row.ID,
		Kind:        row.Kind,
		Queue:       row.Queue,
		State:       string(row.State),
		Attempt:     row.Attempt,
		ScheduledAt: row.ScheduledAt,
		Actor:       actorOf(row),
	}
	if n := len(row.Errors); n > 0 {
		info.LastError = row.Errors[n-1].Error
	}
	return info
}

// actorOf returns the actor recorded at insert, or the system actor for jobs
// inserted some other way.
func actorOf(row *rivertype.JobRow) action.Actor {
	if m := readMeta(row); m.Actor != nil && m.Actor.Kind != "" {
		return *m.Actor
	}
	return action.Actor{Kind: action.ActorSystem, Name: "opsd"}
}
