# Shared helpers of the end-to-end benchmarks (sourced, not run).
# Stores: Versity Gateway (S3, posix backend on disk) and fake-gcs-server
# (filesystem backend), each a separate process, and the opsd daemon.
# Everything on loopback, under $WORK, stopped by cleanup_stores.

log() { echo "== $*" >&2; }
now() { date +%s.%N; }
since() { echo "$(now) $1" | awk '{printf "%.2f", $1 - $2}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL NAME: any HTTP answer within 20 s
	local i
	for i in $(seq 200); do
		curl -s -o /dev/null --max-time 1 "$1" && return 0
		sleep 0.1
	done
	echo "bench: $2 did not answer on $1" >&2
	return 1
}
# median X...: the median of numbers.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }

# read_target_sets sets SETS, the target sets each round runs opsd with,
# '|'-separated: the first is the issue's measurement (three targets); the
# others attribute its time to the stores (bench/README.md, "Where the time
# goes"). BENCH_TARGETS overrides them with its own.
read_target_sets() { IFS='|' read -r -a SETS <<<"${BENCH_TARGETS:-local, s3, gcs|local|local, s3}"; }

# cpu_ticks PID: user+system clock ticks (1/100 s) of PID so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# machine_ticks: busy clock ticks of the whole machine so far (every core,
# every process: user, nice, system, irq, softirq).
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# machine_cpu SINCE_TICKS: CPU seconds the machine spent since then.
machine_cpu() { awk -v a="$(machine_ticks)" -v b="$1" 'BEGIN {printf "%.1f", (a - b) / 100}'; }

PIDS=()
# cleanup_stores stops the stores and the daemon; with BENCH_KEEP_LOGS=DIR
# their logs (opsd.log, versitygw.log, fake-gcs-server.log) are copied there
# first (e.g. to read GODEBUG=gctrace=1 output).
cleanup_stores() {
	local pid
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
	for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
	PIDS=()
	if [[ -n ${BENCH_KEEP_LOGS:-} && -d ${WORK:-} ]]; then
		mkdir -p "$BENCH_KEEP_LOGS" && cp "$WORK"/*.log "$BENCH_KEEP_LOGS"/ 2>/dev/null || true
	fi
}

require_tools() {
	local tool
	for tool in "$@"; do
		command -v "$tool" >/dev/null || { echo "bench: $tool not found" >&2; exit 1; }
	done
}

# start_stores: builds opsd and fake-gcs-server into $WORK, starts both
# stores; sets S3_PORT, S3_PID, GCS_PORT, GCS_PID and the AWS_* variables.
start_stores() {
	local vgw
	vgw=$(command -v versitygw || true)
	[[ -n $vgw ]] || vgw="$(go env GOPATH)/bin/versitygw"
	[[ -x $vgw ]] || { echo "bench: versitygw not found (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)" >&2; exit 1; }
	log "build opsd and fake-gcs-server"
	go build -o "$WORK/opsd" ./cmd/opsd
	go build -o "$WORK/fake-gcs-server" github.com/fsouza/fake-gcs-server

	S3_PORT=$(free_port)
	export AWS_ACCESS_KEY_ID=opsdbench AWS_SECRET_ACCESS_KEY=opsdbenchsecret AWS_REGION=us-east-1
	mkdir -p "$WORK/versity/data/opsd-bench" "$WORK/versity/versions" # a directory under the posix root is a bucket
	"$vgw" --port "127.0.0.1:$S3_PORT" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" \
		--region us-east-1 --quiet posix --versioning-dir "$WORK/versity/versions" "$WORK/versity/data" \
		>"$WORK/versitygw.log" 2>&1 &
	S3_PID=$!
	PIDS+=($S3_PID)
	wait_http "http://127.0.0.1:$S3_PORT/" versitygw

	GCS_PORT=$(free_port)
	mkdir -p "$WORK/gcs/opsd-bench" # a directory under the filesystem root is a bucket
	"$WORK/fake-gcs-server" -scheme http -host 127.0.0.1 -port "$GCS_PORT" -backend filesystem \
		-filesystem-root "$WORK/gcs" -public-host "127.0.0.1:$GCS_PORT" -external-url "http://127.0.0.1:$GCS_PORT" \
		-log-level warn >"$WORK/fake-gcs-server.log" 2>&1 &
	GCS_PID=$!
	PIDS+=($GCS_PID)
	wait_http "http://127.0.0.1:$GCS_PORT/storage/v1/b" fake-gcs-server
	curl -sf "http://127.0.0.1:$GCS_PORT/storage/v1/b/opsd-bench" >/dev/null ||
		{ echo "bench: fake-gcs-server does not list bucket opsd-bench" >&2; exit 1; }
}

# write_opsd_config FILE SOURCE_YAML: a daemon config with the three
# targets local, s3 and gcs and one source named bench (SOURCE_YAML: its
# type-specific keys, indented four spaces). GCS_CHUNK sets the gcs
# target's chunk_size; the default here is 0 (one streaming request):
# fake-gcs-server re-hashes (MD5, CRC32C) the whole object received so far
# on every resumable chunk, which is quadratic in the object's size (1 GiB
# in 8-16 MiB chunks costs it ~30 s of CPU on this machine, competing with
# opsd for the same cores). Real GCS does not; set GCS_CHUNK=8MiB (opsd's
# default) to see the fake's cost.
write_opsd_config() {
	local file=$1 source_yaml=$2 chunk=""
	chunk=", chunk_size: ${GCS_CHUNK:-0}"
	OPSD_PORT=$(free_port)
	export OPSD_TOKEN=opsd-bench-token OPSD_ADDR="http://127.0.0.1:$OPSD_PORT"
	local token_sha
	token_sha=$(printf %s "$OPSD_TOKEN" | sha256sum | cut -d' ' -f1)
	rm -rf "$WORK/opsd-data" "$WORK/backups-local"
	mkdir -p "$WORK/backups-local"
	cat >"$file" <<YAML
data_dir: $WORK/opsd-data
server:
  listen: 127.0.0.1:$OPSD_PORT
  tokens:
    - {name: bench, role: admin, sha256: $token_sha}
targets:
  local: {type: local, path: $WORK/backups-local}
  s3:    {type: s3, bucket: opsd-bench, endpoint: "http://127.0.0.1:$S3_PORT", path_style: true, region: us-east-1}
  gcs:   {type: gcs, bucket: opsd-bench, endpoint: "http://127.0.0.1:$GCS_PORT/storage/v1/", anonymous: true$chunk}
sources:
  bench:
$source_yaml
    schedule: "0 0 1 1 *"
    targets: [${BENCH_TARGETS:-local, s3, gcs}]
    encryption: {age_recipients: ["$RECIPIENT"]}
    compression: {zstd_level: 3}
YAML
}

# opsd_backup CONFIG: starts the daemon, runs one backup with --wait and
# stops it. Sets OPSD_SECS, OPSD_RSS_MIB (VmHWM), OPSD_CPU, S3_CPU, GCS_CPU
# (seconds of CPU during the backup), MACHINE_CPU (all processes), BACKUP_ID, RAW_BYTES, STORED_BYTES.
opsd_backup() {
	local cfg=$1 pid i t0 c0 s0 g0 m0
	"$WORK/opsd" config check --config "$cfg" >&2
	"$WORK/opsd" serve --config "$cfg" >"$WORK/opsd.log" 2>&1 &
	pid=$!
	PIDS+=($pid)
	for i in $(seq 300); do
		[[ $(curl -s -o /dev/null -w '%{http_code}' "$OPSD_ADDR/readyz") == 200 ]] && break
		kill -0 "$pid" 2>/dev/null || { cat "$WORK/opsd.log" >&2; exit 1; }
		sleep 0.1
	done
	c0=$(cpu_ticks "$pid") s0=$(cpu_ticks "$S3_PID") g0=$(cpu_ticks "$GCS_PID") m0=$(machine_ticks)
	t0=$(now)
	if ! "$WORK/opsd" backup run bench --wait --json >"$WORK/backup.json"; then
		cat "$WORK/backup.json" >&2
		tail -50 "$WORK/opsd.log" >&2
		exit 1
	fi
	OPSD_SECS=$(since "$t0") MACHINE_CPU=$(machine_cpu "$m0")
	OPSD_CPU=$(awk -v a="$(cpu_ticks "$pid")" -v b="$c0" 'BEGIN {printf "%.1f", (a - b) / 100}')
	S3_CPU=$(awk -v a="$(cpu_ticks "$S3_PID")" -v b="$s0" 'BEGIN {printf "%.1f", (a - b) / 100}')
	GCS_CPU=$(awk -v a="$(cpu_ticks "$GCS_PID")" -v b="$g0" 'BEGIN {printf "%.1f", (a - b) / 100}')
	OPSD_RSS_MIB=$(awk '/^VmHWM:/ {printf "%d", $2 / 1024}' "/proc/$pid/status")
	BACKUP_ID=$(jq -r .id "$WORK/backup.json")
	RAW_BYTES=$(jq -r .raw_bytes "$WORK/backup.json")
	STORED_BYTES=$(jq -r .stored_bytes "$WORK/backup.json")
	log "backup $BACKUP_ID: state $(jq -r .state "$WORK/backup.json"), raw $RAW_BYTES bytes, stored $STORED_BYTES, ${OPSD_SECS}s, RSS ${OPSD_RSS_MIB} MiB"
	[[ $(jq -r .state "$WORK/backup.json") == succeeded ]] || { echo "bench: backup did not succeed" >&2; exit 1; }
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}
