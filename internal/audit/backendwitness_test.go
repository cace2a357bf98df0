package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/mem"
)

func TestBackendWitness(t *testing.T) {
	ctx := context.Background()
	b := mem.New("offsite", mem.Options{Lock: true})
	w := NewBackendWitness(b, "GOVERNANCE", 24*time.Hour)
	const origin = "opsd.example/db-1"

	if _, err := w.LatestCheckpoint(ctx, origin); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("LatestCheckpoint(empty) = %v, want ErrNoCheckpoint", err)
	}
	for _, size := range []int64{9, 10, 100} {
		if err := w.PutCheckpoint(ctx, origin, size, fmt.Appendf(nil, "note %d", size)); err != nil {
			t.Fatalf("PutCheckpoint(%d) = %v", size, err)
		}
	}
	got, err := w.LatestCheckpoint(ctx, origin)
	if err != nil || string(got) != "note 100" {
		t.Errorf("LatestCheckpoint = %q, %v; want the largest size (numeric, not lexical)", got, err)
	}
	// Same bytes again is fine; different bytes for a size is a fork.
	if err := w.PutCheckpoint(ctx, origin, 10, []byte("note 10")); err != nil {
		t.Errorf("re-put of the same checkpoint = %v", err)
	}
	if err := w.PutCheckpoint(ctx, origin, 10, []byte("forked")); err == nil || !strings.Contains(err.Error(), "different content") {
		t.Errorf("put of a forked checkpoint = %v, want an error", err)
	}
	// Checkpoints are locked: the witness cannot be rolled back.
	key, _ := WitnessKey(origin, 100)
	info, err := b.Stat(ctx, key)
	if err != nil || info.Retention == nil || info.Retention.Mode != "GOVERNANCE" || time.Until(info.Retention.Until) < 23*time.Hour {
		t.Errorf("Stat(%s) = %+v, %v; want a GOVERNANCE lock for a day", key, info.Retention, err)
	}
	if err := b.Remove(ctx, key); !errors.Is(err, storage.ErrLocked) {
		t.Errorf("Remove(locked checkpoint) = %v, want ErrLocked", err)
	}
	rc, err := b.Open(ctx, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(rc)
	if buf.String() != "note 100" {
		t.Errorf("stored object = %q", buf.String())
	}
}
