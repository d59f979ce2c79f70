-- Key locks: a batch transaction that writes values under a key and the retire or destroy of that
-- key can never overlap (docs/safety.md, "No value under a destroyed key").
--
-- Every transaction that writes values under keyring keys first takes a shared transaction-level
-- advisory lock on each of them (rekey.lock_keys_for_write), then checks, in a statement that
-- started after the locks were granted, that none of them is retired or destroyed. A retire or
-- destroy takes the same lock exclusively (rekey.lock_key_for_lifecycle) before it counts the
-- values under the key, so it waits for every batch in flight to commit or roll back, counts what
-- they wrote, and no batch can start writing under the key until the retire or destroy has
-- committed -- after which the status check refuses it.
--
-- The lock tag is the one-bigint form of pg_advisory_xact_lock: 'REKY' in the high 32 bits, the
-- key id (a uint32) in the low ones. PostgreSQL keeps one-bigint and two-int4 advisory locks apart,
-- so these never collide with the (job_id, batch_no) locks of rekey.claim_batch or with the
-- migration lock.

CREATE FUNCTION rekey.key_lock_id(p_key bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT (x'52454b59'::bigint << 32) | p_key
$$;

-- Shared locks on `p_keys` (in ascending order, so two writers never deadlock), held to the end
-- of the transaction; raises object_not_in_prerequisite_state (SQLSTATE 55000) naming the key when
-- one of them is retired or destroyed (or unknown), so nothing is written under it.
CREATE FUNCTION rekey.lock_keys_for_write(p_keys bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  k bigint;
  st text;
BEGIN
  FOR k IN SELECT DISTINCT x FROM unnest(p_keys) x WHERE x IS NOT NULL ORDER BY x LOOP
    PERFORM pg_advisory_xact_lock_shared(rekey.key_lock_id(k));
  END LOOP;
  -- A new statement: in READ COMMITTED its snapshot is taken after every lock was granted, so it
  -- sees a retire or destroy that committed while this transaction waited.
  FOR k, st IN
    SELECT x, ky.status FROM unnest(p_keys) x LEFT JOIN rekey.keys ky ON ky.key_id = x
     WHERE x IS NOT NULL AND (ky.status IS NULL OR ky.status IN ('retired', 'destroyed'))
     ORDER BY x LIMIT 1
  LOOP
    RAISE EXCEPTION 'key % is %: rekey writes no value under it', k, coalesce(st, 'unknown')
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'nothing of this batch was written; a retired key may be made decrypt_only again, a destroyed one is gone: roll the job back or cancel it';
  END LOOP;
END $$;

-- The exclusive lock a retire or destroy of `p_key` holds to the end of its transaction: it waits
-- for every transaction that holds the key's write lock.
CREATE FUNCTION rekey.lock_key_for_lifecycle(p_key bigint) RETURNS void
LANGUAGE sql VOLATILE AS $$
  SELECT pg_advisory_xact_lock(rekey.key_lock_id(p_key))
$$;

-- Row-level security: NULL iff every row of `p_rel` is visible to the current role; otherwise the
-- one-line reason and the grant that fixes it. Policies hide rows silently, so a job, a gate,
-- `job verify` or a key census that read through them would count hidden values as absent and
-- report a rotation complete while those rows stay under the old key. Row security applies unless
-- the role is a superuser, has BYPASSRLS, or owns the table (through membership too) and the
-- table is not FORCE ROW LEVEL SECURITY.
CREATE FUNCTION rekey.row_security_blocker(p_rel regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT format('row-level security on %s hides rows from role %I: %s', c.oid::regclass,
                current_user,
                CASE WHEN c.relforcerowsecurity
                     THEN format('the table forces row security even on its owner; ALTER ROLE %I BYPASSRLS (or ALTER TABLE %s NO FORCE ROW LEVEL SECURITY and run rekey as its owner)',
                                 current_user, c.oid::regclass)
                     ELSE format('ALTER ROLE %I BYPASSRLS, or run rekey as the table''s owner %I',
                                 current_user, c.relowner::regrole)
                END)
    FROM pg_class c
   WHERE c.oid = p_rel AND c.relrowsecurity
     AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = current_user
                        AND (r.rolsuper OR r.rolbypassrls))
     AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
$$;
