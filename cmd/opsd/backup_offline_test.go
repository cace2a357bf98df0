package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/source"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/storage"
	"github.com/opsd-dev/opsd/internal/storage/location"
)

// TestBackupListAndRestoreOffline makes a files backup to two local
// targets with the library, then lists and restores it with the CLI from
// the config and the targets alone — no daemon, no state database.
func TestBackupListAndRestoreOffline(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := filepath.Join(dir, "data-src")
	if err := os.MkdirAll(filepath.Join(data, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"a.txt": "alpha\n", "sub/b.txt": strings.Repeat("bravo ", 1000)}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(data, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "age.key")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g, err := signing.Generate("opsd.test/offline")
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.WriteFiles(filepath.Join(dir, "audit.key"), g, false); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "opsd.yaml")
	cfgText := fmt.Sprintf(`data_dir: ./var
audit: {signing_key_file: ./audit.key, origin: opsd.test/offline}
targets:
  a: {type: local, path: ./target-a}
  b: {type: local, path: ./target-b}
sources:
  demo:
    type: files
    paths: [./data-src]
    schedule: "@daily"
    targets: [a, b]
    encryption: {age_recipients: [%s], age_identity_file: ./age.key}
`, id.Recipient())
	if err := os.WriteFile(cfgPath, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	key, err := signing.Load(cfg.Audit.SigningKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	var targets []storage.Backend
	for _, name := range []string{"a", "b"} {
		b, err := location.NewDefaultRegistry().Open(ctx, name, cfg.Targets[name], nil)
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		targets = append(targets, b)
	}
	src, err := source.New("demo", cfg.Sources["demo"], source.Options{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := backup.Run(ctx, src, backup.Options{Source: "demo", Type: "files", Targets: targets,
		Recipients: cfg.Sources["demo"].Encryption.Recipients, Signer: key.Signer})
	if err != nil || res.State != backup.StateSucceeded {
		t.Fatalf("backup = %v, %v", res, err)
	}

	code, out, stderr := cli(t, nil, "backup", "list", "--config", cfgPath, "--target", "a")
	if code != 0 || !strings.Contains(out, res.ID) || !strings.Contains(out, "demo") {
		t.Fatalf("backup list --target a = %d\n%s%s", code, out, stderr)
	}

	restoreDir := filepath.Join(dir, "restored")
	code, out, stderr = cli(t, nil, "backup", "restore", res.ID, "--config", cfgPath, "--to-dir", restoreDir)
	if code != 0 {
		t.Fatalf("backup restore = %d\n%s%s", code, out, stderr)
	}
	for name, body := range files {
		got, err := os.ReadFile(filepath.Join(restoreDir, strings.TrimPrefix(data, "/"), name))
		if err != nil || string(got) != body {
			t.Errorf("restored %s = %q, %v", name, got, err)
		}
	}

	// A flipped byte in target a's copy: restore refuses it and uses b.
	var dataObj string
	_ = filepath.Walk(filepath.Join(dir, "target-a"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(fi.Name(), "data.") {
			dataObj = p
		}
		return nil
	})
	raw, err := os.ReadFile(dataObj)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(dataObj, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = cli(t, nil, "backup", "restore", res.ID, "--config", cfgPath, "--to-dir", filepath.Join(dir, "restored2"))
	if code != 0 || !strings.Contains(stderr, "refused a copy") || !strings.Contains(stderr, "from b") {
		t.Errorf("restore with a corrupt copy on a = %d, want success from b with the refusal reported\n%s", code, stderr)
	}

	// Restoring over existing data needs --force.
	code, _, stderr = cli(t, nil, "backup", "restore", res.ID, "--config", cfgPath, "--to-dir", restoreDir, "--target", "b")
	if code != exitFailure {
		t.Errorf("restore into a non-empty dir = %d, want 1\n%s", code, stderr)
	}
	// Bad usage.
	if code, _, _ := cli(t, nil, "backup", "restore", res.ID, "--config", cfgPath); code != exitUsage {
		t.Errorf("restore without a destination = %d, want 2", code)
	}
	// A manifest edited after signing is not listed as a backup.
	manifestPath := filepath.Join(dir, "target-a", "demo", res.ID, "manifest.json")
	m, err := os.ReadFile(manifestPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(manifestPath, []byte(strings.Replace(string(m), `"source":"demo"`, `"source":"demx"`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = cli(t, nil, "backup", "list", "--config", cfgPath, "--target", "a")
	if code != exitFailure || strings.Contains(out, res.ID) {
		t.Errorf("list with a tampered manifest = %d, want 1 and the backup not listed\n%s%s", code, out, stderr)
	}
}
