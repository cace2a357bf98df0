#!/bin/sh
# Scheduler overhead (issue #5, "Performance"): 1,000 sources on "@every 1m"
# with a worker that does nothing, two rounds, on the embedded SQLite store.
# Targets: under 5% of one core, no run more than 1 s late.
#   bench/schedule.sh        (about 2.5 minutes)
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkScheduler1000' -benchtime=1x -timeout 10m ./internal/jobs | tee "$out" >&2
echo
awk '
function metric(name,   i) { for (i = 3; i < NF; i++) if ($(i+1) == name) return $i; return "-" }
/^BenchmarkScheduler1000/ {
	printf "%-44s %s\n", "runs (1,000 sources x 2 rounds)", metric("runs")
	printf "%-44s %s ms\n", "CPU per scheduled run", metric("cpu-ms/run")
	printf "%-44s %s %%  %s\n", "share of one core (target < 5%)", metric("%core"), (metric("%core") + 0 < 5 ? "PASS" : "MISS")
	printf "%-44s %s / %s / %s ms  %s\n", "start after slot p50 / p99 / max (target < 1 s)", metric("p50-late-ms"), metric("p99-late-ms"), metric("max-late-ms"), (metric("max-late-ms") + 0 < 1000 ? "PASS" : "MISS")
}' "$out"
