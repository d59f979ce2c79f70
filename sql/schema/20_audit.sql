-- The audit log: rekey.audit and rekey.value_audit are append-only, the server stamps every row's
-- actor and time (and who verified and approved a gate), changes of keys and key policies are
-- audited by triggers, and every row is sealed into the SHA-256 hash chain rekey.audit_chain.
--
-- The chain (docs/operations.md, "Tamper-evident audit"; why a chain sealed in commit order:
-- migrations/0006_audit_chain.sql):
--   row_digest_n = sha256(canonical bytes of the audit row, rekey.audit_row_bytes)
--   chain_hash_n = sha256(chain_hash_{n-1} || int8send(seq_n) || row_digest_n), chain_hash_0 = 32 zero bytes
-- `rekey audit verify` recomputes both digests in its own code, so a redefined function here
-- cannot hide tampering. Migration 0006 applies this file before it seals the rows written
-- before it, so everything here must only need tables that exist at 0006.

CREATE OR REPLACE FUNCTION rekey.reject_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'rekey.audit is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON rekey.audit
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();

CREATE OR REPLACE TRIGGER audit_no_truncate BEFORE TRUNCATE ON rekey.audit
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.reject_audit_change();

CREATE OR REPLACE TRIGGER value_audit_append_only BEFORE UPDATE OR DELETE ON rekey.value_audit
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();

-- p_actor, a worker's own name for itself, is not the actor (the audit_stamp trigger sets that
-- from current_user) but is kept as details->>'worker'.
CREATE OR REPLACE FUNCTION rekey.audit_event(p_action text, p_job bigint, p_details jsonb DEFAULT '{}',
                                             p_outcome text DEFAULT 'success', p_batch integer DEFAULT NULL,
                                             p_actor text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO rekey.audit (action, outcome, job_id, batch_no, details)
  VALUES (p_action, p_outcome, p_job, p_batch,
          CASE WHEN p_actor IS NULL THEN coalesce(p_details, '{}')
               ELSE coalesce(p_details, '{}') || jsonb_build_object('worker', p_actor) END);
$$;

CREATE OR REPLACE FUNCTION rekey.audit_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  claims jsonb := '{}';
BEGIN
  IF NEW.actor IS DISTINCT FROM current_user::text THEN
    claims := jsonb_build_object('claimed_actor', NEW.actor);
  END IF;
  IF session_user <> current_user THEN
    claims := claims || jsonb_build_object('session_user', session_user::text);
  END IF;
  IF jsonb_typeof(NEW.details) = 'object' THEN
    -- Keys the server writes are never taken from the client.
    NEW.details := NEW.details - 'claimed_actor' - 'session_user' || claims;
  ELSIF claims <> '{}' THEN
    NEW.details := jsonb_build_object('value', NEW.details) || claims;
  END IF;
  NEW.actor := current_user;
  NEW.at := clock_timestamp();
  NEW.xid := pg_current_xact_id();
  -- The default took nextval, so a larger id was chosen by the client.
  IF NEW.audit_id IS NULL
     OR NEW.audit_id > coalesce(pg_sequence_last_value('rekey.audit_audit_id_seq'), 0) THEN
    NEW.audit_id := nextval('rekey.audit_audit_id_seq');
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER audit_stamp BEFORE INSERT ON rekey.audit
  FOR EACH ROW EXECUTE FUNCTION rekey.audit_stamp();

-- verified_by/verified_at are stamped at INSERT and never change. An approval (approved_by,
-- approved_at) is stamped when it is first written, by INSERT or UPDATE, and never changes after:
-- the worker role may approve a stage on its own after the observation period (rekey.advance_due),
-- and is then recorded as itself.
CREATE OR REPLACE FUNCTION rekey.gates_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    NEW.details := coalesce(NEW.details, '{}') - 'verified_by_worker';
    IF NEW.verified_by IS DISTINCT FROM current_user::text THEN
      NEW.details := NEW.details || jsonb_build_object('verified_by_worker', NEW.verified_by);
    END IF;
    NEW.verified_by := current_user;
    NEW.verified_at := now();
    IF NEW.approved_by IS NOT NULL OR NEW.approved_at IS NOT NULL THEN
      NEW.approved_by := current_user;
      NEW.approved_at := now();
    END IF;
    RETURN NEW;
  END IF;
  NEW.verified_by := OLD.verified_by;
  NEW.verified_at := OLD.verified_at;
  NEW.details := NEW.details - 'verified_by_worker';
  IF OLD.details ? 'verified_by_worker' THEN
    NEW.details := NEW.details || jsonb_build_object('verified_by_worker', OLD.details->'verified_by_worker');
  END IF;
  IF OLD.approved_by IS NOT NULL OR OLD.approved_at IS NOT NULL THEN
    NEW.approved_by := OLD.approved_by;
    NEW.approved_at := OLD.approved_at;
  ELSIF NEW.approved_by IS NOT NULL OR NEW.approved_at IS NOT NULL THEN
    NEW.approved_by := current_user;
    NEW.approved_at := now();
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER gates_stamp BEFORE INSERT OR UPDATE ON rekey.gates
  FOR EACH ROW EXECUTE FUNCTION rekey.gates_stamp();

-- Every keyring change is audited by the database itself, whoever makes it (CLI or psql).
CREATE OR REPLACE FUNCTION rekey.audit_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM rekey.audit_event('key.created', NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'scope', NEW.scope, 'kms_provider', NEW.kms_provider,
      'kms_key_ref', NEW.kms_key_ref, 'origin', NEW.origin, 'status', NEW.status));
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM rekey.audit_event('key.' || NEW.status, NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'scope', NEW.scope, 'from', OLD.status, 'to', NEW.status));
  ELSIF NEW.kms_key_ref IS DISTINCT FROM OLD.kms_key_ref OR NEW.kms_provider IS DISTINCT FROM OLD.kms_provider THEN
    PERFORM rekey.audit_event('key.rewrapped', NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'from', OLD.kms_provider || ':' || OLD.kms_key_ref,
      'to', NEW.kms_provider || ':' || NEW.kms_key_ref));
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER keys_audit AFTER INSERT OR UPDATE ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.audit_key_change();

CREATE OR REPLACE FUNCTION rekey.audit_policy_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM rekey.audit_event('key_policy.deleted', NULL, jsonb_build_object('scope', OLD.scope, 'max_age', OLD.max_age));
    RETURN NULL;
  END IF;
  PERFORM rekey.audit_event('key_policy.set', NULL, jsonb_build_object('scope', NEW.scope, 'max_age', NEW.max_age));
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER key_policies_audit AFTER INSERT OR UPDATE OR DELETE ON rekey.key_policies
  FOR EACH ROW EXECUTE FUNCTION rekey.audit_policy_change();

CREATE OR REPLACE FUNCTION rekey.audit_row_bytes(a rekey.audit)
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
-- Outside READ COMMITTED it raises a WARNING that this transaction's rows wait for the next seal
-- (they are never skipped: a seal's horizon is below every transaction still running, so the next
-- READ COMMITTED seal scans them).
--
-- The candidates are the rows between the last seal's horizon and the scan's own snapshot's xmax
-- (a closed range, which the planner reads from audit_xid whatever the parameters; it excludes no
-- visible row), each checked against the chain by its unique key: no anti-join over the whole
-- chain, whose cost would grow with the history (tests/control_plane_pg_test.cpp counts the
-- buffers a seal reads).
CREATE OR REPLACE FUNCTION rekey.seal_audit()
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
    RAISE WARNING 'audit rows are not sealed in a % transaction: the hash chain is sealed only in READ COMMITTED; they wait for the next seal (rekey audit seal)',
      upper(current_setting('transaction_isolation'));
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
  FOR r IN
    SELECT a.* FROM rekey.audit a
     WHERE a.xid >= coalesce(last.sealed_xmin, '0'::xid8)
       AND a.xid <= greatest(pg_snapshot_xmax(pg_current_snapshot()), pg_current_xact_id_if_assigned())
     ORDER BY a.audit_id
  LOOP
    CONTINUE WHEN EXISTS (SELECT 1 FROM rekey.audit_chain c WHERE c.audit_id = r.audit_id);
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
CREATE OR REPLACE FUNCTION rekey.seal_audit_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM rekey.seal_audit();
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER audit_seal AFTER INSERT ON rekey.audit
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.seal_audit_after_insert();

-- Seals what is pending, waiting for a sealer in progress instead of leaving it its rows, and
-- returns the head of the chain, durably: it sets synchronous_commit = on for the rest of the
-- caller's transaction and locks the head link, which writes WAL, so the caller's COMMIT flushes
-- the WAL up to itself -- and with it the commits of every link up to the head, which all came
-- earlier in the WAL, however asynchronously they committed. Returns no row while the chain is
-- empty. Raises 55000 outside READ COMMITTED, where it could not seal.
CREATE OR REPLACE FUNCTION rekey.seal_audit_durably()
RETURNS TABLE (seq bigint, chain_hash text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, rekey
AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'the audit chain is sealed only in READ COMMITTED, not %: run it in a READ COMMITTED transaction',
      upper(current_setting('transaction_isolation'))
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('rekey.audit_chain'));
  PERFORM rekey.seal_audit();
  -- Local to the caller's transaction: a function's own SET clause would end with the function,
  -- before the COMMIT it is meant for.
  PERFORM set_config('synchronous_commit', 'on', true);
  RETURN QUERY
    SELECT c.seq, encode(c.chain_hash, 'hex') FROM rekey.audit_chain c
     ORDER BY c.seq DESC LIMIT 1 FOR UPDATE;
END $$;

CREATE OR REPLACE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE ON rekey.audit_chain
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();

CREATE OR REPLACE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON rekey.audit_chain
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.reject_audit_change();

-- The current head of the chain, to record outside the database.
CREATE OR REPLACE VIEW rekey.audit_head AS
  SELECT seq, audit_id, encode(chain_hash, 'hex') AS chain_hash, sealed_at
    FROM rekey.audit_chain ORDER BY seq DESC LIMIT 1;
