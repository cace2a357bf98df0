package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/opsd-dev/opsd/internal/backup/manifest"
	"github.com/opsd-dev/opsd/internal/backup/pgtool"
)

// Command backs up a program's standard output. The program runs from its
// argv, never through a shell; a non-zero exit fails the backup.
type Command struct {
	Argv []string
	// Env ("K=V") is added to a minimal environment (PATH, HOME, LANG,
	// LC_ALL, TZ, TMPDIR from opsd's own): the daemon's environment holds
	// secrets the command has no business seeing. Values may be secrets and
	// are never logged.
	Env []string
	// Extension names the data object (data.<ext>.zst.age); default "out".
	Extension string
}

// Kind returns the extension.
func (c *Command) Kind() string {
	if c.Extension == "" {
		return "out"
	}
	return c.Extension
}

// Open starts the program.
func (c *Command) Open(ctx context.Context) (Stream, error) {
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return nil, errors.New("command source: empty argv")
	}
	p, err := startProc(ctx, c.Argv[0], c.Argv[1:], append(baseEnv(), c.Env...), "")
	if err != nil {
		return nil, err
	}
	p.meta = func(code int) manifest.SourceMeta {
		return manifest.SourceMeta{Command: &manifest.CommandMeta{Argv: c.Argv, ExitCode: code}}
	}
	return p, nil
}

// proc is a running child whose stdout is the data.
type proc struct {
	name   string
	cmd    *exec.Cmd
	stdout io.ReadCloser
	stderr *pgtool.TailBuffer
	cancel context.CancelFunc
	secret string // scrubbed from errors and stderr
	eof    bool
	meta   func(exitCode int) manifest.SourceMeta
	// after runs once the child has exited (e.g. end the snapshot
	// transaction); its error fails the stream.
	after func() error

	once sync.Once
	res  Result
	err  error
}

func startProc(ctx context.Context, prog string, args, env []string, secret string) (*proc, error) {
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, prog, args...)
	// Its own process group, killed whole on cancel or timeout: a shell's
	// children would otherwise keep the output pipe open and the backup
	// waiting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = env
	cmd.Stdin = nil
	tail := &pgtool.TailBuffer{Max: stderrMax}
	cmd.Stderr = tail
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, fmt.Errorf("start %s: %w", prog, err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start %s: %w", prog, err)
	}
	return &proc{name: prog, cmd: cmd, stdout: out, stderr: tail, cancel: cancel, secret: secret}, nil
}

func (p *proc) Read(b []byte) (int, error) {
	n, err := p.stdout.Read(b)
	if err == io.EOF {
		p.eof = true
	}
	return n, err
}

// Finish kills the child if its output was not read to the end, waits for
// it and checks its exit status.
func (p *proc) Finish() (Result, error) {
	p.once.Do(func() {
		if !p.eof {
			p.cancel()
		}
		werr := p.cmd.Wait()
		p.cancel()
		stderr := strings.ReplaceAll(p.stderr.String(), nonEmpty(p.secret), "xxxxx")
		p.res.Log = stderr
		code := p.cmd.ProcessState.ExitCode()
		if p.meta != nil {
			p.res.Meta = p.meta(code)
		}
		switch {
		case !p.eof && werr == nil:
			p.err = fmt.Errorf("%s: output not read to the end (backup aborted)", p.name)
		case werr != nil:
			msg := fmt.Sprintf("%s: %v", p.name, werr)
			if stderr != "" {
				msg += ": " + lastLines(stderr, 5)
			}
			p.err = pgtool.Scrub(errors.New(msg), p.secret)
		}
		if p.after != nil {
			if aerr := p.after(); aerr != nil && p.err == nil {
				p.err = aerr
			}
		}
	})
	return p.res, p.err
}

func nonEmpty(s string) string {
	if s == "" {
		return "\x00never\x00"
	}
	return s
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// baseEnv is the part of opsd's environment a child program gets.
func baseEnv() []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}
