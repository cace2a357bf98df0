package daemon

import (
	"context"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/httpapi"
	"github.com/opsd-dev/opsd/internal/state"
)

// sealerInfo labels the key that seals runs' secret parameters in the
// journal. It is derived with HKDF-SHA256 from the audit HMAC key (the
// <signing_key_file>.hmac file), so it survives restarts with no new key
// file, and never equals the HMAC key itself. Rotating the HMAC key makes
// the secrets of runs still in flight unreadable: they fail on resume.
const sealerInfo = "opsd dr journal secrets v1"

// drillSet is the DR engine with the runbooks it runs; it serves the
// HTTP run routes (httpapi.Runs).
type drillSet struct {
	*dr.Engine
	signer   note.Signer
	runbooks map[string]*runbook.Runbook
	names    []string
}

var _ httpapi.Runs = (*drillSet)(nil)

// openDrills builds the DR engine: the journal in the state store, the
// built-in actions plus backup.*, the runbooks of runbooks.dir, the
// sealer of secret parameters and the drill metrics. The engine runs as an
// actor of the run group (Run resumes the runs a restart interrupted).
func (d *Daemon) openDrills(cfg *config.Config) error {
	store, ok := d.store.(state.Runs)
	if !ok {
		return fmt.Errorf("state store %s does not journal runs", d.store.Kind())
	}
	log := d.log.With("component", "dr")
	reg := dr.NewRegistry()
	dr.RegisterBuiltins(reg, dr.Builtins{Notifier: &dr.LogNotifier{Logger: log}, ExecDir: cfg.DataDir, Logger: log})
	d.registerBackupActions(reg)
	rbs := loadRunbooks(cfg, log.Warn)
	key, err := hkdf.Key(sha256.New, d.key.HMACKey, nil, sealerInfo, 32)
	if err != nil {
		return fmt.Errorf("derive journal key: %w", err)
	}
	sealer, err := dr.NewAESGCMSealer(key)
	if err != nil {
		return err
	}
	metrics, err := dr.NewMetrics(d.registry)
	if err != nil {
		return fmt.Errorf("drill metrics: %w", err)
	}
	set := &drillSet{signer: d.key.Signer, runbooks: map[string]*runbook.Runbook{}}
	for _, rb := range rbs {
		set.runbooks[rb.Name] = rb
		set.names = append(set.names, rb.Name)
	}
	sort.Strings(set.names)
	set.Engine, err = dr.New(dr.Config{Store: store, Actions: reg, Lookup: set.Runbook, Sealer: sealer, Metrics: metrics, Logger: log})
	if err != nil {
		return err
	}
	d.drills = set
	log.Info("runbooks loaded", "dir", cfg.Runbooks.Dir, "runbooks", strings.Join(set.names, ","))
	return nil
}

// loadRunbooks loads every runbook of runbooks.dir that checks, each file
// on its own so one bad file does not hide the good ones; the problems of
// the bad ones are logged (opsd runbook check shows them too). A missing
// directory means no runbooks. When two files share a name, the first in
// name order wins.
func loadRunbooks(cfg *config.Config, warn func(msg string, args ...any)) []*runbook.Runbook {
	dir := cfg.Runbooks.Dir
	if dir == "" {
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			warn("runbook directory unreadable", "dir", dir, "err", err)
		}
		return nil
	}
	refs := runbook.ReferencesFromConfig(cfg)
	seen := map[string]string{}
	var out []*runbook.Runbook
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		rbs, err := runbook.LoadFiles([]string{path}, refs)
		if err != nil {
			warn("runbook refused", "file", path, "err", err)
			continue
		}
		for _, rb := range rbs {
			if first, dup := seen[rb.Name]; dup {
				warn("runbook refused: name already used", "file", path, "runbook", rb.Name, "first", first)
				continue
			}
			seen[rb.Name] = path
			out = append(out, rb)
		}
	}
	return out
}

// Runbooks implements httpapi.Runs.
func (s *drillSet) Runbooks() []*runbook.Runbook {
	out := make([]*runbook.Runbook, 0, len(s.names))
	for _, n := range s.names {
		out = append(out, s.runbooks[n])
	}
	return out
}

// Runbook implements httpapi.Runs and dr.Config.Lookup.
func (s *drillSet) Runbook(name string) (*runbook.Runbook, bool) {
	rb, ok := s.runbooks[name]
	return rb, ok
}

// SignReport implements httpapi.Runs: reports are signed with the audit key.
func (s *drillSet) SignReport(r *dr.Report, markdown bool) ([]byte, error) {
	return dr.SignReport(r, s.signer, markdown)
}

// runningDrills lists the active runs for the status page.
func (s *drillSet) runningDrills(ctx context.Context) []*dr.RunView {
	if s == nil {
		return nil
	}
	runs, _, err := s.List(ctx, state.RunFilter{States: []string{state.RunQueued, state.RunRunning, state.RunWaitingApproval, state.RunWaitingOperator}})
	if err != nil {
		return nil
	}
	return runs
}
