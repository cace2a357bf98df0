package dr

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// An exec program runs in its own process group, which a timeout or cancel
// kills. A crash of opsd (kill -9, OOM) kills nothing: the program and its
// descendants run on, and a resumed run could start the step again next to
// them. So while a program runs, exec keeps a record of its process group in
// Builtins.ExecStateDir, and the next start (RegisterBuiltins) kills the
// groups a crash left behind, before any run resumes.
//
// A record is a file named after the group's id holding the boot id and the
// leader's start time (/proc, clock ticks since boot). In the same boot only:
// while the leader lives, the group is killed only if the leader's start
// time matches (a leader that started otherwise holds a reused id); once the
// leader is gone, Linux does not hand its id to a new process while any
// member of the group lives, so the members still in the group that started
// no earlier than the leader are the program's descendants. (The one case
// left: the whole group ended, the id was reused by a new group leader that
// then exited leaving members. The reap runs at the start right after a
// crash, which makes that very unlikely.)

const (
	procRoot   = "/proc"
	bootIDFile = "/proc/sys/kernel/random/boot_id"
)

// procStat is what exec needs of /proc/PID/stat.
type procStat struct {
	state     byte
	pgrp      int
	startTime uint64
}

func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may hold spaces: fields
	// count from after its closing one.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), f[2] field 5 (pgrp), f[19] field 22
	// (starttime).
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, errors.New("malformed stat")
	}
	pgrp, err1 := strconv.Atoi(f[2])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procStat{}, errors.New("malformed stat")
	}
	return procStat{state: f[0][0], pgrp: pgrp, startTime: start}, nil
}

func bootID() string {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// recordGroup notes the running process group pgid; the returned function
// removes the note. Best effort: without /proc or a writable directory
// nothing is recorded (and a crash leaves the group running, as before).
func recordGroup(dir string, pgid int, logger *slog.Logger) func() {
	noop := func() {}
	if dir == "" {
		return noop
	}
	st, err := readProcStat(pgid)
	boot := bootID()
	if err != nil || boot == "" {
		return noop
	}
	path := filepath.Join(dir, strconv.Itoa(pgid))
	err = os.MkdirAll(dir, 0o700)
	if err == nil {
		err = os.WriteFile(path, fmt.Appendf(nil, "%s %d\n", boot, st.startTime), 0o600)
	}
	if err != nil {
		logger.Warn("exec: cannot record the program's process group; a crash would leave it running", "err", err)
		return noop
	}
	return func() { _ = os.Remove(path) }
}

// ReapExec kills the processes of every exec program recorded in dir — the
// programs a crash of opsd left running — and removes the records. It
// returns how many processes it killed. RegisterBuiltins calls it.
func ReapExec(dir string, logger *slog.Logger) (int, error) {
	if dir == "" {
		return 0, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reap exec programs: %w", err)
	}
	boot := bootID()
	killed := 0
	for _, e := range entries {
		pgid, err := strconv.Atoi(e.Name())
		path := filepath.Join(dir, e.Name())
		if err != nil || pgid <= 1 {
			continue
		}
		b, err := os.ReadFile(path)
		var recBoot string
		var start uint64
		if err == nil {
			_, err = fmt.Sscanf(string(b), "%s %d", &recBoot, &start)
		}
		if err == nil && recBoot == boot && boot != "" {
			n := killGroupSince(pgid, start)
			if n > 0 {
				logger.Warn("exec: killed a program a crash of opsd left running", "pgid", pgid, "processes", n)
			}
			killed += n
		}
		_ = os.Remove(path)
	}
	return killed, nil
}

// killGroupSince SIGKILLs the processes of group pgid, started at start
// (clock ticks since boot), and returns how many.
func killGroupSince(pgid int, start uint64) int {
	if st, err := readProcStat(pgid); err == nil && st.pgrp == pgid && st.startTime != start {
		return 0 // the leader's id was reused: not our program
	}
	procs, err := os.ReadDir(procRoot)
	if err != nil {
		return 0
	}
	n := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		st, err := readProcStat(pid)
		if err != nil || st.pgrp != pgid || st.startTime < start || st.state == 'Z' {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}
