#!/bin/bash
# Profiles the PostgreSQL side of one small rotation: the server runs under callgrind (every
# backend writes its own profile), one `rekey work` process (concurrency 1) rotates a
# single-stage job, and the profile of the backend that did the most work (the worker's) is
# summarised. Instruction counts do not depend on the machine's load.
#
#   bench/profile_server.sh [REKEY_BINARY] [ROWS]        (defaults: build/rekey 20000)
#
# Slow: the server runs about 50x slower under callgrind (20,000 rows: about a minute).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
REKEY=$(realpath "${1:-$REPO/build/rekey}")
ROWS=${2:-20000}
ANCHORS=${BENCH_ANCHORS_DIR:-$REPO/../shared/anchors}
PGBIN=${REKEY_PG_BINDIR:-/usr/lib/postgresql/15/bin}
command -v valgrind >/dev/null || { echo "profile_server.sh: needs valgrind" >&2; exit 2; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

D=$(mktemp -d /tmp/rekey-srvprofile.XXXXXX)
chmod 777 "$D"
cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$D/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$D"
}
trap cleanup EXIT
as_pg "$PGBIN/initdb" -D "$D/data" -A trust -U postgres --no-sync >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
OPTS="-p $PORT -k $D -c listen_addresses= -c shared_buffers=256MB"
as_pg "$PGBIN/pg_ctl" -D "$D/data" -o "$OPTS" -l "$D/server.log" -w start >/dev/null
export PGHOST=$D PGPORT=$PORT PGUSER=postgres PGDATABASE=postgres
export DATABASE_URL="host=$D port=$PORT user=postgres dbname=postgres"
head -c 32 /dev/urandom >"$D/master.key"
chmod 600 "$D/master.key"
export REKEY_MASTER_KEY_FILE=$D/master.key
"$REKEY" migrate >/dev/null
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(32)))' >"$D/k1"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(32, 64)))' >"$D/k2"
chmod 600 "$D/k1" "$D/k2"
"$REKEY" keys import --key-id 1 --file "$D/k1" >/dev/null
"$REKEY" keys import --key-id 2 --file "$D/k2" >/dev/null
/usr/bin/python3 "$ANCHORS/fixture.py" "$ROWS" >/dev/null
psql -X -q -f "$ANCHORS/reset.sql" >/dev/null 2>&1
"$REKEY" job create --table public.payment_methods --column token --key-id-column key_id \
  --map 1:2 --batch-size 1000 --stages 100 --not-governed brand,last4 >/dev/null 2>&1
as_pg "$PGBIN/pg_ctl" -D "$D/data" -w stop >/dev/null

as_pg bash -c "valgrind --tool=callgrind --trace-children=yes --callgrind-out-file=$D/cg.%p \
  $PGBIN/postgres -D $D/data $OPTS >$D/valgrind.log 2>&1 &"
for _ in $(seq 1 120); do psql -X -q -c "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done
"$REKEY" work --job 1 2>/dev/null
as_pg "$PGBIN/pg_ctl" -D "$D/data" -w -t 300 stop >/dev/null || true
sleep 2
best=$(for f in "$D"/cg.*; do
  echo "$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ { gsub(",", "", $1); print $1 }') $f"
done | sort -rn | awk 'NR == 1 { print $2 }')
total=$(callgrind_annotate "$best" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ { gsub(",", "", $1); print $1 }')
echo "worker's backend: $total Ir for $ROWS rows ($((total / ROWS)) per row)"
echo "selected functions, inclusive Ir:"
callgrind_annotate --inclusive=yes "$best" 2>/dev/null |
  grep -E "\?\?\?:(array_in|byteain|byteaout|hex_encode|hex_decode|heap_update|heap_lock_tuple|_bt_killitems|ExecInsertIndexTuples|plpgsql_call_handler|MultiExecHash|index_getnext_slot) " |
  cut -c1-100 | sed 's/^/  /'
echo "top functions, self:"
callgrind_annotate "$best" 2>/dev/null | grep -E "^ *[0-9,]+ \(" | awk 'NR >= 2 && NR <= 16' | cut -c1-110 |
  sed 's/^/  /'
