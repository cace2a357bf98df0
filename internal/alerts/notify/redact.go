package notify

import (
	"cmp"
	"errors"
	"net/url"
	"os"
	"slices"
	"strings"

	"github.com/opsd-dev/opsd/internal/config"
)

const redacted = "[REDACTED]"

// redactor replaces secret strings in error messages.
type redactor struct {
	secrets []string // longest first, so a secret containing another goes whole
}

func (r *redactor) clone() *redactor {
	return &redactor{secrets: slices.Clone(r.secrets)}
}

func (r *redactor) add(secrets ...string) {
	for _, s := range secrets {
		// Very short strings would redact innocent text and are no
		// secrets worth the name.
		if len(s) < 4 || slices.Contains(r.secrets, s) {
			continue
		}
		r.secrets = append(r.secrets, s)
	}
	slices.SortFunc(r.secrets, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
}

// addURL adds what in u may be secret: the whole URL, its path, query,
// fragment and password.
func (r *redactor) addURL(raw string) {
	r.add(raw)
	u, err := url.Parse(raw)
	if err != nil {
		return
	}
	r.add(u.Path, u.EscapedPath(), u.RawQuery, u.Fragment)
	if p, ok := u.User.Password(); ok {
		r.add(p, url.QueryEscape(p))
	}
	if u.User != nil {
		r.add(u.User.String())
	}
}

func (r *redactor) string(s string) string {
	for _, sec := range r.secrets {
		s = strings.ReplaceAll(s, sec, redacted)
	}
	return s
}

// err returns err with every secret in its message redacted, and in the
// messages of every error it wraps, so that printing any link of the chain
// is safe. errors.Is and errors.As still see the original errors.
func (r *redactor) err(err error) error {
	if err == nil {
		return nil
	}
	// A *url.Error carries the whole URL; keep only scheme and host.
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = redactURL(ue.URL)
	}
	if !r.dirty(err) {
		return err
	}
	return &redactedError{r: r, err: err}
}

// dirty reports whether a secret shows in err or any error it wraps.
func (r *redactor) dirty(err error) bool {
	if err == nil {
		return false
	}
	if r.string(err.Error()) != err.Error() {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return r.dirty(u.Unwrap())
	case interface{ Unwrap() []error }:
		return slices.ContainsFunc(u.Unwrap(), r.dirty)
	}
	return false
}

// redactedError presents err with secrets redacted, down its whole chain.
type redactedError struct {
	r   *redactor
	err error
}

func (e *redactedError) Error() string { return e.r.string(e.err.Error()) }

// Unwrap returns the wrapped errors, themselves redacted.
func (e *redactedError) Unwrap() []error {
	var inner []error
	switch u := e.err.(type) {
	case interface{ Unwrap() error }:
		inner = []error{u.Unwrap()}
	case interface{ Unwrap() []error }:
		inner = u.Unwrap()
	}
	var out []error
	for _, x := range inner {
		if x != nil {
			out = append(out, e.r.err(x))
		}
	}
	return out
}

// Is and As look at the original chain, so that callers can still branch
// on context.Canceled or extract a *RetryAfterError.
func (e *redactedError) Is(target error) bool { return errors.Is(e.err, target) }
func (e *redactedError) As(target any) bool   { return errors.As(e.err, target) }

// redactURL keeps the scheme and host of a URL, which say where a request
// went without the path or query that often hold a token.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return redacted
	}
	if u.Path == "" && u.RawQuery == "" && u.User == nil {
		return u.Scheme + "://" + u.Host
	}
	return u.Scheme + "://" + u.Host + "/" + redacted
}

// readSecret returns an inline secret or the trimmed content of file. The
// error names the file, never its content.
func readSecret(inline config.Secret, file string) (string, error) {
	if file == "" {
		return string(inline), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New("file " + file + " is empty")
	}
	return s, nil
}
