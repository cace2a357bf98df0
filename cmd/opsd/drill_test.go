package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/signing"
)

func TestDrillVerifyReport(t *testing.T) {
	dir := t.TempDir()
	g, err := signing.Generate("opsd.test/drills")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(dir, "audit.key")
	if err := signing.WriteFiles(keyFile, g, false); err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(g.SignerKey)
	if err != nil {
		t.Fatal(err)
	}
	met := true
	start := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	rep := &dr.Report{Format: dr.ReportFormat, RunID: "20261125T100000Z-ab", Runbook: "orders-drill",
		RunbookSHA256: "abc", Mode: "drill", State: "succeeded", StartedBy: "ci (operator)", StartedAt: start,
		Params: map[string]any{"dsn": dr.Redacted},
		RTO:    &dr.Measure{Seconds: 42, ObjectiveSeconds: 1800, Met: &met, From: start, To: start.Add(42 * time.Second)},
		Backup: &dr.BackupUsed{Step: "restore", ID: "b1", ManifestSHA256: "ff"}}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	signedJSON, err := dr.SignReport(rep, signer, false)
	if err != nil {
		t.Fatal(err)
	}
	signedMD, err := dr.SignReport(rep, signer, true)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := signing.Generate("opsd.test/drills")
	otherSigner, _ := note.NewSigner(other.SignerKey)
	signedOther, _ := dr.SignReport(rep, otherSigner, false)

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  string
	}{
		{"json", []string{"--pubkey", keyFile + ".pub", write("r.json", signedJSON)}, 0, "RTO: 42.000s, objective 1800s: met"},
		{"markdown", []string{"--pubkey", g.VerifierKey, write("r.md", signedMD)}, 0, "signature OK"},
		{"tampered", []string{"--pubkey", keyFile + ".pub",
			write("t.json", bytes.Replace(signedJSON, []byte(`"seconds": 42`), []byte(`"seconds": 41`), 1))}, 1, "does not verify"},
		{"other key", []string{"--pubkey", keyFile + ".pub", write("o.json", signedOther)}, 1, "another key"},
		{"missing file", []string{"--pubkey", keyFile + ".pub", filepath.Join(dir, "nope")}, 2, "no such file"},
		{"bad key", []string{"--pubkey", "garbage", write("r2.json", signedJSON)}, 2, ""},
		{"no file", []string{"--pubkey", keyFile + ".pub"}, 2, "usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			e := &env{getenv: func(string) string { return "" }, stdout: &stdout, stderr: &stderr}
			err := runDrillVerifyReport(context.Background(), e, tt.args)
			code := exitCode(&stderr, "drill verify-report", err)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d; stdout %s stderr %s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String()+stderr.String(), tt.wantOut) {
				t.Errorf("output %q %q, want %q", stdout.String(), stderr.String(), tt.wantOut)
			}
		})
	}
}
