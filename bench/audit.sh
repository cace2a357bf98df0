#!/bin/sh
# Audit-log benchmarks (internal/audit): append throughput and latency with
# group commit beside its two baselines (one fsync per entry; no fsync), and
# Verify / memory on 10k- and 1M-entry logs. Prints a table.
#   bench/audit.sh                      # full run, ~1 minute
#   AUDIT_BENCH_ENTRIES=200000 bench/audit.sh
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkAppend' -benchtime=3s ./internal/audit | tee "$out" >&2
go test -run '^$' -bench 'BenchmarkLargeLog' -benchtime=1x -timeout 10m ./internal/audit | tee -a "$out" >&2
echo
awk '
function metric(name,   i) { for (i = 4; i < NF; i++) if ($(i+1) == name) return $i; return "-" }
function label(   n) { n = $1; sub(/^Benchmark[A-Za-z]+\//, "", n); sub(/-[0-9]+$/, "", n); sub(/\/(verify|open\+append)$/, "", n); return n }
/^BenchmarkAppend\// {
	if (!hdr++) printf "%-28s %12s %10s %10s\n", "append (fsync before ack)", "entries/s", "p50 ms", "p99 ms"
	printf "%-28s %12.0f %10.3f %10.3f\n", label(), metric("entries/s"), metric("p50-ms"), metric("p99-ms")
}
/^BenchmarkLargeLog\/.*\/verify/ { v[++nv] = sprintf("%-28s %12.0f %14.1f", label(), metric("entries/s"), metric("peak-heap-MB")) }
/^BenchmarkLargeLog\/.*\/open\+append/ { o[++no] = sprintf("%-28s %14.2f %10.1f", label(), metric("log-heap-MB"), metric("rss-MB")) }
END {
	printf "\n%-28s %12s %14s\n", "verify", "entries/s", "peak heap MB"
	for (i = 1; i <= nv; i++) print v[i]
	printf "\n%-28s %14s %10s\n", "open log + 1000 appends", "log heap MB", "RSS MB"
	for (i = 1; i <= no; i++) print o[i]
}' "$out"
