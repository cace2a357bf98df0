#!/bin/sh
# DR engine benchmarks (internal/dr): per-step overhead of a no-op step with
# its journal writes, on SQLite and PostgreSQL (targets: median ≤ 2 ms and
# ≤ 5 ms), beside its baseline on the same store in the same run: the same
# journal writes alone, no engine (BenchmarkJournalFloor); and 50 concurrent
# runs of a 20-step runbook. Prints a table.
# PostgreSQL comes from OPSD_TEST_POSTGRES_DSN (see internal/state/pgtest).
#   bench/dr.sh
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkNoopStep|BenchmarkJournalFloor|BenchmarkConcurrentRuns' -benchtime=3s ./internal/dr | tee "$out" >&2
echo
awk '
function metric(name,   i) { for (i = 3; i < NF; i++) if ($(i+1) == name) return $i; return "-" }
function label(   n) { n = $1; sub(/^Benchmark[A-Za-z]+\//, "", n); sub(/-[0-9]+$/, "", n); return n }
/^BenchmarkNoopStep\// { n[label()] = metric("ns/op") / 1e6; p50[label()] = metric("p50-ms"); p99[label()] = metric("p99-ms") }
/^BenchmarkJournalFloor\// { f[label()] = metric("ns/op") / 1e6; f50[label()] = metric("p50-ms") }
/^BenchmarkConcurrentRuns\// { c[++nc] = sprintf("%-28s %12.0f %14.3f", label(), metric("steps/s"), metric("p99-step-ms")) }
END {
	printf "%-28s %9s %8s %8s %14s %10s %8s\n", "no-op step (journal incl.)", "ms/step", "p50 ms", "p99 ms", "journal alone", "p50 ms", "target"
	for (s in n) {
		limit = (s == "sqlite") ? 2 : 5
		printf "%-28s %9.3f %8.3f %8.3f %14.3f %10.3f %5d ms %s\n", s, n[s], p50[s], p99[s], f[s], f50[s], limit, (p50[s] + 0 <= limit ? "PASS" : "MISS")
	}
	printf "\n%-28s %12s %14s\n", "50 runs x 20 steps at once", "steps/s", "p99 step ms"
	for (i = 1; i <= nc; i++) print c[i]
}' "$out"
