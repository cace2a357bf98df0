#!/bin/sh
# make bench: every performance benchmark, each beside its baseline measured
# in the same run. One script per area; add new ones here.
set -eu
cd "$(dirname "$0")/.."
echo "== audit log (internal/audit) =="
./bench/audit.sh
echo
echo "== backup pipeline (internal/backup) =="
./bench/backup.sh
echo
echo "== DR engine (internal/dr) =="
./bench/dr.sh
echo
echo "== checksum verification (internal/backup) =="
./bench/verify.sh
echo
echo "== scheduler overhead (internal/jobs) =="
./bench/schedule.sh
echo
echo "== alerts: rule evaluation and routing (internal/alerts) =="
./bench/alerts.sh
