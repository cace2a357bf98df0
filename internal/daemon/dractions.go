package daemon

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/opsd-dev/opsd/internal/action"
	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
	"github.com/opsd-dev/opsd/internal/backup/service"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/dr/runbook"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/storage"
)

// backupPoll is how often backup.run looks at the catalog row of the
// backup it queued.
const backupPoll = 250 * time.Millisecond

// registerBackupActions adds backup.run, backup.restore and backup.verify,
// built on the backup service and the daemon's targets.
func (d *Daemon) registerBackupActions(reg *dr.Registry) {
	reg.Register(runbook.ActionBackupRun, dr.ActionFunc(d.drBackupRun))
	reg.Register(runbook.ActionBackupRestore, dr.ActionFunc(d.drBackupRestore))
	reg.Register(runbook.ActionBackupVerify, dr.ActionFunc(d.drBackupVerify))
}

// runActor is who a run's backup actions act as in the audit log.
func runActor(sc *dr.StepContext) action.Actor {
	return action.Actor{Kind: action.ActorSystem, Name: "run/" + sc.RunID + "/" + sc.StepID}
}

// drBackupRun queues a backup of with.source and, unless with.wait is
// false, waits until its catalog row ends.
func (d *Daemon) drBackupRun(ctx context.Context, sc *dr.StepContext) (map[string]any, error) {
	src := sc.String("source")
	b, err := d.backups.Enqueue(action.WithActor(ctx, runActor(sc)), src)
	if err != nil {
		return nil, err
	}
	stepLog(ctx, sc, "queued backup "+b.ID+" of "+src)
	if wait, ok := sc.With["wait"].(bool); ok && !wait {
		return map[string]any{"backup_id": b.ID, "state": b.State}, nil
	}
	t := time.NewTicker(backupPoll)
	defer t.Stop()
	for b.State == state.BackupQueued || b.State == state.BackupRunning {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		if b, _, err = d.backups.GetBackup(ctx, b.ID); err != nil {
			return nil, err
		}
	}
	out := map[string]any{"backup_id": b.ID, "state": b.State}
	if b.State != state.BackupSucceeded && b.State != state.BackupPartial {
		return out, fmt.Errorf("backup %s of %s %s: %s", b.ID, src, b.State, b.Error)
	}
	return out, nil
}

// resolveBackup turns with.backup ("latest" or an id) into a backup of
// source.
func (d *Daemon) resolveBackup(ctx context.Context, source, id string) (state.Backup, []state.Copy, error) {
	if id == "" || id == "latest" {
		latest, err := d.store.LatestBackup(ctx, source, state.BackupSucceeded, state.BackupPartial)
		if err != nil {
			return state.Backup{}, nil, fmt.Errorf("newest backup of %s: %w", source, err)
		}
		id = latest.ID
	}
	b, copies, err := d.backups.GetBackup(ctx, id)
	if err != nil {
		return state.Backup{}, nil, err
	}
	if b.Source != source {
		return state.Backup{}, nil, fmt.Errorf("backup %s is of source %s, not %s", id, b.Source, source)
	}
	return b, copies, nil
}

// drBackupRestore restores a backup from its first good copy into
// with.to_dir or with.to_postgres and reports what the RPO and the report
// need: the snapshot time from the manifest, the backup, the manifest's
// SHA-256 and the target read.
func (d *Daemon) drBackupRestore(ctx context.Context, sc *dr.StepContext) (map[string]any, error) {
	cfg := d.cfg.Load().Config
	source := sc.String("source")
	src, ok := cfg.Sources[source]
	if !ok {
		return nil, fmt.Errorf("source %q is not configured", source)
	}
	b, copies, err := d.resolveBackup(ctx, source, sc.String("backup"))
	if err != nil {
		return nil, err
	}
	only := sc.String("target")
	var targets []storage.Backend
	var refused []string
	for _, c := range copies {
		if c.State != state.CopyComplete || (only != "" && c.Target != only) {
			continue
		}
		t, err := d.targets.get(ctx, c.Target)
		if err != nil {
			refused = append(refused, c.Target+": "+err.Error())
			continue
		}
		targets = append(targets, t)
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("backup %s has no complete copy that can be opened%s", b.ID, joinReasons(refused))
	}
	ids, err := restoreIdentities(src)
	if err != nil {
		return nil, err
	}
	opts := backup.RestoreOptions{Targets: targets, Source: source, ID: b.ID, Verifier: d.key.Verifier, Identities: ids,
		ToDir: sc.String("to_dir"), ToPostgres: sc.String("to_postgres"), SpoolDir: filepath.Join(cfg.DataDir, "spool"),
		Logger: sc.Logger}
	if src.Type == config.SourcePostgres {
		opts.PGRestore = pgtool.Finder{Configured: pgRestoreBeside(src.PGDump)}
	}
	if opts.ToDir != "" {
		if err := os.MkdirAll(opts.ToDir, 0o700); err != nil {
			return nil, fmt.Errorf("restore directory: %w", err)
		}
	}
	stepLog(ctx, sc, fmt.Sprintf("restoring backup %s of %s", b.ID, source))
	res, err := backup.Restore(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", b.ID, err)
	}
	raw, err := manifest.Marshal(res.Manifest)
	if err != nil {
		return nil, fmt.Errorf("restore %s: manifest: %w", b.ID, err)
	}
	sum := sha256.Sum256(raw)
	stepLog(ctx, sc, fmt.Sprintf("restored %d bytes from target %s", res.Bytes, res.Target))
	return map[string]any{
		dr.BackupIDOutput:       b.ID,
		dr.SnapshotTimeOutput:   res.Manifest.Started.UTC(),
		dr.ManifestSHA256Output: hex.EncodeToString(sum[:]),
		dr.TargetOutput:         res.Target,
		"bytes":                 res.Bytes,
	}, nil
}

// drBackupVerify verifies a backup now through the backup service, which
// records the results like any verification; any failed copy fails the
// step.
func (d *Daemon) drBackupVerify(ctx context.Context, sc *dr.StepContext) (map[string]any, error) {
	source := sc.String("source")
	b, _, err := d.resolveBackup(ctx, source, sc.String("backup"))
	if err != nil {
		return nil, err
	}
	level := sc.String("level")
	if level == "" {
		level = state.LevelChecksum
	}
	vs, err := d.backups.Verify(action.WithActor(ctx, runActor(sc)), service.VerifyArgs{BackupID: b.ID, Level: level,
		Target: sc.String("target"), Request: sc.RunID})
	if err != nil {
		return nil, err
	}
	out := map[string]any{"backup_id": b.ID}
	var failed []string
	for _, v := range vs {
		if !v.OK {
			failed = append(failed, v.Target+": "+v.Error)
		}
	}
	if len(failed) > 0 {
		return out, fmt.Errorf("%s verification of %s failed%s", level, b.ID, joinReasons(failed))
	}
	stepLog(ctx, sc, fmt.Sprintf("%s verification of %s passed on %d cop(ies)", level, b.ID, len(vs)))
	return out, nil
}

func joinReasons(rs []string) string {
	if len(rs) == 0 {
		return ""
	}
	return ": " + strings.Join(rs, "; ")
}

// restoreIdentities reads the age identity that decrypts the source's
// backups (the daemon holds it only when the source names one).
func restoreIdentities(sc *config.Source) ([]age.Identity, error) {
	if sc.Encryption == nil || sc.Encryption.None {
		return nil, nil
	}
	if sc.Encryption.AgeIdentityFile == "" {
		return nil, errors.New("restoring needs the source's encryption.age_identity_file (the daemon holds only recipients)")
	}
	f, err := os.Open(sc.Encryption.AgeIdentityFile)
	if err != nil {
		return nil, fmt.Errorf("age identity: %w", err)
	}
	defer f.Close()
	ids, err := age.ParseIdentities(f)
	if err != nil {
		return nil, fmt.Errorf("age identity file %s: not a valid age identity file", sc.Encryption.AgeIdentityFile)
	}
	return ids, nil
}

// pgRestoreBeside is the pg_restore next to a configured pg_dump, or ""
// to search PATH.
func pgRestoreBeside(pgDump string) string {
	if filepath.Base(pgDump) != "pg_dump" || pgDump == "pg_dump" {
		return ""
	}
	return filepath.Join(filepath.Dir(pgDump), "pg_restore")
}

// stepLog journals a line for people following the run.
func stepLog(ctx context.Context, sc *dr.StepContext, line string) {
	if sc.Log != nil {
		sc.Log(ctx, line)
	}
}
