#!/bin/sh
# Checksum verification (issue #5, "Performance"): opsd re-reading a 1 GiB
# stored copy on a local target and checking its SHA-256, beside sha256sum
# of the same file in the same run. Target: opsd >= 0.8x sha256sum.
#   bench/verify.sh
set -eu
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench 'BenchmarkVerifyCopy' -benchtime=3x -timeout 20m ./internal/backup | tee "$out" >&2
echo
awk '
/^BenchmarkVerifyCopy\/opsd/ { for (i = 1; i < NF; i++) if ($(i+1) == "MB/s") opsd = $i }
/^BenchmarkVerifyCopy\/baseline/ { for (i = 1; i < NF; i++) if ($(i+1) == "MB/s") base = $i }
END {
	printf "%-36s %10s\n", "checksum verification, 1 GiB", "MB/s"
	printf "%-36s %10.1f\n", "sha256sum", base
	printf "%-36s %10.1f\n", "opsd (backup.VerifyCopy, local)", opsd
	r = (base > 0 ? opsd / base : 0)
	printf "%-36s %9.2fx  %s\n", "opsd / sha256sum (target >= 0.8x)", r, (r >= 0.8 ? "PASS" : "MISS")
}' "$out"
