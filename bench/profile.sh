#!/bin/bash
# Profiles one small rotation by one `rekey work` process (concurrency 1) under callgrind, which
# counts instructions and so is not disturbed by a loaded machine, and counts the statements
# (round trips) the worker sent, with pg_stat_statements. bench/README.md records the findings.
#
#   bench/profile.sh [REKEY_BINARY] [ROWS] [BATCH_SIZE]     (defaults: build/rekey 20000 1000)
#
# PROFILE_CALLGRIND=0 runs the worker as it is, without valgrind, and prints only the statements
# per batch: the control plane's round trips of two builds compared in seconds.
#
# Prints the worker's total instructions (Ir), the top functions by inclusive and self cost, and
# the statements per batch. Leaves the callgrind output in $PROFILE_OUT (default
# /tmp/rekey-callgrind.out) for callgrind_annotate or kcachegrind.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
REKEY=$(realpath "${1:-$REPO/build/rekey}")
ROWS=${2:-20000}
BATCH=${3:-1000}
OUT=${PROFILE_OUT:-/tmp/rekey-callgrind.out}
ANCHORS=${BENCH_ANCHORS_DIR:-$REPO/../shared/anchors}
CALLGRIND=${PROFILE_CALLGRIND:-1}
[ "$CALLGRIND" = 0 ] || command -v valgrind >/dev/null ||
  { echo "profile.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }

eval "$("$REPO/scripts/pg-throwaway.sh" start shared_preload_libraries=pg_stat_statements \
  pg_stat_statements.track=top shared_buffers=256MB)"
WORK=$(mktemp -d /tmp/rekey-profile.XXXXXX)
trap '"$REPO/scripts/pg-throwaway.sh" stop "$PG_DIR"; rm -rf "$WORK"' EXIT
export DATABASE_URL="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$PGDATABASE"
head -c 32 /dev/urandom >"$WORK/master.key"
chmod 600 "$WORK/master.key"
export REKEY_MASTER_KEY_FILE=$WORK/master.key
"$REKEY" migrate >/dev/null
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(32)))' >"$WORK/k1"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(32, 64)))' >"$WORK/k2"
chmod 600 "$WORK/k1" "$WORK/k2"
"$REKEY" keys import --key-id 1 --file "$WORK/k1" >/dev/null
"$REKEY" keys import --key-id 2 --file "$WORK/k2" >/dev/null
/usr/bin/python3 "$ANCHORS/fixture.py" "$ROWS" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -f "$ANCHORS/reset.sql" >/dev/null
"$REKEY" job create --table public.payment_methods --column token --key-id-column key_id \
  --map 1:2 --batch-size "$BATCH" --stages 100 --not-governed brand,last4 >/dev/null 2>&1
JOB=$(psql -X -tA -c "SELECT max(job_id) FROM rekey.jobs")
psql -X -q -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()" >/dev/null

RUN=(valgrind --tool=callgrind --callgrind-out-file="$OUT")
[ "$CALLGRIND" = 0 ] && RUN=()
"${RUN[@]}" "$REKEY" work --job "$JOB" ${PROFILE_WORK_ARGS:-} 2>"$WORK/worker.log" >/dev/null
BATCHES=$(psql -X -tA -c "SELECT count(*) FROM rekey.batches WHERE job_id = $JOB AND rows_done > 0")
echo "rows: $ROWS, batch size: $BATCH, batches with rows: $BATCHES"
echo "statements sent by the worker (pg_stat_statements), per batch with rows:"
psql -X -tA -F ' ' -c "SELECT round(sum(calls)::numeric / $BATCHES, 2), sum(calls)
  FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid
  WHERE query NOT ILIKE '%pg_stat_statements%'" | sed 's/^/  per batch, total: /'
psql -X -tA -F ' | ' -c "SELECT calls, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
  FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'
  ORDER BY calls DESC LIMIT 12" | sed 's/^/    /'
[ "$CALLGRIND" = 0 ] && exit 0
echo "callgrind: total instructions (Ir) of the worker process:"
# awk, not grep -m1 or head: an early exit would kill callgrind_annotate with SIGPIPE (pipefail).
callgrind_annotate "$OUT" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ { print "  " $0 }'
echo "BatchRotator::ProcessChunk (the batches), inclusive:"
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null |
  awk '/BatchRotator::ProcessChunk\(/ && !n++ { print "  " $1 " Ir" }'
echo "top functions, inclusive:"
callgrind_annotate --inclusive=yes "$OUT" 2>/dev/null | grep -A22 "file:function" | tail -20 |
  cut -c1-160 | sed 's/^/  /'
echo "top functions, self:"
callgrind_annotate "$OUT" 2>/dev/null | grep -A17 "file:function" | tail -15 | cut -c1-160 |
  sed 's/^/  /'
