// Package runbook reads and checks DR runbook files (SPEC §6): the YAML
// format, the built-in actions and the schema of their `with` keys, and the
// ${{ }} expressions they may contain.
//
// Parse and Load decode a file strictly and check everything that needs no
// outside knowledge: step ids, actions and their keys, parameter types and
// defaults, durations, retry bounds, marks, and every expression, compiled
// against the parameters and the steps that come before it. With
// References (built from the opsd config by ReferencesFromConfig) they also
// check that the sources, targets, receivers and plugins a runbook names
// exist. Every problem is reported at once as a config.Problem, so a
// runbook's errors look like a config's: file:line:col: message.
//
// The engine runs what this package produces: Step.With values and Step.If
// are rendered with Eval against an Env at run time; they were compiled at
// check time and cannot fail to compile later.
package runbook
