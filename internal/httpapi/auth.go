package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strings"
)

// Role is what a token may do. Roles are ordered: each includes the ones
// below it.
type Role int

// Roles, lowest first.
const (
	RoleNone Role = iota
	RoleViewer
	RoleOperator
	RoleAdmin
)

// ParseRole parses viewer|operator|admin.
func ParseRole(s string) (Role, error) {
	switch s {
	case "viewer":
		return RoleViewer, nil
	case "operator":
		return RoleOperator, nil
	case "admin":
		return RoleAdmin, nil
	}
	return RoleNone, fmt.Errorf("unknown role %q (want viewer, operator or admin)", s)
}

func (r Role) String() string {
	switch r {
	case RoleViewer:
		return "viewer"
	case RoleOperator:
		return "operator"
	case RoleAdmin:
		return "admin"
	}
	return "none"
}

// Token is a configured bearer token: its name, role and the SHA-256 of
// its secret. opsd never holds the secret itself.
type Token struct {
	Name   string
	Role   Role
	SHA256 [32]byte
}

// authenticate finds the token presented in r. It hashes the presented
// secret and compares it with every configured hash in constant time, so
// neither the match position nor a near miss shows in the timing.
func authenticate(tokens []Token, r *http.Request) (Token, bool) {
	h := r.Header.Get("Authorization")
	scheme, secret, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || secret == "" {
		return Token{}, false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(secret)))
	var found Token
	match := 0
	for _, t := range tokens {
		eq := subtle.ConstantTimeCompare(sum[:], t.SHA256[:])
		if eq == 1 && match == 0 {
			found = t
		}
		match |= eq
	}
	return found, match == 1
}
