package runbook

import (
	"reflect"
	"slices"
	"time"

	"github.com/expr-lang/expr/types"
)

// Kind is the type of a `with` key or an action output.
type Kind string

// Kinds.
const (
	KindString     Kind = "string"
	KindInt        Kind = "int"
	KindBool       Kind = "bool"
	KindDuration   Kind = "duration" // a Go duration string, "90s", "1h30m"
	KindTime       Kind = "time"     // outputs only: a time.Time
	KindStringList Kind = "list of strings"
	KindIntList    Kind = "list of ints"
	KindStringMap  Kind = "map of strings"
	KindList       Kind = "list"
	KindMap        Kind = "map"
	KindAny        Kind = "any"
	// KindCondition is an expression that must be a boolean, written
	// like an `if:` (with or without ${{ }}).
	KindCondition Kind = "condition"
)

// Ref names what a `with` key refers to in the opsd config.
type Ref string

// References a `with` key can make.
const (
	RefSource   Ref = "source"
	RefTarget   Ref = "target"
	RefReceiver Ref = "receiver"
)

// Field is one key an action accepts in `with`.
type Field struct {
	Name     string
	Kind     Kind
	Required bool
	// Default is the value the engine uses when the key is absent, as
	// documented (nil: none).
	Default any
	// Enum lists the allowed values of a string key.
	Enum []string
	// Ref is what the key names in the config, if anything.
	Ref Ref
	// NoExpr refuses ${{ }} anywhere inside the value (exec argv).
	NoExpr bool
	// Secret keys (DSNs) are never quoted in problems.
	Secret bool
	Doc    string
}

// Output is one output an action sets, readable as
// ${{ steps.ID.outputs.NAME }}.
type Output struct {
	Name string
	Kind Kind
	Doc  string
}

// Action describes a built-in action: its `with` keys, its outputs and
// whether it is idempotent.
type Action struct {
	Name string
	Doc  string
	// Idempotent actions may run again after a crash interrupted them;
	// for the others the run waits for an operator to retry or skip.
	Idempotent bool
	Fields     []Field
	Outputs    []Output
}

// Field returns the field called name.
func (a *Action) Field(name string) (Field, bool) {
	i := slices.IndexFunc(a.Fields, func(f Field) bool { return f.Name == name })
	if i < 0 {
		return Field{}, false
	}
	return a.Fields[i], true
}

// Built-in action names.
const (
	ActionBackupRun     = "backup.run"
	ActionBackupRestore = "backup.restore"
	ActionBackupVerify  = "backup.verify"
	ActionSQLQuery      = "sql.query"
	ActionSQLCheck      = "sql.check"
	ActionHTTPRequest   = "http.request"
	ActionHTTPCheck     = "http.check"
	ActionExec          = "exec"
	ActionWait          = "wait"
	ActionApproval      = "approval"
	ActionNotify        = "notify"
	ActionAssert        = "assert"
)

// ExpectPattern describes sql.check's expect: an operator and a number.
const ExpectPattern = `^(>|>=|<|<=|=|==|!=)\s*-?\d+(\.\d+)?$`

var builtinList = []*Action{
	{
		Name: ActionBackupRun, Doc: "take a backup of a source now",
		Fields: []Field{
			{Name: "source", Kind: KindString, Required: true, Ref: RefSource, Doc: "the source to back up"},
			{Name: "wait", Kind: KindBool, Default: true, Doc: "wait until the backup has ended (false: the step ends when it is queued)"},
		},
		Outputs: []Output{
			{Name: "backup_id", Kind: KindString, Doc: "the new backup's id"},
			{Name: "state", Kind: KindString, Doc: "queued, succeeded or partial"},
		},
	},
	{
		Name: ActionBackupRestore, Doc: "restore a backup (the newest by default) from its first good copy",
		Fields: []Field{
			{Name: "source", Kind: KindString, Required: true, Ref: RefSource, Doc: "the source whose backup is restored"},
			{Name: "backup", Kind: KindString, Default: "latest", Doc: `a backup id, or "latest"`},
			{Name: "target", Kind: KindString, Ref: RefTarget, Doc: "read only this target's copy (default: the first good copy)"},
			{Name: "to_postgres", Kind: KindString, Secret: true, Doc: "DSN of the database to restore into (postgres sources)"},
			{Name: "to_dir", Kind: KindString, Doc: "directory to restore into (files and command sources)"},
		},
		Outputs: []Output{
			{Name: "backup_id", Kind: KindString, Doc: "the backup restored"},
			{Name: "snapshot_time", Kind: KindTime, Doc: "when the backup's snapshot was taken (the RPO reference)"},
			{Name: "manifest_sha256", Kind: KindString, Doc: "SHA-256 of the backup's manifest"},
			{Name: "target", Kind: KindString, Doc: "the target the copy was read from"},
		},
	},
	{
		Name: ActionBackupVerify, Doc: "verify a backup's copies by checksum or by a test restore", Idempotent: true,
		Fields: []Field{
			{Name: "source", Kind: KindString, Required: true, Ref: RefSource, Doc: "the source whose backup is verified"},
			{Name: "backup", Kind: KindString, Default: "latest", Doc: `a backup id, or "latest"`},
			{Name: "level", Kind: KindString, Default: "checksum", Enum: []string{"checksum", "restore"}, Doc: "checksum re-reads every copy; restore also restores it into the source's verify.restore scratch"},
			{Name: "target", Kind: KindString, Ref: RefTarget, Doc: "verify only this target's copy"},
		},
		Outputs: []Output{
			{Name: "backup_id", Kind: KindString, Doc: "the backup verified"},
		},
	},
	{
		Name: ActionSQLQuery, Doc: "run a SQL statement (it may write)",
		Fields: []Field{
			{Name: "dsn", Kind: KindString, Required: true, Secret: true, Doc: "PostgreSQL DSN"},
			{Name: "query", Kind: KindString, Required: true, Doc: "the statement; use $1, $2 with args rather than expressions inside SQL"},
			{Name: "args", Kind: KindList, Doc: "statement arguments, bound as $1, $2, ..."},
		},
		Outputs: []Output{
			{Name: "rows", Kind: KindList, Doc: "the rows, each a map of column to value (at most 1000)"},
			{Name: "row_count", Kind: KindInt, Doc: "number of rows returned"},
			{Name: "rows_affected", Kind: KindInt, Doc: "rows inserted, updated or deleted"},
		},
	},
	{
		Name: ActionSQLCheck, Doc: "run a query returning one number and compare it", Idempotent: true,
		Fields: []Field{
			{Name: "dsn", Kind: KindString, Required: true, Secret: true, Doc: "PostgreSQL DSN"},
			{Name: "query", Kind: KindString, Required: true, Doc: "a query returning one row with one numeric column; run in a read-only transaction"},
			{Name: "args", Kind: KindList, Doc: "query arguments, bound as $1, $2, ..."},
			{Name: "expect", Kind: KindString, Required: true, Doc: `an operator and a number: "> 0", ">= 1000", "== 42"`},
		},
		Outputs: []Output{
			{Name: "value", Kind: KindAny, Doc: "the number the query returned"},
		},
	},
	{
		Name: ActionHTTPRequest, Doc: "send an HTTP request (it may change something)",
		Fields: []Field{
			{Name: "url", Kind: KindString, Required: true, Doc: "http:// or https:// URL"},
			{Name: "method", Kind: KindString, Default: "GET", Enum: []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"}},
			{Name: "headers", Kind: KindStringMap, Secret: true, Doc: "request headers"},
			{Name: "body", Kind: KindString, Doc: "request body"},
			{Name: "expect_status", Kind: KindIntList, Doc: "statuses that count as success (default: any 2xx)"},
		},
		Outputs: []Output{
			{Name: "status", Kind: KindInt, Doc: "the response status"},
			{Name: "body", Kind: KindString, Doc: "the response body (first 1MiB)"},
			{Name: "headers", Kind: KindMap, Doc: "the response headers"},
		},
	},
	{
		Name: ActionHTTPCheck, Doc: "check that an HTTP endpoint answers as expected", Idempotent: true,
		Fields: []Field{
			{Name: "url", Kind: KindString, Required: true, Doc: "http:// or https:// URL"},
			{Name: "method", Kind: KindString, Default: "GET", Enum: []string{"GET", "HEAD"}},
			{Name: "headers", Kind: KindStringMap, Secret: true, Doc: "request headers"},
			{Name: "expect_status", Kind: KindIntList, Default: []any{200}, Doc: "statuses that count as success"},
			{Name: "body_contains", Kind: KindString, Doc: "text the body must contain"},
		},
		Outputs: []Output{
			{Name: "status", Kind: KindInt, Doc: "the response status"},
			{Name: "body", Kind: KindString, Doc: "the response body (first 1MiB)"},
		},
	},
	{
		Name: ActionExec, Doc: "run a program (argv, never a shell string); parameters reach it only as OPSD_PARAM_<NAME> environment variables",
		Fields: []Field{
			{Name: "argv", Kind: KindStringList, Required: true, NoExpr: true, Doc: "the program and its arguments; no ${{ }} allowed"},
			{Name: "env", Kind: KindStringMap, Doc: "extra environment variables (names not starting with OPSD_PARAM_)"},
			{Name: "dir", Kind: KindString, Doc: "working directory (default: opsd's data_dir)"},
		},
		Outputs: []Output{
			{Name: "exit_code", Kind: KindInt, Doc: "the exit status (the step fails unless it is 0)"},
			{Name: "stdout", Kind: KindString, Doc: "standard output (first 64KiB)"},
			{Name: "stderr", Kind: KindString, Doc: "standard error (first 64KiB)"},
		},
	},
	{
		Name: ActionWait, Doc: "wait for a while", Idempotent: true,
		Fields: []Field{
			{Name: "duration", Kind: KindDuration, Required: true, Doc: "how long"},
		},
	},
	{
		Name: ActionApproval, Doc: "wait until someone approves or rejects the step", Idempotent: true,
		Fields: []Field{
			{Name: "approvers", Kind: KindStringList, Default: []any{"role:operator"}, Doc: "who may approve: role:operator, role:admin or token:NAME"},
			{Name: "timeout", Kind: KindDuration, Default: "1h", Doc: "the step fails when nobody decides in time"},
			{Name: "message", Kind: KindString, Doc: "what the approver is asked"},
		},
		Outputs: []Output{
			{Name: "approver", Kind: KindString, Doc: "who approved"},
			{Name: "comment", Kind: KindString, Doc: "the approver's comment"},
		},
	},
	{
		Name: ActionNotify, Doc: "send a message through an alert receiver", Idempotent: true,
		Fields: []Field{
			{Name: "receiver", Kind: KindString, Required: true, Ref: RefReceiver, Doc: "a receiver of alerts.receivers"},
			{Name: "message", Kind: KindString, Required: true},
			{Name: "severity", Kind: KindString, Default: "info", Enum: []string{"info", "warning", "critical"}},
		},
	},
	{
		Name: ActionAssert, Doc: "fail the run unless a condition holds", Idempotent: true,
		Fields: []Field{
			{Name: "that", Kind: KindCondition, Required: true, Doc: "a boolean expression"},
			{Name: "message", Kind: KindString, Doc: "the error when it does not hold"},
		},
	},
}

var builtinActions = func() map[string]*Action {
	m := make(map[string]*Action, len(builtinList))
	for _, a := range builtinList {
		m[a.Name] = a
	}
	return m
}()

// Actions returns the built-in actions, sorted by name. The result is a
// copy; changing it changes nothing.
func Actions() []Action {
	out := make([]Action, 0, len(builtinList))
	for _, a := range builtinList {
		c := *a
		c.Fields = slices.Clone(a.Fields)
		c.Outputs = slices.Clone(a.Outputs)
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Action) int { return compareStrings(a.Name, b.Name) })
	return out
}

// LookupAction returns the built-in action called name.
func LookupAction(name string) (Action, bool) {
	a, ok := builtinActions[name]
	if !ok {
		return Action{}, false
	}
	return *a, true
}

func actionNames() []string {
	names := make([]string, 0, len(builtinList))
	for _, a := range builtinList {
		names = append(names, a.Name)
	}
	slices.Sort(names)
	return names
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// exprType is the expression type of an output of kind k.
func exprType(k Kind) types.Type {
	switch k {
	case KindString, KindDuration:
		return types.String
	case KindInt:
		return types.Int
	case KindBool:
		return types.Bool
	case KindTime:
		return types.TypeOf(time.Time{})
	case KindStringList:
		return types.Array(types.String)
	case KindIntList:
		return types.Array(types.Int)
	case KindList:
		return types.Array(types.Any)
	case KindMap, KindStringMap:
		return types.Map{types.Extra: types.Any}
	}
	return types.Any
}

// kindAccepts reports whether an expression of Go type t can fill a key of
// kind k. Unknown types (interfaces) are accepted: they are checked when
// the engine renders the value.
func kindAccepts(k Kind, t reflect.Type) bool {
	if t == nil || t.Kind() == reflect.Interface {
		return true
	}
	switch k {
	case KindString:
		return t.Kind() == reflect.String
	case KindDuration:
		return t.Kind() == reflect.String || t == reflect.TypeFor[time.Duration]()
	case KindInt:
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			return true
		}
		return false
	case KindBool, KindCondition:
		return t.Kind() == reflect.Bool
	case KindStringList, KindIntList, KindList:
		return t.Kind() == reflect.Slice || t.Kind() == reflect.Array
	case KindStringMap, KindMap:
		return t.Kind() == reflect.Map
	}
	return true
}
