package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/audit"
	"github.com/opsd-dev/opsd/internal/backup/service"
	"github.com/opsd-dev/opsd/internal/buildinfo"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/httpapi"
	"github.com/opsd-dev/opsd/internal/jobs"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/location"
	storagemetrics "github.com/opsd-dev/opsd/internal/storage/metrics"
)

// auditLog is what the daemon needs of the audit log.
type auditLog interface {
	action.Recorder
	// Healthy is nil while appends succeed.
	Healthy() error
	Size() int64
	Checkpoint() ([]byte, error)
	Entries(from int64, limit int) ([]audit.StoredEntry, error)
	ProveRecord(i, size int64) (tlog.RecordProof, error)
	ProveTree(from, to int64) (tlog.TreeProof, error)
	// Run makes checkpoints until ctx ends, then a final one.
	Run(ctx context.Context) error
	Close() error
}

// jobEngine is what the daemon needs of the job engine.
type jobEngine interface {
	Run(ctx context.Context) error
	Ready() error
	// Reconfigure applies a reloaded config's schedules.
	Reconfigure(ctx context.Context, cfg *config.Config) error
}

// auditAPI adapts the audit log to the HTTP API's reader interface.
type auditAPI struct{ auditLog }

func (a auditAPI) Entries(from int64, limit int) ([]httpapi.AuditEntry, error) {
	es, err := a.auditLog.Entries(from, limit)
	if err != nil {
		return nil, err
	}
	out := make([]httpapi.AuditEntry, len(es))
	for i, e := range es {
		// The decoded entry is the leaf itself: the leaf bytes are
		// canonical JSON already.
		out[i] = httpapi.AuditEntry{Index: e.Index, Raw: e.Raw, Entry: json.RawMessage(e.Raw)}
	}
	return out, nil
}

// openAudit opens data_dir/audit with the configured witnesses.
func openAudit(ctx context.Context, cfg *config.Config, key *signing.Key, targets *targetSet, reg prometheus.Registerer, log *slog.Logger) (*audit.Log, error) {
	witnesses, err := auditWitnesses(ctx, cfg, targets)
	if err != nil {
		return nil, err
	}
	l, err := audit.Open(ctx, filepath.Join(cfg.DataDir, "audit"), audit.Options{
		Key:                key,
		SegmentSize:        int64(cfg.Audit.SegmentSize),
		CheckpointInterval: cfg.Audit.CheckpointInterval,
		Witnesses:          witnesses,
		Metrics:            audit.NewMetrics(reg),
		Logger:             log.With("component", "audit"),
		Version:            buildinfo.Get().Version,
	})
	if errors.Is(err, audit.ErrCorrupt) {
		return nil, fmt.Errorf("%w; run `opsd audit verify --dir %s` to locate the damage", err, filepath.Join(cfg.DataDir, "audit"))
	}
	return l, err
}

// auditWitnesses maps audit.witnesses to witness stores on their targets.
// Checkpoints are object-locked for as long as the target's own lock
// (S3 object_lock, GCS retention) says.
func auditWitnesses(ctx context.Context, cfg *config.Config, targets *targetSet) ([]audit.Witness, error) {
	var out []audit.Witness
	for _, name := range cfg.Audit.Witnesses {
		b, err := targets.get(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("audit witness: %w", err)
		}
		mode, lockFor := witnessLock(cfg.Targets[name])
		out = append(out, audit.NewBackendWitness(b, mode, lockFor))
	}
	return out, nil
}

func witnessLock(t *config.Target) (string, time.Duration) {
	switch {
	case t.ObjectLock != nil:
		return t.ObjectLock.Mode, time.Duration(t.ObjectLock.Days) * 24 * time.Hour
	case t.Retention != nil:
		return "UNLOCKED", time.Duration(t.Retention.Days) * 24 * time.Hour
	}
	return "", 0
}

// targetSet opens each configured target once, with the full decorator
// stack, when first needed.
type targetSet struct {
	cfg    *config.Config
	opener *location.Opener
	log    *slog.Logger
	mu     sync.Mutex // guards cfg and open: backup jobs open targets concurrently
	open   map[string]storage.Backend
}

func newTargetSet(cfg *config.Config, reg prometheus.Registerer, log *slog.Logger) (*targetSet, error) {
	m, err := storagemetrics.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &targetSet{cfg: cfg, log: log, open: map[string]storage.Backend{},
		opener: &location.Opener{Registry: location.NewDefaultRegistry(), Stack: location.Stack{Metrics: m}}}, nil
}

// update makes targets added by a reloaded config available. A target
// already open keeps its backend until restart.
func (s *targetSet) update(cfg *config.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = cfg
}

func (s *targetSet) get(ctx context.Context, name string) (storage.Backend, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.open[name]; ok {
		return b, nil
	}
	t, ok := s.cfg.Targets[name]
	if !ok {
		return nil, fmt.Errorf("no target %q", name)
	}
	b, err := s.opener.Open(ctx, name, t, s.log)
	if err != nil {
		return nil, err
	}
	s.open[name] = b
	return b, nil
}

func (s *targetSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, b := range s.open {
		if err := b.Close(); err != nil {
			s.log.Warn("close target", "target", name, "err", err)
		}
	}
}

// engineAdapter gives the job engine the daemon's interface.
type engineAdapter struct{ *jobs.Engine }

// Reconfigure replaces the periodic jobs with the reloaded config's.
func (e engineAdapter) Reconfigure(ctx context.Context, cfg *config.Config) error {
	return e.ReplacePeriodic(periodicJobs(cfg))
}

// periodicJobs are the config's schedules: backups and verifications per
// source, and runbooks.schedules.
func periodicJobs(cfg *config.Config) []jobs.Periodic {
	return append(service.Periodic(cfg), drillSchedules(cfg)...)
}

func openJobs(ctx context.Context, cfg *config.Config, store state.Store, d *action.Dispatcher, workers *river.Workers, replica string, log *slog.Logger) (*jobs.Engine, error) {
	eng, err := jobs.New(ctx, store, jobs.Options{
		Logger:        log,
		Dispatcher:    d,
		Workers:       workers,
		Concurrency:   cfg.State.Workers,
		ShutdownGrace: cfg.Server.ShutdownGrace,
		ID:            replica,
		Periodic:      periodicJobs(cfg),
	})
	if err != nil {
		return nil, err
	}
	return eng, nil
}

// openState opens PostgreSQL when state.postgres is set, else the embedded
// SQLite file in data_dir.
func openState(ctx context.Context, cfg *config.Config, log *slog.Logger) (state.Store, error) {
	if cfg.State.Postgres != "" {
		return postgres.Open(ctx, string(cfg.State.Postgres), log)
	}
	dir := filepath.Join(cfg.DataDir, "state")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return sqlite.Open(ctx, filepath.Join(dir, sqlite.FileName), log)
}
