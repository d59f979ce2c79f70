#!/bin/bash
# `make demo`: a complete staged key rotation on a throwaway PostgreSQL with the local KMS:
#   an application's table of card tokens encrypted under key 1 -> key 2 by several worker
#   processes: a 1% canary, its verification gate, approval, the remaining stages, the key
#   promotion and sweep; proof that every value decrypts under the new key to its original
#   plaintext; the compliance report as a PDF (DEMO_REPORT, default build/demo-report.pdf); then a
#   rollback to key 1, verified the same way, and the audit trail.
set -euo pipefail
REKEY=$(realpath "${1:-build/rekey}")
ROWS=${DEMO_ROWS:-100000}
WORKERS=${DEMO_WORKERS:-2}
REPORT_PDF=$(realpath -m "${DEMO_REPORT:-$(dirname "$REKEY")/demo-report.pdf}")
cd "$(dirname "$0")/.."

eval "$(scripts/pg-throwaway.sh start)"
trap 'scripts/pg-throwaway.sh stop "$PG_DIR"' EXIT
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

step "2. Adopt the application's current data key as key 1, and create the new key 2"
head -c 32 /dev/urandom > "$PG_DIR/app-key-1.bin"
run rekey keys import --key-id 1 --file "$PG_DIR/app-key-1.bin"
run rekey keys promote 1
run rekey keys create
run rekey keys list

step "3. The application has written $ROWS card tokens under key 1 (Python, from docs/FORMAT.md)"
before=$(scripts/seed_demo.py public.payment_methods "$ROWS" 1 "$PG_DIR/app-key-1.bin")
echo "plaintext sha256 before: $before"
psql -X -c "SELECT id, tenant_id, key_id, encode(substring(token from 1 for 5), 'hex') AS tink_prefix, octet_length(token) AS bytes FROM public.payment_methods ORDER BY id LIMIT 3"

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

run_workers() {
  local pids=() i
  for i in $(seq 1 "$WORKERS"); do
    "$REKEY" work --job "$JOB" --concurrency 1 >>"$PG_DIR/worker-$i.log" 2>&1 &
    pids+=($!)
  done
  rekey status "$JOB" --watch --interval 1
  for pid in "${pids[@]}"; do wait "$pid"; done
  echo "all $WORKERS workers exited 0"
}

step "5. The canary: $WORKERS worker processes re-encrypt 1% of the rows, then the gate decrypts every one of them"
run_workers
psql -X -c "SELECT stage_no, percent, values_checked, decrypt_errors, quarantined, error_rate, threshold, audit_complete, passed FROM rekey.gates"
psql -X -c "SELECT count(*) AS canary_rows_under_key_2 FROM public.payment_methods WHERE key_id = 2 AND rekey.stage_bucket(id::text) < 100"
grep -h '"type":"audit"' "$PG_DIR"/worker-*.log | grep gate | head -n 1

step "6. Approve the canary; later stages advance on their own once their gates pass"
run rekey job advance "$JOB" --observe 0s
run_workers
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
check_digest 1
run rekey keys list
run rekey keys retire 2

step "9. The audit trail"
psql -X -c "SELECT action, outcome, count(*), min(at)::time(0) AS first, max(at)::time(0) AS last FROM rekey.audit GROUP BY 1, 2 ORDER BY min(audit_id)"
echo
echo "demo OK: $ROWS rows rotated from key 1 to key 2 in stages by $WORKERS workers, verified, and rolled back"
echo "compliance report of the rotation: $REPORT_PDF"
