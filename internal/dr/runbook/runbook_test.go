package runbook

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden .err files")

// testRefs are the names testdata/opsd.yaml defines, loaded with the real
// config loader.
func testRefs(t testing.TB) *References {
	t.Helper()
	cfg, err := config.Load("testdata/opsd.yaml", func(string) string { return "" })
	if err != nil {
		t.Fatalf("load test config: %v", err)
	}
	return ReferencesFromConfig(cfg)
}

// TestBadGolden checks that every problem of each bad runbook is reported,
// with its position, exactly as the golden .err file says.
func TestBadGolden(t *testing.T) {
	refs := testRefs(t)
	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no bad runbooks: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			rb, err := Load(file, refs)
			if err == nil {
				t.Fatalf("Load(%s) = %v, nil; want problems", file, rb.Name)
			}
			var ps config.Problems
			if !errors.As(err, &ps) || len(ps) == 0 {
				t.Fatalf("Load(%s) error %T %v, want config.Problems", file, err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(file, ".yaml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("read golden file (run with -update to create it): %v", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("problems of %s (-want +got):\n%s", file, diff)
			}
			for _, p := range ps {
				if p.File != file {
					t.Errorf("problem %q names file %q, want %q", p, p.File, file)
				}
			}
		})
	}
}

// TestManyMistakes checks the case directly: a runbook with many
// mistakes reports them all, each with line and column, sorted.
func TestManyMistakes(t *testing.T) {
	_, err := Load("testdata/bad/many.yaml", testRefs(t))
	var ps config.Problems
	if !errors.As(err, &ps) {
		t.Fatalf("Load = %v, want problems", err)
	}
	if len(ps) < 40 {
		t.Errorf("got %d problems, want every one of the 40+ mistakes", len(ps))
	}
	for i, p := range ps {
		if p.Line == 0 || p.Col == 0 {
			t.Errorf("problem %q has no position", p)
		}
		if i > 0 && (ps[i-1].Line > p.Line || (ps[i-1].Line == p.Line && ps[i-1].Col > p.Col)) {
			t.Errorf("problems not sorted: %q before %q", ps[i-1], p)
		}
	}
}

// TestShippedRunbooks checks that the runbooks in runbooks/ check clean
// against a config that defines what they name.
func TestShippedRunbooks(t *testing.T) {
	rbs, err := LoadDir("../../../runbooks", testRefs(t))
	if err != nil {
		t.Fatalf("LoadDir(runbooks) = %v", err)
	}
	names := map[string]bool{}
	for _, rb := range rbs {
		names[rb.Name] = true
		if rb.SHA256 == "" || len(rb.SHA256) != 64 {
			t.Errorf("%s: SHA256 = %q", rb.Name, rb.SHA256)
		}
		if rb.Objectives.RTO == 0 {
			t.Errorf("%s: no RTO objective", rb.Name)
		}
		recovered := 0
		for _, s := range rb.Steps {
			if s.HasMark(MarkRecovered) {
				recovered++
			}
		}
		if recovered != 1 {
			t.Errorf("%s: %d steps marked recovered, want 1", rb.Name, recovered)
		}
	}
	for _, want := range []string{"orders-restore-drill", "files-restore-drill", "failover-example"} {
		if !names[want] {
			t.Errorf("runbooks/ has no %s", want)
		}
	}
}

func TestParseOrdersDrill(t *testing.T) {
	rb, err := Load("../../../runbooks/orders-restore-drill.yaml", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rb.Objectives != (Objectives{RTO: 30 * time.Minute, RPO: time.Hour}) {
		t.Errorf("Objectives = %+v", rb.Objectives)
	}
	dsn := rb.Param("scratch_dsn")
	if dsn == nil || dsn.Type != TypeSecret || !dsn.Required {
		t.Errorf("scratch_dsn = %+v, want a required secret", dsn)
	}
	if p := rb.Param("min_orders"); p == nil || p.Type != TypeInt || p.Default != 1 {
		t.Errorf("min_orders = %+v, want int default 1", p)
	}
	restore := rb.Step("restore")
	if restore == nil {
		t.Fatal("no restore step")
	}
	wantRetry := Retry{MaxAttempts: 3, Backoff: Backoff{Initial: 10 * time.Second, Factor: 2, Max: 2 * time.Minute}}
	if restore.Retry != wantRetry || restore.Timeout != 20*time.Minute {
		t.Errorf("restore retry %+v timeout %v", restore.Retry, restore.Timeout)
	}
	if restore.Idempotent() {
		t.Error("backup.restore is idempotent, want not")
	}
	if !restore.With["to_postgres"].Secret() {
		t.Error("to_postgres reads a secret parameter but is not marked secret")
	}
	if restore.With["source"].Secret() {
		t.Error("source is marked secret")
	}
	if s := rb.Step("switch-dns"); s == nil || !s.LiveOnly || s.Compensate == nil || s.Compensate.Uses != "plugin:dns-failover" || s.Plugin() != "dns-failover" {
		t.Errorf("switch-dns = %+v", s)
	}
	if s := rb.Step("approve-cutover"); s == nil || s.If == nil || !s.Idempotent() {
		t.Errorf("approve-cutover = %+v, want a condition and idempotent", s)
	}
	var order []string
	for _, s := range rb.RunOrder() {
		order = append(order, s.ID)
	}
	wantOrder := []string{"verify", "restore", "check", "fresh-enough", "approve-cutover", "switch-dns", "announce"}
	if diff := cmp.Diff(wantOrder, order); diff != "" {
		t.Errorf("RunOrder (-want +got):\n%s", diff)
	}
}

func TestIdempotent(t *testing.T) {
	want := map[string]bool{
		ActionBackupRun: false, ActionBackupRestore: false, ActionBackupVerify: true,
		ActionSQLQuery: false, ActionSQLCheck: true, ActionHTTPRequest: false, ActionHTTPCheck: true,
		ActionExec: false, ActionWait: true, ActionApproval: true, ActionNotify: true, ActionAssert: true,
	}
	actions := Actions()
	if len(actions) != len(want) {
		t.Errorf("Actions() has %d actions, want %d", len(actions), len(want))
	}
	for _, a := range actions {
		if w, ok := want[a.Name]; !ok || a.Idempotent != w {
			t.Errorf("%s: Idempotent = %v, want %v (known %v)", a.Name, a.Idempotent, w, ok)
		}
	}
	rb, err := Parse("x.yaml", []byte(`name: x
steps:
  - {id: a, uses: exec, with: {argv: [true]}, idempotent: true}
  - {id: b, uses: wait, with: {duration: 1s}, idempotent: false}
  - {id: c, uses: plugin:p, with: {}}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, w := range map[string]bool{"a": true, "b": false, "c": false} {
		if got := rb.Step(id).Idempotent(); got != w {
			t.Errorf("step %s: Idempotent() = %v, want %v", id, got, w)
		}
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 10 * time.Second, Factor: 2, Max: time.Minute}
	tests := []struct {
		give int
		want time.Duration
	}{{1, 10 * time.Second}, {2, 20 * time.Second}, {3, 40 * time.Second}, {4, time.Minute}, {50, time.Minute}}
	for _, tt := range tests {
		if got := b.Delay(tt.give); got != tt.want {
			t.Errorf("Delay(%d) = %v, want %v", tt.give, got, tt.want)
		}
	}
}

func TestResolveParams(t *testing.T) {
	rb, err := Parse("p.yaml", []byte(`name: p
params:
  dsn: {type: secret, required: true}
  n: {type: int, default: 3}
  dry: {type: bool}
  env: {type: enum, values: [staging, prod], default: staging}
  note: {}
steps: [{id: a, uses: wait, with: {duration: 1s}}]
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := rb.ResolveParams(map[string]any{"dsn": "postgres://u:hunter2@db/x", "n": "7", "dry": true})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"dsn": "postgres://u:hunter2@db/x", "n": 7, "dry": true, "env": "staging", "note": ""}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ResolveParams (-want +got):\n%s", diff)
	}
	if s := rb.Secrets(got); len(s) != 1 || s[0] != "postgres://u:hunter2@db/x" {
		t.Errorf("Secrets = %v", s)
	}
	env := rb.ExecEnv(got)
	if !cmp.Equal(env[0], "OPSD_PARAM_DRY=true") || len(env) != 5 {
		t.Errorf("ExecEnv = %v", env)
	}
	_, err = rb.ResolveParams(map[string]any{"dsn": 5, "n": "many", "env": "qa", "extra": "x"})
	if err == nil {
		t.Fatal("ResolveParams accepted bad parameters")
	}
	for _, want := range []string{`unknown parameter "extra"`, `parameter "dsn": want a string`, `parameter "n": want an integer`, `parameter "env": want one of staging, prod`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ResolveParams error %q does not contain %q", err, want)
		}
	}
	_, err = rb.ResolveParams(nil)
	if err == nil || !strings.Contains(err.Error(), `parameter "dsn" is required`) {
		t.Errorf("ResolveParams(nil) = %v, want dsn required", err)
	}
	if _, err := rb.ResolveParams(map[string]any{"dsn": "x", "n": "hunter2"}); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("ResolveParams error %v quotes the value", err)
	}
}

// TestLoadDirDuplicateNames checks that two files defining one runbook
// name are a problem, reported at the second name.
func TestLoadDirDuplicateNames(t *testing.T) {
	dir := t.TempDir()
	body := "name: same\nsteps: [{id: a, uses: wait, with: {duration: 1s}}]\n"
	for _, f := range []string{"a.yaml", "b.yml", "notes.txt"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := LoadDir(dir, nil)
	want := filepath.Join(dir, "b.yml") + `:1:7: name: runbook "same" is also defined in ` + filepath.Join(dir, "a.yaml")
	if err == nil || err.Error() != want {
		t.Errorf("LoadDir = %v, want %s", err, want)
	}
	if _, err := LoadDir(filepath.Join(dir, "missing"), nil); err == nil {
		t.Error("LoadDir(missing dir) = nil error")
	}
}
