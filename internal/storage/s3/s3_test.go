package s3_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/s3"
	"github.com/opsd-dev/opsd/internal/storage/s3/s3test"
	"github.com/opsd-dev/opsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, name string, opts s3.Options) *s3.Backend {
	t.Helper()
	be, err := s3.New(t.Context(), name, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

func versityOptions(v *s3test.Versity, bucket string) s3.Options {
	return s3.Options{
		Bucket: bucket, Region: v.Region, Endpoint: v.Endpoint, PathStyle: true,
		Credentials: v.Credentials(), PartSize: 5 << 20, Concurrency: 3,
	}
}

// TestVersity runs the conformance and lock suites against a real S3
// server that enforces Object Lock, on buckets with Object Lock (and so
// versioning) enabled, behind a prefix.
func TestVersity(t *testing.T) {
	v := s3test.StartVersity(t)
	newBackend := func(t *testing.T) storage.Backend {
		opts := versityOptions(v, v.NewBucket(t, true))
		opts.Prefix = "team/opsd/"
		return open(t, "versity", opts)
	}
	t.Run("Conformance", func(t *testing.T) { storagetest.Run(t, newBackend) })
	t.Run("Lock", func(t *testing.T) { storagetest.RunLock(t, "GOVERNANCE", newBackend) })
	t.Run("PlainBucket", func(t *testing.T) {
		be := open(t, "versity-plain", versityOptions(v, v.NewBucket(t, false)))
		testSmall(t, be)
	})
	t.Run("DefaultLockFromTarget", func(t *testing.T) {
		opts := versityOptions(v, v.NewBucket(t, true))
		opts.LockMode, opts.LockDays = "GOVERNANCE", 35
		be := open(t, "versity-lock", opts)
		if _, err := be.Save(t.Context(), "w/checkpoint.1", strings.NewReader("note"), storage.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
		fi, err := be.Stat(t.Context(), "w/checkpoint.1")
		if err != nil {
			t.Fatal(err)
		}
		want := time.Now().AddDate(0, 0, 35)
		if fi.Retention == nil || fi.Retention.Mode != "GOVERNANCE" || fi.Retention.Until.Sub(want).Abs() > time.Minute {
			t.Errorf("Stat().Retention = %+v, want GOVERNANCE until about %v", fi.Retention, want)
		}
		if err := be.Remove(t.Context(), "w/checkpoint.1"); !errors.Is(err, storage.ErrLocked) {
			t.Errorf("Remove() = %v, want ErrLocked", err)
		}
	})
	t.Run("CleanupAbortsOldUploads", func(t *testing.T) {
		bucket := v.NewBucket(t, false)
		be := open(t, "versity", versityOptions(v, bucket))
		testCleanupAborts(t, be, v.Client(t), bucket)
	})
	t.Run("Errors", func(t *testing.T) {
		opts := versityOptions(v, "no-such-bucket-"+strings.ToLower(t.Name()[len(t.Name())-6:]))
		be := open(t, "versity-missing", opts)
		_, err := be.Save(t.Context(), "k", strings.NewReader("x"), storage.SaveOptions{})
		if err == nil || !storage.IsPermanent(err) {
			t.Errorf("Save(missing bucket) = %v, want a permanent error", err)
		}
		opts = versityOptions(v, v.NewBucket(t, false))
		opts.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: v.AccessKey, SecretAccessKey: "wrong-secret-value"}, nil
		})
		bad := open(t, "versity-denied", opts)
		_, err = bad.Stat(t.Context(), "k")
		if err == nil || !storage.IsPermanent(err) {
			t.Errorf("Stat(bad credentials) = %v, want a permanent error", err)
		}
		_, err = bad.Save(t.Context(), "k", strings.NewReader("x"), storage.SaveOptions{})
		if err == nil || !storage.IsPermanent(err) {
			t.Errorf("Save(bad credentials) = %v, want a permanent error", err)
		}
		for _, secret := range []string{v.SecretKey, "wrong-secret-value"} {
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains a secret", err)
			}
		}
	})
}

// testSmall is a quick round trip.
func testSmall(t *testing.T, be storage.Backend) {
	t.Helper()
	if _, err := be.Save(t.Context(), "a/b", strings.NewReader("data"), storage.SaveOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := be.Remove(t.Context(), "a/b"); err != nil {
		t.Fatal(err)
	}
	if _, err := be.Stat(t.Context(), "a/b"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat(removed) = %v, want ErrNotFound", err)
	}
}

// testCleanupAborts leaves an incomplete multipart upload, as a killed
// opsd would, and checks Cleanup aborts it only once it is old enough.
func testCleanupAborts(t *testing.T, be *s3.Backend, client *awss3.Client, bucket string) {
	t.Helper()
	ctx := t.Context()
	up, err := client.CreateMultipartUpload(ctx, &awss3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String("src/id/data")})
	if err != nil {
		t.Fatal(err)
	}
	_, err = client.UploadPart(ctx, &awss3.UploadPartInput{
		Bucket: aws.String(bucket), Key: aws.String("src/id/data"), UploadId: up.UploadId,
		PartNumber: aws.Int32(1), Body: strings.NewReader(strings.Repeat("p", 1<<20)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := be.Stat(ctx, "src/id/data"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat(incomplete upload) = %v, want ErrNotFound", err)
	}
	if n, err := be.Cleanup(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Errorf("Cleanup(an hour ago) = %d, %v, want 0: the upload is recent", n, err)
	}
	if n, err := be.Cleanup(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Errorf("Cleanup(now) = %d, %v, want 1", n, err)
	}
	out, err := client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 0 {
		t.Errorf("uploads after Cleanup = %d, want 0", len(out.Uploads))
	}
}

// slowReader hands out data slowly and signals once it has passed mark.
type slowReader struct {
	n, mark int64
	passed  chan struct{}
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.n <= 0 {
		return 0, io.EOF
	}
	if len(p) > 256<<10 {
		p = p[:256<<10]
	}
	for i := range p {
		p[i] = byte(s.n + int64(i))
	}
	before := s.n
	s.n -= int64(len(p))
	if before > s.mark && s.n <= s.mark {
		close(s.passed)
	}
	time.Sleep(5 * time.Millisecond)
	return len(p), nil
}

// TestVersityKilledMidUpload stops the server in the middle of a
// multipart upload: Save fails, nothing is visible after a restart, and
// Cleanup aborts the incomplete upload the crash left.
func TestVersityKilledMidUpload(t *testing.T) {
	v := s3test.StartVersity(t)
	bucket := v.NewBucket(t, false)
	be := open(t, "versity", versityOptions(v, bucket))
	ctx := t.Context()

	r := &slowReader{n: 64 << 20, mark: 64<<20 - 12<<20, passed: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		_, err := be.Save(ctx, "src/id/data.tar.zst.age", r, storage.SaveOptions{})
		errc <- err
	}()
	select {
	case <-r.passed: // two parts are up, more in flight
	case err := <-errc:
		t.Fatalf("Save() returned %v before the server was stopped", err)
	}
	v.Stop()
	var err error
	select {
	case err = <-errc:
	case <-time.After(2 * time.Minute):
		t.Fatal("Save() did not return after the server died")
	}
	if err == nil {
		t.Fatal("Save() to a dead server = nil, want an error")
	}
	t.Logf("Save() with the server killed: %v", err)
	if strings.Contains(err.Error(), "uploadId=") {
		t.Errorf("error %q quotes a request URL's query", err)
	}

	v.Start(t)
	if _, err := be.Stat(ctx, "src/id/data.tar.zst.age"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat() after restart = %v, want ErrNotFound", err)
	}
	var listed []string
	if err := be.List(ctx, "", func(fi storage.ObjectInfo) error { listed = append(listed, fi.Key); return nil }); err != nil || len(listed) != 0 {
		t.Errorf("List() after restart = %q, %v, want nothing", listed, err)
	}
	client := v.Client(t)
	out, err := client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 1 {
		t.Fatalf("incomplete uploads after the crash = %d, want 1 (the SDK could not abort it)", len(out.Uploads))
	}
	if n, err := be.Cleanup(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Errorf("Cleanup() = %d, %v, want 1, nil", n, err)
	}
	out, err = client.ListMultipartUploads(ctx, &awss3.ListMultipartUploadsInput{Bucket: aws.String(bucket)})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Uploads) != 0 {
		t.Errorf("incomplete uploads after Cleanup = %d, want 0", len(out.Uploads))
	}
}

// TestGofakes3 runs the conformance suite against in-process gofakes3: a
// quick S3 check needing no binary. gofakes3 ignores Object Lock, so no
// lock suite here.
func TestGofakes3(t *testing.T) {
	faker := gofakes3.New(s3mem.New())
	srv := httptest.NewServer(faker.Server())
	t.Cleanup(srv.Close)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		n++
		bucket := "bucket" + strings.Repeat("x", n%3) + string(rune('a'+n%26)) + time.Now().Format("150405000")
		be := open(t, "gofakes3", s3.Options{
			Bucket: strings.ToLower(bucket), Region: "us-east-1", Endpoint: srv.URL, PathStyle: true,
			Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
				return aws.Credentials{AccessKeyID: "k", SecretAccessKey: "s"}, nil
			}),
			PartSize: 5 << 20,
		})
		if _, err := be.Client().CreateBucket(t.Context(), &awss3.CreateBucketInput{Bucket: aws.String(strings.ToLower(bucket))}); err != nil {
			t.Fatal(err)
		}
		return be
	})
}

func TestOptionsFromTarget(t *testing.T) {
	tgt := &config.Target{Type: "s3", Bucket: "b", Region: "eu-west-1", Endpoint: "https://minio:9000", PathStyle: true,
		StorageClass: "STANDARD_IA", SSE: "aws:kms", KMSKeyID: "key", Prefix: "p",
		ObjectLock: &config.ObjectLock{Mode: "COMPLIANCE", Days: 35}}
	got := s3.OptionsFromTarget(tgt)
	want := s3.Options{Bucket: "b", Region: "eu-west-1", Endpoint: "https://minio:9000", PathStyle: true,
		StorageClass: "STANDARD_IA", SSE: "aws:kms", KMSKeyID: "key", Prefix: "p", LockMode: "COMPLIANCE", LockDays: 35}
	if got != want {
		t.Errorf("OptionsFromTarget() = %+v, want %+v", got, want)
	}
}

// Uploads go out with UNSIGNED-PAYLOAD (no SHA-256 pass per part on either
// side) even over plain HTTP, and each still carries its CRC32 checksum.
func TestUploadsUnsignedPayloadWithChecksum(t *testing.T) {
	faker := gofakes3.New(s3mem.New())
	var mu sync.Mutex
	var puts []string // "<content-sha256> <crc32 set>" per PUT with a body
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.ContentLength != 0 {
			mu.Lock()
			puts = append(puts, r.Header.Get("X-Amz-Content-Sha256")+" "+strconv.FormatBool(r.Header.Get("X-Amz-Checksum-Crc32") != ""))
			mu.Unlock()
		}
		faker.Server().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	be := open(t, "gofakes3", s3.Options{
		Bucket: "unsigned", Region: "us-east-1", Endpoint: srv.URL, PathStyle: true,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "k", SecretAccessKey: "s"}, nil
		}),
		PartSize: 5 << 20,
	})
	if _, err := be.Client().CreateBucket(t.Context(), &awss3.CreateBucketInput{Bucket: aws.String("unsigned")}); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("opsd"), 3<<20) // 12 MiB: three parts
	for key, data := range map[string][]byte{"small": []byte("hello"), "big": big} {
		if _, err := be.Save(t.Context(), key, bytes.NewReader(data), storage.SaveOptions{}); err != nil {
			t.Fatalf("Save %s: %v", key, err)
		}
		rc, err := be.Open(t.Context(), key, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read back %s: %d bytes, %v", key, len(got), err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(puts) < 4 { // the small object, three parts
		t.Fatalf("saw %d uploads with a body: %v", len(puts), puts)
	}
	for _, p := range puts {
		if p != "UNSIGNED-PAYLOAD true" {
			t.Errorf("upload sent X-Amz-Content-Sha256 and CRC32 header %q, want UNSIGNED-PAYLOAD with a checksum", p)
		}
	}
}
