package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/location"
)

// offlineTargets opens targets straight from the config, with no daemon:
// the storage is the catalog (SPEC §1.2).
type offlineTargets struct {
	cfg      *config.Config
	verifier note.Verifier
	open     []storage.Backend
}

func loadOffline(e *env, cfgFlag, pubkey string) (*offlineTargets, error) {
	cfg, err := config.Load(configPath(e, cfgFlag), e.getenv)
	if err != nil {
		return nil, err
	}
	if pubkey == "" {
		pubkey = cfg.Audit.SigningKeyFile + ".pub"
	}
	v, err := signing.LoadVerifier(pubkey)
	if err != nil {
		return nil, fmt.Errorf("%w (pass --pubkey with the verifier key that signs manifests)", err)
	}
	return &offlineTargets{cfg: cfg, verifier: v}, nil
}

func (o *offlineTargets) target(ctx context.Context, name string) (storage.Backend, error) {
	t, ok := o.cfg.Targets[name]
	if !ok {
		return nil, usageError{fmt.Sprintf("no target %q in the config", name)}
	}
	be, err := location.NewDefaultRegistry().Open(ctx, name, t, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	o.open = append(o.open, be)
	return be, nil
}

func (o *offlineTargets) close() {
	for _, b := range o.open {
		_ = b.Close()
	}
}

// runBackupList lists backups. With --target it reads the target's signed
// manifests directly and needs no daemon.
func runBackupList(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backup list")
	cfgFlag := fs.String("config", "", "config file (for --target)")
	target := fs.String("target", "", "read the catalog from this target's manifests (offline)")
	source := fs.String("source", "", "only this source")
	stateFlag := fs.String("state", "", "only backups in this state (through the daemon)")
	client := clientFlags(e, fs)
	pubkey := fs.String("pubkey", "", "verifier key for manifest signatures (default <signing_key_file>.pub)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *target == "" {
		c, err := client()
		if err != nil {
			return err
		}
		return listBackupsDaemon(ctx, e, c, *source, *stateFlag, *asJSON)
	}
	o, err := loadOffline(e, *cfgFlag, *pubkey)
	if err != nil {
		return err
	}
	defer o.close()
	b, err := o.target(ctx, *target)
	if err != nil {
		return err
	}
	ms, listErr := backup.List(ctx, b, o.verifier)
	var kept []manifest.Manifest
	for _, m := range ms {
		if *source == "" || m.Source == *source {
			kept = append(kept, m)
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].ID > kept[j].ID })
	if *asJSON {
		if kept == nil {
			kept = []manifest.Manifest{}
		}
		if err := json.NewEncoder(e.stdout).Encode(map[string]any{"items": kept}); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSOURCE\tTYPE\tFINISHED\tRAW\tSTORED\tSIGNATURE")
		for _, m := range kept {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\tok\n", m.ID, m.Source, m.Type, m.Finished.UTC().Format(time.RFC3339),
				humanBytes(m.Size.Raw), humanBytes(m.Size.Stored))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	if listErr != nil {
		// Bad manifests are listed as errors, never as backups.
		return fmt.Errorf("some manifests on %s failed verification:\n%w", *target, listErr)
	}
	return nil
}

// runBackupRestore restores a backup from the first good copy, offline.
func runBackupRestore(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "backup restore")
	cfgFlag := fs.String("config", "", "config file: targets and the verifier key")
	target := fs.String("target", "", "restore from this target only (default: every target, in config order by name)")
	toDir := fs.String("to-dir", "", "extract a files backup into this directory")
	toPG := fs.String("to-postgres", "", "pg_restore into this database (DSN)")
	stdout := fs.Bool("stdout", false, "write the decrypted, decompressed data to stdout")
	identity := fs.String("identity", "", "age identity file that decrypts the backup (default: the source's age_identity_file)")
	pubkey := fs.String("pubkey", "", "verifier key for manifest signatures (default <signing_key_file>.pub)")
	force := fs.Bool("force", false, "restore into a non-empty directory or database")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"usage: opsd backup restore ID (--to-dir D | --to-postgres DSN | --stdout) [--target T]"}
	}
	id := fs.Arg(0)
	n := 0
	for _, set := range []bool{*toDir != "", *toPG != "", *stdout} {
		if set {
			n++
		}
	}
	if n != 1 {
		return usageError{"give exactly one of --to-dir, --to-postgres, --stdout"}
	}
	o, err := loadOffline(e, *cfgFlag, *pubkey)
	if err != nil {
		return err
	}
	defer o.close()
	names := []string{*target}
	if *target == "" {
		names = names[:0]
		for name := range o.cfg.Targets {
			names = append(names, name)
		}
		sort.Strings(names)
	}
	var targets []storage.Backend
	for _, name := range names {
		b, err := o.target(ctx, name)
		if err != nil {
			fmt.Fprintf(e.stderr, "target %s unavailable: %v\n", name, err)
			continue
		}
		targets = append(targets, b)
	}
	ids, err := restoreIdentities(o.cfg, *identity)
	if err != nil {
		return err
	}
	opts := backup.RestoreOptions{Targets: targets, ID: id, Verifier: o.verifier, Identities: ids,
		ToDir: *toDir, ToPostgres: *toPG, Force: *force, Logger: slog.New(slog.NewTextHandler(e.stderr, nil)),
		Progress: progressPrinter(e.stderr)}
	if *stdout {
		opts.ToWriter = e.stdout
	}
	res, err := backup.Restore(ctx, opts)
	if err != nil {
		return err
	}
	for _, rej := range res.Rejected {
		fmt.Fprintf(e.stderr, "refused a copy: %v\n", rej)
	}
	fmt.Fprintf(e.stderr, "restored %s (%s, %s) from %s, SHA-256 verified\n", id, res.Manifest.Source, humanBytes(res.Bytes), res.Target)
	return nil
}

// restoreIdentities reads the age identity file given, or else every
// identity file named by the config's sources.
func restoreIdentities(cfg *config.Config, file string) ([]age.Identity, error) {
	var files []string
	if file != "" {
		files = []string{file}
	} else {
		for _, s := range cfg.Sources {
			if s.Encryption != nil && s.Encryption.AgeIdentityFile != "" {
				files = append(files, s.Encryption.AgeIdentityFile)
			}
		}
	}
	var ids []age.Identity
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			if file == "" {
				continue
			}
			return nil, fmt.Errorf("age identity: %w", err)
		}
		got, err := age.ParseIdentities(fh)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("age identity %s: %w", f, err)
		}
		ids = append(ids, got...)
	}
	return ids, nil
}

// progressPrinter shows restore progress on a terminal only.
func progressPrinter(w io.Writer) func(backup.Progress) {
	if !isTerminal(w) {
		return nil
	}
	return func(p backup.Progress) {
		fmt.Fprint(w, "\r"+progressText(p)+strings.Repeat(" ", 8))
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressText is "backup 1.2 GiB / 3.0 GiB at 85.0 MiB/s, ETA 22s".
func progressText(p backup.Progress) string {
	line := fmt.Sprintf("%s %s", p.Phase, humanBytes(p.Bytes))
	if p.Total > 0 {
		line += " / " + humanBytes(p.Total)
	}
	if p.Rate > 0 {
		line += fmt.Sprintf(" at %s/s", humanBytes(int64(p.Rate)))
	}
	if p.ETA > 0 {
		line += ", ETA " + p.ETA.Round(time.Second).String()
	}
	return line
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
