#!/bin/sh
# Alerts benchmarks (issue #7, "Performance"), each beside its baseline in
# the same run. Needs Debian's prometheus and prometheus-alertmanager.
#  - Rule evaluation: 1,000 alerting rules over ~9,500 opsd_* series with an
#    hour of 15s samples, in opsd's local path (Prometheus's tsdb, its
#    rules manager and engine as the Evaluator builds them) and in Debian's
#    Prometheus server scraping the same samples; one round's wall time,
#    prometheus_rule_group_last_duration_seconds on both sides.
#    Target: opsd round <= Prometheus round.
#  - Routing: 10,000 alerts into routing (1,000 groups, group_wait 1s) with
#    a webhook receiver on loopback, opsd's route.Router vs Alertmanager
#    0.25 posted to /api/v2/alerts. Target: opsd alerts/s >= Alertmanager's.
#   bench/alerts.sh        (about 3 minutes; BENCH_ROUNDS=n rounds per side)
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
hookdir=$(mktemp -d)
trap 'rm -rf "$out" "$hookdir"' EXIT
go build -o "$hookdir/webhook" ./bench/alertsbench/webhook
export OPSD_BENCH_WEBHOOK="$hookdir/webhook"
go test -v -run '^$' -bench 'BenchmarkEvalRoundVsPrometheus' -benchtime=1x -timeout 15m ./internal/alerts/rules | tee "$out" >&2
ROUTE_ROUNDS=${BENCH_ROUNDS:-5}
BENCH_ROUNDS=$ROUTE_ROUNDS go test -v -run '^$' -bench 'BenchmarkRouting10k' -benchtime=1x -timeout 15m ./internal/alerts/route | tee -a "$out" >&2
for b in BenchmarkEvalRoundVsPrometheus BenchmarkRouting10k; do
	grep -q "^$b.*ns/op" "$out" || { echo "bench: $b did not run or failed (see above)" >&2; exit 1; }
done
echo
prom=$(prometheus --version 2>&1 | head -1 | awk '{print $3}')
am=$(prometheus-alertmanager --version 2>&1 | head -1 | awk '{print $3}')
awk -v prom="$prom" -v am="$am" -v rounds="${BENCH_ROUNDS:-5}" -v rrounds="$ROUTE_ROUNDS" '
function metric(name,   i) { for (i = 3; i < NF; i++) if ($(i+1) == name) return $i; return "-" }
function verdict(ok) { return ok ? "PASS" : "MISS" }
/^BenchmarkEvalRoundVsPrometheus.*ns\/op/ {
	o = metric("opsd-ms"); p = metric("prometheus-ms")
	printf "rule evaluation: 1,000 alerting rules, %s opsd_* series x 241 samples (1h at 15s), the same samples in both\n", metric("series")
	printf "%-44s %14s %14s\n", "one round (median of " rounds ")", "ms", "ALERTS series"
	printf "%-44s %14.1f %14d\n", "opsd local path (tsdb)", o, metric("opsd-alerts")
	printf "%-44s %14.1f %14d\n", "Prometheus " prom " (Debian), same rule file", p, metric("prometheus-alerts")
	printf "%-44s %13.2fx  %s\n\n", "opsd round <= Prometheus round", o / p, verdict(o <= p)
}
/^BenchmarkRouting10k.*ns\/op/ {
	o = metric("opsd-alerts/s"); a = metric("alertmanager-alerts/s")
	printf "routing: 10,000 alerts, 1,000 groups of 10, group_wait 1s, webhook on loopback (median of " rrounds " alternated rounds)\n"
	printf "%-44s %10s %12s %10s %10s\n", "", "alerts/s", "s to all", "ingest s", "payloads"
	printf "%-44s %10.0f %12.3f %10.3f %10d\n", "opsd route.Router (Push, in process)", o, metric("opsd-s"), metric("opsd-ingest-s"), metric("opsd-payloads")
	printf "%-44s %10.0f %12.3f %10.3f %10d\n", "Alertmanager " am " (POST /api/v2/alerts)", a, metric("alertmanager-s"), metric("alertmanager-ingest-s"), metric("alertmanager-payloads")
	printf "%-44s %9.2fx  %s\n", "opsd rate >= Alertmanager rate", o / a, verdict(o >= a)
}' "$out"
