package dr_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/mod/sumdb/note"

	"github.com/opsd-dev/opsd/internal/audit"
	"github.com/opsd-dev/opsd/internal/dr"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/state"
	"github.com/opsd-dev/opsd/internal/state/pgtest"
)

const secret = "hunter2-s3cr3t"

// restoreStub stands in for the daemon's backup.restore.
func restoreStub(snapshot time.Time) dr.ActionFunc {
	return func(_ context.Context, sc *dr.StepContext) (map[string]any, error) {
		return map[string]any{dr.BackupIDOutput: "20261125T093000Z-abc", dr.SnapshotTimeOutput: snapshot,
			dr.ManifestSHA256Output: "9f86d081884c7d65", dr.TargetOutput: "local",
			"dsn_seen": sc.String("to_postgres")}, nil
	}
}

const drillBook = `name: orders-drill
objectives: {rto: 30m, rpo: 1h}
params:
  dsn: {type: secret, required: true}
  disruption_start: {}
steps:
  - id: restore
    uses: backup.restore
    with: {source: orders-db, to_postgres: "${{ params.dsn }}"}
    marks: disruption_end
  - id: show
    uses: exec
    with: {argv: [sh, -c, 'echo "dsn=$OPSD_PARAM_DSN"; echo "err $OPSD_PARAM_DSN" >&2; exit "${FAIL:-0}"'], env: {FAIL: "${{ params.dsn == 'x' ? '1' : '0' }}"}}
  - id: check
    uses: assert
    with: {that: "${{ trim(steps.show.outputs.stdout) == 'dsn=' + params.dsn }}"}
    marks: recovered
  - id: gate
    uses: approval
    with: {approvers: [role:operator]}
  - id: tell
    uses: notify
    finally: true
    with: {receiver: oncall, message: "done with ${{ params.dsn }} in ${{ run.elapsed }}"}
`

func TestDrillReportSecretsAndMetrics(t *testing.T) {
	for _, st := range stores {
		t.Run(st.name, func(t *testing.T) {
			store := st.open(t)
			h := newHarness(t, store)
			reg := prometheus.NewRegistry()
			m, err := dr.NewMetrics(reg)
			if err != nil {
				t.Fatal(err)
			}
			h.metrics = m
			snapshot := time.Now().Add(-20 * time.Minute).UTC()
			h.reg.Register("backup.restore", restoreStub(snapshot))
			rb := parse(t, drillBook)
			h.start(rb)
			id, err := h.e.Start(context.Background(), rb, map[string]any{"dsn": secret}, "", false, operator)
			if err != nil {
				t.Fatal(err)
			}
			events, stop := h.e.Subscribe(id)
			defer stop()
			h.waitState(id, state.RunWaitingApproval)
			if err := h.e.Approve(context.Background(), id, "gate", admin, "approved with "+secret); err != nil {
				t.Fatal(err)
			}
			v := h.wait(id)
			if v.State != state.RunSucceeded {
				t.Fatalf("run = %s (%s), steps %v", v.State, v.Error, stepStates(v))
			}
			var live []state.RunEvent
			for ev := range events {
				live = append(live, ev)
			}

			rep, err := h.e.Report(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			js, _ := rep.JSON()
			// The secret reached the action and the command in clear ...
			if rep.Steps[1].Outputs["stdout"] != "dsn=***\n" {
				t.Errorf("stored stdout = %q, want the secret redacted", rep.Steps[1].Outputs["stdout"])
			}
			// ... and nowhere in what was recorded.
			journal := []string{string(js)}
			r, _ := store.GetRun(context.Background(), id)
			journal = append(journal, r.Params, r.Data, r.Error, string(r.Secrets))
			sts, _ := store.GetStepStates(context.Background(), id)
			for _, s := range sts {
				journal = append(journal, s.Outputs, s.Error, s.Data)
			}
			evs, _ := h.e.Events(context.Background(), id, 0, 0)
			for _, e := range append(evs, live...) {
				journal = append(journal, e.Message, e.Data)
			}
			journal = append(journal, h.logs.String())
			if !strings.Contains(h.logs.String(), "runbook notification") {
				t.Errorf("the notify step was not logged:\n%s", h.logs.String())
			}
			var logEvents int
			for _, e := range evs {
				if e.Type == "log" && strings.Contains(e.Message, "dsn=***") {
					logEvents++
				}
			}
			if logEvents != 1 {
				t.Errorf("%d log events with the exec output, want 1", logEvents)
			}
			for i, s := range journal {
				if strings.Contains(s, secret) {
					t.Errorf("journal item %d holds the secret: %s", i, s)
				}
			}
			if len(live) < 10 || live[len(live)-1].State != state.RunSucceeded {
				t.Errorf("live events: %d, last %+v", len(live), live[len(live)-1])
			}
			if rep.Params["dsn"] != dr.Redacted {
				t.Errorf("params = %v, want dsn redacted", rep.Params)
			}

			// Measured objectives.
			if rep.RTO == nil || rep.RTO.Met == nil || !*rep.RTO.Met || rep.RTO.ObjectiveSeconds != 1800 {
				t.Fatalf("RTO = %+v, want measured and met against 30m", rep.RTO)
			}
			if !rep.RTO.To.Equal(v.Steps[2].FinishedAt) || !rep.RTO.From.Equal(v.StartedAt) {
				t.Errorf("RTO from %s to %s, want run start %s to the end of check %s", rep.RTO.From, rep.RTO.To, v.StartedAt, v.Steps[2].FinishedAt)
			}
			if rep.RPO == nil || math.Abs(rep.RPO.Seconds-v.StartedAt.Sub(snapshot).Seconds()) > 0.01 || !*rep.RPO.Met {
				t.Errorf("RPO = %+v, want run start − snapshot (%s), met", rep.RPO, v.StartedAt.Sub(snapshot))
			}
			if rep.Backup == nil || rep.Backup.ID != "20261125T093000Z-abc" || rep.Backup.ManifestSHA256 != "9f86d081884c7d65" {
				t.Errorf("backup = %+v", rep.Backup)
			}
			if rep.DisruptionEnd.IsZero() || len(rep.Approvals) != 1 || rep.Approvals[0].Actor != "root" {
				t.Errorf("disruption end %s, approvals %+v", rep.DisruptionEnd, rep.Approvals)
			}
			if got := testutil.ToFloat64(m.RTOGauge("orders-drill")); math.Abs(got-rep.RTO.Seconds) > 0.001 {
				t.Errorf("opsd_drill_last_rto_seconds = %v, want %v", got, rep.RTO.Seconds)
			}
			if got := testutil.ToFloat64(m.RPOGauge("orders-drill")); math.Abs(got-rep.RPO.Seconds) > 0.001 {
				t.Errorf("opsd_drill_last_rpo_seconds = %v, want %v", got, rep.RPO.Seconds)
			}
			if got := testutil.ToFloat64(m.SuccessGauge("orders-drill")); got != 1 {
				t.Errorf("opsd_drill_last_success = %v, want 1", got)
			}
		})
	}
}

func TestDisruptionParam(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	snapshot := time.Now().Add(-3 * time.Hour).UTC().Truncate(time.Second)
	h.reg.Register("backup.restore", restoreStub(snapshot))
	reg := prometheus.NewRegistry()
	h.metrics, _ = dr.NewMetrics(reg)
	rb := parse(t, drillBook)
	h.start(rb)
	disruption := snapshot.Add(2 * time.Hour)
	id, err := h.e.Start(context.Background(), rb, map[string]any{"dsn": "postgres://x", "disruption_start": disruption.Format(time.RFC3339)}, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	h.waitState(id, state.RunWaitingApproval)
	if err := h.e.Reject(context.Background(), id, "gate", operator, "no"); err != nil {
		t.Fatal(err)
	}
	h.wait(id)
	rep, err := h.e.Report(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if rep.DisruptionStartSource != "param:disruption_start" || rep.RPO.Seconds != 7200 || *rep.RPO.Met {
		t.Errorf("disruption %s (%s), RPO %+v; want the param, 2h, not met", rep.DisruptionStart, rep.DisruptionStartSource, rep.RPO)
	}
	if rep.RTO.Seconds < 3600 || *rep.RTO.Met {
		t.Errorf("RTO = %+v, want over an hour, not met", rep.RTO)
	}
	if got := testutil.ToFloat64(h.metrics.SuccessGauge("orders-drill")); got != 0 {
		t.Errorf("opsd_drill_last_success = %v, want 0 (run failed)", got)
	}

	// After a restart the gauges come back from the journal.
	h.shutdown()
	fresh, _ := dr.NewMetrics(prometheus.NewRegistry())
	fresh.SuccessGauge("orders-drill").Set(1) // what a forgetful restart would show
	h.metrics = fresh
	e := h.start(rb)
	e.RestoreMetrics(context.Background(), []string{"orders-drill", "no-such-runbook"})
	if got := testutil.ToFloat64(fresh.SuccessGauge("orders-drill")); got != 0 {
		t.Errorf("opsd_drill_last_success after restart = %v, want 0 (restored from the journal)", got)
	}
	if got := testutil.ToFloat64(fresh.RPOGauge("orders-drill")); got != 7200 {
		t.Errorf("opsd_drill_last_rpo_seconds after restart = %v, want 7200", got)
	}
}

type fakeAudit struct{}

func (fakeAudit) AuditRange(_ context.Context, start, end time.Time) (int64, int64, string, error) {
	return 41, 57, "opsd.test/log\n58\nAAAA\n", nil
}

type noAudit struct{}

func (noAudit) AuditRange(_ context.Context, start, end time.Time) (int64, int64, string, error) {
	return 0, 0, "", fmt.Errorf("window: %w", dr.ErrNoAuditEntries)
}

func TestReportSignVerify(t *testing.T) {
	h := newHarness(t, openSQLite(t))
	h.reg.Register("backup.restore", restoreStub(time.Now().Add(-time.Minute)))
	rb := parse(t, drillBook)
	e := h.start(rb)
	_ = e
	id, err := h.e.Start(context.Background(), rb, map[string]any{"dsn": secret}, "", false, operator)
	if err != nil {
		t.Fatal(err)
	}
	h.waitState(id, state.RunWaitingApproval)
	_ = h.e.Approve(context.Background(), id, "gate", operator, "")
	h.wait(id)
	rep, err := h.e.Report(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	g, err := signing.Generate("opsd.test/log")
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := note.NewSigner(g.SignerKey)
	verifier, _ := note.NewVerifier(g.VerifierKey)
	other, _ := signing.Generate("opsd.test/log")
	otherSigner, _ := note.NewSigner(other.SignerKey)
	otherVerifier, _ := note.NewVerifier(other.VerifierKey)
	checkpoint := func(s note.Signer, size int64) string {
		t.Helper()
		b, err := note.Sign(&note.Note{Text: string(audit.FormatCheckpoint(audit.Checkpoint{Origin: "opsd.test/log", Size: size}))}, s)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rep.Audit = &dr.AuditSpan{First: 41, Last: 57, Checkpoint: checkpoint(signer, 58)}

	for _, md := range []bool{false, true} {
		signed, err := dr.SignReport(rep, signer, md)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(signed), secret) {
			t.Errorf("signed report (md %v) holds the secret", md)
		}
		got, err := dr.VerifyReport(signed, verifier)
		if err != nil || got.RunID != id || got.RTO == nil || got.Audit.Last != 57 {
			t.Fatalf("VerifyReport(md %v) = %+v, %v", md, got, err)
		}
		if md && !strings.Contains(string(signed), "# Drill report: orders-drill") {
			t.Errorf("markdown report lacks its title:\n%s", signed)
		}
		tampered := strings.Replace(string(signed), `"state": "succeeded"`, `"state": "failed"   `, 1)
		if tampered == string(signed) {
			t.Fatalf("test bug: nothing to tamper with")
		}
		if _, err := dr.VerifyReport([]byte(tampered), verifier); !errors.Is(err, dr.ErrReportTampered) {
			t.Errorf("VerifyReport(tampered, md %v) = %v, want ErrReportTampered", md, err)
		}
		if _, err := dr.VerifyReport(signed, otherVerifier); err == nil {
			t.Errorf("VerifyReport(other key) = nil, want an error")
		}
	}
	// The audit checkpoint in the report must be signed by the audit key
	// and cover the range.
	for _, bad := range []struct {
		name string
		cp   string
	}{{"checkpoint too small", checkpoint(signer, 57)}, {"checkpoint by another key", checkpoint(otherSigner, 58)}} {
		r := *rep
		r.Audit = &dr.AuditSpan{First: 41, Last: 57, Checkpoint: bad.cp}
		signed, err := dr.SignReport(&r, signer, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dr.VerifyReport(signed, verifier); err == nil || !strings.Contains(err.Error(), "checkpoint") {
			t.Errorf("VerifyReport(%s) = %v, want a checkpoint error", bad.name, err)
		}
	}

	// The engine fills the audit range through AuditRanger.
	e2, err := dr.New(dr.Config{Store: h.store, Actions: h.reg, Audit: fakeAudit{}})
	if err != nil {
		t.Fatal(err)
	}
	rep2, err := e2.Report(context.Background(), id)
	if err != nil || rep2.Audit == nil || rep2.Audit.First != 41 {
		t.Errorf("Report with AuditRanger = %+v, %v", rep2.Audit, err)
	}
	// No entries in the run's span: a report without an audit range.
	e3, err := dr.New(dr.Config{Store: h.store, Actions: h.reg, Audit: noAudit{}})
	if err != nil {
		t.Fatal(err)
	}
	if rep3, err := e3.Report(context.Background(), id); err != nil || rep3.Audit != nil {
		t.Errorf("Report with no audit entries = %+v, %v; want no audit range", rep3, err)
	}
}

func TestHTTPActions(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+secret {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		w.Header().Set("X-Seen", r.Method)
		_, _ = w.Write([]byte("all good"))
	}))
	defer srv.Close()
	h := newHarness(t, openSQLite(t))
	rb := parse(t, `name: http
params:
  token: {type: secret, required: true}
  url: {required: true}
steps:
  - id: check
    uses: http.check
    with: {url: "${{ params.url }}", headers: {Authorization: "Bearer ${{ params.token }}"}, body_contains: good}
  - id: post
    uses: http.request
    with: {url: "${{ params.url }}", method: POST, body: hi, headers: {Authorization: "Bearer ${{ params.token }}"}}
  - id: denied
    uses: http.check
    with: {url: "${{ params.url }}", expect_status: [200, 204]}
`)
	h.start(rb)
	v := h.run(rb, map[string]any{"token": secret, "url": srv.URL}, "", operator)
	got := stepStates(v)
	if got["check"] != "succeeded" || got["post"] != "succeeded" || got["denied"] != "failed" {
		t.Errorf("steps = %v (%s)", got, v.Error)
	}
	if v.Steps[1].Outputs["status"] != 200 || v.Steps[1].Outputs["headers"].(map[string]any)["X-Seen"] != "POST" {
		t.Errorf("post outputs = %v", v.Steps[1].Outputs)
	}
	if !strings.Contains(v.Steps[2].Error, "status 401") {
		t.Errorf("denied error = %q", v.Steps[2].Error)
	}
}

func TestSQLActions(t *testing.T) {
	dsn := pgtest.DSN(t)
	h := newHarness(t, openSQLite(t))
	rb := parse(t, `name: sql
params:
  dsn: {type: secret, required: true}
steps:
  - id: create
    uses: sql.query
    with: {dsn: "${{ params.dsn }}", query: "create table t as select generate_series(1, 5) as n"}
  - id: read
    uses: sql.query
    with: {dsn: "${{ params.dsn }}", query: "select n from t where n > $1 order by n", args: [3]}
  - id: enough
    uses: sql.check
    with: {dsn: "${{ params.dsn }}", query: "select count(*) from t", expect: ">= 5"}
  - id: readonly
    uses: sql.check
    with: {dsn: "${{ params.dsn }}", query: "delete from t returning 1", expect: "> 0"}
`)
	h.start(rb)
	v := h.run(rb, map[string]any{"dsn": dsn}, "", operator)
	got := stepStates(v)
	if got["create"] != "succeeded" || got["read"] != "succeeded" || got["enough"] != "succeeded" || got["readonly"] != "failed" {
		t.Fatalf("steps = %v (%s)", got, v.Error)
	}
	if v.Steps[1].Outputs["row_count"] != 2 || v.Steps[2].Outputs["value"] != 5 {
		t.Errorf("outputs = %v / %v", v.Steps[1].Outputs, v.Steps[2].Outputs)
	}
	if !strings.Contains(v.Steps[3].Error, "read-only") {
		t.Errorf("readonly error = %q, want a read-only transaction error", v.Steps[3].Error)
	}
	if strings.Contains(v.Error+v.Steps[3].Error, dsn) {
		t.Errorf("an error holds the DSN")
	}
}
