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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/audit"
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
	signer note.Signer

	mu       sync.RWMutex // guards the loaded runbooks; reload swaps them
	runbooks map[string]*runbook.Runbook
	names    []string
	files    map[string][]*runbook.Runbook // by file, for reload
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
	// notify steps go through the alert receivers (opened before drills).
	notifier := &runbookNotifier{a: d.alerts, fallback: &dr.LogNotifier{Logger: log}, attempts: 3, backoff: 2 * time.Second}
	dr.RegisterBuiltins(reg, dr.Builtins{Notifier: notifier, ExecDir: cfg.DataDir,
		ExecStateDir: filepath.Join(cfg.DataDir, "exec"), Logger: log})
	d.registerBackupActions(reg)
	rbs, files := loadRunbooks(cfg, nil, log.Warn)
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
	set := &drillSet{signer: d.key.Signer}
	set.swap(rbs, files)
	var ranger dr.AuditRanger
	if l, ok := d.audit.(auditSpanner); ok {
		ranger = auditRanger{l}
	}
	set.Engine, err = dr.New(dr.Config{Store: store, Actions: reg, Lookup: set.Runbook, Sealer: sealer, Metrics: metrics,
		Audit: ranger, Logger: log, Hooks: dr.Hooks{
			// While a drill runs, the alerts of the sources it touches are
			// silenced (alerts.drill_silences), the silence naming the run.
			OnRunStart: func(ctx context.Context, ri dr.RunInfo) { d.alerts.drillStarted(ctx, ri.ID, ri.Mode, ri.Sources) },
			OnRunEnd:   func(ctx context.Context, ri dr.RunInfo) { d.alerts.drillEnded(ctx, ri.ID) },
		}})
	if err != nil {
		return err
	}
	// The drill gauges come back from the journal: a restart must not
	// resolve DrillFailed (or forget the last RTO/RPO measured).
	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	set.Engine.RestoreMetrics(rctx, set.names)
	cancel()
	d.drills = set
	log.Info("runbooks loaded", "dir", cfg.Runbooks.Dir, "runbooks", strings.Join(set.names, ","))
	return nil
}

// reloadRunbooks loads runbooks.dir again against the reloaded config:
// each file whole or not at all, as at start. A file that loaded before
// and is refused now keeps its previous runbooks (an edit with a mistake
// does not take a working runbook away); a file that is gone takes its
// runbooks with it. Runs in flight keep the runbook they started with;
// after a restart a run resumes only if its runbook's SHA-256 is
// unchanged.
func (s *drillSet) reloadRunbooks(cfg *config.Config, warn func(msg string, args ...any)) []string {
	if s == nil {
		return nil
	}
	s.mu.RLock()
	prev := s.files
	s.mu.RUnlock()
	rbs, files := loadRunbooks(cfg, prev, warn)
	s.swap(rbs, files)
	s.mu.RLock()
	defer s.mu.RUnlock()
	return slices.Clone(s.names)
}

// swap installs a loaded set of runbooks.
func (s *drillSet) swap(rbs []*runbook.Runbook, files map[string][]*runbook.Runbook) {
	byName := make(map[string]*runbook.Runbook, len(rbs))
	names := make([]string, 0, len(rbs))
	for _, rb := range rbs {
		byName[rb.Name] = rb
		names = append(names, rb.Name)
	}
	sort.Strings(names)
	s.mu.Lock()
	s.runbooks, s.names, s.files = byName, names, files
	s.mu.Unlock()
}

// auditSpanner is what reports need of the audit log (*audit.Log).
type auditSpanner interface {
	Span(start, end time.Time, linger time.Duration) (first, last int64, err error)
	CheckpointCovering(size int64) ([]byte, error)
}

// auditLinger is how long after a run's end the report's audit range
// still takes in the finishing entries of actions accepted during the run
// (the outcome of an approval the run's last step waited for is recorded
// after the HTTP answer, which may come after the run ended).
const auditLinger = 10 * time.Second

// auditRanger implements dr.AuditRanger over the daemon's audit log: the
// entries written while the run ran, widened to whole actions (the
// acceptance of the HTTP request that started it, which precedes its
// start), and a signed checkpoint covering them.
type auditRanger struct{ log auditSpanner }

func (a auditRanger) AuditRange(_ context.Context, start, end time.Time) (first, last int64, checkpoint string, err error) {
	first, last, err = a.log.Span(start, end, auditLinger)
	if errors.Is(err, audit.ErrNoEntries) {
		return -1, -1, "", fmt.Errorf("%w: %w", dr.ErrNoAuditEntries, err)
	}
	if err != nil {
		return -1, -1, "", err
	}
	cp, err := a.log.CheckpointCovering(last + 1)
	if err != nil {
		return -1, -1, "", fmt.Errorf("checkpoint covering audit entry %d: %w", last, err)
	}
	return first, last, string(cp), nil
}

// loadRunbooks loads every runbook of runbooks.dir that checks, each file
// on its own so one bad file does not hide the good ones; the problems of
// the bad ones are logged (opsd runbook check shows them too). A missing
// directory means no runbooks. When two files share a name, the first in
// name order wins. prev (a reload's previous result by file, nil at
// start) supplies the runbooks of a file that is refused now; files maps
// each file to the runbooks it gave.
func loadRunbooks(cfg *config.Config, prev map[string][]*runbook.Runbook, warn func(msg string, args ...any)) (out []*runbook.Runbook, files map[string][]*runbook.Runbook) {
	files = map[string][]*runbook.Runbook{}
	dir := cfg.Runbooks.Dir
	if dir == "" {
		return nil, files
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			warn("runbook directory unreadable", "dir", dir, "err", err)
			// Unreadable is not empty: keep what was loaded.
			for path, rbs := range prev {
				files[path] = rbs
				out = append(out, rbs...)
			}
		}
		return out, files
	}
	refs := runbook.ReferencesFromConfig(cfg)
	seen := map[string]string{}
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		rbs, err := runbook.LoadFiles([]string{path}, refs)
		if err != nil {
			if old, ok := prev[path]; ok {
				warn("runbook refused; keeping the version loaded before", "file", path, "err", err)
				rbs = old
			} else {
				warn("runbook refused", "file", path, "err", err)
				continue
			}
		}
		for _, rb := range rbs {
			if first, dup := seen[rb.Name]; dup {
				warn("runbook refused: name already used", "file", path, "runbook", rb.Name, "first", first)
				continue
			}
			seen[rb.Name] = path
			out = append(out, rb)
			files[path] = append(files[path], rb)
		}
	}
	return out, files
}

// Runbooks implements httpapi.Runs.
func (s *drillSet) Runbooks() []*runbook.Runbook {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*runbook.Runbook, 0, len(s.names))
	for _, n := range s.names {
		out = append(out, s.runbooks[n])
	}
	return out
}

// Runbook implements httpapi.Runs and dr.Config.Lookup.
func (s *drillSet) Runbook(name string) (*runbook.Runbook, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
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
