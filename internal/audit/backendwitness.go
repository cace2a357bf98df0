package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/opsd-dev/opsd/internal/storage"
)

// BackendWitness keeps checkpoints on a storage target (SPEC §10): objects
// audit/<origin-as-path>/checkpoint.<size>, each written once and, where
// the target locks objects, locked for Lock.
type BackendWitness struct {
	b storage.Backend
	// lock, when non-zero, is how long each checkpoint object is retained
	// under the given mode.
	lockMode string
	lockFor  time.Duration
	now      func() time.Time
}

var _ Witness = (*BackendWitness)(nil)

// NewBackendWitness returns a witness on b. With lockFor > 0 every
// checkpoint is written with object lock (mode GOVERNANCE or COMPLIANCE)
// retained for lockFor, so even whoever controls this host cannot roll the
// witness back.
func NewBackendWitness(b storage.Backend, lockMode string, lockFor time.Duration) *BackendWitness {
	return &BackendWitness{b: b, lockMode: lockMode, lockFor: lockFor, now: time.Now}
}

// String names the witness in reports.
func (w *BackendWitness) String() string { return "target:" + w.b.Name() }

// PutCheckpoint implements Witness. A checkpoint of the same size already
// stored with the same bytes is fine; different bytes are a fork.
func (w *BackendWitness) PutCheckpoint(ctx context.Context, origin string, size int64, signedNote []byte) error {
	key, err := WitnessKey(origin, size)
	if err != nil {
		return err
	}
	opts := storage.SaveOptions{ContentType: "text/plain; charset=utf-8", NoOverwrite: true}
	if w.lockFor > 0 {
		opts.Retention = &storage.Retention{Mode: w.lockMode, Until: w.now().Add(w.lockFor).UTC()}
	}
	_, err = w.b.Save(ctx, key, bytes.NewReader(signedNote), opts)
	if errors.Is(err, storage.ErrExists) {
		old, rerr := w.read(ctx, key)
		if rerr != nil {
			return fmt.Errorf("witness %s: read existing %s: %w", w.b.Name(), key, rerr)
		}
		if bytes.Equal(old, signedNote) {
			return nil
		}
		return fmt.Errorf("witness %s: %s exists with different content", w.b.Name(), key)
	}
	if err != nil {
		return fmt.Errorf("witness %s: %w", w.b.Name(), err)
	}
	return nil
}

// LatestCheckpoint implements Witness.
func (w *BackendWitness) LatestCheckpoint(ctx context.Context, origin string) ([]byte, error) {
	dir, err := witnessDir(origin)
	if err != nil {
		return nil, err
	}
	best, bestKey := int64(-1), ""
	err = w.b.List(ctx, dir+"/checkpoint.", func(o storage.ObjectInfo) error {
		s := strings.TrimPrefix(o.Key, dir+"/checkpoint.")
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > best {
			best, bestKey = n, o.Key
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("witness %s: list: %w", w.b.Name(), err)
	}
	if best < 0 {
		return nil, ErrNoCheckpoint
	}
	return w.read(ctx, bestKey)
}

func (w *BackendWitness) read(ctx context.Context, key string) ([]byte, error) {
	rc, err := w.b.Open(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	// A checkpoint note is a few hundred bytes; refuse anything absurd.
	return io.ReadAll(io.LimitReader(rc, 64<<10))
}
