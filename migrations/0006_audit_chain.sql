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

CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON rekey.audit_chain
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON rekey.audit_chain
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.reject_audit_change();
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON rekey.audit_chain FROM PUBLIC;

CREATE FUNCTION rekey.audit_row_bytes(a rekey.audit)
RETURNS bytea
LANGUAGE sql STABLE
AS $$
  SELECT convert_to(string_agg(CASE WHEN f IS NULL THEN '-' ELSE octet_length(f) || ':' || f END,
                               ',' ORDER BY n), 'UTF8')
  FROM unnest(ARRAY[a.audit_id::text,
                    to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                    a.actor, a.action, a.outcome, a.job_id::text, a.batch_no::text,
                    a.details::text, a.xid::text]) WITH ORDINALITY AS u(f, n)
$$;

-- Seals every audit row visible to the caller that is not sealed yet, in audit_id order, and
-- returns how many. Returns 0 at once if another transaction is sealing (it will seal what this
-- one wrote, or the next seal will), or if the caller is not in READ COMMITTED (an older snapshot
-- could miss a newer chain head). Never raises for contention: audit writers call it.
CREATE FUNCTION rekey.seal_audit()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, rekey
AS $$
DECLARE
  horizon  xid8;
  last     record;
  r        rekey.audit;
  prev     bytea;
  n        bigint;
  digest   bytea;
  sealed   integer := 0;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN 0;
  END IF;
  IF NOT pg_try_advisory_xact_lock(hashtext('rekey.audit_chain')) THEN
    RETURN 0;
  END IF;
  -- Taken after the lock, so it is no older than the horizon of the seal before this one.
  horizon := pg_snapshot_xmin(pg_current_snapshot());
  SELECT c.seq, c.chain_hash, c.sealed_xmin INTO last
    FROM rekey.audit_chain c ORDER BY c.seq DESC LIMIT 1;
  n := coalesce(last.seq, 0);
  prev := coalesce(last.chain_hash, decode(repeat('00', 32), 'hex'));
  -- Rows of transactions older than the newest seal's horizon were sealed by it (or are forged):
  -- only younger ones can still need sealing, which keeps this scan small.
  FOR r IN
    SELECT a.* FROM rekey.audit a
     WHERE a.xid >= coalesce(last.sealed_xmin, '0'::xid8)
       AND NOT EXISTS (SELECT 1 FROM rekey.audit_chain c WHERE c.audit_id = a.audit_id)
     ORDER BY a.audit_id
  LOOP
    n := n + 1;
    digest := sha256(rekey.audit_row_bytes(r));
    prev := sha256(prev || int8send(n) || digest);
    INSERT INTO rekey.audit_chain (seq, audit_id, row_digest, chain_hash, sealed_xmin)
    VALUES (n, r.audit_id, digest, prev, horizon);
    sealed := sealed + 1;
  END LOOP;
  RETURN sealed;
END $$;

-- Every statement that writes audit rows seals them (and any others waiting) on its way out.
CREATE FUNCTION rekey.seal_audit_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM rekey.seal_audit();
  RETURN NULL;
END $$;
CREATE TRIGGER audit_seal AFTER INSERT ON rekey.audit
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.seal_audit_after_insert();

-- The current head of the chain, to record outside the database.
CREATE VIEW rekey.audit_head AS
  SELECT seq, audit_id, encode(chain_hash, 'hex') AS chain_hash, sealed_at
    FROM rekey.audit_chain ORDER BY seq DESC LIMIT 1;

SELECT rekey.seal_audit();
