#!/usr/bin/env bash
# PostgreSQL backup benchmark (issue #4, "Performance"): one run measures, side
# by side on the same database,
#   pg_dump -Fc                                   (file)
#   pg_dump -Fc -Z0 | zstd -3 -T0 | age -r KEY    (the single-file pipe: the reference)
#   restic backup --stdin of pg_dump -Fc -Z0      (first backup, fresh repo; if restic exists)
#   opsd backup run --wait                        (daemon; targets local + Versity Gateway (S3)
#                                                  + fake-gcs-server, each a separate process)
# and the restores
#   age -d | zstd -d | pg_restore -d              vs  opsd backup restore --to-postgres (offline, local target)
# plus the daemon's peak RSS (VmHWM).
#
#   bench/backup-pg.sh                   # 7,000,000 rows (~850 MiB on disk)
#   BENCH_ROWS=700000 bench/backup-pg.sh # quick run
#
# Needs: psql, pg_dump, pg_restore, zstd, age, age-keygen, go, curl, jq,
# versitygw (PATH or $(go env GOPATH)/bin). Everything is on loopback and
# under a mktemp -d work directory removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=${BENCH_ROWS:-7000000}
ADMIN_DSN=${OPSD_TEST_POSTGRES_DSN:-postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable}

# dsn_for DB: ADMIN_DSN with its database name replaced.
dsn_for() {
	local db=$1 base query=""
	base=${ADMIN_DSN%%\?*}
	[[ $ADMIN_DSN == *\?* ]] && query="?${ADMIN_DSN#*\?}"
	echo "${base%/*}/$db$query"
}
BENCH_DSN=$(dsn_for opsd_bench)
PIPE_DB=opsd_bench_restore_pipe
OPSD_DB=opsd_bench_restore_opsd

# shellcheck source=bench/lib.sh
. bench/lib.sh
require_tools psql pg_dump pg_restore zstd age age-keygen go curl jq python3
WORK=$(mktemp -d)
cleanup() {
	cleanup_stores
	for db in "$PIPE_DB" "$OPSD_DB"; do
		psql -q "$ADMIN_DSN" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

recreate_db() { PGOPTIONS="-c client_min_messages=warning" psql -q -v ON_ERROR_STOP=1 "$ADMIN_DSN" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null; }

# ---------------------------------------------------------------- data
have_rows=$(psql -At "$BENCH_DSN" -c "SELECT count(*) FROM events" 2>/dev/null || echo 0)
if [[ ${BENCH_REUSE:-} == 1 && $have_rows == "$ROWS" ]]; then
	log "data: reusing opsd_bench ($ROWS rows)"
else
log "data: $ROWS rows into opsd_bench"
recreate_db opsd_bench
t0=$(now)
psql -q -v ON_ERROR_STOP=1 "$BENCH_DSN" >/dev/null <<SQL
CREATE TABLE events (
	id         bigint PRIMARY KEY,
	account    text NOT NULL,
	payload    text NOT NULL,
	created_at timestamptz NOT NULL,
	amount     numeric(12,2) NOT NULL,
	status     text NOT NULL
);
INSERT INTO events
SELECT g,
       md5(g::text),
       md5((g::bigint * 7919)::text || 'opsd'),
       timestamptz '2024-01-01' + g * interval '1 second',
       round((random() * 10000)::numeric, 2),
       (ARRAY['new','paid','shipped','refunded','cancelled'])[1 + g % 5]
FROM generate_series(1, $ROWS) g;
ANALYZE events;
SQL
log "data loaded in $(since "$t0") s"
fi
DB_BYTES=$(psql -At "$BENCH_DSN" -c "SELECT pg_database_size(current_database())")
log "pg_database_size = $DB_BYTES bytes ($(psql -At "$BENCH_DSN" -c "SELECT pg_size_pretty(pg_database_size(current_database()))"))"

# ---------------------------------------------------------------- keys
age-keygen -o "$WORK/age.key" 2>/dev/null
RECIPIENT=$(age-keygen -y "$WORK/age.key")

declare -A SECS SIZE
# ---------------------------------------------------------------- baselines
log "baseline: pg_dump -Fc"
t0=$(now)
pg_dump -Fc -f "$WORK/dump.Fc" "$BENCH_DSN"
SECS[pg_dump_Fc]=$(since "$t0")
SIZE[pg_dump_Fc]=$(stat -c %s "$WORK/dump.Fc")
rm -f "$WORK/dump.Fc"


if command -v restic >/dev/null; then
	log "baseline: restic backup --stdin (first backup, fresh repo)"
	export RESTIC_PASSWORD=opsd-bench RESTIC_REPOSITORY="$WORK/restic"
	restic init -q
	t0=$(now)
	pg_dump -Fc -Z0 "$BENCH_DSN" | restic backup -q --stdin --stdin-filename opsd_bench.dump
	SECS[restic]=$(since "$t0")
	SIZE[restic]=$(du -sb "$WORK/restic" | cut -f1)
	unset RESTIC_PASSWORD RESTIC_REPOSITORY
	rm -rf "$WORK/restic"
else
	log "restic not found: skipped"
fi

# ---------------------------------------------------------------- stores
start_stores

# ---------------------------------------------------------------- pipe and opsd, alternated
# Each of the BENCH_REPEATS rounds runs the pipe then opsd, so both see the
# same machine; the table shows medians (peak RSS: the highest).
REPEATS=${BENCH_REPEATS:-3}
read_target_sets
PIPE_RUNS=() PIPE_MCPU=() RSS_KIB=0
declare -A RUNS=() CPUS=() S3CPUS=() GCSCPUS=() MCPUS=() RSSES=()
for round in $(seq "$REPEATS"); do
	log "round $round/$REPEATS: pg_dump -Fc -Z0 | zstd -3 -T0 | age"
	t0=$(now) m0=$(machine_ticks)
	pg_dump -Fc -Z0 "$BENCH_DSN" | zstd -q -3 -T0 | age -r "$RECIPIENT" >"$WORK/pipe.zst.age"
	PIPE_RUNS+=("$(since "$t0")") PIPE_MCPU+=("$(machine_cpu "$m0")")
	SIZE[pipe]=$(stat -c %s "$WORK/pipe.zst.age")

	for i in "${!SETS[@]}"; do
		BENCH_TARGETS=${SETS[$i]} write_opsd_config "$WORK/opsd.yaml" "    type: postgres
    dsn: \"$BENCH_DSN\""
		rm -rf "$WORK/versity/data/opsd-bench/"* "$WORK/gcs/opsd-bench/"*
		log "round $round/$REPEATS: opsd backup run bench --wait (${SETS[$i]})"
		BENCH_TARGETS=${SETS[$i]} opsd_backup "$WORK/opsd.yaml"
		RUNS[$i]+=" $OPSD_SECS" CPUS[$i]+=" $OPSD_CPU" S3CPUS[$i]+=" $S3_CPU" GCSCPUS[$i]+=" $GCS_CPU" MCPUS[$i]+=" $MACHINE_CPU"
		RSSES[$i]=$(( ${RSSES[$i]:-0} > OPSD_RSS_MIB ? ${RSSES[$i]:-0} : OPSD_RSS_MIB ))
		[[ $i != 0 ]] || SIZE[opsd]=$STORED_BYTES
	done
done
SECS[pipe]=$(median "${PIPE_RUNS[@]}")
# shellcheck disable=SC2086 # word lists
for i in "${!SETS[@]}"; do SECS[opsd$i]=$(median ${RUNS[$i]}); done
SECS[opsd]=${SECS[opsd0]}
RSS_KIB=$((RSSES[0] * 1024))
# shellcheck disable=SC2086 # word lists
OPSD_CPU=$(median ${CPUS[0]}) S3_CPU=$(median ${S3CPUS[0]}) GCS_CPU=$(median ${GCSCPUS[0]})

# ---------------------------------------------------------------- restores, alternated
RESTORE_PIPE_RUNS=() RESTORE_OPSD_RUNS=()
for round in $(seq "$REPEATS"); do
	log "round $round/$REPEATS: restore: age -d | zstd -d | pg_restore"
	recreate_db "$PIPE_DB"
	t0=$(now)
	age -d -i "$WORK/age.key" "$WORK/pipe.zst.age" | zstd -q -d | pg_restore -d "$(dsn_for "$PIPE_DB")"
	RESTORE_PIPE_RUNS+=("$(since "$t0")")

	log "round $round/$REPEATS: restore: opsd backup restore --target local --to-postgres (offline)"
	recreate_db "$OPSD_DB"
	t0=$(now)
	"$WORK/opsd" backup restore "$BACKUP_ID" --config "$WORK/opsd.yaml" --target local \
		--identity "$WORK/age.key" --to-postgres "$(dsn_for "$OPSD_DB")" >&2
	RESTORE_OPSD_RUNS+=("$(since "$t0")")

	for db in "$PIPE_DB" "$OPSD_DB"; do
		n=$(psql -At "$(dsn_for "$db")" -c "SELECT count(*) FROM events")
		[[ $n == "$ROWS" ]] || { echo "backup-pg.sh: $db has $n rows, want $ROWS" >&2; exit 1; }
	done
done
SECS[restore_pipe]=$(median "${RESTORE_PIPE_RUNS[@]}")
SECS[restore_opsd]=$(median "${RESTORE_OPSD_RUNS[@]}")

# ---------------------------------------------------------------- table
echo
echo "medians of $REPEATS alternated rounds: pipe ${PIPE_RUNS[*]} s; opsd (${SETS[0]})${RUNS[0]} s; restore pipe ${RESTORE_PIPE_RUNS[*]} s; opsd ${RESTORE_OPSD_RUNS[*]} s"
echo "rows $ROWS; pg_database_size $((DB_BYTES / 1048576)) MiB; dump (pg_dump -Fc -Z0) $((RAW_BYTES / 1048576)) MiB; $(nproc) cores; $(date -u +%F)"
row() { # name secs stored rss
	awk -v n="$1" -v s="$2" -v raw="$RAW_BYTES" -v ref="${SECS[$5]}" -v st="$3" -v rss="$4" 'BEGIN {
		printf "%-44s %8.2f %8.1f %8.2fx %11s %9s\n", n, s, raw / 1e6 / s, s / ref, (st == "" ? "-" : sprintf("%.1f", st / 1048576)), rss }'
}
printf "%-44s %8s %8s %9s %11s %9s\n" "backup" "s" "MB/s" "vs pipe" "stored MiB" "RSS MiB"
row "pg_dump -Fc" "${SECS[pg_dump_Fc]}" "${SIZE[pg_dump_Fc]}" - pipe
row "pg_dump -Fc -Z0 | zstd -3 -T0 | age" "${SECS[pipe]}" "${SIZE[pipe]}" - pipe
[[ -n ${SECS[restic]:-} ]] && row "restic backup --stdin (first)" "${SECS[restic]}" "${SIZE[restic]}" - pipe
for i in "${!SETS[@]}"; do
	row "opsd backup run (${SETS[$i]})" "${SECS[opsd$i]}" "${SIZE[opsd]}" "${RSSES[$i]}" pipe
done
echo
# Where the time goes: the CPU each store used during the backup and the
# whole machine's (every process: PostgreSQL, pg_dump, opsd, the stores),
# medians, against the pipe's and what the 1.3x target leaves: that wall
# time on every core.
printf "%-44s %8s %8s %9s %9s\n" "CPU seconds during the backup" "opsd" "S3 store" "GCS store" "machine"
awk -v n="pg_dump -Fc -Z0 | zstd -3 -T0 | age" -v m="$(median "${PIPE_MCPU[@]}")" 'BEGIN { printf "%-44s %8s %8s %9s %9.1f\n", n, "-", "-", "-", m }'
for i in "${!SETS[@]}"; do
	# shellcheck disable=SC2086 # word lists
	awk -v n="opsd backup run (${SETS[$i]})" -v o="$(median ${CPUS[$i]})" -v s="$(median ${S3CPUS[$i]})" -v g="$(median ${GCSCPUS[$i]})" -v m="$(median ${MCPUS[$i]})" \
		'BEGIN { printf "%-44s %8.1f %8.1f %9.1f %9.1f\n", n, o, s, g, m }'
done
awk -v p="${SECS[pipe]}" -v c="$(nproc)" 'BEGIN { printf "%-44s %8.1f (%d cores x 1.3 x %.2f s)\n", "machine CPU within the 1.3x target, at most", c * 1.3 * p, c, p }'
echo
printf "%-44s %8s %8s %9s\n" "restore" "s" "MB/s" "vs pipe"
row "age -d | zstd -d | pg_restore" "${SECS[restore_pipe]}" "" - restore_pipe | cut -c1-73
row "opsd backup restore --to-postgres" "${SECS[restore_opsd]}" "" - restore_pipe | cut -c1-73
echo
verdict() { awk -v a="$1" -v b="$2" 'BEGIN { print (a <= b ? "PASS" : "MISS") }'; }
r_backup=$(awk -v a="${SECS[opsd]}" -v b="${SECS[pipe]}" 'BEGIN {printf "%.2f", a / b}')
r_restore=$(awk -v a="${SECS[restore_opsd]}" -v b="${SECS[restore_pipe]}" 'BEGIN {printf "%.2f", a / b}')
printf "%-44s %-18s %s\n" "target" "got" "result"
printf "%-44s %-18s %s\n" "opsd backup <= 1.3x pipe" "${r_backup}x" "$(verdict "$r_backup" 1.3)"
for i in "${!SETS[@]}"; do
	[[ $i != 0 ]] || continue
	r=$(awk -v a="${SECS[opsd$i]}" -v b="${SECS[pipe]}" 'BEGIN {printf "%.2f", a / b}')
	printf "%-44s %-18s %s\n" "  the same, targets ${SETS[$i]} only" "${r}x" "$(verdict "$r" 1.3)"
done
printf "%-44s %-18s %s\n" "opsd backup < pg_dump -Fc" "${SECS[opsd]} vs ${SECS[pg_dump_Fc]} s" "$(verdict "${SECS[opsd]}" "${SECS[pg_dump_Fc]}")"
[[ -n ${SECS[restic]:-} ]] && printf "%-44s %-18s %s\n" "opsd backup < restic first backup" "${SECS[opsd]} vs ${SECS[restic]} s" "$(verdict "${SECS[opsd]}" "${SECS[restic]}")"
printf "%-44s %-18s %s\n" "opsd restore <= 1.2x pipe restore" "${r_restore}x" "$(verdict "$r_restore" 1.2)"
printf "%-44s %-18s %s\n" "opsd daemon peak RSS (VmHWM) <= 200 MiB" "$((RSS_KIB / 1024)) MiB" "$(verdict "$RSS_KIB" $((200 * 1024)))"
