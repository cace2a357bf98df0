package httpapi

import (
	"net/http"
	"sort"
	"strings"
)

// routes maps the whole API surface (SPEC §4) in one place. Routes whose
// feature has not landed yet answer 501 problem+json, so clients get a clear
// answer rather than a 404 and the surface is visible here.
func (s *Server) routes() {
	notYet := func(feature string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			writeProblem(w, r, probNotImplemented.with(feature+" is not available in this version of opsd"))
		})
	}
	pathObject := func(kind, param string) func(r *http.Request) string {
		return func(r *http.Request) string { return kind + "/" + r.PathValue(param) }
	}
	runStepObject := func(r *http.Request) string { return "run/" + r.PathValue("id") + "/step/" + r.PathValue("step") }
	routes := []route{
		// Unauthenticated probes.
		{method: "GET", path: "/healthz", handler: http.HandlerFunc(s.handleHealthz)},
		{method: "GET", path: "/readyz", handler: http.HandlerFunc(s.handleReadyz)},
		// Viewer unless server.metrics_public.
		{method: "GET", path: "/metrics", role: RoleViewer, handler: s.metricsHandler()},

		{method: "GET", path: "/api/v1/openapi.json", role: RoleViewer, handler: http.HandlerFunc(handleOpenAPI)},
		{method: "GET", path: "/api/v1/status", role: RoleViewer, handler: http.HandlerFunc(s.handleStatus)},
		{method: "POST", path: "/api/v1/reload", role: RoleAdmin, action: "config.reload", handler: http.HandlerFunc(s.handleReload)},
		{method: "GET", path: "/api/v1/cluster", role: RoleViewer, handler: http.HandlerFunc(s.handleCluster)},

		// Audit log (SPEC §10).
		{method: "GET", path: "/api/v1/audit/checkpoint", role: RoleViewer, handler: http.HandlerFunc(s.handleAuditCheckpoint)},
		{method: "GET", path: "/api/v1/audit/entries", role: RoleViewer, handler: http.HandlerFunc(s.handleAuditEntries)},
		{method: "GET", path: "/api/v1/audit/entries/{index}/proof", role: RoleViewer, handler: http.HandlerFunc(s.handleAuditProof)},
		{method: "GET", path: "/api/v1/audit/consistency", role: RoleViewer, handler: http.HandlerFunc(s.handleAuditConsistency)},

		// Backups.
		{method: "GET", path: "/api/v1/sources", role: RoleViewer, handler: http.HandlerFunc(s.handleSources)},
		{method: "GET", path: "/api/v1/sources/{name}", role: RoleViewer, handler: http.HandlerFunc(s.handleSource)},
		{method: "POST", path: "/api/v1/sources/{name}/backups", role: RoleOperator, action: "backup.run", object: pathObject("source", "name"), handler: http.HandlerFunc(s.handleRunBackup)},
		{method: "GET", path: "/api/v1/backups", role: RoleViewer, handler: http.HandlerFunc(s.handleListBackups)},
		{method: "GET", path: "/api/v1/backups/{id}", role: RoleViewer, handler: http.HandlerFunc(s.handleGetBackup)},
		{method: "POST", path: "/api/v1/backups/{id}/verify", role: RoleOperator, action: "backup.verify", object: pathObject("backup", "id"), handler: http.HandlerFunc(s.handleVerifyBackup)},
		{method: "POST", path: "/api/v1/prune", role: RoleAdmin, action: "backup.prune", handler: http.HandlerFunc(s.handlePrune)},
		// to_postgres is a DSN: the audit log keeps its keyed hash.
		{method: "POST", path: "/api/v1/backups/{id}/restore", role: RoleOperator, action: "backup.restore", secrets: []string{"to_postgres"}, object: pathObject("backup", "id"), handler: http.HandlerFunc(s.handleRestoreBackup)},
		{method: "GET", path: "/api/v1/restores/{id}", role: RoleViewer, handler: http.HandlerFunc(s.handleGetRestore)},

		// Runbooks and drills.
		{method: "GET", path: "/api/v1/runbooks", role: RoleViewer, handler: http.HandlerFunc(s.handleListRunbooks)},
		{method: "GET", path: "/api/v1/runbooks/{name}", role: RoleViewer, handler: http.HandlerFunc(s.handleGetRunbook)},
		// Params may hold secrets: the audit log keeps their keyed hash.
		{method: "POST", path: "/api/v1/runbooks/{name}/runs", role: RoleOperator, action: "runbook.run", secrets: []string{"params"}, object: pathObject("runbook", "name"), handler: http.HandlerFunc(s.handleStartRun)},
		{method: "GET", path: "/api/v1/runs", role: RoleViewer, handler: http.HandlerFunc(s.handleListRuns)},
		{method: "GET", path: "/api/v1/runs/{id}", role: RoleViewer, handler: http.HandlerFunc(s.handleGetRun)},
		{method: "GET", path: "/api/v1/runs/{id}/events", role: RoleViewer, handler: http.HandlerFunc(s.handleRunEvents)},
		{method: "POST", path: "/api/v1/runs/{id}/steps/{step}/approve", role: RoleOperator, action: "run.approve", object: runStepObject, handler: http.HandlerFunc(s.handleApproveStep)},
		{method: "POST", path: "/api/v1/runs/{id}/steps/{step}/reject", role: RoleOperator, action: "run.reject", object: runStepObject, handler: http.HandlerFunc(s.handleRejectStep)},
		{method: "POST", path: "/api/v1/runs/{id}/steps/{step}/retry", role: RoleOperator, action: "run.retry_step", object: runStepObject, handler: http.HandlerFunc(s.handleRetryStep)},
		{method: "POST", path: "/api/v1/runs/{id}/steps/{step}/skip", role: RoleOperator, action: "run.skip_step", object: runStepObject, handler: http.HandlerFunc(s.handleSkipStep)},
		{method: "POST", path: "/api/v1/runs/{id}/cancel", role: RoleOperator, action: "run.cancel", object: pathObject("run", "id"), handler: http.HandlerFunc(s.handleCancelRun)},
		{method: "GET", path: "/api/v1/runs/{id}/report", role: RoleViewer, handler: http.HandlerFunc(s.handleRunReport)},

		// Alerts.
		{method: "GET", path: "/api/v1/alerts", role: RoleViewer, handler: http.HandlerFunc(s.handleListAlerts)},
		{method: "GET", path: "/api/v1/rules", role: RoleViewer, handler: http.HandlerFunc(s.handleListRules)},
		{method: "GET", path: "/api/v1/silences", role: RoleViewer, handler: http.HandlerFunc(s.handleListSilences)},
		{method: "GET", path: "/api/v1/silences/{id}", role: RoleViewer, handler: http.HandlerFunc(s.handleGetSilence)},
		{method: "POST", path: "/api/v1/silences", role: RoleOperator, action: "alerts.silence.add", handler: http.HandlerFunc(s.handleAddSilence)},
		{method: "DELETE", path: "/api/v1/silences/{id}", role: RoleOperator, action: "alerts.silence.expire", object: pathObject("silence", "id"), handler: http.HandlerFunc(s.handleExpireSilence)},

		// Cost.
		{method: "GET", path: "/api/v1/cost", role: RoleViewer, handler: notYet("cost reports")},
		{method: "GET", path: "/api/v1/budgets", role: RoleViewer, handler: notYet("budgets")},

		{method: "GET", path: "/ui/", role: RoleViewer, handler: notYet("the web dashboard")},
	}
	allowed := map[string][]string{}
	for _, rt := range routes {
		s.handle(rt)
		allowed[rt.path] = append(allowed[rt.path], rt.method)
	}
	// A path that exists with another method answers 405, anything else
	// 404, both as problem+json (the mux's own answers are text/plain).
	for path, methods := range allowed {
		sort.Strings(methods)
		allow := strings.Join(methods, ", ")
		s.mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeProblem(w, r, probMethod.with("allowed: "+allow))
		}))
	}
	s.mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, r, probNotFound.with(""))
	}))
}
