package dr

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Redacted replaces a secret value wherever a run is recorded or shown.
const Redacted = "***"

// redactor replaces the values of a run's secret parameters by Redacted.
type redactor struct {
	r *strings.Replacer
}

func newRedactor(secrets []string) *redactor {
	var vs []string
	for _, s := range secrets {
		if s != "" {
			vs = append(vs, s)
		}
	}
	// Longest first, so a secret that contains another is replaced whole.
	slices.SortFunc(vs, func(a, b string) int { return len(b) - len(a) })
	var pairs []string
	for _, s := range vs {
		pairs = append(pairs, s, Redacted)
	}
	if len(pairs) == 0 {
		return &redactor{}
	}
	return &redactor{r: strings.NewReplacer(pairs...)}
}

func (r *redactor) String(s string) string {
	if r == nil || r.r == nil {
		return s
	}
	return r.r.Replace(s)
}

// Value returns a copy of v with every string redacted, maps and slices
// walked.
func (r *redactor) Value(v any) any {
	switch x := v.(type) {
	case string:
		return r.String(x)
	case []byte:
		return r.String(string(x))
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = r.Value(e)
		}
		return out
	case map[string]string:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = r.String(e)
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = r.Value(e)
		}
		return out
	case []string:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = r.String(e)
		}
		return out
	case error:
		return r.String(x.Error())
	default:
		return v
	}
}

// Error returns err's message redacted ("" for nil).
func (r *redactor) Error(err error) string {
	if err == nil {
		return ""
	}
	return r.String(err.Error())
}

// Sealer encrypts the secret parameters of a run before they are journaled, so
// that a run resumed after a restart still has them while the state store
// never holds them in clear. The daemon derives its key from its own secret
// material; without a Sealer, secrets live only in memory and a run that needs
// them cannot be resumed (it fails with a clear error).
type Sealer interface {
	Seal(plaintext []byte) ([]byte, error)
	Open(sealed []byte) ([]byte, error)
}

type aesSealer struct{ aead cipher.AEAD }

// NewAESGCMSealer returns a Sealer using AES-256-GCM with key (32 bytes) and
// a random nonce per message.
func NewAESGCMSealer(key []byte) (Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("sealer key: want 32 bytes, got %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("sealer key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("sealer key: %w", err)
	}
	return &aesSealer{aead: aead}, nil
}

func (s *aesSealer) Seal(plaintext []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plaintext, nil), nil
}

func (s *aesSealer) Open(sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed secrets too short")
	}
	out, err := s.aead.Open(nil, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, errors.New("sealed secrets cannot be opened with this key")
	}
	return out, nil
}
