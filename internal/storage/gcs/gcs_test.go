package gcs

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/storage"
	"github.com/fsouza/fake-gcs-server/fakestorage"
	"go.uber.org/goleak"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/option"

	"github.com/opsd-dev/opsd/internal/config"
	opsdstorage "github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/storagetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// go.opencensus.io (a dependency of the GCS client) starts a
		// process-wide worker in its init that never stops; it is not ours.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
	)
}

// fakeGCS starts fake-gcs-server on a loopback port, over plain HTTP so
// the client goes through a real listener and the JSON and upload APIs.
func fakeGCS(t *testing.T) *fakestorage.Server {
	t.Helper()
	srv, err := fakestorage.NewServerWithOptions(fakestorage.Options{Scheme: "http", Host: "127.0.0.1", Port: 0})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return srv
}

func open(t *testing.T, srv *fakestorage.Server, opts Options) *Backend {
	t.Helper()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	opts.Endpoint = srv.URL() + "/storage/v1/"
	opts.NoAuth = true
	// fake-gcs-server serves XML-API downloads only for its public host
	// name; read through the JSON API instead.
	opts.ClientOptions = append(opts.ClientOptions, option.WithHTTPClient(&http.Client{Transport: tr}), storage.WithJSONReads())
	be, err := New(t.Context(), "gcs-test", opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

func TestConformance(t *testing.T) {
	srv := fakeGCS(t)
	n := 0
	storagetest.Run(t, func(t *testing.T) opsdstorage.Backend {
		n++
		bucket := fmt.Sprintf("bucket-%d", n)
		srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: bucket})
		return open(t, srv, Options{Bucket: bucket, Prefix: "opsd", ChunkSize: 4 << 20})
	})
}

// TestRetentionRequested checks opsd asks GCS for object retention and
// reports it back. fake-gcs-server stores it without enforcing it, so the
// refusal itself is covered by TestClassify, not here.
func TestRetentionRequested(t *testing.T) {
	srv := fakeGCS(t)
	srv.CreateBucketWithOpts(fakestorage.CreateBucketOpts{Name: "locked"})
	be := open(t, srv, Options{Bucket: "locked", StorageClass: "COLDLINE"})
	until := time.Now().Add(48 * time.Hour).Truncate(time.Second).UTC()
	for _, tt := range []struct{ give, want string }{
		{"GOVERNANCE", "unlocked"}, {"COMPLIANCE", "locked"}, {"Unlocked", "unlocked"},
	} {
		key := "w/" + tt.give
		_, err := be.Save(t.Context(), key, strings.NewReader("note"), opsdstorage.SaveOptions{
			Retention: &opsdstorage.Retention{Mode: tt.give, Until: until},
		})
		if err != nil {
			t.Fatalf("Save(retention %s) = %v", tt.give, err)
		}
		fi, err := be.Stat(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Retention == nil || fi.Retention.Mode != tt.want || !fi.Retention.Until.Equal(until) {
			t.Errorf("Stat(%s).Retention = %+v, want {%s %v}", key, fi.Retention, tt.want, until)
		}
		if fi.StorageClass != "COLDLINE" {
			t.Errorf("Stat(%s).StorageClass = %q, want COLDLINE", key, fi.StorageClass)
		}
	}
	if _, err := be.Save(t.Context(), "w/bad", strings.NewReader("x"), opsdstorage.SaveOptions{
		Retention: &opsdstorage.Retention{Mode: "forever", Until: until},
	}); err == nil || !opsdstorage.IsPermanent(err) {
		t.Errorf("Save(unknown mode) = %v, want a permanent error", err)
	}
}

func TestMissingBucketIsPermanent(t *testing.T) {
	srv := fakeGCS(t)
	be := open(t, srv, Options{Bucket: "nope"})
	_, err := be.Save(t.Context(), "k", strings.NewReader("x"), opsdstorage.SaveOptions{})
	if err == nil || !opsdstorage.IsPermanent(err) {
		t.Errorf("Save(missing bucket) = %v, want a permanent error", err)
	}
}

func TestClassify(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name      string
		give      error
		wantIs    error
		permanent bool
	}{
		{"not found", storage.ErrObjectNotExist, opsdstorage.ErrNotFound, true},
		{"precondition", &googleapi.Error{Code: 412}, opsdstorage.ErrExists, true},
		{"retention", &googleapi.Error{Code: 403, Message: "Object 'b/k' is subject to object retention and cannot be deleted"}, opsdstorage.ErrLocked, true},
		{"hold", &googleapi.Error{Code: 403, Errors: []googleapi.ErrorItem{{Reason: "forbidden", Message: "object is under active Event-Based hold"}}}, opsdstorage.ErrLocked, true},
		{"denied", &googleapi.Error{Code: 403, Message: "does not have storage.objects.delete access"}, nil, true},
		{"throttled", &googleapi.Error{Code: 429}, nil, false},
		{"server", &googleapi.Error{Code: 503}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := classify(ctx, tt.give)
			if tt.wantIs != nil && !errors.Is(got, tt.wantIs) {
				t.Errorf("classify(%v) = %v, want %v", tt.give, got, tt.wantIs)
			}
			if tt.wantIs == opsdstorage.ErrLocked || tt.wantIs == nil {
				if tt.wantIs == nil && errors.Is(got, opsdstorage.ErrLocked) {
					t.Errorf("classify(%v) = %v, should not be ErrLocked", tt.give, got)
				}
			}
			if opsdstorage.IsPermanent(got) != tt.permanent {
				t.Errorf("IsPermanent(classify(%v)) = %v, want %v", tt.give, !tt.permanent, tt.permanent)
			}
		})
	}
}

func TestOptionsFromTarget(t *testing.T) {
	got := OptionsFromTarget(&config.Target{Type: "gcs", Bucket: "b", Prefix: "p", StorageClass: "COLDLINE",
		Endpoint: "http://x/storage/v1/", CredentialsFile: "/k.json"})
	want := Options{Bucket: "b", Prefix: "p", StorageClass: "COLDLINE", Endpoint: "http://x/storage/v1/", CredentialsFile: "/k.json"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("OptionsFromTarget() = %+v, want %+v", got, want)
	}
}
