package audit

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/testenv"
)

// buildTool builds a main package of this module into a temporary dir.
func buildTool(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	gobin, err := exec.LookPath("go")
	if err != nil {
		testenv.Missing(t, "the go tool is not on PATH: %v", err)
	}
	cmd := exec.Command(gobin, "build", "-o", bin, pkg)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

type ack struct{ writer, seq int }

// TestKill9 kills a real process with SIGKILL while 64 writers append, three
// times over the same log, and checks after each restart that every
// acknowledged entry is there and the log verifies.
func TestKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and kills a helper process")
	}
	bin := buildTool(t, "github.com/opsd-dev/opsd/internal/audit/internal/appendstress")
	dir := t.TempDir()
	keyFile := filepath.Join(t.TempDir(), "audit.key")
	g, err := signing.Generate("opsd.test/kill9")
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.WriteFiles(keyFile, g, false); err != nil {
		t.Fatal(err)
	}
	key, err := signing.Load(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	acked := map[int64]ack{}
	for round := range 3 {
		cmd := exec.Command(bin, "-dir", dir, "-key", keyFile, "-writers", "64")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		n, killed := 0, false
		deadline := time.Now().Add(20 * time.Second)
		want := 2000 + 1500*round
		for sc.Scan() {
			var idx int64
			var a ack
			if _, err := fmt.Sscanf(sc.Text(), "%d %d %d", &idx, &a.writer, &a.seq); err != nil {
				continue // a line torn by the kill was never fully acknowledged
			}
			acked[idx] = a
			n++
			if !killed && (n >= want || time.Now().After(deadline)) {
				killed = true
				if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
			}
		}
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: helper ended with %v, want SIGKILL", round, err)
		}
		if n < want {
			t.Fatalf("round %d: only %d acknowledgements before the kill", round, n)
		}

		l, err := Open(context.Background(), dir, Options{Key: key})
		if err != nil {
			t.Fatalf("round %d: reopen after kill -9: %v", round, err)
		}
		size := l.Size()
		ents, err := l.Entries(0, int(size))
		if err != nil {
			l.Close()
			t.Fatal(err)
		}
		missing := 0
		for idx, a := range acked {
			if idx >= size {
				missing++
				continue
			}
			e := ents[idx].Entry
			if e.Object != fmt.Sprintf("writer/%d", a.writer) || fmt.Sprint(e.Params["seq"]) != fmt.Sprint(a.seq) {
				t.Errorf("round %d: entry %d = %s %v, acknowledged as writer %d seq %d", round, idx, e.Object, e.Params, a.writer, a.seq)
			}
		}
		if missing > 0 {
			t.Errorf("round %d: %d acknowledged entries lost (log size %d)", round, missing, size)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		rep, err := Verify(context.Background(), dir, key.Verifier, nil)
		if err != nil || rep.Status() != StatusIntact {
			t.Fatalf("round %d: Verify after kill -9 = %s %+v, %v", round, rep.Status(), rep.Failure, err)
		}
		t.Logf("round %d: killed after %d acks; log has %d entries in %d segments, %d checkpoints; all %d acked entries present; verify intact",
			round, n, size, rep.SegmentsChecked, rep.CheckpointsChecked, len(acked))
	}
}
