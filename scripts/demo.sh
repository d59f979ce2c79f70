#!/bin/bash
# `make demo`: a complete key rotation on a throwaway PostgreSQL with the local KMS.
#   an application's table of card tokens encrypted under key 1 -> key 2, by several worker
#   processes, with live progress, then proof that every value decrypts under the new key to
#   its original plaintext, the keyring moved on, and the audit log shows each step.
set -euo pipefail
REKEY=$(realpath "${1:-build/rekey}")
ROWS=${DEMO_ROWS:-100000}
WORKERS=${DEMO_WORKERS:-2}
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

step "4. Define the rotation job (identifiers are checked against the catalog and quoted)"
run rekey job create --table public.payment_methods --column token --key-id-column key_id \
  --map 1:2 --batch-size 1000 --name demo-rotation

step "5. Run $WORKERS worker processes (each: claim with SKIP LOCKED, re-encrypt, commit rows + checkpoint + audit)"
pids=()
for i in $(seq 1 "$WORKERS"); do
  "$REKEY" work --job 1 --concurrency 1 >"$PG_DIR/worker-$i.log" 2>&1 &
  pids+=($!)
done
rekey status 1 --watch --interval 1
for pid in "${pids[@]}"; do wait "$pid"; done
echo "all $WORKERS workers exited 0 (work queue empty)"
grep -h '"type":"audit"' "$PG_DIR"/worker-*.log | head -n 2

step "6. Progress as an operator sees it in psql"
psql -X -c "SELECT job_id, state, target, keys, rows_total, rows_reencrypted, rows_quarantined, percent, batches_done, duration FROM rekey.progress"

step "7. Verify: every value decrypts under the new key to its original plaintext"
report=$(rekey job verify 1 --json)
echo "$report" | python3 -c 'import json,sys; r=json.load(sys.stdin); print({k: r[k] for k in ("rows", "values_by_key", "values_under_source_keys", "failures", "plaintext_sha256")})'
after=$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["plaintext_sha256"])')
under_target=$(echo "$report" | python3 -c 'import json,sys; print(json.load(sys.stdin)["values_under_target_keys"])')
if [ "$after" != "$before" ] || [ "$under_target" != "$ROWS" ]; then
  echo "demo FAILED: plaintext digest $after (expected $before), $under_target of $ROWS values under key 2" >&2
  exit 1
fi
echo "plaintext sha256 after:  $after  (unchanged; all $ROWS values under key 2)"

step "8. Move the keyring on: key 2 becomes primary; key 1 is retired (the database checks no value uses it)"
run rekey keys promote 2
run rekey keys retire 1
run rekey keys list

step "9. The audit trail"
psql -X -c "SELECT action, outcome, count(*), min(at)::time(0) AS first, max(at)::time(0) AS last FROM rekey.audit GROUP BY 1, 2 ORDER BY first"
echo
echo "demo OK: $ROWS rows rotated from key 1 to key 2 by $WORKERS workers"
