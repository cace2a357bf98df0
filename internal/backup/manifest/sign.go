package manifest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// sigHeader is the first line of a manifest signature note's text.
const sigHeader = "opsd backup manifest"

// SignatureText is the text the signed note carries for manifest bytes raw
// of backup dir ("<source>/<id>"):
//
//	opsd backup manifest
//	<source>/<id>
//	sha256 <hex of SHA-256(manifest.json)>
//
// Signing the digest rather than the JSON keeps the note small and lets
// anyone check it with sha256sum; naming the directory stops a valid
// signature from vouching for a manifest copied under another id.
func SignatureText(dir string, raw []byte) string {
	sum := sha256.Sum256(raw)
	return sigHeader + "\n" + dir + "\n" + "sha256 " + hex.EncodeToString(sum[:]) + "\n"
}

// Sign encodes m canonically and signs it, returning manifest.json and
// manifest.json.sig.
func Sign(m *Manifest, signer note.Signer) (raw, sig []byte, err error) {
	raw, err = Marshal(m)
	if err != nil {
		return nil, nil, err
	}
	sig, err = note.Sign(&note.Note{Text: SignatureText(m.Dir(), raw)}, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("sign manifest %s: %w", m.Dir(), err)
	}
	return raw, sig, nil
}

// Verify checks sig against the verifier and raw, then decodes raw. dir is
// where the manifest was found ("<source>/<id>"); the signature and the
// manifest must both name it. Errors wrap ErrBadSignature,
// ErrUnsupportedVersion or ErrMalformed.
func Verify(dir string, raw, sig []byte, verifier note.Verifier) (*Manifest, error) {
	if verifier == nil {
		return nil, fmt.Errorf("%w: %s: no verifier key given", ErrBadSignature, dir)
	}
	n, err := note.Open(sig, note.VerifierList(verifier))
	if err != nil {
		var unknown *note.UnverifiedNoteError
		if errors.As(err, &unknown) {
			return nil, fmt.Errorf("%w: %s: not signed by %s (signed by another key)", ErrBadSignature, dir, verifier.Name())
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrBadSignature, dir, err)
	}
	if want := SignatureText(dir, raw); n.Text != want {
		lines := strings.SplitN(n.Text, "\n", 3)
		if len(lines) < 2 || lines[0] != sigHeader {
			return nil, fmt.Errorf("%w: %s: the signed note is not an opsd manifest signature", ErrBadSignature, dir)
		}
		if lines[1] != dir {
			return nil, fmt.Errorf("%w: %s: the signature is for backup %s", ErrBadSignature, dir, lines[1])
		}
		return nil, fmt.Errorf("%w: %s: manifest.json does not match the SHA-256 in its signature (modified after signing)", ErrBadSignature, dir)
	}
	m, err := Unmarshal(bytes.TrimSpace(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if m.Dir() != dir {
		return nil, fmt.Errorf("%w: %s: manifest names backup %s", ErrMalformed, dir, m.Dir())
	}
	return m, nil
}
