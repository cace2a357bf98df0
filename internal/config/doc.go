// Package config loads opsd.yaml: it expands variables, decodes the YAML
// strictly, applies defaults and validates the result, and reports every
// problem at once with the file:line:col of the offending node (SPEC §1
// principle 8, §2).
//
// # Decoding
//
// The file is parsed into a yaml.Node tree and walked by hand rather than
// unmarshalled, so that every problem carries a position and decoding goes
// on after the first one. Unknown keys, duplicate keys and values of the
// wrong type are problems. Anchors, aliases and merge keys (<<) work as in
// YAML; keys written explicitly override merged ones. Top-level keys
// starting with "x-" are ignored, to give shared anchors a home (as in
// Compose files). A YAML null (a key with no value) counts as not set.
//
// # Expansion
//
// Expansion happens per scalar value after parsing, so positions stay right
// and an expanded value can never inject YAML structure:
//
//	${NAME}       the environment variable NAME; unset or empty is a problem
//	${file:PATH}  the content of PATH with surrounding whitespace trimmed;
//	              a relative PATH resolves against the config file's directory
//	$${           a literal "${"
//
// Keys are never expanded. Any other "$" is kept as written, so passwords
// containing "$" need no escaping.
//
// # Values
//
// Durations are Go durations ("90s", "36h", "1h30m") plus a leading day
// count with the suffix "d" ("7d", "1d12h"), because retention and RPO
// windows are naturally written in days; a day is always 24h here, since
// these windows measure elapsed time, not calendar days. Sizes are plain
// byte counts or a number with a unit: B, KB, MB, GB, TB (powers of 1000)
// or KiB, MiB, GiB, TiB (powers of 1024). Percentages are written with a
// "%" sign ("80%").
//
// # Paths
//
// Every relative file or directory path in the config (data_dir, key and
// certificate files, token and password files, local target paths, files
// source paths, pg_dump when written with a slash, runbooks.dir,
// plugins.dir, alerts.rule_files, cost.prices, age key files) is resolved
// against the directory of the config file as it was passed to Load, so a
// config and the files next to it can move together. The resolved paths
// are what Config holds.
//
// # Secrets
//
// Values that may be secret (DSNs, tokens and token hashes, passwords,
// webhook URLs, command environments, plugin configs) and any value that
// came from an expansion are never quoted in a Problem: messages name the
// key instead. Secret fields have type Secret, whose String method redacts.
package config
