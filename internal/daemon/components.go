package daemon

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/audit"
	"github.com/opsd-dev/opsd/internal/buildinfo"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/httpapi"
	"github.com/opsd-dev/opsd/internal/jobs"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/postgres"
	"github.com/opsd-dev/opsd/internal/state/sqlite"
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
func openAudit(ctx context.Context, cfg *config.Config, key *signing.Key, reg prometheus.Registerer, log *slog.Logger) (*audit.Log, error) {
	witnesses, err := auditWitnesses(cfg)
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

// auditWitnesses maps audit.witnesses to witness stores. Local targets are
// directory witnesses; object-store witnesses need the storage backends,
// and until those exist opsd refuses to start rather than run without a
// witness the config asks for.
func auditWitnesses(cfg *config.Config) ([]audit.Witness, error) {
	var out []audit.Witness
	for _, name := range cfg.Audit.Witnesses {
		t, ok := cfg.Targets[name]
		if !ok {
			return nil, fmt.Errorf("audit witness %q: no such target", name)
		}
		if t.Type != config.TargetLocal {
			return nil, fmt.Errorf("audit witness %q: %s targets cannot be witnesses in this version of opsd (local targets can)", name, t.Type)
		}
		out = append(out, audit.NewDirWitness(t.Path))
	}
	return out, nil
}

// engineAdapter gives the job engine the daemon's interface.
type engineAdapter struct{ *jobs.Engine }

// Reconfigure replaces the periodic jobs with the reloaded config's. No
// config section schedules a job kind yet (backup and drill schedules
// arrive with their job kinds), so the set is empty.
func (e engineAdapter) Reconfigure(ctx context.Context, cfg *config.Config) error {
	return e.ReplacePeriodic(periodicJobs(cfg))
}

func periodicJobs(*config.Config) []jobs.Periodic { return nil }

func openJobs(ctx context.Context, cfg *config.Config, store state.Store, d *action.Dispatcher, replica string, log *slog.Logger) (jobEngine, error) {
	eng, err := jobs.New(ctx, store, jobs.Options{
		Logger:        log,
		Dispatcher:    d,
		Concurrency:   cfg.State.Workers,
		ShutdownGrace: cfg.Server.ShutdownGrace,
		ID:            replica,
		Periodic:      periodicJobs(cfg),
	})
	if err != nil {
		return nil, err
	}
	return engineAdapter{eng}, nil
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

func randRead(b []byte) (int, error) { return rand.Read(b) }
