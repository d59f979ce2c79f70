#!/bin/bash
# `make demo`: a complete staged key rotation on a throwaway PostgreSQL with the local KMS:
#   an application's table of card tokens encrypted under key 1 -> key 2 by several worker
#   processes: a 1% canary, its verification gate, approval, the remaining stages, the key
#   promotion and sweep; proof that every value decrypts under the new key to its original
#   plaintext; the compliance report as a PDF (DEMO_REPORT, default build/demo-report.pdf); then a
#   rollback to key 1, verified the same way, and the audit trail.
# Throughout, a live application (scripts/demo_app.py, written from docs/applications.md alone)
# reads and re-saves random rows: it loads its keys through the application contract, reports as a
# reader, and follows the promotion and the rollback through NOTIFY. It hears of the new key at
# once but loads it DEMO_APP_LOAD_DELAY seconds later (a slow configuration rollout), so the job
# first waits for it; the demo fails unless the application ends with 0 failed reads.
set -euo pipefail
REKEY=$(realpath "${1:-build/rekey}")
ROWS=${DEMO_ROWS:-100000}
WORKERS=${DEMO_WORKERS:-2}
REPORT_PDF=$(realpath -m "${DEMO_REPORT:-$(dirname "$REKEY")/demo-report.pdf}")
APP_LOAD_DELAY=${DEMO_APP_LOAD_DELAY:-15}
cd "$(dirname "$0")/.."

eval "$(scripts/pg-throwaway.sh start)"
APP_PID=
trap '[ -n "$APP_PID" ] && kill "$APP_PID" 2>/dev/null; scripts/pg-throwaway.sh stop "$PG_DIR"' EXIT
export DATABASE_URL="host=$PGHOST port=$PGPORT user=postgres dbname=postgres"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
rekey() { "$REKEY" "$@"; }

# The master key that wraps data keys (AWS KMS or Vault in production; docs/kms.md).
head -c 32 /dev/urandom > "$PG_DIR/master.key"
chmod 600 "$PG_DIR/master.key"
export REKEY_MASTER_KEY_FILE=$PG_DIR/master.key

step "1. Install rekey's schema (plain SQL migrations, embedded in the binary)"
run rekey migrate

step "2. Adopt the application's current data key as key 1"
head -c 32 /dev/urandom > "$PG_DIR/app-key-1.bin"
run rekey keys import --key-id 1 --file "$PG_DIR/app-key-1.bin"
run rekey keys promote 1
run rekey keys list

step "3. The application has written $ROWS card tokens under key 1 (Python, from docs/FORMAT.md)"
before=$(scripts/seed_demo.py public.payment_methods "$ROWS" 1 "$PG_DIR/app-key-1.bin")
echo "plaintext sha256 before: $before"
psql -X -c "SELECT id, tenant_id, key_id, encode(substring(token from 1 for 5), 'hex') AS tink_prefix, octet_length(token) AS bytes FROM public.payment_methods ORDER BY id LIMIT 3"

step "3b. The application goes live: it reads its keys from rekey.application_keys as the least-privileged rekey_application role, listens for key changes, and reports as a reader"
psql -X -q -v ON_ERROR_STOP=1 -f sql/roles.sql
psql -X -q -v ON_ERROR_STOP=1 -c "CREATE ROLE demo_app LOGIN IN ROLE rekey_application" \
  -c "GRANT SELECT (id, token), UPDATE (token, key_id) ON public.payment_methods TO demo_app"
echo "$ scripts/demo_app.py --table public.payment_methods --key-id-column key_id --load-delay $APP_LOAD_DELAY &"
scripts/demo_app.py --db "$DATABASE_URL user=demo_app" --table public.payment_methods \
  --key-id-column key_id --reader demo-app-1 --load-delay "$APP_LOAD_DELAY" \
  --heartbeat-interval 5 --rate 100 --write-ratio 0.2 --ready-file "$PG_DIR/app.ready" \
  >"$PG_DIR/app.log" 2>&1 &
APP_PID=$!
app_alive() {
  kill -0 "$APP_PID" 2>/dev/null && return 0
  echo "demo FAILED: the application stopped:" >&2
  cat "$PG_DIR/app.log" >&2
  exit 1
}
for _ in $(seq 1 100); do [ -e "$PG_DIR/app.ready" ] && break; app_alive; sleep 0.2; done
[ -e "$PG_DIR/app.ready" ] || { echo "demo FAILED: the application did not start" >&2; exit 1; }
cat "$PG_DIR/app.log"
run rekey readers
# Lines the application logged since the last look.
app_seen=$(wc -l <"$PG_DIR/app.log")
app_news() {
  local n
  n=$(wc -l <"$PG_DIR/app.log")
  sed -n "$((app_seen + 1)),${n}p" "$PG_DIR/app.log" | grep -v 'reported as reader' || true
  app_seen=$n
}
# Polls `sql` (one value) every 0.2 s until it is non-empty, at most $2 seconds.
wait_for() {
  local i
  for i in $(seq 1 $(($2 * 5))); do
    [ -n "$(psql -X -qAt -c "$1")" ] && return 0
    app_alive
    sleep 0.2
  done
  return 1
}

step "3c. The new data key 2: the application hears of it at once (NOTIFY rekey_keys), and loads it $APP_LOAD_DELAY s later, as a slow configuration rollout would"
run rekey keys create
run rekey keys list
sleep 0.5
app_news

step "4. Plan a staged rotation: a 1% canary, then 25/50/75/100%, each behind a verification gate"
# The key-id column names the key of every encrypted column of its row, so rekey refuses a job
# that would leave one of them behind under key 1 (docs/safety.md). brand is plaintext: the
# operator says so, and the job records it.
echo "$ rekey job create --table public.payment_methods --column token --key-id-column key_id --map 1:2 --batch-size 1000 --dry-run"
if rekey job create --table public.payment_methods --column token --key-id-column key_id \
  --map 1:2 --batch-size 1000 --dry-run; then
  echo "demo FAILED: a job that leaves the brand column's key undecided was accepted" >&2
  exit 1
fi
run rekey job create --table public.payment_methods --column token --key-id-column key_id \
  --not-governed brand --map 1:2 --batch-size 1000 --dry-run
echo "$ rekey job create --table public.payment_methods --column token --key-id-column key_id --not-governed brand --map 1:2 --batch-size 1000 --name demo-rotation"
created=$(rekey job create --table public.payment_methods --column token --key-id-column key_id \
  --not-governed brand --map 1:2 --batch-size 1000 --name demo-rotation)
echo "$created"
JOB=$(echo "$created" | sed -n 's/^created job \([0-9]*\) .*/\1/p')

WORKER_PIDS=()
start_workers() {
  local i
  WORKER_PIDS=()
  for i in $(seq 1 "$WORKERS"); do
    "$REKEY" work --job "$JOB" --concurrency 1 >>"$PG_DIR/worker-$i.log" 2>&1 &
    WORKER_PIDS+=($!)
  done
}
wait_workers() {
  local pid
  rekey status "$JOB" --watch --interval 1
  for pid in "${WORKER_PIDS[@]}"; do wait "$pid"; done
  echo "all $WORKERS workers exited 0"
}
run_workers() {
  start_workers
  wait_workers
}

step "5. The canary: $WORKERS worker processes start, and wait: the live reader demo-app-1 cannot decrypt key 2 yet"
start_workers
if ! wait_for "SELECT 1 FROM rekey.jobs WHERE job_id = $JOB AND readers_waiting_for IS NOT NULL" 30; then
  echo "demo FAILED: the job did not wait for the application to load key 2" >&2
  app_news
  exit 1
fi
run rekey status "$JOB"
psql -X -c "SELECT count(*) AS rows_under_key_2 FROM public.payment_methods WHERE key_id = 2"
wait_for "SELECT 1 FROM rekey.jobs WHERE job_id = $JOB AND readers_waiting_for IS NULL" $((APP_LOAD_DELAY + 60)) ||
  { echo "demo FAILED: the job still waits for its readers" >&2; app_news; exit 1; }
echo "The application loaded key 2 and reported it; the job goes on:"
app_news
run rekey readers
echo "The canary: the workers re-encrypt 1% of the rows, then the gate decrypts every one of them"
wait_workers
psql -X -c "SELECT stage_no, percent, values_checked, decrypt_errors, quarantined, error_rate, threshold, audit_complete, passed FROM rekey.gates"
psql -X -c "SELECT count(*) AS canary_rows_under_key_2 FROM public.payment_methods WHERE key_id = 2 AND rekey.stage_bucket(id::text) < 100"
grep -h '"type":"audit"' "$PG_DIR"/worker-*.log | grep gate | head -n 1

step "6. Approve the canary; later stages advance on their own once their gates pass"
run rekey job advance "$JOB" --observe 0s
run_workers
echo "The application heard the promotion and writes under key 2 now:"
app_news
psql -X -c "SELECT stage_no, kind, percent, state, batches, rows_reencrypted, gate_passed FROM rekey.stage_status WHERE job_id = $JOB ORDER BY stage_no"
psql -X -c "SELECT job_id, state, target, keys, rows_total, rows_reencrypted, rows_quarantined, percent, duration FROM rekey.progress"

step "7. Verify: every value decrypts under the new key to its original plaintext"
check_digest() {
  local key=$1 report after under
  report=$(rekey job verify "$JOB" --json)
  echo "$report" | python3 -c 'import json,sys; r=json.load(sys.stdin); print({k: r[k] for k in ("rows", "values_by_key", "failures", "plaintext_sha256")})'
  after=$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext_sha256"])')
  under=$(echo "$report" | python3 -c "import json,sys; print(json.load(sys.stdin)['values_by_key'].get('$key', 0))")
  if [ "$after" != "$before" ] || [ "$under" != "$ROWS" ]; then
    echo "demo FAILED: plaintext digest $after (expected $before), $under of $ROWS values under key $key" >&2
    exit 1
  fi
  echo "plaintext sha256 unchanged; all $ROWS values under key $key"
}
check_digest 2
run rekey keys list

step "7b. The compliance report for the auditor, as a PDF: it decrypts every value again and compares the plaintext digest with the one taken before"
run rekey report "$JOB" --format pdf --output "$REPORT_PDF" --verify --plaintext-sha256-before "$before"

step "8. Roll back: the same worker pool re-encrypts every value back to key 1 and restores the keyring"
run rekey job rollback "$JOB" --reason "demo: the application reported errors"
run_workers
echo "The application heard the rollback and writes under key 1 again:"
app_news
check_digest 1
run rekey keys list
run rekey keys retire 2
sleep 0.5
app_news

step "8b. The application stops: what it read and wrote throughout the rotation and the rollback"
app_alive
kill -TERM "$APP_PID"
app_status=0
wait "$APP_PID" || app_status=$?
APP_PID=
app_news
summary=$(grep -o 'reads=[0-9]* writes=[0-9]* failed_reads=[0-9]*' "$PG_DIR/app.log" | tail -n 1)
reads=$(sed -n 's/^reads=\([0-9]*\) .*/\1/p' <<<"$summary")
failed=$(sed -n 's/.*failed_reads=\([0-9]*\)$/\1/p' <<<"$summary")
if [ "$app_status" -ne 0 ] || [ -z "$summary" ] || [ "${reads:-0}" -eq 0 ] || [ "$failed" != 0 ]; then
  echo "demo FAILED: the application exited $app_status with '${summary:-no counts}'; every read must decrypt" >&2
  exit 1
fi

step "9. The audit trail"
psql -X -c "SELECT action, outcome, count(*), min(at)::time(0) AS first, max(at)::time(0) AS last FROM rekey.audit GROUP BY 1, 2 ORDER BY min(audit_id)"
echo
echo "demo OK: $ROWS rows rotated from key 1 to key 2 in stages by $WORKERS workers, verified, and rolled back"
echo "the live application throughout: $summary"
echo "compliance report of the rotation: $REPORT_PDF"
