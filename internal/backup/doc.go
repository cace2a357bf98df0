// Package backup makes one backup of a source to every target and restores
// it, with the storage as the only catalog (SPEC §1, §5; docs/FORMAT.md).
//
// # Backup
//
// Run reads the source once and streams it through zstd (klauspost/compress,
// the configured level mapped with zstd.EncoderLevelFromZstd, concurrent
// encoder), age (X25519 recipients; no age layer only with an explicit
// `encryption: none`) and SHA-256, and fans the result out to every target's
// Save concurrently. The data object becomes visible on a target only when
// its Save completes; manifest.json and then manifest.json.sig are written
// last, and only to targets whose data copy completed with the expected
// size. A source that fails — pg_dump or a command exiting non-zero, a file
// tree that cannot be walked — aborts every Save, so no copy of a failed
// backup ever becomes visible.
//
// # Slow and dead targets
//
// Each target has a lane holding at most Options.MaxLag bytes (default
// 16 MiB) in memory. The producer never waits for a lane: a target that falls
// further behind spills to an unlinked temporary file in Options.SpoolDir
// (data_dir/spool in the daemon) and reads back from it until it has caught
// up. The backup therefore runs at the speed of the source and the fastest
// targets, memory stays bounded by MaxLag per target whatever the data size,
// and a slow offsite target still gets its copy — paid for in local disk,
// bounded by Options.MaxSpool. Without a spool dir, past MaxSpool, or when
// the spool cannot be written (disk full), the lagging target is dropped:
// its copy fails, the others carry on. A target whose Save fails is dropped
// likewise; when every target has failed the source is stopped early.
//
// # Restore
//
// Restore reads the manifest from the first target that has a valid,
// signed one, then verifies the data copy's SHA-256 before anything reaches
// the destination: the stored (compressed, encrypted) bytes of an object
// store's copy are downloaded into a spool file while being hashed, and
// decrypted, decompressed and applied from there only when the hash
// matched. A local copy is hashed, rewound and read again through the same
// open file (no spool write), and with no spool an object store's copy is
// read twice; either second read is hashed again, and a copy that changed
// in between fails the restore, named as such. A copy that is missing, unreadable or does
// not match is reported and the next target is tried. Only then is a
// directory extracted (os.Root: no entry can escape it) or pg_restore run;
// a writer receives the plaintext stream.
package backup
