// Package source produces the raw bytes of a backup: a pg_dump, a tar of
// file trees, or a command's standard output. A Source is opened once per
// backup and read once; its Stream's Finish says whether the producer
// succeeded, so a producer that fails after writing some bytes fails the
// backup instead of leaving a truncated copy.
package source

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
	"github.com/opsd-dev/opsd/internal/config"
)

// Source produces a backup's data.
type Source interface {
	// Kind names the data format and the data object: "pgdump", "tar", or
	// a command source's extension.
	Kind() string
	// Open starts the producer. The caller reads the Stream to EOF (or
	// gives up) and then always calls Finish.
	Open(ctx context.Context) (Stream, error)
}

// Stream is an open source.
type Stream interface {
	io.Reader
	// Finish stops the producer if it is still running, waits for it and
	// reports how it ended. A nil error means every byte was delivered and
	// the producer succeeded; Result is complete only then.
	Finish() (Result, error)
}

// Result is what a finished producer reports.
type Result struct {
	// Meta goes into the manifest.
	Meta manifest.SourceMeta
	// Warnings go into the manifest and the log (e.g. files that changed
	// while being read).
	Warnings []string
	// Log is diagnostic output (a bounded tail of stderr) for the log only;
	// it never goes into the manifest.
	Log string
}

// Options are the host-level settings sources need besides their config.
type Options struct {
	Logger *slog.Logger
	// PGDumpDirs overrides where versioned pg_dump binaries are looked for.
	PGDumpDirs []string
}

// New builds the source named name from its config.
func New(name string, cfg *config.Source, opts Options) (Source, error) {
	switch cfg.Type {
	case "postgres":
		return &Postgres{DSN: string(cfg.DSN), Finder: pgtool.Finder{Configured: cfg.PGDump, Dirs: opts.PGDumpDirs}, Logger: opts.Logger}, nil
	case "files":
		return &Files{Paths: cfg.Paths, Exclude: cfg.Exclude, OneFileSystem: cfg.OneFileSystem}, nil
	case "command":
		env := make([]string, 0, len(cfg.Env))
		for k, v := range cfg.Env {
			env = append(env, k+"="+string(v))
		}
		return &Command{Argv: cfg.Command, Env: env, Extension: cfg.Extension}, nil
	default:
		return nil, fmt.Errorf("source %s: type %q has no built-in producer", name, cfg.Type)
	}
}

// stderrMax bounds the stderr kept from a child process.
const stderrMax = 64 << 10
