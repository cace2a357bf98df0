#!/usr/bin/env bash
# Files backup benchmark (issue #4, "Performance"): a generated mixed file
# tree (bench/gentree.py: log-like text, random binaries, many small files)
# at 256 MiB and 1 GiB, each measured side by side in one run:
#   tar -cf - | zstd -3 -T0 | age -r KEY > file   (the pipe: the reference)
#   opsd backup run --wait                        (daemon; targets local + Versity Gateway (S3)
#                                                  + fake-gcs-server, each a separate process)
# with the daemon's peak RSS (VmHWM) at each size: it must not grow with
# the data.
#
#   bench/backup-files.sh                 # 256 MiB and 1 GiB
#   BENCH_SIZES_MIB="64" bench/backup-files.sh
set -euo pipefail
cd "$(dirname "$0")/.."
require_tools_list="tar zstd age age-keygen go curl jq python3"
WORK=$(mktemp -d)
# shellcheck source=bench/lib.sh
. bench/lib.sh
require_tools $require_tools_list
trap 'cleanup_stores; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

age-keygen -o "$WORK/age.key" 2>/dev/null
RECIPIENT=$(age-keygen -y "$WORK/age.key")
start_stores

results=()
for mib in ${BENCH_SIZES_MIB:-256 1024}; do
	tree="$WORK/tree-$mib"
	log "generate a $mib MiB tree"
	python3 bench/gentree.py "$tree" "$mib"
	sync

	log "baseline: tar | zstd -3 -T0 | age ($mib MiB)"
	t0=$(now)
	tar -cf - -C "$tree" . | zstd -q -3 -T0 | age -r "$RECIPIENT" >"$WORK/pipe.tar.zst.age"
	pipe_secs=$(since "$t0")
	pipe_size=$(stat -c %s "$WORK/pipe.tar.zst.age")
	rm -f "$WORK/pipe.tar.zst.age"

	rm -rf "$WORK/versity/data/opsd-bench/"* "$WORK/gcs/opsd-bench/"*
	write_opsd_config "$WORK/opsd.yaml" "    type: files
    paths: [\"$tree\"]"
	log "opsd backup run bench --wait ($mib MiB; ${BENCH_TARGETS:-local, s3, gcs})"
	opsd_backup "$WORK/opsd.yaml"
	results+=("$mib $pipe_secs $pipe_size $OPSD_SECS $STORED_BYTES $OPSD_RSS_MIB $OPSD_CPU $S3_CPU $GCS_CPU $RAW_BYTES")
	rm -rf "$tree"
done

echo
echo "files tree (bench/gentree.py); targets ${BENCH_TARGETS:-local, s3, gcs}; $(nproc) cores; $(date -u +%F)"
printf "%-9s %-36s %8s %8s %9s %11s %8s %22s\n" "tree" "backup" "s" "MB/s" "vs pipe" "stored MiB" "RSS MiB" "CPU s opsd/s3/gcs"
for r in "${results[@]}"; do
	read -r mib ps pz os oz rss oc sc gc raw <<<"$r"
	awk -v mib="$mib" -v ps="$ps" -v pz="$pz" -v os="$os" -v oz="$oz" -v rss="$rss" -v oc="$oc" -v sc="$sc" -v gc="$gc" -v raw="$raw" 'BEGIN {
		printf "%-9s %-36s %8.2f %8.1f %8.2fx %11.1f %8s %22s\n", mib " MiB", "tar | zstd -3 -T0 | age", ps, raw / 1e6 / ps, 1, pz / 1048576, "-", "-"
		printf "%-9s %-36s %8.2f %8.1f %8.2fx %11.1f %8s %22s\n", mib " MiB", "opsd backup run (3 targets)", os, raw / 1e6 / os, os / ps, oz / 1048576, rss, oc "/" sc "/" gc
	}'
done
echo
printf "%-44s %-18s %s\n" "target" "got" "result"
for r in "${results[@]}"; do
	read -r mib ps pz os oz rss oc sc gc raw <<<"$r"
	ratio=$(awk -v a="$os" -v b="$ps" 'BEGIN {printf "%.2f", a / b}')
	printf "%-44s %-18s %s\n" "opsd files backup <= 1.3x pipe ($mib MiB)" "${ratio}x" "$(awk -v a="$ratio" 'BEGIN { print (a <= 1.3 ? "PASS" : "MISS") }')"
	printf "%-44s %-18s %s\n" "opsd peak RSS <= 200 MiB ($mib MiB)" "$rss MiB" "$(awk -v a="$rss" 'BEGIN { print (a <= 200 ? "PASS" : "MISS") }')"
done
