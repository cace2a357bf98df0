// Package gcs is a storage.Backend on Google Cloud Storage, through
// cloud.google.com/go/storage.
//
// Save streams through the client's Writer: a resumable upload in
// ChunkSize pieces that the store finalizes only when the stream ends, so
// an object is complete or absent. A Save that fails cancels its upload.
// An upload that never finalizes (opsd killed mid-way) is invisible to
// every read and listing and expires on its own after a week; GCS offers
// no way to list them, so Cleanup has nothing to do and returns 0.
//
// Retention: SaveOptions.Retention sets the object's retention (mode
// "Unlocked" or "Locked"; S3's GOVERNANCE and COMPLIANCE map to them), which
// needs a bucket with object retention enabled. Stat reports it, or the
// expiry a bucket retention policy imposes. A refused deletion (403 citing
// retention or a hold) is storage.ErrLocked. fake-gcs-server, used in
// tests, stores the retention opsd requests but does not enforce it: tests
// check what opsd asks for, not that GCS refuses a deletion.
//
// Credentials: Application Default Credentials, or CredentialsFile. For
// emulators, Endpoint with NoAuth.
package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"

	"github.com/opsd-dev/opsd/internal/config"
	opsdstorage "github.com/opsd-dev/opsd/internal/storage"
)

// DefaultChunkSize of resumable uploads: memory per Save is about this.
const DefaultChunkSize = 8 << 20

// SingleRequest as Options.ChunkSize streams each object in one request.
const SingleRequest = -1

// Options configure a Backend.
type Options struct {
	Bucket string
	// Prefix is prepended to every key.
	Prefix string
	// StorageClass of new objects; default the bucket's.
	StorageClass string
	// Endpoint overrides Google's JSON API endpoint, e.g.
	// "http://127.0.0.1:4443/storage/v1/" for fake-gcs-server.
	Endpoint string
	// CredentialsFile is a service account key or external account file;
	// empty means Application Default Credentials.
	CredentialsFile string
	// NoAuth sends requests unauthenticated (emulators only).
	NoAuth bool
	// ChunkSize of resumable uploads; 0 means DefaultChunkSize and
	// SingleRequest uploads in one streaming request with no buffer (and
	// no resume: an error fails the Save).
	ChunkSize int
	// ClientOptions are appended to the ones above (tests pass an HTTP client).
	ClientOptions []option.ClientOption
}

// OptionsFromTarget maps a config target to Options.
func OptionsFromTarget(t *config.Target) Options {
	return Options{
		Bucket: t.Bucket, Prefix: t.Prefix, StorageClass: t.StorageClass,
		Endpoint: t.Endpoint, CredentialsFile: t.CredentialsFile,
		NoAuth: t.Anonymous, ChunkSize: chunkSize(t.ChunkSize),
	}
}

// chunkSize maps the config (nil = default, 0 = one request) to Options.
func chunkSize(c *config.Size) int {
	switch {
	case c == nil:
		return 0
	case *c == 0:
		return SingleRequest
	}
	return int(*c)
}

// Backend stores objects in one bucket.
type Backend struct {
	name   string
	opts   Options
	prefix string
	client *storage.Client
	bucket *storage.BucketHandle
}

var _ opsdstorage.Backend = (*Backend)(nil)

// New creates a client for opts.Bucket. It does not contact the store.
func New(ctx context.Context, name string, opts Options) (*Backend, error) {
	if opts.Bucket == "" {
		return nil, opsdstorage.Permanent(fmt.Errorf("open gcs target %q: no bucket", name))
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	var copts []option.ClientOption
	if opts.Endpoint != "" {
		copts = append(copts, option.WithEndpoint(opts.Endpoint))
	}
	if opts.NoAuth {
		copts = append(copts, option.WithoutAuthentication())
	} else if opts.CredentialsFile != "" {
		copts = append(copts, option.WithAuthCredentialsFile(option.ServiceAccount, opts.CredentialsFile))
	}
	copts = append(copts, opts.ClientOptions...)
	client, err := storage.NewClient(ctx, copts...)
	if err != nil {
		return nil, fmt.Errorf("open gcs target %q: %w", name, err)
	}
	prefix := strings.Trim(opts.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	return &Backend{name: name, opts: opts, prefix: prefix, client: client, bucket: client.Bucket(opts.Bucket)}, nil
}

// Client is the GCS client, for tests and tools.
func (b *Backend) Client() *storage.Client { return b.client }

// Name implements storage.Backend.
func (b *Backend) Name() string { return b.name }

// Capabilities implements storage.Backend.
func (b *Backend) Capabilities() opsdstorage.Capabilities {
	class := b.opts.StorageClass
	if class == "" {
		class = "STANDARD"
	}
	return opsdstorage.Capabilities{ObjectLock: true, StorageClasses: true, DefaultStorageClass: class}
}

// Close closes the client.
func (b *Backend) Close() error { return b.client.Close() }

func (b *Backend) object(key string) (*storage.ObjectHandle, error) {
	if err := opsdstorage.CheckKey(key); err != nil {
		return nil, err
	}
	return b.bucket.Object(b.prefix + key), nil
}

func (b *Backend) errorf(ctx context.Context, op, key string, err error) error {
	return fmt.Errorf("%s %s in %q: %w", op, key, b.name, classify(ctx, err))
}

// classify maps client errors to the storage contract.
func classify(ctx context.Context, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	switch {
	case errors.Is(err, storage.ErrObjectNotExist):
		return fmt.Errorf("%w: %w", opsdstorage.ErrNotFound, err)
	case errors.Is(err, storage.ErrBucketNotExist):
		return opsdstorage.Permanent(err)
	}
	var ge *googleapi.Error
	if errors.As(err, &ge) {
		switch c := ge.Code; {
		case c == http.StatusNotFound:
			return fmt.Errorf("%w: %w", opsdstorage.ErrNotFound, err)
		case c == http.StatusPreconditionFailed:
			return fmt.Errorf("%w: %w", opsdstorage.ErrExists, err)
		case c == http.StatusForbidden && mentionsLock(ge):
			return fmt.Errorf("%w: %w", opsdstorage.ErrLocked, err)
		case c == http.StatusRequestTimeout, c == http.StatusTooManyRequests:
			return err
		case c >= 400 && c < 500:
			return opsdstorage.Permanent(err)
		}
	}
	return err
}

func mentionsLock(ge *googleapi.Error) bool {
	text := strings.ToLower(ge.Message)
	for _, e := range ge.Errors {
		text += " " + strings.ToLower(e.Reason+" "+e.Message)
	}
	return strings.Contains(text, "retention") || strings.Contains(text, "hold")
}

// gcsMode maps a retention mode to GCS's.
func gcsMode(mode string) (string, error) {
	switch strings.ToUpper(mode) {
	case "UNLOCKED", "GOVERNANCE":
		return "Unlocked", nil
	case "LOCKED", "COMPLIANCE":
		return "Locked", nil
	}
	return "", opsdstorage.Permanent(fmt.Errorf("unknown retention mode %q", mode))
}

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, key string, r io.Reader, opts opsdstorage.SaveOptions) (opsdstorage.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	obj, err := b.object(key)
	if err != nil {
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	if opts.NoOverwrite {
		obj = obj.If(storage.Conditions{DoesNotExist: true})
	}
	// Cancelling wctx is how a Writer is abandoned without finalizing.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := obj.NewWriter(wctx)
	w.ChunkSize = max(b.opts.ChunkSize, 0)
	w.ContentType = "application/octet-stream"
	if opts.ContentType != "" {
		w.ContentType = opts.ContentType
	}
	w.StorageClass = b.opts.StorageClass
	if opts.StorageClass != "" {
		w.StorageClass = opts.StorageClass
	}
	if ret := opts.Retention; ret != nil {
		mode, err := gcsMode(ret.Mode)
		if err != nil {
			return opsdstorage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
		}
		w.Retention = &storage.ObjectRetention{Mode: mode, RetainUntil: ret.Until.UTC()}
	}
	n, err := io.Copy(w, ctxReader{ctx, r})
	if err != nil {
		cancel()
		_ = w.Close()
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	if err := w.Close(); err != nil {
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	fi := b.info(key, w.Attrs())
	if fi.Size != n {
		return fi, b.errorf(ctx, "save", key, fmt.Errorf("store has %d bytes, sent %d", fi.Size, n))
	}
	return fi, nil
}

func (b *Backend) info(key string, a *storage.ObjectAttrs) opsdstorage.ObjectInfo {
	if a == nil {
		return opsdstorage.ObjectInfo{Key: key}
	}
	fi := opsdstorage.ObjectInfo{Key: key, Size: a.Size, ModTime: a.Updated, StorageClass: a.StorageClass}
	if fi.ModTime.IsZero() {
		fi.ModTime = a.Created
	}
	switch {
	case a.Retention != nil && !a.Retention.RetainUntil.IsZero():
		fi.Retention = &opsdstorage.Retention{Mode: strings.ToLower(a.Retention.Mode), Until: a.Retention.RetainUntil}
	case !a.RetentionExpirationTime.IsZero():
		fi.Retention = &opsdstorage.Retention{Mode: "bucket-policy", Until: a.RetentionExpirationTime}
	}
	return fi
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, b.errorf(ctx, "open", key, err)
	}
	obj, err := b.object(key)
	if err != nil {
		return nil, b.errorf(ctx, "open", key, err)
	}
	if length == 0 {
		if _, err := obj.Attrs(ctx); err != nil {
			return nil, b.errorf(ctx, "open", key, err)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	rc, err := obj.NewRangeReader(ctx, offset, length)
	if err != nil {
		var ge *googleapi.Error
		if errors.As(err, &ge) && ge.Code == http.StatusRequestedRangeNotSatisfiable {
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, b.errorf(ctx, "open", key, err)
	}
	return rc, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (opsdstorage.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
	}
	obj, err := b.object(key)
	if err != nil {
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
	}
	a, err := obj.Attrs(ctx)
	if err != nil {
		return opsdstorage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
	}
	return b.info(key, a), nil
}

// List implements storage.Backend.
func (b *Backend) List(ctx context.Context, prefix string, fn func(opsdstorage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q in %q: %w", prefix, b.name, err)
	}
	it := b.bucket.Objects(ctx, &storage.Query{Prefix: b.prefix + prefix})
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list %q in %q: %w", prefix, b.name, classify(ctx, err))
		}
		key := strings.TrimPrefix(a.Name, b.prefix)
		if opsdstorage.CheckKey(key) != nil {
			continue
		}
		if err := fn(b.info(key, a)); err != nil {
			return err
		}
	}
}

// Remove implements storage.Backend.
func (b *Backend) Remove(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return b.errorf(ctx, "remove", key, err)
	}
	obj, err := b.object(key)
	if err != nil {
		return b.errorf(ctx, "remove", key, err)
	}
	if err := obj.Delete(ctx); err != nil && !errors.Is(err, storage.ErrObjectNotExist) {
		return b.errorf(ctx, "remove", key, err)
	}
	return nil
}

// Cleanup is a no-op: unfinalized resumable uploads are invisible and
// expire by themselves (see the package doc).
func (b *Backend) Cleanup(ctx context.Context, _ time.Time) (int, error) {
	return 0, ctx.Err()
}

// ctxReader stops a copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
