package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse checks that no input makes Parse panic and that a failure is
// always a non-empty Problems.
func FuzzParse(f *testing.F) {
	for _, glob := range []string{"testdata/good/*.yaml", "testdata/bad/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			data, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(string(data))
		}
	}
	f.Fuzz(func(t *testing.T, data string) {
		c, err := Parse("testdata/good/fuzz.yaml", []byte(data), testEnv)
		if err == nil {
			if c == nil {
				t.Fatal("Parse returned neither a config nor an error")
			}
			return
		}
		var ps Problems
		if !errors.As(err, &ps) || len(ps) == 0 {
			t.Fatalf("Parse error %T %v, want non-empty Problems", err, err)
		}
	})
}

// TestAliasBomb checks that a "billion laughs" document is refused quickly
// instead of being expanded.
func TestAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("x-lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n")
	for i := 1; i <= 9; i++ {
		prev := "*l" + string(rune('0'+i-1))
		b.WriteString("x-lol" + string(rune('0'+i)) + ": &l" + string(rune('0'+i)) + " [" +
			strings.Repeat(prev+", ", 9) + prev + "]\n")
	}
	b.WriteString("sources: {p: {config: {k: *l9}}}\n")
	_, err := Parse("bomb.yaml", []byte(b.String()), testEnv)
	if err == nil || !strings.Contains(err.Error(), "too many alias expansions") {
		t.Errorf("Parse(alias bomb) = %v, want a too many alias expansions problem", err)
	}
}
