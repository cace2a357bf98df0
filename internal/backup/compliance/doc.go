// Package compliance computes the 3-2-1-1-0 level a source's newest backup
// reaches (SPEC §2) and says, in one sentence, which rule is missing. It is
// a pure library: it reads no clock, storage, state or config; the caller
// passes the copies of one backup as they stand at check time, the targets
// they live on, the required policy and now. docs/COMPLIANCE.md is the
// user-facing description; it and this comment must say the same.
//
// # What counts
//
// The live data is one copy. A backup copy counts when it is complete, a
// checksum verification of it passed (Copy.ChecksumVerified) and its target
// is known. Copies are counted per target: two copies of one backup on the
// same target are one copy. Result.Counted lists the targets counted.
//
// # Rules, in order
//
//  1. "3 copies": at least 2 counted backup copies (3 with the live data).
//  2. "2 media": the counted copies are on at least 2 distinct media
//     (Target.Medium). The live data's medium is not counted: opsd cannot
//     know which disk a database or a file tree lives on, and a files
//     source on the same filesystem as a local target would otherwise pass
//     with a single backup medium. This matches what `opsd config check`
//     demands of the configured targets.
//  3. "1 offsite": at least 1 counted copy on an offsite target.
//  4. "1 immutable": at least 1 counted copy that is offline, or whose
//     object lock, as the store reports it at check time, is in force
//     (Copy.RetainUntil after now) — on a target whose lock canary has not
//     failed (Target.LockEnforced is not false). A configured lock is not
//     enough: an expired lock, or a store that accepts lock headers and
//     still lets a delete through, does not count.
//  5. "0 errors": at least 1 counted copy, and no verification errors
//     (Copy.VerifyErrors) on any counted copy.
//
// Levels are cumulative: the level is the longest prefix of rules met, so
// a source with no offsite copy is at "3-2" even if one of its copies is
// locked. Result.Rules still reports every rule, so status pages can show
// what else is missing.
package compliance
