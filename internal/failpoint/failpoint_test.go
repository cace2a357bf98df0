package failpoint

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// TestHit runs this test binary again with OPSD_FAILPOINT set and checks
// that the child dies by SIGKILL exactly at the hit asked for.
func TestHit(t *testing.T) {
	if os.Getenv("FAILPOINT_CHILD") == "1" {
		for i := 1; i <= 3; i++ {
			Hit("other")
			Hit("p")
			os.Stdout.WriteString("hit " + string(rune('0'+i)) + "\n")
		}
		os.Exit(0)
	}
	tests := []struct {
		env      string
		killed   bool
		wantHits string
	}{
		{"", false, "hit 1\nhit 2\nhit 3\n"},
		{"p", true, ""},
		{"p:2", true, "hit 1\n"},
		{"p:3", true, "hit 1\nhit 2\n"},
		{"p:9", false, "hit 1\nhit 2\nhit 3\n"},
		{"q", false, "hit 1\nhit 2\nhit 3\n"},
	}
	for _, tt := range tests {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHit$")
		cmd.Env = append(os.Environ(), "FAILPOINT_CHILD=1", Env+"="+tt.env)
		out, err := cmd.Output()
		killed := false
		if ee, ok := err.(*exec.ExitError); ok {
			ws, _ := ee.Sys().(syscall.WaitStatus)
			killed = ws.Signaled() && ws.Signal() == syscall.SIGKILL
		} else if err != nil {
			t.Fatal(err)
		}
		if killed != tt.killed || string(out) != tt.wantHits {
			t.Errorf("OPSD_FAILPOINT=%q: killed = %v, output %q; want %v, %q", tt.env, killed, out, tt.killed, tt.wantHits)
		}
	}
}
