package dr

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// MaxExecOutput caps what exec keeps of a program's stdout and of its stderr.
const MaxExecOutput = 64 << 10

// execAction runs a program from an argv list in its own process group.
// Parameters reach it only through OPSD_PARAM_<NAME> variables (and `env`).
type execAction struct {
	dir  string
	path string
	// state records running programs' process groups (execreap.go).
	state  string
	logger *slog.Logger
}

// ErrExitStatus is the error of an exec step whose program exited non-zero.
var ErrExitStatus = errors.New("program failed")

func (a *execAction) Run(ctx context.Context, sc *StepContext) (map[string]any, error) {
	raw, _ := sc.With["argv"].([]any)
	if len(raw) == 0 {
		return nil, errors.New("exec: argv is empty")
	}
	argv := make([]string, len(raw))
	for i, v := range raw {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("exec: argv[%d]: want a string, got %T", i, v)
		}
		argv[i] = s
	}
	path := a.path
	if path == "" {
		path = os.Getenv("PATH")
	}
	env := []string{"PATH=" + path, "LANG=C.UTF-8", "OPSD_RUN_ID=" + sc.RunID, "OPSD_STEP_ID=" + sc.StepID}
	if extra, ok := sc.With["env"].(map[string]any); ok {
		keys := make([]string, 0, len(extra))
		for k := range extra {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if strings.HasPrefix(k, "OPSD_PARAM_") {
				return nil, fmt.Errorf("exec: env %s: OPSD_PARAM_ variables are the parameters'", k)
			}
			env = append(env, k+"="+fmt.Sprint(extra[k]))
		}
	}
	env = append(env, sc.ExecEnv...)

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Dir = a.dir
	if d := sc.String("dir"); d != "" {
		cmd.Dir = d
	}
	// Its own process group, so that a timeout or cancel kills the program
	// and everything it started, grandchildren included.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// The pipes are files, so cmd.Wait returns when the program exits
	// rather than when every holder of the pipes (a background grandchild)
	// has closed them; the copies end once the group is killed.
	var stdout, stderr cappedBuffer
	var copies sync.WaitGroup
	var closers []*os.File
	for _, b := range []*cappedBuffer{&stdout, &stderr} {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("exec %s: %w", argv[0], err)
		}
		defer r.Close()
		closers = append(closers, w)
		if b == &stdout {
			cmd.Stdout = w
		} else {
			cmd.Stderr = w
		}
		copies.Go(func() { _, _ = io.Copy(b, r) })
	}
	err := cmd.Start()
	for _, w := range closers {
		_ = w.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("exec %s: %w", argv[0], err)
	}
	pgid := cmd.Process.Pid
	forget := recordGroup(a.state, pgid, a.logger)
	defer forget()
	killGroup := func() { _ = syscall.Kill(-pgid, syscall.SIGKILL) }
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		killGroup()
		<-done
		copies.Wait()
		return execOutputs(-1, &stdout, &stderr), fmt.Errorf("exec %s: killed: %w", argv[0], context.Cause(ctx))
	}
	// Descendants left behind by a program that exited go too: nothing a
	// step started outlives it.
	killGroup()
	copies.Wait()
	code := cmd.ProcessState.ExitCode()
	out := execOutputs(code, &stdout, &stderr)
	logOutput(ctx, sc, "stdout", stdout.String())
	logOutput(ctx, sc, "stderr", stderr.String())
	if err != nil {
		return out, fmt.Errorf("exec %s: %w (exit status %d): %s", argv[0], ErrExitStatus, code, lastLine(stderr.String()))
	}
	return out, nil
}

// maxLogLines bounds the output lines an exec step journals as log events.
const maxLogLines = 50

func logOutput(ctx context.Context, sc *StepContext, stream, s string) {
	if sc.Log == nil || s == "" {
		return
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > maxLogLines {
		lines = append(lines[:maxLogLines], fmt.Sprintf("(%d more lines in the step's %s output)", len(lines)-maxLogLines, stream))
	}
	sc.Log(ctx, stream+": "+strings.Join(lines, "\n"+stream+": "))
}

func execOutputs(code int, stdout, stderr *cappedBuffer) map[string]any {
	return map[string]any{"exit_code": code, "stdout": stdout.String(), "stderr": stderr.String()}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// cappedBuffer keeps the first MaxExecOutput bytes written and discards the
// rest, never blocking the program.
type cappedBuffer struct {
	mu        sync.Mutex
	b         []byte
	truncated bool
}

func (c *cappedBuffer) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	room := MaxExecOutput - len(c.b)
	if room < len(p) {
		c.truncated = true
		if room > 0 {
			c.b = append(c.b, p[:room]...)
		}
		return len(p), nil
	}
	c.b = append(c.b, p...)
	return len(p), nil
}

func (c *cappedBuffer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.ToValidUTF8(string(c.b), "\uFFFD")
}
