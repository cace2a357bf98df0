// Package metrics is a storage.Backend decorator that records Prometheus
// metrics per target and operation:
//
//	opsd_storage_operations_total{target,op}
//	opsd_storage_errors_total{target,op}
//	opsd_storage_operation_duration_seconds{target,op}   histogram
//	opsd_storage_bytes_written_total{target}
//	opsd_storage_bytes_read_total{target}
//	opsd_storage_retries_total{target,op}                 via Metrics.RetryReport
//
// It sits outside the retry decorator, so an operation counts once however
// many attempts it took, and its latency includes the backoff. Open's
// latency is the time to open; bytes read are counted as the caller reads
// them.
package metrics

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/opsd-dev/opsd/internal/storage"
)

// Metrics holds the collectors; one Metrics serves every target.
type Metrics struct {
	ops          *prometheus.CounterVec
	errors       *prometheus.CounterVec
	latency      *prometheus.HistogramVec
	bytesWritten *prometheus.CounterVec
	bytesRead    *prometheus.CounterVec
	retries      *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_storage_operations_total",
			Help: "Storage operations by target and operation, successful or not.",
		}, []string{"target", "op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_storage_errors_total",
			Help: "Storage operations that failed, after retries.",
		}, []string{"target", "op"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "opsd_storage_operation_duration_seconds",
			Help:    "Storage operation latency, retries included; for open, the time to open.",
			Buckets: prometheus.ExponentialBuckets(0.005, 4, 10), // 5ms .. ~22min
		}, []string{"target", "op"}),
		bytesWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_storage_bytes_written_total",
			Help: "Bytes of objects saved completely.",
		}, []string{"target"}),
		bytesRead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_storage_bytes_read_total",
			Help: "Bytes read from opened objects.",
		}, []string{"target"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "opsd_storage_retries_total",
			Help: "Attempts that failed transiently and were retried.",
		}, []string{"target", "op"}),
	}
	for _, c := range []prometheus.Collector{m.ops, m.errors, m.latency, m.bytesWritten, m.bytesRead, m.retries} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register storage metrics: %w", err)
		}
	}
	return m, nil
}

// RetryReport returns a callback for retry.Options.Report that counts
// retries of target.
func (m *Metrics) RetryReport(target string) func(op string) {
	return func(op string) { m.retries.WithLabelValues(target, op).Inc() }
}

// Wrap decorates be.
func (m *Metrics) Wrap(be storage.Backend) *Backend {
	return &Backend{Backend: be, m: m, target: be.Name()}
}

// Backend records metrics for the backend it wraps.
type Backend struct {
	storage.Backend
	m      *Metrics
	target string
}

var _ storage.Backend = (*Backend)(nil)

// Unwrap returns the wrapped backend.
func (b *Backend) Unwrap() storage.Backend { return b.Backend }

func (b *Backend) observe(op string, start time.Time, err error) {
	b.m.ops.WithLabelValues(b.target, op).Inc()
	b.m.latency.WithLabelValues(b.target, op).Observe(time.Since(start).Seconds())
	if err != nil {
		b.m.errors.WithLabelValues(b.target, op).Inc()
	}
}

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	start := time.Now()
	fi, err := b.Backend.Save(ctx, key, r, opts)
	b.observe("save", start, err)
	if err == nil {
		b.m.bytesWritten.WithLabelValues(b.target).Add(float64(fi.Size))
	}
	return fi, err
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	start := time.Now()
	rc, err := b.Backend.Open(ctx, key, offset, length)
	b.observe("open", start, err)
	if err != nil {
		return nil, err
	}
	cr := &countingReader{ReadCloser: rc, c: b.m.bytesRead.WithLabelValues(b.target)}
	if s, ok := rc.(io.Seeker); ok {
		return &countingReadSeeker{cr, s}, nil
	}
	return cr, nil
}

// countingReadSeeker keeps a seekable reader (a local file) seekable, so a
// restore can read it twice rather than spool it.
type countingReadSeeker struct {
	*countingReader
	s io.Seeker
}

func (r *countingReadSeeker) Seek(offset int64, whence int) (int64, error) {
	return r.s.Seek(offset, whence)
}

type countingReader struct {
	io.ReadCloser
	c prometheus.Counter
}

func (r *countingReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.c.Add(float64(n))
	}
	return n, err
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	start := time.Now()
	fi, err := b.Backend.Stat(ctx, key)
	b.observe("stat", start, err)
	return fi, err
}

// List implements storage.Backend. An error returned by fn is the
// caller's, not the store's, and is not counted as an error.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	start := time.Now()
	var fnErr error
	err := b.Backend.List(ctx, prefix, func(fi storage.ObjectInfo) error {
		fnErr = fn(fi)
		return fnErr
	})
	if fnErr != nil && err == fnErr {
		b.observe("list", start, nil)
	} else {
		b.observe("list", start, err)
	}
	return err
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, key string) error {
	start := time.Now()
	err := b.Backend.Remove(ctx, key)
	b.observe("remove", start, err)
	return err
}

// Cleanup implements storage.Backend.
func (b *Backend) Cleanup(ctx context.Context, olderThan time.Time) (int, error) {
	start := time.Now()
	n, err := b.Backend.Cleanup(ctx, olderThan)
	b.observe("cleanup", start, err)
	return n, err
}
