package lockprobe_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/go-cmp/cmp"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"go.uber.org/goleak"

	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/lockprobe"
	"github.com/opsd-dev/opsd/internal/storage/mem"
	"github.com/opsd-dev/opsd/internal/storage/s3"
	"github.com/opsd-dev/opsd/internal/storage/s3/s3test"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func openS3(t *testing.T, name string, opts s3.Options) *s3.Backend {
	t.Helper()
	be, err := s3.New(t.Context(), name, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be
}

func canaries(t *testing.T, be storage.Backend) []string {
	t.Helper()
	var keys []string
	if err := be.List(t.Context(), lockprobe.Prefix, func(fi storage.ObjectInfo) error {
		keys = append(keys, fi.Key)
		return nil
	}); err != nil {
		t.Fatalf("List(%q) = %v", lockprobe.Prefix, err)
	}
	return keys
}

func sleepUntil(t *testing.T, until time.Time) {
	t.Helper()
	select {
	case <-time.After(time.Until(until)):
	case <-t.Context().Done():
		t.Fatal(t.Context().Err())
	}
}

// TestVersity probes a real S3 server that enforces Object Lock, in both
// modes: the canary's delete is refused, and a second probe after the
// first canary's retention ended removes it and keeps its own.
func TestVersity(t *testing.T) {
	v := s3test.StartVersity(t)
	for _, mode := range []string{"GOVERNANCE", "COMPLIANCE"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			be := openS3(t, "versity", s3.Options{
				Bucket: v.NewBucket(t, true), Region: v.Region, Endpoint: v.Endpoint, PathStyle: true,
				Credentials: v.Credentials(), Prefix: "team/opsd/",
			})
			p := lockprobe.Prober{Retention: 4 * time.Second}

			now := time.Now()
			first, err := p.Probe(t.Context(), be, mode, now)
			if err != nil {
				t.Fatalf("Probe() = %v", err)
			}
			if !first.Enforced || first.SweepErr != nil || first.Removed != 0 || first.Kept != 1 {
				t.Fatalf("Probe() = %+v, want Enforced, nothing removed, its own canary kept", first)
			}
			if !strings.HasPrefix(first.Key, lockprobe.Prefix) || !first.CheckedAt.Equal(now) {
				t.Errorf("Probe() = {Key: %q, CheckedAt: %v}, want a key under %q checked at %v", first.Key, first.CheckedAt, lockprobe.Prefix, now)
			}
			if want := now.Add(4 * time.Second).Truncate(time.Second); !first.RetainUntil.Equal(want) {
				t.Errorf("Probe().RetainUntil = %v, want %v as asked", first.RetainUntil, want)
			}
			t.Logf("Probe(%s) = %s", mode, first.Detail)
			if !strings.HasPrefix(first.Detail, "enforced: ") {
				t.Errorf("Probe().Detail = %q, want it to start with %q", first.Detail, "enforced: ")
			}
			fi, err := be.Stat(t.Context(), first.Key)
			if err != nil || fi.Retention == nil || !strings.EqualFold(fi.Retention.Mode, mode) {
				t.Fatalf("Stat(canary) = %+v, %v, want it there, locked in %s", fi, err, mode)
			}

			sleepUntil(t, first.RetainUntil.Add(1500*time.Millisecond))
			second, err := p.Probe(t.Context(), be, mode, time.Now())
			if err != nil {
				t.Fatalf("second Probe() = %v", err)
			}
			if !second.Enforced || second.SweepErr != nil || second.Removed != 1 || second.Kept != 1 {
				t.Fatalf("second Probe() = %+v, want Enforced, the first canary removed, its own kept", second)
			}
			if diff := cmp.Diff([]string{second.Key}, canaries(t, be)); diff != "" {
				t.Errorf("canaries after the second probe (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGofakes3 probes a store that accepts Object Lock headers and
// ignores them (as gofakes3 does): the canary is deleted, so not Enforced.
func TestGofakes3(t *testing.T) {
	srv := httptest.NewServer(gofakes3.New(s3mem.New()).Server())
	t.Cleanup(srv.Close)
	be := openS3(t, "gofakes3", s3.Options{
		Bucket: "lockless", Region: "us-east-1", Endpoint: srv.URL, PathStyle: true,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: "k", SecretAccessKey: "s"}, nil
		}),
	})
	if _, err := be.Client().CreateBucket(t.Context(), &awss3.CreateBucketInput{Bucket: aws.String("lockless")}); err != nil {
		t.Fatal(err)
	}
	got, err := lockprobe.Probe(t.Context(), be, "COMPLIANCE", time.Now())
	if err != nil {
		t.Fatalf("Probe() = %v", err)
	}
	t.Logf("Probe() = %s", got.Detail)
	if got.Enforced || !strings.HasPrefix(got.Detail, "not enforced: ") || got.SweepErr != nil {
		t.Errorf("Probe() = %+v, want not Enforced", got)
	}
	if keys := canaries(t, be); len(keys) != 0 {
		t.Errorf("canaries = %q, want none: the store let the canary go", keys)
	}
}

// clock is a settable time for mem.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

// TestMem runs the whole cycle on the in-memory store with lock
// enforcement and a fake clock: canaries a day apart, one-hour retention.
func TestMem(t *testing.T) {
	clk := &clock{now: time.Date(2026, 11, 23, 7, 0, 0, 0, time.UTC)}
	be := mem.New("mem", mem.Options{Lock: true, Now: clk.Now})
	ctx := t.Context()

	first, err := lockprobe.Probe(ctx, be, "GOVERNANCE", clk.Now())
	if err != nil || !first.Enforced || first.Kept != 1 || first.Removed != 0 {
		t.Fatalf("Probe() = %+v, %v, want Enforced with its canary kept", first, err)
	}
	if want := clk.Now().Add(lockprobe.DefaultRetention); !first.RetainUntil.Equal(want) {
		t.Errorf("Probe().RetainUntil = %v, want %v", first.RetainUntil, want)
	}
	if want := "opsd-canary/20261123T070000Z-"; !strings.HasPrefix(first.Key, want) {
		t.Errorf("Probe().Key = %q, want prefix %q", first.Key, want)
	}
	// A canary without retention (an earlier probe on a store that let
	// the delete through might leave none; a user may put one there) goes
	// at the next sweep too; objects next to the prefix stay.
	for _, k := range []string{"opsd-canary/stray", "opsd-canary-not/x"} {
		if _, err := be.Save(ctx, k, strings.NewReader("x"), storage.SaveOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	clk.Set(clk.Now().Add(30 * time.Minute))
	second, err := lockprobe.Probe(ctx, be, "GOVERNANCE", clk.Now())
	if err != nil || !second.Enforced || second.Kept != 2 || second.Removed != 1 {
		t.Fatalf("Probe() half an hour later = %+v, %v, want Enforced, both canaries kept, the stray removed", second, err)
	}

	clk.Set(clk.Now().Add(24 * time.Hour))
	third, err := lockprobe.Probe(ctx, be, "GOVERNANCE", clk.Now())
	if err != nil || !third.Enforced || third.Kept != 1 || third.Removed != 2 {
		t.Fatalf("Probe() a day later = %+v, %v, want Enforced, two old canaries removed", third, err)
	}
	if diff := cmp.Diff([]string{third.Key}, canaries(t, be)); diff != "" {
		t.Errorf("canaries (-want +got):\n%s", diff)
	}
	if _, err := be.Stat(ctx, "opsd-canary-not/x"); err != nil {
		t.Errorf("Stat(opsd-canary-not/x) = %v, want it untouched", err)
	}
}

// TestNoDefaultRetention: with mode "" the canary relies on the target's
// default retention; a target without one is not enforcing anything.
func TestNoDefaultRetention(t *testing.T) {
	be := mem.New("mem", mem.Options{Lock: true})
	got, err := lockprobe.Probe(t.Context(), be, "", time.Now())
	if err != nil {
		t.Fatalf("Probe() = %v", err)
	}
	want := "not enforced: the store reports no retention on it, yet the store let it be deleted"
	if got.Enforced || got.Detail != want || !got.RetainUntil.IsZero() {
		t.Errorf("Probe() = {Enforced: %v, Detail: %q, RetainUntil: %v}, want {false, %q, zero}", got.Enforced, got.Detail, got.RetainUntil, want)
	}
}

// badRemove is a store whose delete fails with err; with vanish, it also
// loses the object (a store that says "locked" and deletes anyway).
type badRemove struct {
	storage.Backend
	err    error
	vanish bool
	gone   *bool
}

func (b badRemove) Remove(context.Context, string) error {
	*b.gone = b.vanish
	return b.err
}

func (b badRemove) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	if *b.gone {
		return storage.ObjectInfo{}, storage.ErrNotFound
	}
	return b.Backend.Stat(ctx, key)
}

func TestUndecidedOrLying(t *testing.T) {
	ctx := t.Context()
	if _, err := lockprobe.Probe(ctx, mem.New("plain", mem.Options{}), "GOVERNANCE", time.Now()); !errors.Is(err, storage.ErrUnsupported) {
		t.Errorf("Probe(store without lock) = %v, want ErrUnsupported", err)
	}

	down := errors.New("connection reset by peer")
	be := badRemove{Backend: mem.New("flaky", mem.Options{Lock: true}), err: down, gone: new(bool)}
	if got, err := lockprobe.Probe(ctx, be, "GOVERNANCE", time.Now()); !errors.Is(err, down) {
		t.Errorf("Probe(delete fails) = %+v, %v, want %v", got, err, down)
	}

	liar := badRemove{Backend: mem.New("liar", mem.Options{Lock: true}), err: storage.ErrLocked, vanish: true, gone: new(bool)}
	got, err := lockprobe.Probe(ctx, liar, "GOVERNANCE", time.Now())
	want := "not enforced: the store refused the delete but the canary is gone"
	if err != nil || got.Enforced || got.Detail != want {
		t.Errorf("Probe(refuses yet deletes) = {Enforced: %v, Detail: %q}, %v, want {false, %q}, nil", got.Enforced, got.Detail, err, want)
	}
}
