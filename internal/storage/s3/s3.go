// Package s3 is a storage.Backend on Amazon S3 and S3-compatible stores
// (MinIO, Versity Gateway, Ceph RGW, ...), through aws-sdk-go-v2.
//
// Save streams through the SDK's upload manager: an object smaller than
// one part is a single PutObject, a larger one a multipart upload of
// PartSize parts, Concurrency at a time, completed last, so memory is
// bounded by about PartSize*(Concurrency+2) whatever the object's size.
// An upload of unknown size keeps one part size, so at most 10,000 parts:
// 78 GiB at the default 8 MiB. SaveOptions.SizeHint (the daemon passes
// the previous backup's size) raises the part size so twice the hint fits;
// configure part_size for a first backup beyond that. A Save
// that fails aborts its upload; one killed mid-way leaves an incomplete
// multipart upload, invisible to List and Stat, which Cleanup aborts.
//
// Object Lock: a Save with SaveOptions.Retention (or, when the target
// configures object_lock, every Save) sends ObjectLockMode and
// ObjectLockRetainUntilDate; the bucket must have Object Lock enabled.
// Stat reports the retention from HeadObject, falling back to
// GetObjectRetention when the store omits it.
//
// Remove on a versioned bucket (every Object Lock bucket is versioned)
// deletes the object's versions by version id, so its data really goes
// rather than hiding behind a delete marker: noncurrent versions first,
// the current one last, so a refused deletion never brings an older
// version back into view. A version under retention makes the store answer
// 403, which Remove reports as storage.ErrLocked.
//
// Credentials come from the AWS default chain (environment, shared files,
// web identity, IMDS) unless Options.Credentials is set. Requests are
// signed in headers, so no error carries a secret or a presigned URL.
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/failpoint"
	"github.com/opsd-dev/opsd/internal/storage"
)

// Defaults for Options.
const (
	DefaultPartSize    = 8 << 20
	DefaultConcurrency = 2
)

// Options configure a Backend.
type Options struct {
	Bucket string
	// Region; default from the environment, else us-east-1.
	Region string
	// Endpoint overrides AWS's, for S3-compatible stores.
	Endpoint string
	// PathStyle addresses buckets as endpoint/bucket/key.
	PathStyle bool
	// StorageClass of new objects; default the bucket's (STANDARD).
	StorageClass string
	// SSE is "", "AES256" or "aws:kms" (with KMSKeyID, or the AWS managed key).
	SSE      string
	KMSKeyID string
	// Prefix is prepended to every key.
	Prefix string
	// LockMode and LockDays, when both set, lock every saved object for
	// LockDays unless SaveOptions.Retention says otherwise.
	LockMode string
	LockDays int
	// PartSize of multipart uploads (min 5 MiB); default DefaultPartSize.
	PartSize int64
	// Concurrency of part uploads; default DefaultConcurrency.
	Concurrency int
	// Credentials; nil means the AWS default credential chain.
	Credentials aws.CredentialsProvider
}

// OptionsFromTarget maps a config target to Options.
func OptionsFromTarget(t *config.Target) Options {
	o := Options{
		Bucket: t.Bucket, Region: t.Region, Endpoint: t.Endpoint, PathStyle: t.PathStyle,
		StorageClass: t.StorageClass, SSE: t.SSE, KMSKeyID: t.KMSKeyID, Prefix: t.Prefix,
		PartSize: int64(t.PartSize), Concurrency: t.UploadConcurrency,
	}
	if t.ObjectLock != nil {
		o.LockMode, o.LockDays = t.ObjectLock.Mode, t.ObjectLock.Days
	}
	return o
}

// Backend stores objects in one bucket.
type Backend struct {
	name      string
	opts      Options
	prefix    string // "" or ending in "/"
	client    *awss3.Client
	uploader  *manager.Uploader //lint:ignore SA1019 transfermanager is not in go.mod yet; manager is what the issue asks for and still supported
	transport *atomic.Pointer[http.Transport]
	now       func() time.Time
}

var _ storage.Backend = (*Backend)(nil)

// New creates a client for opts.Bucket. It does not contact the store.
func New(ctx context.Context, name string, opts Options) (*Backend, error) {
	if opts.Bucket == "" {
		return nil, storage.Permanent(fmt.Errorf("open s3 target %q: no bucket", name))
	}
	if opts.PartSize <= 0 {
		opts.PartSize = DefaultPartSize
	}
	opts.PartSize = max(opts.PartSize, manager.MinUploadPartSize)
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	switch opts.SSE {
	case "", string(types.ServerSideEncryptionAes256), string(types.ServerSideEncryptionAwsKms):
	default:
		return nil, storage.Permanent(fmt.Errorf("open s3 target %q: unknown sse %q", name, opts.SSE))
	}
	// The SDK's buildable client (so AWS_CA_BUNDLE still works), noting
	// the transport it builds so Close can drop its idle connections.
	tr := new(atomic.Pointer[http.Transport])
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = opts.Concurrency * 2
		tr.Store(t)
	})
	loadOpts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithHTTPClient(httpClient),
		// The SDK would print its debug notes to stderr; opsd logs
		// through slog, and errors carry what matters.
		awsconfig.WithLogger(logging.Nop{}),
	}
	if opts.Region != "" {
		loadOpts = append(loadOpts, awsconfig.WithRegion(opts.Region))
	}
	if opts.Credentials != nil {
		loadOpts = append(loadOpts, awsconfig.WithCredentialsProvider(opts.Credentials))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("open s3 target %q: load AWS config: %w", name, err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := awss3.NewFromConfig(cfg, func(o *awss3.Options) {
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
		o.UsePathStyle = opts.PathStyle
	})
	prefix := strings.Trim(opts.Prefix, "/")
	if prefix != "" {
		prefix += "/"
	}
	//lint:ignore SA1019 see the uploader field
	up := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = opts.PartSize
		u.Concurrency = opts.Concurrency
		u.ClientOptions = append(u.ClientOptions, awss3.WithAPIOptions(unsignedPayload))
	})
	return &Backend{name: name, opts: opts, prefix: prefix, client: client, uploader: up, transport: tr, now: time.Now}, nil
}

// unsignedPayload sends uploads with X-Amz-Content-Sha256: UNSIGNED-PAYLOAD
// over plain HTTP too, as the SDK already does over HTTPS: the SDK would
// otherwise hash every part with SHA-256 for the signature, and the store
// hash it again to check it — two passes over every byte for an integrity
// check opsd has end to end (the manifest signs the copy's SHA-256, which
// the read-back verification after each backup and every restore check,
// and age authenticates every chunk). Each part still carries its CRC32
// checksum header, which the store verifies. Set before the checksum
// middleware runs, which then does not compute the SHA-256 either.
func unsignedPayload(stack *middleware.Stack) error {
	return stack.Initialize.Add(middleware.InitializeMiddlewareFunc("OpsdUnsignedPayload",
		func(ctx context.Context, in middleware.InitializeInput, next middleware.InitializeHandler) (middleware.InitializeOutput, middleware.Metadata, error) {
			return next.HandleInitialize(v4.SetPayloadHash(ctx, "UNSIGNED-PAYLOAD"), in)
		}), middleware.Before)
}

// partSize is the configured part size, raised so that twice the hinted
// size fits in 9,000 parts (S3 allows 10,000): a stream of unknown size
// cannot change its part size once started.
func (b *Backend) partSize(hint int64) int64 {
	ps := b.opts.PartSize
	if need := hint * 2 / 9000; need > ps {
		ps = (need + 1<<20 - 1) &^ (1<<20 - 1)
	}
	return min(ps, 5<<30)
}

// Client is the SDK client, for tests and tools that need more than the
// Backend interface.
func (b *Backend) Client() *awss3.Client { return b.client }

// Name implements storage.Backend.
func (b *Backend) Name() string { return b.name }

// Capabilities implements storage.Backend.
func (b *Backend) Capabilities() storage.Capabilities {
	class := b.opts.StorageClass
	if class == "" {
		class = string(types.StorageClassStandard)
	}
	return storage.Capabilities{ObjectLock: true, StorageClasses: true, DefaultStorageClass: class}
}

// Close drops idle connections.
func (b *Backend) Close() error {
	if tr := b.transport.Load(); tr != nil {
		tr.CloseIdleConnections()
	}
	return nil
}

func (b *Backend) objectKey(key string) (string, error) {
	if err := storage.CheckKey(key); err != nil {
		return "", err
	}
	return b.prefix + key, nil
}

func (b *Backend) errorf(ctx context.Context, op, key string, err error) error {
	return fmt.Errorf("%s %s in %q: %w", op, key, b.name, classify(ctx, err))
}

// classify maps SDK errors to the storage contract. Client errors (4xx)
// other than timeouts and throttling will not go away by retrying.
func classify(ctx context.Context, err error) error {
	err = redactURL(err)
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		return fmt.Errorf("%w: %w", ctxErr, err)
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchKey", "NotFound", "NoSuchVersion":
			return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
		case "PreconditionFailed", "ConditionalRequestConflict":
			return fmt.Errorf("%w: %w", storage.ErrExists, err)
		case "NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
			"InvalidBucketName", "InvalidRequest", "InvalidArgument", "InvalidStorageClass", "NotImplemented",
			"KMS.NotFoundException", "InvalidObjectState", "EntityTooLarge", "MethodNotAllowed":
			return storage.Permanent(err)
		}
	}
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch code := re.HTTPStatusCode(); {
		case code == http.StatusNotFound:
			return fmt.Errorf("%w: %w", storage.ErrNotFound, err)
		case code == http.StatusPreconditionFailed:
			return fmt.Errorf("%w: %w", storage.ErrExists, err)
		case code == http.StatusRequestTimeout, code == http.StatusTooManyRequests:
			return err
		case code >= 400 && code < 500:
			return storage.Permanent(err)
		}
	}
	return err
}

func isCode(err error, codes ...string) bool {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.ErrorCode() == c {
			return true
		}
	}
	return false
}

// s3Mode maps a retention mode to S3's: GCS-style "locked" is COMPLIANCE,
// "unlocked" GOVERNANCE.
func s3Mode(mode string) (types.ObjectLockMode, error) {
	switch strings.ToUpper(mode) {
	case "GOVERNANCE", "UNLOCKED":
		return types.ObjectLockModeGovernance, nil
	case "COMPLIANCE", "LOCKED":
		return types.ObjectLockModeCompliance, nil
	}
	return "", storage.Permanent(fmt.Errorf("unknown object lock mode %q", mode))
}

// Save implements storage.Backend.
func (b *Backend) Save(ctx context.Context, key string, r io.Reader, opts storage.SaveOptions) (storage.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	full, err := b.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	in := &awss3.PutObjectInput{
		Bucket:      aws.String(b.opts.Bucket),
		Key:         aws.String(full),
		ContentType: aws.String("application/octet-stream"),
	}
	if opts.ContentType != "" {
		in.ContentType = aws.String(opts.ContentType)
	}
	if class := opts.StorageClass; class != "" {
		in.StorageClass = types.StorageClass(class)
	} else if b.opts.StorageClass != "" {
		in.StorageClass = types.StorageClass(b.opts.StorageClass)
	}
	if b.opts.SSE != "" {
		in.ServerSideEncryption = types.ServerSideEncryption(b.opts.SSE)
		if b.opts.KMSKeyID != "" {
			in.SSEKMSKeyId = aws.String(b.opts.KMSKeyID)
		}
	}
	ret := opts.Retention
	if ret == nil && b.opts.LockMode != "" && b.opts.LockDays > 0 {
		ret = &storage.Retention{Mode: b.opts.LockMode, Until: b.now().AddDate(0, 0, b.opts.LockDays)}
	}
	if ret != nil {
		mode, err := s3Mode(ret.Mode)
		if err != nil {
			return storage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
		}
		in.ObjectLockMode = types.ObjectLockMode(mode)
		in.ObjectLockRetainUntilDate = aws.Time(ret.Until.UTC())
	}
	if opts.NoOverwrite {
		// If-None-Match makes the check atomic on stores that support it;
		// the HEAD first gives a clear answer on those that ignore it.
		if _, err := b.head(ctx, full, ""); err == nil {
			return storage.ObjectInfo{}, b.errorf(ctx, "save", key, storage.ErrExists)
		} else if !isNotFound(err) {
			return storage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
		}
		in.IfNoneMatch = aws.String("*")
	}
	cr := &countingReader{r: r, ctx: ctx}
	in.Body = cr
	//lint:ignore SA1019 see the uploader field
	out, err := b.uploader.Upload(ctx, in, func(u *manager.Uploader) { u.PartSize = b.partSize(opts.SizeHint) })
	if err != nil {
		if cr.err != nil && ctx.Err() == nil {
			// The caller's reader failed: say so rather than what the SDK
			// made of it.
			return storage.ObjectInfo{}, b.errorf(ctx, "save", key, fmt.Errorf("read data: %w", cr.err))
		}
		return storage.ObjectInfo{}, b.errorf(ctx, "save", key, err)
	}
	failpoint.Hit("s3.uploaded")
	fi := storage.ObjectInfo{Key: key, Size: cr.n, ModTime: b.now(), StorageClass: string(in.StorageClass), Retention: ret}
	if out.VersionID != nil {
		fi.VersionID = *out.VersionID
	}
	return fi, nil
}

// countingReader counts what the uploader read and remembers the reader's
// own error; it stops at ctx's end.
type countingReader struct {
	r   io.Reader
	ctx context.Context
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	failpoint.Hit("s3.save-read")
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF {
		c.err = err
	}
	return n, err
}

func isNotFound(err error) bool {
	return errors.Is(classify(context.Background(), err), storage.ErrNotFound)
}

func (b *Backend) head(ctx context.Context, objectKey, versionID string) (*awss3.HeadObjectOutput, error) {
	in := &awss3.HeadObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(objectKey)}
	if versionID != "" {
		in.VersionId = aws.String(versionID)
	}
	return b.client.HeadObject(ctx, in)
}

// Open implements storage.Backend.
func (b *Backend) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, b.errorf(ctx, "open", key, err)
	}
	full, err := b.objectKey(key)
	if err != nil {
		return nil, b.errorf(ctx, "open", key, err)
	}
	if length == 0 {
		if _, err := b.head(ctx, full, ""); err != nil {
			return nil, b.errorf(ctx, "open", key, err)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	in := &awss3.GetObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(full)}
	if offset > 0 || length > 0 {
		rng := fmt.Sprintf("bytes=%d-", offset)
		if length > 0 {
			rng += fmt.Sprint(offset + length - 1)
		}
		in.Range = aws.String(rng)
	}
	var optFns []func(*awss3.Options)
	if in.Range != nil {
		// A range is not the whole object: its stored checksum cannot be
		// checked, and some stores (gofakes3) send it anyway. Whole-object
		// reads keep the SDK's validation; opsd checks SHA-256 itself too.
		optFns = append(optFns, func(o *awss3.Options) {
			o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		})
	}
	out, err := b.client.GetObject(ctx, in, optFns...)
	if err != nil {
		if isCode(err, "InvalidRange") {
			// The object exists and offset is at or past its end.
			return io.NopCloser(strings.NewReader("")), nil
		}
		return nil, b.errorf(ctx, "open", key, err)
	}
	if length > 0 && offset > 0 {
		// Stores that ignore Range would return the whole object.
		if out.ContentRange == nil && out.ContentLength != nil && *out.ContentLength > length {
			out.Body.Close()
			return nil, b.errorf(ctx, "open", key, storage.Permanent(errors.New("store ignored the Range header")))
		}
	}
	return out.Body, nil
}

// Stat implements storage.Backend.
func (b *Backend) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if err := ctx.Err(); err != nil {
		return storage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
	}
	full, err := b.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
	}
	out, err := b.head(ctx, full, "")
	if err != nil {
		return storage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
	}
	fi := storage.ObjectInfo{
		Key:          key,
		Size:         aws.ToInt64(out.ContentLength),
		ModTime:      aws.ToTime(out.LastModified),
		StorageClass: string(out.StorageClass),
		VersionID:    aws.ToString(out.VersionId),
	}
	if fi.StorageClass == "" {
		fi.StorageClass = string(types.StorageClassStandard)
	}
	if fi.VersionID == "null" {
		fi.VersionID = ""
	}
	if out.ObjectLockMode != "" && out.ObjectLockRetainUntilDate != nil {
		fi.Retention = &storage.Retention{Mode: string(out.ObjectLockMode), Until: *out.ObjectLockRetainUntilDate}
	} else if fi.VersionID != "" {
		// Some stores leave the lock out of HEAD; a versioned object may
		// still have one.
		ret, err := b.client.GetObjectRetention(ctx, &awss3.GetObjectRetentionInput{
			Bucket: aws.String(b.opts.Bucket), Key: aws.String(full), VersionId: out.VersionId,
		})
		if err == nil && ret.Retention != nil && ret.Retention.Mode != "" && ret.Retention.RetainUntilDate != nil {
			fi.Retention = &storage.Retention{Mode: string(ret.Retention.Mode), Until: *ret.Retention.RetainUntilDate}
		} else if err != nil && ctx.Err() != nil {
			return storage.ObjectInfo{}, b.errorf(ctx, "stat", key, err)
		}
	}
	return fi, nil
}

// List implements storage.Backend. Keys under the prefix that are not
// valid storage keys (e.g. "folder/" markers made by consoles) are skipped.
func (b *Backend) List(ctx context.Context, prefix string, fn func(storage.ObjectInfo) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("list %q in %q: %w", prefix, b.name, err)
	}
	p := awss3.NewListObjectsV2Paginator(b.client, &awss3.ListObjectsV2Input{
		Bucket: aws.String(b.opts.Bucket),
		Prefix: aws.String(b.prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list %q in %q: %w", prefix, b.name, classify(ctx, err))
		}
		for _, o := range page.Contents {
			key := strings.TrimPrefix(aws.ToString(o.Key), b.prefix)
			if storage.CheckKey(key) != nil {
				continue
			}
			fi := storage.ObjectInfo{
				Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified),
				StorageClass: string(o.StorageClass),
			}
			if err := fn(fi); err != nil {
				return err
			}
		}
	}
	return nil
}

// Remove implements storage.Backend; see the package doc for versioned
// buckets.
func (b *Backend) Remove(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return b.errorf(ctx, "remove", key, err)
	}
	full, err := b.objectKey(key)
	if err != nil {
		return b.errorf(ctx, "remove", key, err)
	}
	head, err := b.head(ctx, full, "")
	if err != nil {
		if isNotFound(err) {
			return nil
		}
		return b.errorf(ctx, "remove", key, err)
	}
	vid := aws.ToString(head.VersionId)
	if vid == "" || vid == "null" {
		_, err := b.client.DeleteObject(ctx, &awss3.DeleteObjectInput{Bucket: aws.String(b.opts.Bucket), Key: aws.String(full)})
		if err != nil {
			return b.errorf(ctx, "remove", key, b.lockedError(head, err))
		}
		return nil
	}
	versions, err := b.versions(ctx, full)
	if err != nil {
		return b.errorf(ctx, "remove", key, err)
	}
	for _, v := range versions {
		_, err := b.client.DeleteObject(ctx, &awss3.DeleteObjectInput{
			Bucket: aws.String(b.opts.Bucket), Key: aws.String(full), VersionId: aws.String(v),
		})
		if err == nil || isCode(err, "NoSuchVersion", "NoSuchKey") {
			continue
		}
		if h, herr := b.head(ctx, full, v); herr == nil {
			err = b.lockedError(h, err)
		}
		return b.errorf(ctx, "remove", key, fmt.Errorf("version %s: %w", v, err))
	}
	return nil
}

// versions lists the version ids of exactly objectKey, noncurrent ones
// (and delete markers) first and the current one last.
func (b *Backend) versions(ctx context.Context, objectKey string) ([]string, error) {
	var older []string
	var current string
	in := &awss3.ListObjectVersionsInput{Bucket: aws.String(b.opts.Bucket), Prefix: aws.String(objectKey)}
	for {
		out, err := b.client.ListObjectVersions(ctx, in)
		if err != nil {
			return nil, err
		}
		add := func(k, v *string, latest *bool) {
			if aws.ToString(k) != objectKey || v == nil {
				return
			}
			if aws.ToBool(latest) {
				current = *v
			} else {
				older = append(older, *v)
			}
		}
		for _, v := range out.Versions {
			add(v.Key, v.VersionId, v.IsLatest)
		}
		for _, d := range out.DeleteMarkers {
			add(d.Key, d.VersionId, d.IsLatest)
		}
		if !aws.ToBool(out.IsTruncated) {
			break
		}
		in.KeyMarker, in.VersionIdMarker = out.NextKeyMarker, out.NextVersionIdMarker
	}
	if current != "" {
		older = append(older, current)
	}
	return older, nil
}

// lockedError turns the store's refusal to delete a version that is under
// retention or legal hold into storage.ErrLocked.
func (b *Backend) lockedError(h *awss3.HeadObjectOutput, err error) error {
	if !isCode(err, "AccessDenied") {
		var re *smithyhttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusForbidden {
			return err
		}
	}
	if h.ObjectLockLegalHoldStatus == types.ObjectLockLegalHoldStatusOn {
		return fmt.Errorf("%w (legal hold): %w", storage.ErrLocked, err)
	}
	if h.ObjectLockRetainUntilDate != nil && h.ObjectLockRetainUntilDate.After(b.now()) {
		return fmt.Errorf("%w until %s: %w", storage.ErrLocked, h.ObjectLockRetainUntilDate.UTC().Format(time.RFC3339), err)
	}
	return err
}

// Cleanup aborts multipart uploads under the target's prefix initiated
// before olderThan.
func (b *Backend) Cleanup(ctx context.Context, olderThan time.Time) (int, error) {
	aborted := 0
	in := &awss3.ListMultipartUploadsInput{Bucket: aws.String(b.opts.Bucket)}
	if b.prefix != "" {
		in.Prefix = aws.String(b.prefix)
	}
	for {
		if err := ctx.Err(); err != nil {
			return aborted, fmt.Errorf("cleanup %q: %w", b.name, err)
		}
		out, err := b.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return aborted, fmt.Errorf("cleanup %q: list multipart uploads: %w", b.name, classify(ctx, err))
		}
		for _, u := range out.Uploads {
			if u.Initiated == nil || !u.Initiated.Before(olderThan) {
				continue
			}
			_, err := b.client.AbortMultipartUpload(ctx, &awss3.AbortMultipartUploadInput{
				Bucket: aws.String(b.opts.Bucket), Key: u.Key, UploadId: u.UploadId,
			})
			if err != nil && !isCode(err, "NoSuchUpload") {
				return aborted, fmt.Errorf("cleanup %q: abort upload of %s: %w", b.name, aws.ToString(u.Key), classify(ctx, err))
			}
			if err == nil {
				aborted++
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return aborted, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// redactURL drops the query of a request URL quoted in err: it holds
// upload ids and, for presigned requests, signatures. Requests opsd makes
// are signed in headers, so this is belt and braces.
func redactURL(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) {
		return err
	}
	u, perr := url.Parse(ue.URL)
	if perr != nil || u.RawQuery == "" {
		return err
	}
	u.RawQuery, u.User = "", nil
	return redactedError{msg: strings.ReplaceAll(err.Error(), ue.URL, u.String()+"?[redacted]"), err: err}
}

type redactedError struct {
	msg string
	err error
}

func (r redactedError) Error() string { return r.msg }
func (r redactedError) Unwrap() error { return r.err }
