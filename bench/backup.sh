#!/bin/sh
# Backup pipeline benchmark (internal/backup): generated, moderately
# compressible rows → zstd -3 → age → SHA-256 → three local directory
# targets, beside the baseline pipe `zstd -3 -T0 | age -r KEY > file` on the
# same bytes, at 256 MiB and 1 GiB (peak heap must not grow with size).
#   bench/backup.sh
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for bytes in 268435456 1073741824; do
	echo "size $bytes" >>"$out"
	OPSD_BENCH_BYTES=$bytes go test -run '^$' -bench 'BenchmarkPipeline' -benchtime=2x -timeout 20m ./internal/backup | tee -a "$out" >&2
done
echo
awk '
function metric(name,   i) { for (i = 3; i < NF; i++) if ($(i+1) == name) return $i; return "-" }
/^size / { size = $2 / 1048576 }
/^BenchmarkPipeline\// {
	if (!hdr++) printf "%-26s %8s %10s %8s %15s\n", "pipeline", "MiB", "MB/s", "s", "peak heap MiB"
	n = $1; sub(/^BenchmarkPipeline\//, "", n); sub(/-[0-9]+$/, "", n)
	printf "%-26s %8d %10.1f %8.2f %15s\n", n, size, metric("MB/s"), $3 / 1e9, metric("peak-heap-MiB")
}' "$out"
echo "(peak heap includes the benchmark's own 32 MiB input block)"
