package verify

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/source"
)

// FilesOptions say which files backup to verify and where to restore it.
type FilesOptions struct {
	// Restore names the backup and how to read it, as for
	// PostgresOptions.Restore; its destination fields must be unset. An
	// empty SpoolDir uses ScratchDir.
	Restore backup.RestoreOptions
	// ScratchDir is the parent of the temporary directory (data_dir/spool
	// in the daemon; "" uses os.TempDir()). It needs free space for the
	// backup's raw size.
	ScratchDir string
	// Logger receives the scratch directory's lifecycle; nil discards.
	Logger *slog.Logger
}

// CheckIndexDigest names the check RestoreFiles records.
const CheckIndexDigest = "index_digest"

// RestoreFiles extracts a tar (files) backup into a temporary directory
// under opts.ScratchDir, recomputes the file index digest of the restored
// trees with source.IndexDir and compares it with the manifest's
// (FilesMeta.IndexDigest). The directory is removed afterwards, whatever
// happened. A manifest without an index digest fails the check: nothing
// is taken on trust.
func RestoreFiles(ctx context.Context, opts FilesOptions) (rep *Report, err error) {
	start := time.Now()
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkRestoreOptions(opts.Restore); err != nil {
		return nil, err
	}
	parent := opts.ScratchDir
	if parent == "" {
		parent = os.TempDir()
	}
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, fmt.Errorf("verify: scratch directory: %w", err)
	}
	name := scratchName(opts.Restore.Source, opts.Restore.ID, time.Now())
	dir := filepath.Join(parent, name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("verify: scratch directory: %w", err)
	}
	log = log.With("source", opts.Restore.Source, "backup", opts.Restore.ID, "dir", dir)
	log.Info("created temporary directory")
	rep = &Report{BackupID: opts.Restore.ID, Source: opts.Restore.Source, Level: LevelRestore, Scratch: dir, StartedAt: start.UTC(), Checks: []CheckResult{}}
	defer func() {
		if rerr := removeTree(dir); rerr != nil {
			rerr = fmt.Errorf("verify: remove temporary directory (CleanupStaleDirs will retry): %w", rerr)
			rep.Error = joinMsg(rep.Error, rerr.Error())
			err = errors.Join(err, rerr)
		} else {
			log.Info("removed temporary directory")
		}
		rep.Duration = time.Since(start)
	}()

	ro := opts.Restore
	ro.ToDir = dir
	if ro.SpoolDir == "" {
		ro.SpoolDir = parent
	}
	if ro.Logger == nil {
		ro.Logger = opts.Logger
	}
	rr, rerr := backup.Restore(ctx, ro)
	if rr != nil {
		rep.Target = rr.Target
		if rr.Manifest != nil {
			rep.Source = rr.Manifest.Source
		}
	}
	if rerr != nil {
		rep.Error = rerr.Error()
		rep.Checks = append(rep.Checks, CheckResult{Name: CheckIndexDigest, Error: "not run: the restore failed"})
		switch {
		case ctx.Err() != nil:
			return rep, fmt.Errorf("verify %s: %w", opts.Restore.ID, ctx.Err())
		case rr != nil && rr.Manifest != nil && rr.Manifest.Kind != "tar":
			return rep, fmt.Errorf("verify %s: a %s backup cannot be verified by extracting it into a directory", opts.Restore.ID, rr.Manifest.Kind)
		}
		return rep, nil
	}

	cstart := time.Now()
	res := CheckResult{Name: CheckIndexDigest}
	fm := rr.Manifest.SourceMeta.Files
	if fm == nil || fm.IndexDigest == "" {
		res.Error = "the manifest records no file index digest, so the restored files cannot be compared with the backup"
	} else {
		res.Expect = "= " + fm.IndexDigest
		got, ierr := source.IndexDir(dir, fm.Paths)
		switch {
		case ctx.Err() != nil:
			return rep, fmt.Errorf("verify %s: %w", opts.Restore.ID, ctx.Err())
		case ierr != nil:
			res.Error = ierr.Error()
		default:
			res.Got = got
			res.OK = got == fm.IndexDigest
			if !res.OK {
				res.Error = fmt.Sprintf("the restored files' index digest is %s, the manifest says %s (%d files, %d directories, %d symlinks)",
					got, fm.IndexDigest, fm.Files, fm.Dirs, fm.Symlink)
			}
		}
	}
	res.Duration = time.Since(cstart)
	rep.Checks = append(rep.Checks, res)
	rep.OK = res.OK
	if !rep.OK {
		rep.Error = "a check failed"
	}
	return rep, nil
}

// CleanupStaleDirs removes the temporary directories under parent older
// than olderThan (by the creation time in their name) — what a crashed run
// left behind — and returns their paths.
func CleanupStaleDirs(parent string, olderThan time.Duration) ([]string, error) {
	entries, err := os.ReadDir(parent)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("verify: list %s: %w", parent, err)
	}
	now := time.Now()
	var removed []string
	var errs []error
	for _, e := range entries {
		created, ok := scratchCreated(e.Name())
		if !ok || !e.IsDir() || now.Sub(created) <= olderThan {
			continue
		}
		p := filepath.Join(parent, e.Name())
		if err := removeTree(p); err != nil {
			errs = append(errs, fmt.Errorf("verify: remove stale %s: %w", p, err))
			continue
		}
		removed = append(removed, p)
	}
	return removed, errors.Join(errs...)
}

// removeTree removes dir. Restored directories keep their modes, and one
// without write permission (0555) cannot be emptied by its owner: those
// are made writable first. Symbolic links are never followed.
func removeTree(dir string) error {
	if err := os.RemoveAll(dir); err == nil {
		return nil
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700)
		}
		return nil
	})
	return os.RemoveAll(dir)
}
