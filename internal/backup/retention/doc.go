// Package retention decides which backups of a source to keep and which to
// delete: a GFS (grandfather-father-son) policy with the semantics of restic's
// `forget` command, plus opsd's own safety overrides. It is a pure library:
// it reads no clock, no storage and no config file; the caller passes the
// backups, the policy, the current time and the time zone.
//
// # Policy
//
// The policy is a config.Keep. A backup is kept if any rule keeps it:
//
//   - keep_last N keeps the N newest backups.
//   - keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly N
//     put each backup into a bucket by its time in the given location (hour,
//     day, ISO 8601 week, month, year) and keep the newest backup of each of
//     the N newest buckets that hold a backup. A bucket counts once however
//     many backups it holds; buckets without a backup do not count.
//   - If a counting rule still has unused slots when it reaches the oldest
//     backup, the oldest backup is kept as well, even when it shares a bucket
//     with a newer kept backup (restic 0.17 and later do this, so that a young
//     repository keeps its full history).
//   - Unlimited (-1) as a count keeps one backup of every bucket.
//   - keep_within D keeps every backup made less than D before the newest
//     backup that is not in the future. It is relative to the newest backup,
//     not to now, so a source that stopped backing up keeps its last backups.
//   - A policy with every value zero keeps everything.
//
// A non-empty policy always keeps at least the newest backup; no policy
// deletes all backups of a source.
//
// # Overrides
//
// On top of the policy, whatever it says:
//
//   - The newest backup proven restorable (Backup.ProvenGood) is kept.
//   - A backup whose object lock retain-until date lies after now is kept;
//     Decision.DeletableAt tells when the lock ends.
//   - A backup the policy would delete before its minimum storage duration
//     ends is still deleted, but Decision.EarlyDeletion flags it so that the
//     caller can show the early-deletion charge.
//
// docs/RETENTION.md describes the rules for users, with a worked example.
package retention
