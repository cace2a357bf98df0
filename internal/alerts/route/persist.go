package route

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opsd-dev/opsd/internal/state"
)

// Snapshot names, as files under data_dir/alerts/ and as state store keys
// under alerts/.
const (
	snapSilences = "silences"
	snapNflog    = "nflog"
)

// snapshotStore keeps Alertmanager's silence and notification log snapshots
// (the same protobuf-delimited bytes Alertmanager writes to its data dir).
type snapshotStore interface {
	// load returns the snapshot called name, or nil when there is none.
	load(ctx context.Context, name string) ([]byte, error)
	// save replaces the snapshot called name, atomically.
	save(ctx context.Context, name string, b []byte) error
	// where describes the snapshot's location for logs and errors.
	where(name string) string
}

// memSnapshots keeps nothing: a Router without DataDir or State forgets its
// silences and notification log on restart.
type memSnapshots struct{}

func (memSnapshots) load(context.Context, string) ([]byte, error) { return nil, nil }
func (memSnapshots) save(context.Context, string, []byte) error   { return nil }
func (memSnapshots) where(name string) string                     { return "memory:" + name }

// fileSnapshots writes data_dir/alerts/<name>, as Alertmanager writes
// <storage.path>/silences and /nflog: a temporary file renamed over the old
// one, here also fsynced so a power loss keeps either the old or the new.
type fileSnapshots struct{ dir string }

func (f fileSnapshots) where(name string) string { return filepath.Join(f.dir, name) }

func (f fileSnapshots) load(_ context.Context, name string) ([]byte, error) {
	b, err := os.ReadFile(f.where(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

func (f fileSnapshots) save(_ context.Context, name string, b []byte) error {
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(f.dir, "."+name+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this is a no-op error
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), f.where(name)); err != nil {
		return err
	}
	d, err := os.Open(f.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// stateSnapshots keeps the snapshots in the state store under
// alerts/<name>, base64-encoded (the store holds text). With PostgreSQL
// state every replica reads the same silences after a restart.
type stateSnapshots struct{ st state.Store }

func (s stateSnapshots) where(name string) string { return "state:alerts/" + name }

func (s stateSnapshots) load(ctx context.Context, name string) ([]byte, error) {
	v, ok, err := s.st.GetValue(ctx, "alerts/"+name)
	if err != nil || !ok {
		return nil, err
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	return b, nil
}

func (s stateSnapshots) save(ctx context.Context, name string, b []byte) error {
	return s.st.PutValue(ctx, "alerts/"+name, base64.StdEncoding.EncodeToString(b))
}

// persist garbage-collects and snapshots one state into the store. It is
// the MaintenanceFunc of Alertmanager's silences and nflog, with a ctx.
func persist(ctx context.Context, store snapshotStore, name string, gc func() (int, error), snap func(*bytes.Buffer) (int64, error)) error {
	if _, err := gc(); err != nil {
		return fmt.Errorf("gc %s: %w", name, err)
	}
	var buf bytes.Buffer
	if _, err := snap(&buf); err != nil {
		return fmt.Errorf("snapshot %s: %w", name, err)
	}
	if err := store.save(ctx, name, buf.Bytes()); err != nil {
		return fmt.Errorf("write %s snapshot to %s: %w", name, store.where(name), err)
	}
	return nil
}
