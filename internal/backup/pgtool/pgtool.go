// Package pgtool finds and runs PostgreSQL client programs (pg_dump,
// pg_restore) safely: the binary matching the server's major version, the
// password passed through the environment only, and DSNs redacted in every
// error.
package pgtool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrNoTool: no usable pg_dump/pg_restore was found.
var ErrNoTool = errors.New("no suitable PostgreSQL client program")

// defaultDirs lists where Debian/Ubuntu, the PGDG RPMs and Homebrew install
// versioned clients; "%d" is replaced by the major version.
func defaultDirs() []string {
	return []string{"/usr/lib/postgresql/%d/bin", "/usr/pgsql-%d/bin", "/opt/homebrew/opt/postgresql@%d/bin"}
}

// Finder locates a client program.
type Finder struct {
	// Configured is the path from the config (sources.<name>.pg_dump). When
	// set it is the only candidate.
	Configured string
	// Dirs overrides the versioned directories searched ("%d" = major).
	Dirs []string
	// LookPath overrides exec.LookPath (tests).
	LookPath func(string) (string, error)
}

// Tool is a located program.
type Tool struct {
	Path    string
	Version string // e.g. "16.4"
	Major   int
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\)\s+([0-9]+)(?:\.([0-9]+))?`)

// Version runs "prog --version" and parses the major version.
func Version(ctx context.Context, prog string) (Tool, error) {
	out, err := exec.CommandContext(ctx, prog, "--version").Output()
	if err != nil {
		return Tool{}, fmt.Errorf("%s --version: %w", prog, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return Tool{}, fmt.Errorf("%s --version: cannot parse %q", prog, bytes.TrimSpace(out))
	}
	major, _ := strconv.Atoi(string(m[1]))
	v := string(m[1])
	if len(m[2]) > 0 {
		v += "." + string(m[2])
	}
	return Tool{Path: prog, Version: v, Major: major}, nil
}

// Find returns the program name (pg_dump, pg_restore) best suited to a
// server of major version serverMajor: one of the same major if there is
// one, else the oldest newer one. Clients older than the server cannot read
// its catalogs; the error then names the Debian package to install.
func (f Finder) Find(ctx context.Context, name string, serverMajor int) (Tool, error) {
	lookPath := f.LookPath
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	var candidates []string
	if f.Configured != "" {
		candidates = []string{f.Configured}
	} else {
		if p, err := lookPath(name); err == nil {
			candidates = append(candidates, p)
		}
		dirs := f.Dirs
		if dirs == nil {
			dirs = defaultDirs()
		}
		for _, d := range dirs {
			if strings.Contains(d, "%d") {
				candidates = append(candidates, filepath.Join(fmt.Sprintf(d, serverMajor), name))
				// Any installed newer major works too.
				matches, _ := filepath.Glob(filepath.Join(strings.Replace(d, "%d", "*", 1), name))
				candidates = append(candidates, matches...)
			} else {
				candidates = append(candidates, filepath.Join(d, name))
			}
		}
	}
	var found []Tool
	var problems []string
	seen := map[string]bool{}
	for _, c := range candidates {
		if seen[c] {
			continue
		}
		seen[c] = true
		if _, err := os.Stat(c); err != nil && f.Configured == "" {
			continue
		}
		t, err := Version(ctx, c)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		found = append(found, t)
	}
	pkg := fmt.Sprintf("postgresql-client-%d", serverMajor)
	if len(found) == 0 {
		msg := fmt.Sprintf("%v: %s for PostgreSQL %d not found (install the %s package, or set pg_dump: to its path)", ErrNoTool, name, serverMajor, pkg)
		if len(problems) > 0 {
			msg += ": " + strings.Join(problems, "; ")
		}
		return Tool{}, errors.New(msg)
	}
	sort.SliceStable(found, func(i, j int) bool { return found[i].Major < found[j].Major })
	for _, t := range found {
		if t.Major >= serverMajor {
			return t, nil
		}
	}
	newest := found[len(found)-1]
	return Tool{}, fmt.Errorf("%w: %s %s at %s is older than the PostgreSQL %d server and cannot dump or restore it; install the %s package (or point pg_dump: at a %s of version %d or newer)",
		ErrNoTool, name, newest.Version, newest.Path, serverMajor, pkg, name, serverMajor)
}

// Conn splits a DSN into what a client program may see on its command line
// (the DSN without its password) and the environment carrying the password.
type Conn struct {
	// DSN without the password, for --dbname.
	DSN string
	// Env holds PGPASSWORD when the DSN had one.
	Env []string
	// Redacted is safe for logs and errors.
	Redacted string
	// Password, for scrubbing program output.
	Password string
}

var kvPassword = regexp.MustCompile(`(?i)(^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S*)`)

// Split parses dsn (URL or key=value form) and removes its password.
func Split(dsn string) (Conn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse error can quote the DSN; keep only the redacted form.
		return Conn{}, fmt.Errorf("parse DSN %s: invalid connection string", Redact(dsn))
	}
	c := Conn{Password: cfg.Password}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return Conn{}, fmt.Errorf("parse DSN %s: invalid URL", Redact(dsn))
		}
		if u.User != nil {
			u.User = url.User(u.User.Username())
		}
		q := u.Query()
		if q.Has("password") {
			q.Del("password")
			u.RawQuery = q.Encode()
		}
		c.DSN = u.String()
	} else {
		c.DSN = strings.TrimSpace(kvPassword.ReplaceAllString(dsn, "$1"))
	}
	c.Redacted = Redact(dsn)
	if cfg.Password != "" {
		c.Env = append(c.Env, "PGPASSWORD="+cfg.Password)
	}
	return c, nil
}

// Redact returns dsn with any password replaced by "xxxxx".
func Redact(dsn string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "(unparsable postgres URL)"
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", "xxxxx")
			u.RawQuery = q.Encode()
		}
		return u.Redacted()
	}
	return kvPassword.ReplaceAllString(dsn, "${1}password=xxxxx")
}

// Scrub removes secret from err's text, keeping err in the chain for
// errors.Is/As. It returns err unchanged when there is nothing to scrub.
func Scrub(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return scrubbed{err: err, msg: strings.ReplaceAll(err.Error(), secret, "xxxxx")}
}

type scrubbed struct {
	err error
	msg string
}

func (s scrubbed) Error() string { return s.msg }
func (s scrubbed) Unwrap() error { return s.err }

// Env returns the environment for a client program: the process
// environment without any inherited PG* connection variables that could
// override the DSN, plus extra.
func Env(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PGPASSWORD" || k == "PGPASSFILE" || k == "PGSERVICE" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// TailBuffer keeps the last Max bytes written to it (a program's stderr).
type TailBuffer struct {
	Max int
	buf []byte
	cut bool
}

// Write keeps the tail of p.
func (t *TailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.Max; t.Max > 0 && over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.cut = true
	}
	return len(p), nil
}

// String returns the kept text, marked when truncated.
func (t *TailBuffer) String() string {
	s := strings.TrimSpace(string(t.buf))
	if t.cut {
		s = "…" + s
	}
	return s
}
