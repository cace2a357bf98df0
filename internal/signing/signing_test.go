package signing

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

func TestGenerateWriteLoadSign(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.key")
	g, err := Generate("opsd.example/db-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(path, g, false); err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(path, g, false); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second WriteFiles = %v, want already exists", err)
	}
	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if k.Name != "opsd.example/db-1" || k.VerifierKey != g.VerifierKey || len(k.HMACKey) != 32 {
		t.Errorf("Load = name %q vkey %q hmac %d bytes", k.Name, k.VerifierKey, len(k.HMACKey))
	}
	msg, err := note.Sign(&note.Note{Text: "hello\n"}, k.Signer)
	if err != nil {
		t.Fatal(err)
	}
	v, err := LoadVerifier(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
		t.Errorf("note signed with the loaded key does not verify with the .pub: %v", err)
	}
}

func TestLoadErrorsHideTheKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.key")
	secret := "PRIVATE+KEY+x+12345678+notbase64secret"
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path)
	if err == nil || strings.Contains(err.Error(), "notbase64secret") {
		t.Errorf("Load(bad) = %v; want an error without the key text", err)
	}
}

func TestCheckName(t *testing.T) {
	for _, name := range []string{"", "a b", "a+b", "x\n"} {
		if CheckName(name) == nil {
			t.Errorf("CheckName(%q) = nil, want error", name)
		}
	}
	if err := CheckName("opsd/host-1"); err != nil {
		t.Errorf("CheckName(valid) = %v", err)
	}
}
