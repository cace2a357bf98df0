package config_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"filippo.io/age"
	"go.yaml.in/yaml/v3"

	"github.com/opsd-dev/opsd/internal/config"
)

// The configuration reference must not lie: every ```yaml block in
// docs/CONFIG.md is loaded with the real loader. A block preceded by
// <!-- broken: N problems --> must yield exactly N problems, and the ```text
// block after it, if any, must be exactly what `opsd config check` prints;
// every other block (the complete examples are marked <!-- example: NAME -->)
// must load with no problem at all.

const configDoc = "../../docs/CONFIG.md"

type docBlock struct {
	line    int    // line of the opening fence in the doc
	marker  string // "example", "broken" or ""
	name    string
	broken  int // expected problems for a broken block
	yaml    string
	output  []string // lines of the ```text block that follows a broken block
	hasText bool
}

var (
	exampleMarker = regexp.MustCompile(`^<!-- example: (.+) -->$`)
	brokenMarker  = regexp.MustCompile(`^<!-- broken: (\d+) problems? -->$`)
)

// docBlocks extracts the fenced blocks of doc.
func docBlocks(t *testing.T, doc string) []*docBlock {
	t.Helper()
	var (
		blocks    []*docBlock
		cur       *docBlock // the yaml block being read
		text      *docBlock // the broken block whose ```text output is being read
		inFence   bool
		lastInfo  string // last non-blank line outside a fence
		lastBlock *docBlock
	)
	sc := bufio.NewScanner(strings.NewReader(doc))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		if inFence {
			if trimmed == "```" {
				inFence, cur, text = false, nil, nil
				continue
			}
			switch {
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
			}
			continue
		}
		inFence = true
		switch lang := strings.TrimPrefix(trimmed, "```"); lang {
		case "yaml", "yml":
			b := &docBlock{line: n, name: "line" + strconv.Itoa(n)}
			if m := exampleMarker.FindStringSubmatch(lastInfo); m != nil {
				b.marker, b.name = "example", m[1]
			} else if m := brokenMarker.FindStringSubmatch(lastInfo); m != nil {
				b.marker, b.name = "broken", "broken at line "+strconv.Itoa(n)
				b.broken, _ = strconv.Atoi(m[1])
			}
			blocks = append(blocks, b)
			cur, lastBlock = b, b
		case "text":
			// The output shown right after a broken example.
			if lastBlock != nil && lastBlock.marker == "broken" && !lastBlock.hasText {
				text, lastBlock.hasText = lastBlock, true
			}
		}
		lastInfo = ""
	}
	if inFence {
		t.Fatalf("%s: unterminated code fence", configDoc)
	}
	return blocks
}

func TestConfigDocExamples(t *testing.T) {
	data, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	blocks := docBlocks(t, string(data))
	var examples, broken int
	for _, b := range blocks {
		switch b.marker {
		case "example":
			examples++
		case "broken":
			broken++
		}
	}
	if examples < 2 || broken < 1 {
		t.Fatalf("%s has %d complete examples and %d broken ones; want at least 2 and 1", configDoc, examples, broken)
	}

	for _, b := range blocks {
		t.Run(b.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "opsd.yaml")
			createFixtures(t, dir, b.yaml)
			cfg, err := config.Parse(file, []byte(b.yaml), docGetenv)
			if b.marker != "broken" {
				if err != nil {
					t.Fatalf("%s:%d: the example does not load:\n%s", configDoc, b.line, strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), ""))
				}
				if cfg == nil {
					t.Fatal("Parse returned neither a config nor an error")
				}
				return
			}
			var problems config.Problems
			if !errors.As(err, &problems) {
				t.Fatalf("%s:%d: want %d problems, got err = %v", configDoc, b.line, b.broken, err)
			}
			got := strings.ReplaceAll(problems.Error(), dir+string(filepath.Separator), "")
			if len(problems) != b.broken {
				t.Fatalf("%s:%d: marked as %d problems, got %d:\n%s", configDoc, b.line, b.broken, len(problems), got)
			}
			if !b.hasText {
				return
			}
			want := strings.Split(got, "\n")
			want = append(want, fmt.Sprintf("opsd config check: %d problem(s) in the configuration", len(problems)))
			if shown := strings.Join(b.output, "\n"); shown != strings.Join(want, "\n") {
				t.Errorf("%s:%d: the output shown after the broken example is stale;\nshown:\n%s\nwant:\n%s",
					configDoc, b.line, shown, strings.Join(want, "\n"))
			}
		})
	}
}

// The doc refers to examples/quickstart.yaml rather than copying it; it
// must load as it is.
func TestConfigDocQuickstart(t *testing.T) {
	if _, err := config.Load("../../examples/quickstart.yaml", nil); err != nil {
		t.Fatalf("examples/quickstart.yaml does not load:\n%v", err)
	}
}

// docGetenv supplies every ${NAME} the examples use: a DSN for names
// ending in DSN, a plain word otherwise.
func docGetenv(name string) string {
	if strings.HasSuffix(name, "DSN") {
		return "postgres://opsd@db.example.internal:5432/" + strings.ToLower(name) + "?sslmode=verify-full"
	}
	return "example-" + strings.ToLower(strings.ReplaceAll(name, "_", "-"))
}

// fileKeys are the keys whose value is a file the loader stats or reads.
var fileKeys = map[string]bool{
	"cert_file": true, "key_file": true, "client_ca_file": true,
	"sha256_file": true, "credentials_file": true,
	"age_recipients_file": true, "age_identity_file": true,
	"token_file": true, "auth_password_file": true, "url_file": true,
	"prices": true,
}

var fileRef = regexp.MustCompile(`\$\{file:([^}]*)\}`)

// createFixtures creates, under dir, every file the YAML refers to through
// a file key or ${file:PATH}, with content the loader accepts. Examples
// refer to such files by paths relative to the config file, which is how
// the test can supply them.
func createFixtures(t *testing.T, dir, src string) {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(src), &doc); err != nil {
		return // a broken example may be broken YAML; Parse reports it
	}
	var walk func(n *yaml.Node, depth int)
	walk = func(n *yaml.Node, depth int) {
		if n == nil || depth > 64 {
			return
		}
		if n.Kind == yaml.AliasNode {
			walk(n.Alias, depth+1)
			return
		}
		if n.Kind == yaml.ScalarNode {
			for _, m := range fileRef.FindAllStringSubmatch(n.Value, -1) {
				writeFixture(t, dir, m[1], "${file:}")
			}
			return
		}
		if n.Kind == yaml.MappingNode {
			generate := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if n.Content[i].Value == "generate" && n.Content[i+1].Value == "true" {
					generate = true
				}
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i].Value, n.Content[i+1]
				if fileKeys[k] && v.Kind == yaml.ScalarNode && v.Value != "" && !strings.Contains(v.Value, "${") &&
					!(k == "age_identity_file" && generate) && !(k == "prices" && v.Value == "builtin") {
					writeFixture(t, dir, v.Value, k)
				}
			}
		}
		for _, c := range n.Content {
			walk(c, depth+1)
		}
	}
	walk(&doc, 0)
}

func writeFixture(t *testing.T, dir, p, key string) {
	t.Helper()
	if filepath.IsAbs(p) {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("the example refers to %s (%s), which opsd checks at load: write it relative to the config file so the test can create it", p, key)
		}
		return
	}
	full := filepath.Join(dir, p)
	var content string
	switch key {
	case "sha256_file":
		sum := sha256.Sum256([]byte("token for " + p))
		content = hex.EncodeToString(sum[:]) + "  -\n"
	case "age_recipients_file":
		id, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		content = "# test recipients\n" + id.Recipient().String() + "\n"
	case "age_identity_file":
		id, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		content = "# created: test\n" + id.String() + "\n"
	case "${file:}":
		switch base := strings.ToLower(filepath.Base(p)); {
		case strings.Contains(base, "dsn"):
			content = "postgres://opsd@db.example.internal/app\n"
		case strings.Contains(base, "url"):
			content = "https://hooks.example.com/secret\n"
		default:
			content = "fixture-" + strings.Map(func(r rune) rune {
				if unicode.IsLetter(r) || unicode.IsDigit(r) {
					return r
				}
				return '-'
			}, base) + "\n"
		}
	default:
		content = "fixture for " + key + "\n"
	}
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// docs/alerts.md has one "## AlertName" section per alert of the shipped
// Prometheus rules, and each rule's runbook_url points at its anchor as
// GitHub renders it.
func TestAlertsDocMatchesRules(t *testing.T) {
	rulesData, err := os.ReadFile("../../deploy/prometheus/opsd-rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(rulesData, &rules); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("../../docs/alerts.md")
	if err != nil {
		t.Fatal(err)
	}
	headings := map[string]string{} // heading text -> anchor
	for line := range strings.Lines(string(doc)) {
		if h, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), "## "); ok {
			headings[strings.TrimSpace(h)] = githubAnchor(h)
		}
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts[r.Alert] = true
			anchor, ok := headings[r.Alert]
			if !ok {
				t.Errorf("docs/alerts.md has no \"## %s\" section", r.Alert)
				continue
			}
			u := r.Annotations["runbook_url"]
			_, frag, _ := strings.Cut(u, "#")
			if !strings.Contains(u, "docs/alerts.md#") || frag != anchor {
				t.Errorf("%s: runbook_url %q does not point at docs/alerts.md#%s", r.Alert, u, anchor)
			}
		}
	}
	if len(alerts) == 0 {
		t.Fatal("no alerts found in deploy/prometheus/opsd-rules.yaml")
	}
	alertName := regexp.MustCompile(`^[A-Z][a-z]+(?:[A-Z][a-z]+)+$`)
	for h := range headings {
		if alertName.MatchString(h) && !alerts[h] {
			t.Errorf("docs/alerts.md has a section for %s, which is not an alert in the rule file", h)
		}
	}
}

// githubAnchor is the fragment GitHub gives a heading: lower case, spaces
// to hyphens, punctuation other than '-' and '_' dropped.
func githubAnchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}
