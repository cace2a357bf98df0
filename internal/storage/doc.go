// Package storage is the one interface every place opsd keeps bytes goes
// through: backup copies, manifests, audit-log witnesses.
//
// # Contract
//
// Keys are slash-separated, relative, with no empty, "." or ".." segments
// (e.g. "orders-db/20261123T074500Z-ab12cd/manifest.json"); CheckKey
// validates them. A target's prefix is applied by the backend, not by
// callers. Every I/O method takes ctx first. Save streams a reader of
// unknown size and makes the object visible only once it is complete; List
// returns complete objects in lexical key order; Remove of a missing key is
// not an error; Cleanup reclaims what a crash left behind (temporary files,
// incomplete uploads). Errors are classified by IsPermanent: a permanent
// error (ErrNotFound, ErrExists, ErrLocked, ErrInvalidKey, ErrUnsupported,
// access denied, missing bucket, a full local disk, context cancellation)
// is never retried.
//
// # Implementations and what they guarantee about visibility
//
//   - local/: a temporary file (".opsd-tmp-*") in the object's directory,
//     fsync, rename (or link for NoOverwrite), fsync of the directory. A
//     crash leaves at most a temporary file, which List never shows and
//     Cleanup removes. No object lock.
//   - s3/: aws-sdk-go-v2 and its upload manager. Small objects are one
//     PutObject, larger ones a multipart upload completed last; a crash
//     leaves an incomplete multipart upload, invisible to List and Stat,
//     which Cleanup aborts. Object Lock retention per object.
//   - gcs/: cloud.google.com/go/storage resumable uploads, finalized last.
//     An unfinalized upload is invisible and expires on its own (a week),
//     so Cleanup has nothing to do. Object retention per object.
//   - mem/: in memory, for tests, with optional lock enforcement.
//
// # Decorators
//
// retry/ (exponential backoff with jitter, never retries a permanent
// error) and metrics/ (opsd_storage_* per target and operation) wrap any
// Backend and offer Unwrap. The stack is assembled in exactly one place,
// location.Wrap: metrics(retry(backend)), so metrics count one operation
// per caller request, with its latency including retries.
//
// # Test doubles and what they do not enforce
//
// storagetest is the conformance suite every backend runs: Run for all,
// RunLock for stores that enforce object lock (mem with Lock, S3 against
// Versity Gateway). In-process gofakes3 silently ignores Object Lock, and
// fake-gcs-server stores but does not enforce object retention: against
// them only what opsd requests is checked, never that the store refuses a
// deletion.
package storage
