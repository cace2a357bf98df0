// Package verify proves that a backup can be restored (the "restore"
// verification level, SPEC §2 verify.restore): it restores the backup into
// scratch space that it creates and always removes, checks the result, and
// returns a Report.
//
// # PostgreSQL
//
// RestorePostgres connects to verify.restore.into, a DSN naming a
// maintenance or scratch database on the server to use. That database must
// hold no user data (see ErrScratchNotEmpty for the exact rule); opsd never
// writes into it. Next to it opsd creates a temporary database named
// opsd_verify_<source>_<shortid>_<created>_<rand>, restores the backup
// into it with backup.Restore (pg_restore --single-transaction
// --exit-on-error), runs every check there, and drops it afterwards —
// also when the restore or a check fails or the context is cancelled, with
// a fresh context (DROP DATABASE ... WITH (FORCE) on PostgreSQL 13 and
// newer). <created> is the creation time in base-36 Unix seconds, so
// CleanupStale can drop what a crashed run left behind without guessing.
//
// Each check is one SQL statement run in its own READ ONLY transaction
// with a statement timeout; it must return exactly one row with one
// column, whose value must satisfy the check's Expect ("> 0", "= 42",
// ">= 1000", ...).
//
// # Files
//
// RestoreFiles extracts the backup into a temporary directory under a
// scratch parent (the daemon's data_dir/spool), recomputes the file index
// digest with source.IndexDir — the same Index the backup recorded — and
// compares it with the manifest's. The directory is removed afterwards.
//
// # Results
//
// Both return a nil error exactly when they reached a verdict: Report.OK
// then says whether the backup is proven restorable. A non-nil error means
// there is no verdict (bad options, a refused or unreachable scratch
// target, cancellation) or the scratch space could not be removed.
package verify
