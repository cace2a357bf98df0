#!/bin/sh
# Scheduler overhead (issue #5, "Performance"): 1,000 sources on "@every 1m"
# with a worker that does nothing, two rounds, with the daemon's default
# workers (state.workers), on the embedded SQLite store and on PostgreSQL;
# each with River's own periodic timing (baseline, "river") and opsd's
# ("opsd": inserted ahead of the slot, producers woken at the slot).
# Targets: under 5% of one core, no run more than 1 s late.
#   bench/schedule.sh        (about 9 minutes)
# OPSD_BENCH_BACKENDS=sqlite, OPSD_BENCH_WORKERS=N, OPSD_BENCH_FETCH_COOLDOWN=D
# narrow or vary it; PostgreSQL comes from OPSD_TEST_POSTGRES_DSN (default
# the local server) and is skipped, loudly, when unreachable.
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkScheduler1000' -benchtime=1x -timeout 30m ./internal/jobs | tee "$out" >&2
echo
awk '
function metric(name,   i) { for (i = 3; i < NF; i++) if ($(i+1) == name) return $i; return "-" }
/^BenchmarkScheduler1000\// {
	name = $1; sub(/^BenchmarkScheduler1000\//, "", name); sub(/-[0-9]+$/, "", name)
	printf "%s\n", name
	printf "  %-46s %s\n", "runs (1,000 sources x 2 rounds)", metric("runs")
	printf "  %-46s %s ms\n", "CPU per scheduled run (opsd process)", metric("cpu-ms/run")
	printf "  %-46s %s %%  %s\n", "share of one core (target < 5%)", metric("%core"), (metric("%core") + 0 < 5 ? "PASS" : "MISS")
	if (metric("server-cpu-ms/run") != "-")
		printf "  %-46s %s ms, %s %% of a core\n", "PostgreSQL backends per run", metric("server-cpu-ms/run"), metric("%server-core")
	printf "  %-46s %s / %s / %s / %s ms  %s\n", "start after slot min / p50 / p99 / max", metric("min-late-ms"), metric("p50-late-ms"), metric("p99-late-ms"), metric("max-late-ms"), (metric("max-late-ms") + 0 < 1000 ? "PASS" : "MISS")
}' "$out"
