// Package audit is opsd's signed, tamper-evident audit log (SPEC §1.5, §10;
// docs/AUDIT.md): an RFC 6962 Merkle tree (golang.org/x/mod/sumdb/tlog) over
// canonical-JSON entries kept in append-only, checksummed segment files,
// with C2SP checkpoints signed as notes and pushed to witnesses.
//
// The daemon opens one Log and hands it to the action choke point, which is
// the only writer:
//
//	key, _ := signing.Load(cfg.Audit.SigningKeyFile)
//	log, err := audit.Open(ctx, filepath.Join(cfg.DataDir, "audit"), audit.Options{
//		Key: key, CheckpointInterval: cfg.Audit.CheckpointInterval,
//		Witnesses: witnesses, Metrics: audit.NewMetrics(reg), Logger: logger,
//	})
//	dispatcher := action.NewDispatcher(log)      // Log implements action.Recorder
//	group.Add(func() error { return log.Run(ctx) }, cancel) // checkpoints, witnesses, recovery
//	defer log.Close()                              // after Run returned
//	ready := log.Healthy                           // for /readyz
//
// The HTTP API serves Checkpoint, EntriesPage, ProveRecord (as
// RecordProofJSON) and ProveTree (as TreeProofJSON); `opsd audit verify`
// calls Verify and exits with Report.Status().ExitCode().
//
// Appends are durable when they return: one committer goroutine writes
// every entry queued while the previous fsync ran and syncs once (group
// commit). A failed write or fsync refuses the append, cuts the files back
// to the last durable entry and marks the log unhealthy until the disk
// works again.
package audit
