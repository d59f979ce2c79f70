-- Key safety, the jobs slice (issue 15): job definitions that cannot lose data.
--
-- 1. Scope values in canonical form. A scope value is parsed as the scope column's type and kept
--    as that type's own text output, so '8F14E45F-...' and '8f14e45f-...' are one tenant, '042'
--    and '42' too: every comparison of scope values (targets, the key census's
--    scope_column::text = scope_value) then agrees with the typed comparison the workers make.
--    Types pasted into SQL come from the catalog, never from rekey.jobs (whose pk_type and
--    scope_type a role that may write the table could turn into SQL): the recorded name is only
--    checked against the catalog, through regtype.
-- 2. A job that rewrites a key-id column rewrites every column that key-id column governs, or is
--    refused: a cvv left under key 1 while the row's key_id says 2 no longer decrypts.
-- 3. Jobs that cannot collide: one unfinished job per column, keys shared between unfinished jobs
--    only when they map them identically (parts of one rotation), no rollback of one part of a
--    rotation while another part runs, and a target key in its source key's keyring scope unless
--    the job says it crosses scopes.
-- 4. A rollback can never be overtaken: a batch commits only while it belongs to the job's open
--    stage, checked under a lock that every stage change conflicts with.
-- 5. A rollback ends with sweeps, like a forward job.

ALTER TABLE rekey.jobs
  -- Columns of the table the operator stated are not encrypted under the key-id column's key
  -- (rekey job create --not-governed); checked only for a job that rewrites a key-id column.
  ADD COLUMN not_governed name[] NOT NULL DEFAULT '{}',
  -- The operator allowed target keys outside their source key's keyring scope (--cross-scope).
  ADD COLUMN cross_scope boolean NOT NULL DEFAULT false,
  -- The first stage of the latest rollback; the rollback stages after it are its sweeps.
  ADD COLUMN rollback_stage integer;

-- ---------------------------------------------------------------------------------------------
-- Types and scope values from the catalog.

-- rekey.canonical_scope_value is defined in sql/schema/10_catalog.sql, applied here first (see
-- sql/README.md, "Migrations that call a function").
-- apply-definitions: 10_catalog.sql
-- Existing jobs and targets, canonicalised. A target that would become a duplicate of another
-- (the same column registered as '042' and as '42') is merged into the one already holding the
-- canonical value, its jobs' columns pointed there, when both describe the column alike;
-- otherwise it is left as it was, with a notice. A row whose table or column is
-- gone, or whose value does not parse, is left as it was too.
DO $$
DECLARE
  r record;
  canonical text;
  survivor bigint;
BEGIN
  FOR r IN SELECT job_id, schema_name, table_name, scope_column, scope_value FROM rekey.jobs
            WHERE scope_column IS NOT NULL ORDER BY job_id LOOP
    BEGIN
      canonical := rekey.canonical_scope_value(r.schema_name, r.table_name, r.scope_column, r.scope_value);
    EXCEPTION WHEN others THEN
      RAISE NOTICE 'job %: scope value % left as it is: %', r.job_id, quote_literal(r.scope_value), SQLERRM;
      CONTINUE;
    END;
    UPDATE rekey.jobs SET scope_value = canonical
     WHERE job_id = r.job_id AND scope_value IS DISTINCT FROM canonical;
  END LOOP;
  FOR r IN SELECT * FROM rekey.targets WHERE scope_column IS NOT NULL ORDER BY target_id LOOP
    BEGIN
      canonical := rekey.canonical_scope_value(r.schema_name, r.table_name, r.scope_column, r.scope_value);
    EXCEPTION WHEN others THEN
      RAISE NOTICE 'target %: scope value % left as it is: %', r.target_id, quote_literal(r.scope_value), SQLERRM;
      CONTINUE;
    END;
    CONTINUE WHEN canonical = r.scope_value;
    SELECT x.target_id INTO survivor FROM rekey.targets x
     WHERE x.schema_name = r.schema_name AND x.table_name = r.table_name
       AND x.column_name = r.column_name AND x.scope_column = r.scope_column
       AND x.scope_value = canonical;
    IF survivor IS NULL THEN
      UPDATE rekey.targets SET scope_value = canonical WHERE target_id = r.target_id;
    ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = survivor
                     AND (x.codec, x.key_id_column, x.ad_template, x.pk_column)
                         IS NOT DISTINCT FROM (r.codec, r.key_id_column, r.ad_template, r.pk_column)) THEN
      UPDATE rekey.job_columns SET target_id = survivor WHERE target_id = r.target_id;
      DELETE FROM rekey.targets WHERE target_id = r.target_id;
    ELSE
      RAISE NOTICE 'target % (scope value %) duplicates target % but is registered differently; left as it is',
        r.target_id, quote_literal(r.scope_value), survivor;
    END IF;
  END LOOP;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Job definitions.

-- rekey.create_job gains p_not_governed and p_cross_scope: a new signature, so the old one goes
-- (sql/schema/40_jobs.sql defines the new one).
DROP FUNCTION IF EXISTS rekey.create_job(text, text[], jsonb, text[], text, text, text, text, integer, text,
                               boolean, integer, numeric[], integer, numeric, interval, integer);
