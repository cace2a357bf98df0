package dr

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/testenv"
)

func procAlive(pid int) bool {
	st, err := readProcStat(pid)
	return err == nil && st.state != 'Z'
}

// startGroup starts sh with a background child in its own process group,
// as exec does, and returns the leader's and the child's pids.
func startGroup(t *testing.T) (leader, child int) {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("sh", "-c", `sleep 60 & echo $! > "$0/child"; wait`, dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait() }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile(filepath.Join(dir, "child"))
		if n, perr := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && perr == nil {
			return cmd.Process.Pid, n
		}
		if time.Now().After(deadline) {
			t.Fatal("the background child did not start")
		}
	}
}

// requireProc skips, loudly, without Linux /proc (the boot id exec records
// carry); under CI=true it fails instead.
func requireProc(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(bootIDFile); err != nil {
		testenv.Missing(t, "no %s: exec records need Linux /proc", bootIDFile)
	}
}

// TestReapExec: the process group of a program recorded as running — what
// a crash of opsd leaves — is killed with its descendants by the next
// start, and its record removed; a record from another boot, or one whose
// leader started after the record (a reused id), kills nothing.
func TestReapExec(t *testing.T) {
	requireProc(t)
	logger := slog.New(slog.DiscardHandler)
	state := filepath.Join(t.TempDir(), "exec")

	leader, child := startGroup(t)
	recordGroup(state, leader, logger) // never forgotten: the "crash"
	other, otherChild := startGroup(t)
	st, err := readProcStat(other)
	if err != nil {
		t.Fatal(err)
	}
	// A record naming other's group, but of a leader that started before
	// other: the id was reused, other is not that program.
	if err := os.WriteFile(filepath.Join(state, strconv.Itoa(other)), fmt.Appendf(nil, "%s %d\n", bootID(), st.startTime-1), 0o600); err != nil {
		t.Fatal(err)
	}
	third, thirdChild := startGroup(t)
	if err := os.WriteFile(filepath.Join(state, strconv.Itoa(third)), []byte("another-boot 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	killed, err := ReapExec(state, logger)
	if err != nil {
		t.Fatal(err)
	}
	if killed != 2 {
		t.Errorf("ReapExec killed %d processes, want 2 (the recorded leader and its child)", killed)
	}
	for deadline := time.Now().Add(10 * time.Second); (procAlive(leader) || procAlive(child)) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if procAlive(leader) || procAlive(child) {
		t.Errorf("recorded group still running: leader %v, child %v", procAlive(leader), procAlive(child))
	}
	for _, pid := range []int{other, otherChild, third, thirdChild} {
		if !procAlive(pid) {
			t.Errorf("process %d killed, but its record did not match it", pid)
		}
	}
	if left, _ := os.ReadDir(state); len(left) != 0 {
		t.Errorf("records left after the reap: %v", left)
	}
}

// TestExecForgetsFinishedPrograms: a program that ends removes its record.
func TestExecForgetsFinishedPrograms(t *testing.T) {
	requireProc(t)
	state := filepath.Join(t.TempDir(), "exec")
	a := &execAction{dir: t.TempDir(), state: state, logger: slog.New(slog.DiscardHandler)}
	out, err := a.Run(t.Context(), &StepContext{RunID: "r", StepID: "s", With: map[string]any{"argv": []any{"sh", "-c",
		// The record is written just after the program starts.
		`for i in $(seq 200); do [ -n "$(ls "$0" 2>/dev/null)" ] && break; sleep 0.01; done; ls "$0" | wc -l`, state}}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(fmt.Sprint(out["stdout"])); got != "1" {
		t.Errorf("records while the program ran = %s, want 1", got)
	}
	if left, _ := os.ReadDir(state); len(left) != 0 {
		t.Errorf("records left after the program ended: %v", left)
	}
}
