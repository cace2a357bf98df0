// Package dr runs DR runbooks (internal/dr/runbook) step by step: drills on a
// schedule or on demand, and live runs in an incident.
//
// The Engine journals every state transition of a run and of its steps to the
// state store (state.Runs) before it acts on it, so a crash loses nothing:
// Resume (or Run) re-attaches every run that had not ended — completed steps
// never run again; a step that was in flight runs again only if it is
// idempotent, otherwise the run waits in state waiting_operator for RetryStep
// or SkipStep. Actions are looked up by name in a Registry the daemon fills
// (the built-ins here, backup.* and plugins from elsewhere). At the end of a
// run the engine measures RTO and RPO, exports them as metrics and can produce
// a signed report (Report, SignReport, VerifyReport). docs/DRILLS.md describes
// the semantics for users.
package dr
