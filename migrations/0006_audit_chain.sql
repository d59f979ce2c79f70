-- Tamper-evident audit: every rekey.audit row is sealed into a SHA-256 hash chain
-- (rekey.audit_chain), so that `rekey audit verify` detects a row altered, deleted or inserted
-- after the fact, even by a superuser who bypassed the append-only triggers.
--
-- Why a separate chain table sealed in commit order, not a hash column filled at INSERT: many
-- workers insert audit rows concurrently and their transactions commit in an order unrelated to
-- audit_id. Chaining at INSERT would need every batch transaction to wait for the previous one
-- to commit (one global lock held to commit time). Instead each transaction that writes audit
-- rows tries, without waiting, to seal every audit row visible to it; if another transaction is
-- sealing at that moment it skips, and its rows are sealed by the next seal. A chain row commits
-- or rolls back with the transaction that wrote it, so the chain never references an aborted
-- event.
--
-- The chain (docs/operations.md, "Tamper-evident audit"):
--   row_digest_n = sha256(canonical bytes of the audit row, rekey.audit_row_bytes)
--   chain_hash_n = sha256(chain_hash_{n-1} || int8send(seq_n) || row_digest_n), chain_hash_0 = 32 zero bytes
-- The canonical bytes are, for each field in order (audit_id, at as UTC ISO 8601 with
-- microseconds, actor, action, outcome, job_id, batch_no, details as jsonb text, xid), either
-- "-" for NULL or "<octet length>:<text>", joined with ",". `rekey audit verify` recomputes both
-- digests from the raw columns in its own code, so a redefined function here cannot hide
-- tampering; and the chain head it prints (seq and hash), recorded outside the database (logs,
-- compliance reports), pins history up to that point even against a rewrite of the whole chain.
--
-- Inserted rows: each seal records the xid horizon of its snapshot (every transaction with an
-- older xid had finished). A legitimate audit row's transaction is either still running at a
-- seal (its xid is at or above the horizon) or finished and visible to it, and then sealed. So an
-- unsealed row whose xid is below the horizon of any seal was inserted after the fact.

ALTER TABLE rekey.audit ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX audit_xid ON rekey.audit (xid);

CREATE TABLE rekey.audit_chain (
  seq         bigint PRIMARY KEY CHECK (seq > 0),
  audit_id    bigint NOT NULL UNIQUE,
  row_digest  bytea NOT NULL CHECK (octet_length(row_digest) = 32),
  chain_hash  bytea NOT NULL CHECK (octet_length(chain_hash) = 32),
  sealed_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
  sealed_xmin xid8 NOT NULL         -- the sealing snapshot's xmin (see "Inserted rows" above)
);
COMMENT ON TABLE rekey.audit_chain IS
  'SHA-256 hash chain over rekey.audit in sealing order; append-only; checked by rekey audit verify.';

REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON rekey.audit_chain FROM PUBLIC;

-- Seals the rows written before this migration. rekey.seal_audit is defined in
-- sql/schema/20_audit.sql, applied here first (docs: sql/README.md, "Migrations that call a function").
-- apply-definitions: 20_audit.sql
SELECT rekey.seal_audit();
