package runbook

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opsd-dev/opsd/internal/config"
)

// FuzzParse checks that no input makes Parse panic, that a failure is
// always a non-empty, positioned Problems, and that what passes can be
// rendered without panicking.
func FuzzParse(f *testing.F) {
	for _, glob := range []string{"testdata/bad/*.yaml", "../../../runbooks/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(string(data))
		}
	}
	f.Add(evalRunbook)
	f.Add("name: a\nsteps: [{id: a, uses: exec, with: {argv: [\"$${{\"]}}]\n")
	f.Fuzz(func(t *testing.T, data string) {
		rb, err := Parse("fuzz.yaml", []byte(data), &References{})
		if err != nil {
			var ps config.Problems
			if !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("Parse error %T %v, want non-empty Problems", err, err)
			}
			for _, p := range ps {
				if p.File != "fuzz.yaml" || p.Msg == "" || strings.Contains(p.Msg, "\n") {
					t.Fatalf("malformed problem %q", p)
				}
			}
			return
		}
		env := &Env{Mode: ModeDrill}
		for _, s := range rb.Steps {
			for _, v := range s.With {
				_, _ = v.Eval(env)
			}
			if s.If != nil {
				_, _ = s.If.EvalBool(env)
			}
		}
	})
}

// TestAliasBomb checks that a "billion laughs" document is refused quickly.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("x-l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i <= 9; i++ {
		prev := "*l" + string(rune('0'+i-1))
		b.WriteString("x-l" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + " [" + strings.Repeat(prev+", ", 9) + prev + "]\n")
	}
	b.WriteString("name: bomb\nsteps: [{id: a, uses: plugin:x, with: {k: *l9}}]\n")
	_, err := Parse("bomb.yaml", []byte(b.String()), nil)
	if err == nil || !strings.Contains(err.Error(), "too many alias expansions") {
		t.Errorf("Parse(alias bomb) = %v, want a too many alias expansions problem", err)
	}
}
