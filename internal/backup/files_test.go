package backup_test

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/backup"
	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/source"
)

// makeTree builds a small tree with modes, mtimes, a symlink and files
// that the excludes must drop.
func makeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "srv", "uploads")
	mt := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	writeFile(t, filepath.Join(root, "a.txt"), "alpha\n", 0o640, mt)
	writeFile(t, filepath.Join(root, "bin", "run.sh"), "#!/bin/sh\necho hi\n", 0o755, mt.Add(time.Hour))
	writeFile(t, filepath.Join(root, "deep", "x", "y", "z.dat"), strings.Repeat("zz", 100000), 0o600, mt)
	writeFile(t, filepath.Join(root, "skip.tmp"), "temporary", 0o644, mt)
	writeFile(t, filepath.Join(root, "deep", "also.tmp"), "temporary", 0o644, mt)
	writeFile(t, filepath.Join(root, "cache", "blob"), "cached", 0o644, mt)
	writeFile(t, filepath.Join(root, "empty"), "", 0o444, mt)
	if err := os.Symlink("a.txt", filepath.Join(root, "link-to-a")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/hostname", filepath.Join(root, "abs-link")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"deep/x/y", "deep/x", "deep", "bin", ""} {
		if err := os.Chtimes(filepath.Join(root, d), mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestFilesBackupRestore(t *testing.T) {
	ctx := ctxT(t)
	k := newKeys(t)
	root := makeTree(t)
	stores := newStores(t, "local", "nas", "offsite")
	src := &source.Files{Paths: []string{root}, Exclude: []string{"*.tmp", "cache"}}
	var progress []backup.Progress
	opts := options(k, "uploads", "files", backends(stores...))
	opts.Progress = func(p backup.Progress) { progress = append(progress, p) }
	res, err := backup.Run(ctx, src, opts)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if res.State != backup.StateSucceeded {
		t.Fatalf("state = %s, want succeeded: %+v", res.State, res.Copies)
	}
	m := res.Manifest
	if m.Kind != "tar" || m.Objects[0].Name != "data.tar.zst.age" || m.SourceMeta.Files == nil {
		t.Fatalf("manifest = %+v", m)
	}
	fm := m.SourceMeta.Files
	if fm.Files != 4 || fm.Symlink != 2 {
		t.Errorf("files=%d symlinks=%d, want 4 and 2 (excludes applied)", fm.Files, fm.Symlink)
	}
	if len(progress) == 0 || progress[len(progress)-1].Bytes != m.Size.Raw {
		t.Errorf("progress = %+v, want last Bytes %d", progress, m.Size.Raw)
	}
	for _, c := range res.Copies {
		if c.State != backup.CopyComplete || c.Bytes != m.Size.Stored || c.SHA256 != m.Objects[0].SHA256 {
			t.Errorf("copy %+v, want complete with %d bytes", c, m.Size.Stored)
		}
	}

	// The storage is the catalog: every target lists the backup.
	for _, s := range stores {
		list, err := backup.List(ctx, s, k.verifier)
		if err != nil {
			t.Fatalf("List(%s): %v", s.Name(), err)
		}
		if len(list) != 1 || list[0].ID != res.ID {
			t.Fatalf("List(%s) = %v, want [%s]", s.Name(), list, res.ID)
		}
		if err := backup.VerifyCopy(ctx, s, &list[0]); err != nil {
			t.Errorf("VerifyCopy(%s): %v", s.Name(), err)
		}
	}

	dir := filepath.Join(t.TempDir(), "restore")
	rr, err := backup.Restore(ctx, backup.RestoreOptions{
		Targets: backends(stores[2]), ID: res.ID, Verifier: k.verifier,
		Identities: idents(k), ToDir: dir,
	})
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if rr.Bytes != m.Size.Raw || rr.Target != "offsite" {
		t.Errorf("Restore = %+v, want %d bytes from offsite", rr, m.Size.Raw)
	}
	got, err := source.IndexDir(dir, fm.Paths)
	if err != nil {
		t.Fatal(err)
	}
	if got != fm.IndexDigest {
		t.Errorf("restored index digest = %s, want %s", got, fm.IndexDigest)
	}
	restored := filepath.Join(dir, strings.TrimPrefix(root, "/"))
	if l, err := os.Readlink(filepath.Join(restored, "link-to-a")); err != nil || l != "a.txt" {
		t.Errorf("link-to-a -> %q, %v; want a.txt", l, err)
	}
	if st, err := os.Stat(filepath.Join(restored, "bin", "run.sh")); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("run.sh mode = %v, %v; want 0755", st.Mode(), err)
	}
	for _, gone := range []string{"skip.tmp", "deep/also.tmp", "cache"} {
		if _, err := os.Lstat(filepath.Join(restored, gone)); !os.IsNotExist(err) {
			t.Errorf("excluded %s was restored (%v)", gone, err)
		}
	}

	// A second restore into the now non-empty directory is refused…
	_, err = backup.Restore(ctx, backup.RestoreOptions{Targets: backends(stores[0]), ID: res.ID, Verifier: k.verifier, Identities: idents(k), ToDir: dir})
	if !errors.Is(err, backup.ErrNotEmpty) {
		t.Fatalf("Restore into non-empty dir: err = %v, want ErrNotEmpty", err)
	}
	// …unless forced, without Source (found by listing) and without spool.
	if _, err := backup.Restore(ctx, backup.RestoreOptions{Targets: backends(stores[0]), ID: res.ID, Verifier: k.verifier, Identities: idents(k), ToDir: dir, Force: true, NoSpool: true}); err != nil {
		t.Fatalf("forced Restore: %v", err)
	}
}

func TestFilesChangedDuringRead(t *testing.T) {
	// A file that grows between stat and read: the archive keeps the size
	// from the header and the manifest warns.
	ctx := ctxT(t)
	k := newKeys(t)
	dir := t.TempDir()
	p := filepath.Join(dir, "grow.log")
	writeFile(t, p, strings.Repeat("x", 1<<20), 0o644, time.Now().Add(-time.Hour))
	src := &source.Files{Paths: []string{dir}}
	stream, err := src.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Read until the file's content starts: the producer has stat'ed it
	// and is blocked on the pipe mid-copy. Then grow it.
	buf := make([]byte, 512)
	for !bytes.Contains(buf, []byte("xxxx")) {
		if _, err := stream.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("more"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var rest bytes.Buffer
	if _, err := rest.ReadFrom(stream); err != nil {
		t.Fatal(err)
	}
	res, err := stream.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "changed while being read") {
		t.Errorf("warnings = %q, want one 'changed while being read'", res.Warnings)
	}
	_ = k
}

func TestExtractTarRefusesEscapes(t *testing.T) {
	tests := []struct {
		name    string
		entries []tar.Header
	}{
		{"dotdot", []tar.Header{{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"absolute", []tar.Header{{Name: "/tmp/evil", Typeflag: tar.TypeReg, Mode: 0o644}}},
		{"through symlink", []tar.Header{
			{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "..", Mode: 0o777},
			{Name: "link/evil", Typeflag: tar.TypeReg, Mode: 0o644},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			tw := tar.NewWriter(&buf)
			for _, h := range tt.entries {
				if err := tw.WriteHeader(&h); err != nil {
					t.Fatal(err)
				}
			}
			tw.Close()
			parent := t.TempDir()
			dir := filepath.Join(parent, "into")
			err := backup.ExtractTar(&buf, dir)
			if err == nil {
				t.Fatalf("ExtractTar(%s) = nil, want an error", tt.name)
			}
			if _, err := os.Lstat(filepath.Join(parent, "evil")); !os.IsNotExist(err) {
				t.Errorf("an entry escaped the directory")
			}
		})
	}
}

func TestManifestCanonicalRoundTrip(t *testing.T) {
	m := &manifest.Manifest{
		FormatVersion: manifest.FormatVersion, ID: "20261123T074500Z-ab12cd34", Source: "orders-db", Type: "postgres", Kind: "pgdump",
		Started:     time.Date(2026, 11, 23, 7, 45, 0, 0, time.FixedZone("CET", 3600)),
		Finished:    time.Date(2026, 11, 23, 7, 46, 0, 0, time.UTC),
		Objects:     []manifest.Object{{Name: "data.pgdump.zst.age", Size: 10, SHA256: strings.Repeat("ab", 32)}},
		Compression: manifest.Compression{Algorithm: "zstd", Level: 3}, Encryption: manifest.Encryption{Algorithm: "none"},
		Warnings: []string{"<a & b>"},
	}
	raw, err := manifest.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.ContainsAny(raw, " \n") && !bytes.Contains(raw, []byte("<a & b>")) {
		t.Errorf("Marshal has whitespace or escaped HTML: %s", raw)
	}
	if !bytes.HasPrefix(raw, []byte(`{"compression":{"algorithm":"zstd","level":3},"encryption":{"algorithm":"none"},"finished":"2026-11-23T07:46:00Z"`)) {
		t.Errorf("Marshal = %s, want sorted keys and UTC times", raw)
	}
	again, err := manifest.Canonical(raw)
	if err != nil || !bytes.Equal(again, raw) {
		t.Errorf("Canonical(Marshal(m)) changed the bytes: %s", again)
	}
	back, err := manifest.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	m.Started = m.Started.UTC()
	if diff := cmp.Diff(m, back); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestCheckVersion(t *testing.T) {
	tests := []struct {
		give string
		want error
	}{
		{"1.0", nil},
		{"1.7", nil},
		{"2.0", manifest.ErrUnsupportedVersion},
		{"0.9", manifest.ErrUnsupportedVersion},
		{"", manifest.ErrMalformed},
		{"one", manifest.ErrMalformed},
	}
	for _, tt := range tests {
		if err := manifest.CheckVersion(tt.give); !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
			t.Errorf("CheckVersion(%q) = %v, want %v", tt.give, err, tt.want)
		}
	}
}
