package runbook

import (
	"bufio"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/config"
)

// The runbook reference must not lie: every ```yaml block in
// docs/RUNBOOKS.md is parsed with the real parser against testdata's
// config. A block after <!-- broken: N problems --> must yield exactly N
// problems, and the ```text block after it must be exactly those problems
// (the file named runbook.yaml); every other block must check clean.

const runbooksDoc = "../../../docs/RUNBOOKS.md"

var brokenMarker = regexp.MustCompile(`^<!-- broken: (\d+) problems? -->$`)

type docBlock struct {
	line   int
	broken int // -1: must pass
	yaml   string
	output []string
}

func docBlocks(t *testing.T, doc string) []*docBlock {
	t.Helper()
	var (
		blocks          []*docBlock
		cur, text, last *docBlock
		inFence         bool
		lastInfo        string
	)
	sc := bufio.NewScanner(strings.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if inFence {
			switch {
			case trimmed == "```":
				inFence, cur, text = false, nil, nil
			case cur != nil:
				cur.yaml += line + "\n"
			case text != nil:
				text.output = append(text.output, line)
			}
			continue
		}
		if !strings.HasPrefix(trimmed, "```") {
			if trimmed != "" {
				lastInfo = trimmed
				last = nil
			}
			continue
		}
		inFence = true
		switch strings.TrimPrefix(trimmed, "```") {
		case "yaml":
			cur = &docBlock{line: n, broken: -1}
			if m := brokenMarker.FindStringSubmatch(lastInfo); m != nil {
				cur.broken, _ = strconv.Atoi(m[1])
			}
			blocks = append(blocks, cur)
			last = cur
		case "text":
			if last != nil && last.broken >= 0 {
				text = last
			}
			last = nil
		}
		lastInfo = ""
	}
	return blocks
}

func TestDocsExamples(t *testing.T) {
	data, err := os.ReadFile(runbooksDoc)
	if err != nil {
		t.Fatal(err)
	}
	refs := testRefs(t)
	blocks := docBlocks(t, string(data))
	if len(blocks) < 5 {
		t.Fatalf("found %d yaml blocks in %s, want the examples", len(blocks), runbooksDoc)
	}
	for _, b := range blocks {
		_, err := Parse("runbook.yaml", []byte(b.yaml), refs)
		if b.broken < 0 {
			if err != nil {
				t.Errorf("%s:%d: example does not check:\n%v", runbooksDoc, b.line, err)
			}
			continue
		}
		var ps config.Problems
		if !errors.As(err, &ps) || len(ps) != b.broken {
			t.Errorf("%s:%d: broken example gives %d problems, want %d:\n%v", runbooksDoc, b.line, len(ps), b.broken, err)
			continue
		}
		if b.output == nil {
			continue
		}
		if diff := cmp.Diff(strings.Join(b.output, "\n"), err.Error()); diff != "" {
			t.Errorf("%s:%d: shown output differs (-doc +actual):\n%s", runbooksDoc, b.line, diff)
		}
	}
}

// TestDocsActions checks that the reference documents every built-in
// action, its idempotency, every with: key and every output.
func TestDocsActions(t *testing.T) {
	data, err := os.ReadFile(runbooksDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, a := range Actions() {
		idem := "no"
		if a.Idempotent {
			idem = "yes"
		}
		if !strings.Contains(doc, "| `"+a.Name+"` | "+idem+" |") {
			t.Errorf("the actions table does not say %s is idempotent: %s", a.Name, idem)
		}
		head := "### `" + a.Name + "`\n"
		i := strings.Index(doc, head)
		if i < 0 {
			t.Errorf("no section %q", strings.TrimSpace(head))
			continue
		}
		section := doc[i+len(head):]
		if j := strings.Index(section, "\n### "); j >= 0 {
			section = section[:j]
		}
		for _, f := range a.Fields {
			row := "| `" + f.Name + "` |"
			if !strings.Contains(section, row) {
				t.Errorf("section %s does not document with.%s", a.Name, f.Name)
			} else if f.Required != strings.Contains(section[strings.Index(section, row):][:strings.Index(section[strings.Index(section, row):], "\n")], "**required**") {
				t.Errorf("section %s: with.%s required = %v in the code, not in the doc", a.Name, f.Name, f.Required)
			}
		}
		for _, o := range a.Outputs {
			if !strings.Contains(section, "`"+o.Name+"`") {
				t.Errorf("section %s does not document output %s", a.Name, o.Name)
			}
		}
	}
}
