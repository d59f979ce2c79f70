-- Queries of audit/audit_chain.cpp: sealing the tamper-evident audit chain and reading it back for
-- verification (migrations/0006_audit_chain.sql).

-- name: set_lock_timeout
-- SET LOCAL lock_timeout = $1 (text, e.g. '30s'), for the rest of the transaction.
SELECT set_config('lock_timeout', $1, true) AS lock_timeout

-- name: wait_for_sealing_lock
-- Takes the chain's sealing lock (the key rekey.seal_audit tries), waiting for a sealer in
-- progress; held until the transaction ends.
SELECT pg_advisory_xact_lock(hashtext('rekey.audit_chain')) AS locked

-- name: seal
-- Seals every audit row visible to this transaction that is not sealed yet; `sealed`: how many.
SELECT rekey.seal_audit() AS sealed

-- name: synchronous_commit
-- This transaction's COMMIT waits for its WAL to be flushed.
SET LOCAL synchronous_commit = on

-- name: seal_durably
-- Seals, then returns the head of the chain (seq, chain_hash as hex); no row if the chain is
-- empty.
SELECT seq, chain_hash FROM rekey.seal_audit_durably()

-- name: head
-- The newest link (seq, chain_hash as hex); no row if the chain is empty.
SELECT seq, chain_hash FROM rekey.audit_head

-- name: chain_page
-- Up to $2 links of the chain after seq $1, in seq order, each with the raw columns of its audit
-- row rendered as text the way rekey.audit_row_bytes renders them (row_* columns, NULL as NULL;
-- all NULL when the row is gone, see row_exists). Verification recomputes the digests from these,
-- independently of the SQL that sealed them.
--   seq, audit_id, row_digest, chain_hash (bytea), sealed_xmin (text),
--   row_exists (boolean), sealed_epoch, row_at_epoch (float8 seconds),
--   row_audit_id, row_at (UTC, microseconds), row_actor, row_action, row_outcome, row_job_id,
--   row_batch_no, row_details (jsonb text), row_xid
SELECT c.seq, c.audit_id, c.row_digest, c.chain_hash, c.sealed_xmin::text AS sealed_xmin,
       a.audit_id IS NOT NULL AS row_exists,
       extract(epoch FROM c.sealed_at)::float8 AS sealed_epoch,
       extract(epoch FROM a.at)::float8 AS row_at_epoch,
       a.audit_id::text AS row_audit_id,
       to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS row_at,
       a.actor AS row_actor, a.action AS row_action, a.outcome AS row_outcome,
       a.job_id::text AS row_job_id, a.batch_no::text AS row_batch_no,
       a.details::text AS row_details, a.xid::text AS row_xid
  FROM rekey.audit_chain c LEFT JOIN rekey.audit a ON a.audit_id = c.audit_id
 WHERE c.seq > $1
 ORDER BY c.seq
 LIMIT $2

-- name: unsealed
-- Audit rows without a chain link, by audit_id: audit_id, xid (text), age_seconds (float8, now()
-- minus at), action, at (ISO 8601 UTC, seconds).
SELECT a.audit_id, a.xid::text AS xid, extract(epoch FROM now() - a.at)::float8 AS age_seconds,
       a.action, to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS at
  FROM rekey.audit a
 WHERE NOT EXISTS (SELECT 1 FROM rekey.audit_chain c WHERE c.audit_id = a.audit_id)
 ORDER BY a.audit_id
