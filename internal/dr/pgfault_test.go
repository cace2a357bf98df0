package dr_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
)

// TestPostgresDiesMidStep: while a sql.query step runs, every connection
// to the run's databases is terminated by the server (what a PostgreSQL
// restart does to its clients) — the step's own and the journal's, the
// run being journaled in PostgreSQL too. The step fails that attempt, is
// retried per its policy and succeeds; the journal (whose writes retry
// on a fresh connection) records both attempts and the run ends succeeded.
func TestPostgresDiesMidStep(t *testing.T) {
	storeDSN, stepDSN := pgtest.DSN(t), pgtest.DSN(t)
	h := newHarness(t, openPostgresDSN(t, storeDSN))
	rb := parse(t, `name: pg-dies
params:
  dsn: {type: secret, required: true}
steps:
  - id: slow
    uses: sql.query
    with: {dsn: "${{ params.dsn }}", query: "select pg_sleep(2), 42 as answer"}
    retry: {max_attempts: 3, backoff: {initial: 200ms}}
  - id: after
    uses: assert
    with: {that: "${{ steps.slow.outputs.row_count == 1 }}"}
`)
	h.start(rb)
	id, err := h.e.Start(context.Background(), rb, map[string]any{"dsn": stepDSN}, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the query to be on the server, then cut every connection.
	admin, err := pgx.Connect(context.Background(), pgtest.ServerDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	dbs := []string{dbName(t, storeDSN), dbName(t, stepDSN)}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := admin.QueryRow(context.Background(),
			`select count(*) from pg_stat_activity where datname = $1 and query like '%pg_sleep(2)%' and state = 'active'`, dbs[1]).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the step's query never reached the server")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var killed int
	if err := admin.QueryRow(context.Background(),
		`select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity where datname = any($1) and pid <> pg_backend_pid()) k`, dbs).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed < 2 {
		t.Fatalf("terminated %d backends, want the step's and the journal's", killed)
	}

	v := h.wait(id)
	if v.State != state.RunSucceeded {
		t.Fatalf("run = %s (%s), want succeeded after the retry", v.State, v.Error)
	}
	slow := v.Steps[0]
	if len(slow.Attempts) != 2 || slow.Attempts[0].Error == "" || slow.Attempts[1].Error != "" {
		t.Fatalf("attempts of slow = %+v, want a failed one then a successful one", slow.Attempts)
	}
	if !strings.Contains(slow.Attempts[0].Error, "terminat") {
		t.Errorf("first attempt's error = %q, want the server's termination", slow.Attempts[0].Error)
	}
	if strings.Contains(slow.Attempts[0].Error, stepDSN) {
		t.Errorf("the error carries the DSN: %q", slow.Attempts[0].Error)
	}
	// The journal — read back from PostgreSQL — has both attempts.
	steps, err := h.store.GetStepStates(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		if s.StepID == "slow" && (s.Attempts != 2 || s.State != state.StepSucceeded) {
			t.Errorf("journaled slow = %d attempts, %s; want 2, succeeded", s.Attempts, s.State)
		}
	}
}

func dbName(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || u.Path == "" {
		t.Fatalf("pgtest DSN %q is not URL-form", dsn)
	}
	return strings.TrimPrefix(u.Path, "/")
}
