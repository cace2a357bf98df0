package audit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Witness keeps copies of signed checkpoints away from the log, so a log
// rolled back or replaced on this host is caught by comparing it with the
// newest checkpoint a witness holds. Storage targets implement it (SPEC §10:
// objects <prefix>/audit/<origin-as-path>/checkpoint.<size>, object-locked
// where the target can).
type Witness interface {
	// PutCheckpoint stores the signed checkpoint note of tree size size.
	PutCheckpoint(ctx context.Context, origin string, size int64, signedNote []byte) error
	// LatestCheckpoint returns the stored note with the largest size, or
	// ErrNoCheckpoint.
	LatestCheckpoint(ctx context.Context, origin string) ([]byte, error)
}

// ErrNoCheckpoint is returned by Witness.LatestCheckpoint when the witness
// holds none for the origin.
var ErrNoCheckpoint = errors.New("witness holds no checkpoint")

// WitnessKey returns the object key of a checkpoint on a witness target,
// relative to the target's prefix: audit/<origin-as-path>/checkpoint.<size>.
// The origin's "/"-separated elements become path elements; empty, "." and
// ".." elements are refused.
func WitnessKey(origin string, size int64) (string, error) {
	dir, err := witnessDir(origin)
	if err != nil {
		return "", err
	}
	return path.Join(dir, "checkpoint."+strconv.FormatInt(size, 10)), nil
}

func witnessDir(origin string) (string, error) {
	for _, el := range strings.Split(origin, "/") {
		if el == "" || el == "." || el == ".." || strings.ContainsAny(el, "\\\x00") {
			return "", fmt.Errorf("origin %q cannot be used as a path", origin)
		}
	}
	return "audit/" + origin, nil
}

// DirWitness is a Witness that writes checkpoints into a local directory
// (another disk or a mounted share), write-once.
type DirWitness struct {
	root string
}

var _ Witness = (*DirWitness)(nil)

// NewDirWitness returns a witness writing under root.
func NewDirWitness(root string) *DirWitness { return &DirWitness{root: root} }

// String names the witness in reports and metrics.
func (w *DirWitness) String() string { return "dir:" + w.root }

// PutCheckpoint implements Witness. An existing checkpoint of the same size
// is never replaced; a different one is an error (a fork).
func (w *DirWitness) PutCheckpoint(ctx context.Context, origin string, size int64, signedNote []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	key, err := WitnessKey(origin, size)
	if err != nil {
		return err
	}
	name := filepath.Join(w.root, filepath.FromSlash(key))
	if old, err := os.ReadFile(name); err == nil {
		if string(old) == string(signedNote) {
			return nil
		}
		return fmt.Errorf("witness %s: %s exists with different content", w.root, key)
	}
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("witness %s: %w", w.root, err)
	}
	tmp, err := os.CreateTemp(dir, ".checkpoint-*")
	if err != nil {
		return fmt.Errorf("witness %s: %w", w.root, err)
	}
	_, werr := tmp.Write(signedNote)
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("witness %s: write %s: %w", w.root, key, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("witness %s: %w", w.root, err)
	}
	if err := (OSFS{}).SyncDir(dir); err != nil {
		return fmt.Errorf("witness %s: %w", w.root, err)
	}
	return nil
}

// LatestCheckpoint implements Witness.
func (w *DirWitness) LatestCheckpoint(ctx context.Context, origin string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := witnessDir(origin)
	if err != nil {
		return nil, err
	}
	full := filepath.Join(w.root, filepath.FromSlash(dir))
	ents, err := os.ReadDir(full)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoCheckpoint
	}
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", w.root, err)
	}
	best := int64(-1)
	for _, e := range ents {
		s, ok := strings.CutPrefix(e.Name(), "checkpoint.")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(s, 10, 64); err == nil && n > best {
			best = n
		}
	}
	if best < 0 {
		return nil, ErrNoCheckpoint
	}
	raw, err := os.ReadFile(filepath.Join(full, "checkpoint."+strconv.FormatInt(best, 10)))
	if err != nil {
		return nil, fmt.Errorf("witness %s: %w", w.root, err)
	}
	return raw, nil
}
