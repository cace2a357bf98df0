// Package signing manages opsd's Ed25519 signing key: the one key that signs
// audit-log checkpoints, backup manifests and drill reports, in the signed-note
// format of golang.org/x/mod/sumdb/note.
//
// On disk, `opsd keygen --out F` writes three files:
//
//	F       the note signer key ("PRIVATE+KEY+<name>+<hash>+<base64>"), mode 0600
//	F.pub   the verifier key ("<name>+<hash>+<base64>"), safe to publish
//	F.hmac  32 random bytes, hex, mode 0600: the key under which the audit log
//	        replaces secret values by HMAC-SHA256 so equality stays checkable
//
// The key name is the audit log's origin (config audit.origin).
package signing

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// Key is a loaded signing key.
type Key struct {
	// Name is the key name, equal to the audit origin.
	Name string
	// Signer signs notes.
	Signer note.Signer
	// Verifier verifies notes signed by Signer.
	Verifier note.Verifier
	// VerifierKey is the verifier key in note text format.
	VerifierKey string
	// HMACKey keys the HMAC that replaces secret values in audit entries.
	HMACKey []byte
}

// Generated holds the text of a freshly generated key.
type Generated struct {
	SignerKey   string
	VerifierKey string
	HMACKey     []byte
}

// Generate makes a new Ed25519 note key named name.
func Generate(name string) (Generated, error) {
	if err := CheckName(name); err != nil {
		return Generated{}, err
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		return Generated{}, fmt.Errorf("generate key: %w", err)
	}
	h := make([]byte, 32)
	if _, err := rand.Read(h); err != nil {
		return Generated{}, fmt.Errorf("generate hmac key: %w", err)
	}
	return Generated{SignerKey: skey, VerifierKey: vkey, HMACKey: h}, nil
}

// CheckName reports whether name is usable as a note key name.
func CheckName(name string) error {
	if name == "" {
		return errors.New("key name is empty")
	}
	if strings.ContainsAny(name, "+ \t\n\r") {
		return fmt.Errorf("key name %q must not contain '+' or whitespace", name)
	}
	return nil
}

// WriteFiles writes g to path, path.pub and path.hmac. It refuses to
// overwrite an existing key unless force is set: losing a signing key makes
// every earlier checkpoint unverifiable by the new one.
func WriteFiles(path string, g Generated, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	files := []struct {
		name string
		data string
		mode fs.FileMode
	}{
		{path, g.SignerKey + "\n", 0o600},
		{path + ".hmac", hex.EncodeToString(g.HMACKey) + "\n", 0o600},
		{path + ".pub", g.VerifierKey + "\n", 0o644},
	}
	for _, f := range files {
		if err := writeSynced(f.name, []byte(f.data), flags, f.mode); err != nil {
			return err
		}
	}
	return nil
}

func writeSynced(name string, data []byte, flags int, mode fs.FileMode) error {
	f, err := os.OpenFile(name, flags, mode)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("write %s: already exists (use --force to replace it)", name)
		}
		return fmt.Errorf("write %s: %w", name, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", name, err)
	}
	return f.Close()
}

// Load reads the signer key at path and the HMAC key beside it.
func Load(path string) (*Key, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	skey := strings.TrimSpace(string(raw))
	signer, err := note.NewSigner(skey)
	if err != nil {
		// The note package's error would echo the key; keep it out of logs.
		return nil, fmt.Errorf("signing key %s: not a note signer key (make one with `opsd keygen`)", path)
	}
	vkey, err := verifierKeyFromSigner(skey)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: derive verifier: %w", path, err)
	}
	hraw, err := os.ReadFile(path + ".hmac")
	if err != nil {
		return nil, fmt.Errorf("read hmac key: %w", err)
	}
	hkey, err := hex.DecodeString(strings.TrimSpace(string(hraw)))
	if err != nil || len(hkey) < 16 {
		return nil, fmt.Errorf("hmac key %s.hmac: want at least 16 hex-encoded bytes", path)
	}
	return &Key{Name: signer.Name(), Signer: signer, Verifier: verifier, VerifierKey: vkey, HMACKey: hkey}, nil
}

// LoadVerifier reads a verifier key (the .pub file, or the key text itself).
func LoadVerifier(pathOrKey string) (note.Verifier, error) {
	text := pathOrKey
	if raw, err := os.ReadFile(pathOrKey); err == nil {
		text = string(raw)
	}
	v, err := note.NewVerifier(strings.TrimSpace(text))
	if err != nil {
		return nil, fmt.Errorf("verifier key %s: %w", pathOrKey, err)
	}
	return v, nil
}

// verifierKeyFromSigner derives the verifier key text from a note signer key
// ("PRIVATE+KEY+<name>+<hash>+<base64(alg || seed)>").
func verifierKeyFromSigner(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("malformed signer key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != algEd25519 {
		return "", errors.New("signer key is not an Ed25519 note key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// algEd25519 is the note package's algorithm byte for Ed25519 keys.
const algEd25519 = 1
