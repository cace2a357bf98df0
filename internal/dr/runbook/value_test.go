package runbook

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/config"
)

const evalRunbook = `name: eval
params:
  dsn: {type: secret, required: true}
  min: {type: int, default: 1}
  live_ok: {type: bool, default: false}
  who: {type: string, default: ops}
steps:
  - id: restore
    uses: backup.restore
    with: {source: orders-db, to_postgres: "${{ params.dsn }}"}
  - id: probe
    uses: plugin:probe
    with:
      count: "${{ params.min * 2 }}"
      text: "min is ${{ params.min }}, mode ${{ mode }}, $${{ literal }}"
      nested: {list: [1, "${{ params.who }}", {deep: "${{ steps.restore.outputs.backup_id }}"}], flag: true}
      brace: "${{ '}}' + params.who }}"
      elapsed: "took ${{ run.elapsed }} at ${{ run.started_at }}"
      snapshot: "${{ steps.restore.outputs.snapshot_time }}"
  - id: gate
    uses: assert
    if: params.live_ok || mode == 'drill'
    with: {that: "${{ steps.probe.outputs.ready && steps.restore.state == 'succeeded' }}"}
`

func evalEnv() *Env {
	return &Env{
		Mode:   ModeDrill,
		Params: map[string]any{"dsn": "postgres://u:pw@db/x", "min": 21, "live_ok": false, "who": "${{ params.dsn }}"},
		Steps: map[string]StepResult{
			"restore": {State: "succeeded", Outputs: map[string]any{"backup_id": "20261123T074500Z-abc", "snapshot_time": time.Date(2026, 11, 23, 7, 45, 0, 0, time.UTC)}},
			"probe":   {State: "succeeded", Outputs: map[string]any{"ready": true}},
		},
		Run: RunInfo{ID: "r1", Runbook: "eval", StartedAt: time.Date(2026, 11, 23, 8, 0, 0, 0, time.UTC), Elapsed: 90 * time.Second},
	}
}

func TestValueEval(t *testing.T) {
	rb, err := Parse("eval.yaml", []byte(evalRunbook), nil)
	if err != nil {
		t.Fatal(err)
	}
	env := evalEnv()
	probe := rb.Step("probe")
	tests := []struct {
		key  string
		want any
	}{
		{"count", 42}, // a whole-string expression keeps its type
		{"text", "min is 21, mode drill, ${{ literal }}"},
		// A parameter's value is data: "${{ params.dsn }}" in it is not evaluated.
		{"nested", map[string]any{"list": []any{1, "${{ params.dsn }}", map[string]any{"deep": "20261123T074500Z-abc"}}, "flag": true}},
		{"brace", "}}${{ params.dsn }}"},
		{"elapsed", "took 1m30s at 2026-11-23T08:00:00Z"},
		{"snapshot", time.Date(2026, 11, 23, 7, 45, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			v := probe.With[tt.key]
			if v == nil {
				t.Fatalf("no with.%s", tt.key)
			}
			got, err := v.Eval(env)
			if err != nil {
				t.Fatalf("Eval = %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("with.%s (-want +got):\n%s", tt.key, diff)
			}
		})
	}
	got, err := rb.Step("restore").With["to_postgres"].Eval(env)
	if err != nil || got != "postgres://u:pw@db/x" {
		t.Errorf("to_postgres = %v, %v", got, err)
	}
	if src, _ := rb.Step("restore").With["source"].Literal(); src != "orders-db" {
		t.Errorf("source literal = %v", src)
	}

	gate := rb.Step("gate")
	ok, err := gate.If.EvalBool(env)
	if err != nil || !ok {
		t.Errorf("gate if = %v, %v; want true", ok, err)
	}
	env.Mode = ModeLive
	if ok, err := gate.If.EvalBool(env); err != nil || ok {
		t.Errorf("gate if in live mode = %v, %v; want false", ok, err)
	}
	that, err := gate.With["that"].Eval(env)
	if err != nil || that != true {
		t.Errorf("assert that = %v, %v", that, err)
	}
	if diff := cmp.Diff([]string{"live_ok"}, gate.If.Params()); diff != "" {
		t.Errorf("If.Params (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"probe", "restore"}, gate.With["that"].Exprs()[0].Steps()); diff != "" {
		t.Errorf("that Steps (-want +got):\n%s", diff)
	}
}

func TestEvalRuntimeError(t *testing.T) {
	rb, err := Parse("e.yaml", []byte(`name: e
params: {n: {type: int, default: 0}}
steps:
  - {id: a, uses: plugin:x, with: {v: "${{ 10 / params.n > 1 }}", w: "${{ steps }}"}}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rb.Step("a").With["w"].Eval(&Env{Params: map[string]any{"n": 0}}); err != nil {
		t.Errorf("Eval(steps) = %v", err)
	}
	var v Value
	v.kind = kindTemplate
	v.tpl = []Part{{Expr: &Expr{Source: "1"}}}
	if _, err := v.Eval(&Env{}); !errors.Is(err, ErrNotCompiled) {
		t.Errorf("Eval of an unchecked expression = %v, want ErrNotCompiled", err)
	}
}

// TestExprChecks covers what expressions are checked for at check time.
func TestExprChecks(t *testing.T) {
	tests := []struct {
		name  string
		steps string
		want  string
	}{
		{"unknown param", `[{id: a, uses: notify, with: {receiver: r, message: "${{ params.nope }}"}}]`,
			`steps[0].with.message: unknown parameter "nope"`},
		{"later step", `[{id: a, uses: notify, with: {receiver: r, message: "${{ steps.b.outputs.stdout }}"}}, {id: b, uses: exec, with: {argv: [x]}}]`,
			`steps[0].with.message: step "b" runs after this one`},
		{"unknown step", `[{id: a, uses: notify, with: {receiver: r, message: "${{ steps.zz.state }}"}}]`,
			`steps[0].with.message: unknown step "zz"`},
		{"self", `[{id: a, uses: http.check, with: {url: "http://x", body_contains: "${{ steps.a.outputs.body }}"}}]`,
			`step "a" cannot read its own results`},
		{"finally sees later non-finally", `[{id: f, uses: notify, finally: true, with: {receiver: r, message: "${{ steps.a.outputs.stdout }}"}}, {id: a, uses: exec, with: {argv: [x]}}]`,
			``},
		{"non-finally does not see finally", `[{id: f, uses: exec, finally: true, with: {argv: [x]}}, {id: a, uses: notify, with: {receiver: r, message: "${{ steps.f.outputs.stdout }}"}}]`,
			`step "f" runs after this one`},
		{"unknown output", `[{id: a, uses: exec, with: {argv: [x]}}, {id: b, uses: notify, with: {receiver: r, message: "${{ steps.a.outputs.stdot }}"}}]`,
			`step "a" (exec) has no output "stdot" (did you mean "stdout"?); it has exit_code, stdout, stderr`},
		{"bad step field", `[{id: a, uses: exec, with: {argv: [x]}}, {id: b, uses: notify, with: {receiver: r, message: "${{ steps.a.output }}"}}]`,
			`steps.a.output: a step has outputs and state`},
		{"plugin outputs are open", `[{id: a, uses: plugin:p}, {id: b, uses: notify, with: {receiver: r, message: "${{ steps.a.outputs.anything }}"}}]`,
			``},
		{"if must be boolean", `[{id: a, uses: wait, if: "params.n", with: {duration: 1s}}]`,
			`steps[0].if: expected bool, but got int in ${{ params.n }}`},
		{"int key from string expr", `[{id: a, uses: http.check, with: {url: "http://x", expect_status: ["${{ params.s }}"]}}]`,
			`want an integer, but ${{ params.s }} is string`},
		{"mixed text is a string", `[{id: a, uses: backup.run, with: {source: s, wait: "${{ params.n > 0 }} maybe"}}]`,
			`want true or false; text around ${{ }} makes a string`},
		{"unterminated", `[{id: a, uses: notify, with: {receiver: r, message: "${{ params.n "}}]`,
			`unterminated ${{`},
		{"empty", `[{id: a, uses: notify, with: {receiver: r, message: "${{ }}"}}]`,
			`empty ${{ }}`},
		{"unknown name", `[{id: a, uses: notify, with: {receiver: r, message: "${{ env.HOME }}"}}]`,
			`unknown name env`},
		{"not in timeout", `[{id: a, uses: wait, timeout: "${{ params.s }}", with: {duration: 1s}}]`,
			`steps[0].timeout: expressions (${{ }}) are allowed only in if: and with:`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "name: t\nparams: {n: {type: int, default: 1}, s: {type: string, default: x}}\nsteps: " + tt.steps + "\n"
			_, err := Parse("t.yaml", []byte(src), nil)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Parse = %v, want no problem", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Parse = %v, want a problem containing %q", err, tt.want)
			}
		})
	}
}

// TestExecArgvInjection checks that no way of writing an expression into
// exec's argv passes the check: parameters reach commands only as
// OPSD_PARAM_* environment variables, never as argv a program may parse
// or a shell may run.
func TestExecArgvInjection(t *testing.T) {
	tests := []struct{ name, with string }{
		{"param in an argument", `{argv: [psql, "${{ params.target }}"]}`},
		{"param spliced into sh -c", `{argv: [sh, -c, "echo ${{ params.target }}"]}`},
		{"program from a param", `{argv: ["${{ params.target }}"]}`},
		{"whole argv from an expression", `{argv: "${{ [params.target] }}"}`},
		{"step output in an argument", `{argv: [curl, "${{ steps.first.outputs.stdout }}"]}`},
		{"through an alias", `{argv: *evil}`},
		{"no params at all", `{argv: [echo, "${{ 'hi' }}"]}`},
		{"in a compensation", `{argv: [ok]}, compensate: {uses: exec, with: {argv: [undo, "${{ params.target }}"]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := `name: injection
params: {target: {type: string, default: "x; rm -rf / #"}}
x-evil: &evil [sh, -c, "rm -rf ${{ params.target }}"]
steps:
  - {id: first, uses: exec, with: {argv: [date]}}
  - {id: second, uses: exec, with: ` + tt.with + `}
`
			_, err := Parse("injection.yaml", []byte(src), nil)
			var ps config.Problems
			if !errors.As(err, &ps) {
				t.Fatalf("Parse = %v, want the argv refused", err)
			}
			found := false
			for _, p := range ps {
				if strings.Contains(p.Msg, "not allowed in exec argv") && p.Line > 0 && p.Col > 0 {
					found = true
				}
			}
			if !found {
				t.Errorf("problems %v do not refuse the expression in argv", err)
			}
		})
	}
	// What is allowed: a literal ${{ escaped as $${{, and parameters
	// through the environment, where no shell or parser sees them as code.
	rb, err := Parse("ok.yaml", []byte(`name: ok
params: {target: {type: string}}
steps:
  - id: a
    uses: exec
    with:
      argv: [sh, -c, 'echo "$OPSD_PARAM_TARGET" "$${{ not an expression }}"']
      env: {TARGET_TOO: "${{ params.target }}"}
`), nil)
	if err != nil {
		t.Fatal(err)
	}
	argv, err := rb.Step("a").With["argv"].Eval(&Env{})
	if err != nil {
		t.Fatal(err)
	}
	want := []any{"sh", "-c", `echo "$OPSD_PARAM_TARGET" "${{ not an expression }}"`}
	if diff := cmp.Diff(want, argv); diff != "" {
		t.Errorf("argv (-want +got):\n%s", diff)
	}
	if env := rb.ExecEnv(map[string]any{"target": "x; rm -rf /"}); !cmp.Equal(env, []string{"OPSD_PARAM_TARGET=x; rm -rf /"}) {
		t.Errorf("ExecEnv = %q", env)
	}
}

func TestExprPosition(t *testing.T) {
	tests := []struct {
		name, line string
		col        int
	}{
		{"plain", `      message: x ${{ params.nope }}`, 22},
		{"double-quoted", `      message: "x ${{ params.nope }}"`, 23},
		{"single-quoted", `      message: 'x ${{ params.nope }}'`, 23},
		{"multi-byte text before", `      message: "é ${{ params.nope }}"`, 23},
		{"with escapes: the scalar", `      message: "\t${{ params.nope }}"`, 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "name: t\nsteps:\n  - id: a\n    uses: notify\n    with:\n      receiver: r\n" + tt.line + "\n"
			_, err := Parse("t.yaml", []byte(src), nil)
			var ps config.Problems
			if !errors.As(err, &ps) || len(ps) != 1 {
				t.Fatalf("Parse = %v, want one problem", err)
			}
			if ps[0].Line != 7 || ps[0].Col != tt.col {
				t.Errorf("problem at %d:%d, want 7:%d (%s)", ps[0].Line, ps[0].Col, tt.col, ps[0])
			}
		})
	}
}
