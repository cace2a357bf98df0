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
#
# Knobs: BENCH_SIZES_MIB (tree sizes), BENCH_TARGETS (default "local, s3,
# gcs"), GCS_CHUNK (bench/lib.sh), BENCH_REPEATS (default 1: alternated
# rounds of the pipe and each opsd per size; the table shows medians and
# the highest RSS), BENCH_OPSD (space-separated prebuilt opsd binaries to
# compare side by side, e.g. before and after a change, one row each;
# default the opsd built from this tree).
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

REPEATS=${BENCH_REPEATS:-1}
highest() { printf '%s\n' "$@" | sort -g | tail -1; }
# shellcheck disable=SC2206 # a space-separated list
OPSD_BINS=(${BENCH_OPSD:-$WORK/opsd})
read_target_sets
VBIN=() VSET=() # the variants: every binary with every target set
for bin in "${OPSD_BINS[@]}"; do for set in "${SETS[@]}"; do VBIN+=("$bin") VSET+=("$set"); done; done
label() { # VARIANT
	local name="opsd"
	[[ -z ${BENCH_OPSD:-} ]] || name="opsd $(basename "${VBIN[$1]}")"
	echo "$name (${VSET[$1]})"
}

results=()
for mib in ${BENCH_SIZES_MIB:-256 1024}; do
	tree="$WORK/tree-$mib"
	log "generate a $mib MiB tree"
	python3 bench/gentree.py "$tree" "$mib"
	sync

	pipe_runs=() pipe_mcpu=()
	declare -A runs=() rss=() cpu=() s3cpu=() gcscpu=() mcpu=() stored=()
	for round in $(seq "$REPEATS"); do
		log "round $round/$REPEATS: baseline tar | zstd -3 -T0 | age ($mib MiB)"
		t0=$(now) m0=$(machine_ticks)
		tar -cf - -C "$tree" . | zstd -q -3 -T0 | age -r "$RECIPIENT" >"$WORK/pipe.tar.zst.age"
		pipe_runs+=("$(since "$t0")") pipe_mcpu+=("$(machine_cpu "$m0")")
		pipe_size=$(stat -c %s "$WORK/pipe.tar.zst.age")
		rm -f "$WORK/pipe.tar.zst.age"

		for i in "${!VBIN[@]}"; do
			[[ ${VBIN[$i]} == "$WORK/opsd" ]] || cp "${VBIN[$i]}" "$WORK/opsd"
			BENCH_TARGETS=${VSET[$i]} write_opsd_config "$WORK/opsd.yaml" "    type: files
    paths: [\"$tree\"]"
			rm -rf "$WORK/versity/data/opsd-bench/"* "$WORK/gcs/opsd-bench/"*
			log "round $round/$REPEATS: $(label "$i") ($mib MiB)"
			opsd_backup "$WORK/opsd.yaml"
			runs[$i]+=" $OPSD_SECS" rss[$i]+=" $OPSD_RSS_MIB" cpu[$i]+=" $OPSD_CPU" s3cpu[$i]+=" $S3_CPU" gcscpu[$i]+=" $GCS_CPU" mcpu[$i]+=" $MACHINE_CPU"
			stored[$i]=$STORED_BYTES
		done
	done
	pipe_secs=$(median "${pipe_runs[@]}") pipe_machine=$(median "${pipe_mcpu[@]}")
	[[ $REPEATS == 1 ]] || echo "$mib MiB, $REPEATS alternated rounds: pipe ${pipe_runs[*]} s" >&2
	for i in "${!VBIN[@]}"; do
		# shellcheck disable=SC2086 # word lists
		results+=("$mib|$pipe_secs|$pipe_size|$(median ${runs[$i]})|${stored[$i]}|$(highest ${rss[$i]})|$(median ${cpu[$i]})|$(median ${s3cpu[$i]})|$(median ${gcscpu[$i]})|$(median ${mcpu[$i]})|$pipe_machine|$RAW_BYTES|$(label "$i")")
		[[ $REPEATS == 1 ]] || echo "$mib MiB, $REPEATS alternated rounds: $(label "$i")${runs[$i]} s" >&2
	done
	unset runs rss cpu s3cpu gcscpu mcpu stored
	rm -rf "$tree"
done

echo
echo "files tree (bench/gentree.py); $(nproc) cores; $(date -u +%F)"
echo "CPU s: opsd / S3 store / GCS store / the whole machine (every process) during the run; the 1.3x target"
echo "leaves the machine at most $(nproc) cores x 1.3 x the pipe's time"
printf "%-9s %-36s %8s %8s %9s %11s %8s %24s\n" "tree" "backup" "s" "MB/s" "vs pipe" "stored MiB" "RSS MiB" "CPU s opsd/s3/gcs/machine"
last=""
for r in "${results[@]}"; do
	IFS='|' read -r mib ps pz os oz rss oc sc gc mc pm raw name <<<"$r"
	awk -v mib="$mib" -v ps="$ps" -v pz="$pz" -v os="$os" -v oz="$oz" -v rss="$rss" -v oc="$oc" -v sc="$sc" -v gc="$gc" -v mc="$mc" -v pm="$pm" -v raw="$raw" -v name="$name" -v pipe="$([[ $mib == "$last" ]] || echo 1)" -v cores="$(nproc)" 'BEGIN {
		if (pipe) printf "%-9s %-36s %8.2f %8.1f %8.2fx %11.1f %8s %24s\n", mib " MiB", "tar | zstd -3 -T0 | age", ps, raw / 1e6 / ps, 1, pz / 1048576, "-", sprintf("-/-/-/%.1f (1.3x: %.1f)", pm, ps * cores * 1.3)
		printf "%-9s %-36s %8.2f %8.1f %8.2fx %11.1f %8s %24s\n", mib " MiB", name, os, raw / 1e6 / os, os / ps, oz / 1048576, rss, oc "/" sc "/" gc "/" mc
	}'
	last=$mib
done
echo
printf "%-60s %-18s %s\n" "target" "got" "result"
for r in "${results[@]}"; do
	IFS='|' read -r mib ps pz os oz rss oc sc gc mc pm raw name <<<"$r"
	suffix="$mib MiB; ${name#opsd }"
	ratio=$(awk -v a="$os" -v b="$ps" 'BEGIN {printf "%.2f", a / b}')
	printf "%-60s %-18s %s\n" "opsd files backup <= 1.3x pipe ($suffix)" "${ratio}x" "$(awk -v a="$ratio" 'BEGIN { print (a <= 1.3 ? "PASS" : "MISS") }')"
	printf "%-60s %-18s %s\n" "opsd peak RSS <= 200 MiB ($suffix)" "$rss MiB" "$(awk -v a="$rss" 'BEGIN { print (a <= 200 ? "PASS" : "MISS") }')"
done
