// Package location turns a configured target into a ready storage.Backend:
// a Registry maps a target type to the constructor of its backend, and
// Wrap is the one place the decorator stack is assembled.
package location

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/gcs"
	"github.com/opsd-dev/opsd/internal/storage/local"
	"github.com/opsd-dev/opsd/internal/storage/metrics"
	"github.com/opsd-dev/opsd/internal/storage/retry"
	"github.com/opsd-dev/opsd/internal/storage/s3"
)

// Factory creates the bare backend for target name.
type Factory func(ctx context.Context, name string, t *config.Target, logger *slog.Logger) (storage.Backend, error)

// Registry maps target types to factories. It is an instance, not a
// package-level map: tests and the daemon each build their own.
type Registry struct {
	factories map[string]Factory
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{factories: map[string]Factory{}} }

// NewDefaultRegistry returns a registry with local, s3 and gcs.
func NewDefaultRegistry() *Registry {
	r := NewRegistry()
	r.Register(config.TargetLocal, func(_ context.Context, name string, t *config.Target, _ *slog.Logger) (storage.Backend, error) {
		return local.New(name, t.Path)
	})
	r.Register(config.TargetS3, func(ctx context.Context, name string, t *config.Target, _ *slog.Logger) (storage.Backend, error) {
		return s3.New(ctx, name, s3.OptionsFromTarget(t))
	})
	r.Register(config.TargetGCS, func(ctx context.Context, name string, t *config.Target, _ *slog.Logger) (storage.Backend, error) {
		return gcs.New(ctx, name, gcs.OptionsFromTarget(t))
	})
	return r
}

// Register sets the factory for typ, replacing any earlier one.
func (r *Registry) Register(typ string, f Factory) { r.factories[typ] = f }

// Types lists the registered types, sorted.
func (r *Registry) Types() []string {
	types := make([]string, 0, len(r.factories))
	for t := range r.factories {
		types = append(types, t)
	}
	sort.Strings(types)
	return types
}

// Open creates the bare backend for target name, without decorators.
func (r *Registry) Open(ctx context.Context, name string, t *config.Target, logger *slog.Logger) (storage.Backend, error) {
	f, ok := r.factories[t.Type]
	if !ok {
		return nil, storage.Permanent(fmt.Errorf("open target %q: unknown type %q (have %v)", name, t.Type, r.Types()))
	}
	be, err := f(ctx, name, t, logger)
	if err != nil {
		return nil, fmt.Errorf("open target %q: %w", name, err)
	}
	return be, nil
}

// Stack is what Wrap puts around a backend.
type Stack struct {
	// Metrics records opsd_storage_*; nil records nothing.
	Metrics *metrics.Metrics
	// Retry tunes the backoff; Report is filled in by Wrap.
	Retry retry.Options
}

// Wrap assembles the decorator stack, in this order, here only:
//
//	metrics(retry(backend))
//
// Metrics is outermost so it counts each caller's operation once, with the
// latency the caller saw; retry is next to the store so it repeats only
// the failed call. Retries are logged at warn level on logger and counted
// in opsd_storage_retries_total.
func Wrap(be storage.Backend, s Stack, logger *slog.Logger) storage.Backend {
	log := logger.With("component", "storage", "target", be.Name())
	var countRetry func(op string)
	if s.Metrics != nil {
		countRetry = s.Metrics.RetryReport(be.Name())
	}
	ropts := s.Retry
	ropts.Report = func(op, key string, attempt int, err error, delay time.Duration) {
		log.Warn("storage operation failed, retrying", "op", op, "key", key, "attempt", attempt, "delay", delay, "err", err)
		if countRetry != nil {
			countRetry(op)
		}
	}
	ropts.Success = func(op, key string, attempts int) {
		log.Info("storage operation succeeded after retries", "op", op, "key", key, "attempts", attempts)
	}
	var out storage.Backend = retry.New(be, ropts)
	if s.Metrics != nil {
		out = s.Metrics.Wrap(out)
	}
	return out
}

// Opener opens targets with the full stack; it is what the daemon holds.
type Opener struct {
	Registry *Registry
	Stack    Stack
}

// Open opens target name and wraps it with the decorator stack.
func (o *Opener) Open(ctx context.Context, name string, t *config.Target, logger *slog.Logger) (storage.Backend, error) {
	be, err := o.Registry.Open(ctx, name, t, logger)
	if err != nil {
		return nil, err
	}
	return Wrap(be, o.Stack, logger), nil
}
