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

-- The type of column p_column of p_schema.p_table as the catalog has it, ready to paste after
-- "::" (format_type without a type modifier: a cast to varchar(2) or numeric(5,2) would truncate
-- or round the value it casts). p_recorded, if given, is the type a job recorded for the column:
-- it must name the same type (checked through regtype, which parses a type name and nothing
-- else), or this raises: a tampered or stale rekey.jobs row stops the job instead of running.
CREATE FUNCTION rekey.checked_column_type(p_schema name, p_table name, p_column name,
                                          p_recorded text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  actual oid;
  recorded regtype;
BEGIN
  SELECT a.atttypid INTO actual FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
  IF actual IS NULL THEN
    RAISE EXCEPTION 'column % of %.% no longer exists', quote_ident(p_column), quote_ident(p_schema),
      quote_ident(p_table) USING ERRCODE = 'undefined_column';
  END IF;
  IF p_recorded IS NOT NULL THEN
    BEGIN
      recorded := p_recorded::regtype;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'the job records type % for column %.%.%, which is not a type name: rekey.jobs was edited; cancel the job and create it again',
        quote_literal(p_recorded), quote_ident(p_schema), quote_ident(p_table), quote_ident(p_column)
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END;
    IF recorded <> actual THEN
      RAISE EXCEPTION 'the job records type % for column %.%.% but the catalog says %: the column changed type, or rekey.jobs was edited; cancel the job and create it again',
        format_type(recorded, NULL), quote_ident(p_schema), quote_ident(p_table), quote_ident(p_column),
        format_type(actual, NULL) USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
  END IF;
  RETURN format_type(actual, NULL);
END $$;

-- The canonical text of scope value p_value for column p_column: the value parsed as the column's
-- type (with its modifier) and printed by that type, which is what p_column::text gives for the
-- rows it selects. Raises invalid_parameter_value when the text is not such a value, or is one
-- only after the type modifier changed it (a varchar(2) scope 'abc' would select the rows of 'ab').
CREATE FUNCTION rekey.canonical_scope_value(p_schema name, p_table name, p_column name, p_value text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  exact_type text;
  base_type text;
  canonical text;
  unchanged boolean;
BEGIN
  SELECT format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, NULL)
    INTO exact_type, base_type
    FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
  IF exact_type IS NULL THEN
    RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_column),
      quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
  END IF;
  BEGIN
    EXECUTE format('SELECT (%1$L::%2$s)::text, %1$L::%3$s = (%1$L::%2$s)::%3$s', p_value, exact_type, base_type)
      INTO canonical, unchanged;
  EXCEPTION WHEN others THEN
    unchanged := NULL;
  END;
  IF unchanged IS NOT TRUE THEN
    RAISE EXCEPTION 'scope value % is not a valid %', quote_literal(coalesce(p_value, '')), exact_type
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN canonical;
END $$;

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

-- Replaces 0008's definition: the scope's type comes from the catalog (rekey.jobs.scope_type is
-- only checked against it), so nothing a writer of rekey.jobs controls is pasted as SQL. The
-- client planner (src/jobs/rollout_planner.cpp) takes its scope condition from here too.
CREATE OR REPLACE FUNCTION rekey.scope_condition(p_job rekey.jobs) RETURNS text
LANGUAGE plpgsql STABLE AS $$
BEGIN
  IF p_job.scope_column IS NULL THEN
    RETURN '';
  END IF;
  RETURN format(' AND t.%I = %L::%s', p_job.scope_column, p_job.scope_value,
                rekey.checked_column_type(p_job.schema_name, p_job.table_name, p_job.scope_column,
                                          p_job.scope_type));
END $$;

-- Replaces 0010's definition: the primary key's type comes from the catalog (see
-- rekey.checked_column_type), not from rekey.jobs.pk_type. The plan is the same.
CREATE OR REPLACE FUNCTION rekey.plan_stage(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  rel text;
  scope_sql text := '';
  key_type text;
  n integer := 0;
  first_batch integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF EXISTS (SELECT 1 FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage) THEN
    RAISE EXCEPTION 'stage % of job % is already planned', p_stage, p_job;
  END IF;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  rel := format('%I.%I', j.schema_name, j.table_name);
  scope_sql := rekey.scope_condition(j);
  key_type := rekey.checked_column_type(j.schema_name, j.table_name, j.pk_column, j.pk_type);

  IF st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN
    EXECUTE format($q$
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
      SELECT $1, $2 + 1 + n, $3, CASE WHEN n = 0 THEN NULL ELSE k END,
             lead(k) OVER (ORDER BY n), least($4, total - n * $4)
        FROM (SELECT k, rn / $4 AS n, count(*) OVER () AS total, rn %% $4 AS r
                FROM (SELECT t.%1$I::text AS k, row_number() OVER (ORDER BY t.%1$I) - 1 AS rn
                        FROM %2$s AS t
                       WHERE rekey.stage_bucket(t.%1$I::text) >= $5
                         AND rekey.stage_bucket(t.%1$I::text) < $6%3$s) numbered) cut
       WHERE r = 0$q$, j.pk_column, rel, scope_sql)
      USING p_job, first_batch, p_stage, j.batch_size, st.bucket_lo, st.bucket_hi;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
      VALUES (p_job, first_batch + 1, p_stage, NULL, NULL, 0);
      n := 1;
    END IF;
    RETURN n;
  END IF;

  EXECUTE format($q$
    WITH RECURSIVE walk(lo, hi, n) AS (
      SELECT NULL::%4$s, (SELECT t.%1$I FROM %2$s AS t WHERE true%3$s ORDER BY t.%1$I
                          OFFSET $4 LIMIT 1), 1
      UNION ALL
      SELECT w.hi, (SELECT t.%1$I FROM %2$s AS t WHERE t.%1$I >= w.hi%3$s ORDER BY t.%1$I
                    OFFSET $4 LIMIT 1), w.n + 1
        FROM walk w WHERE w.hi IS NOT NULL)
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    SELECT $1, $2 + w.n, $3, w.lo::text, w.hi::text,
           CASE WHEN w.hi IS NOT NULL THEN $4
                WHEN w.lo IS NULL THEN (SELECT count(*) FROM %2$s AS t WHERE true%3$s)
                ELSE (SELECT count(*) FROM %2$s AS t WHERE t.%1$I >= w.lo%3$s) END
      FROM walk w$q$, j.pk_column, rel, scope_sql, key_type)
    USING p_job, first_batch, p_stage, j.batch_size;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- Replaces 0009's definition: the key type comes from the catalog, and a rollback stage can be
-- planned as a sweep too (a rollback's sweeps, see rekey.finish_stages): its ranges are every
-- 100th boundary of the rollback's first pass instead of the rollout's. Sweep batches tile the
-- whole key space; a rollback sweep's worker keeps to the stage's buckets itself.
CREATE OR REPLACE FUNCTION rekey.plan_sweep(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  first_batch integer;
  n integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  EXECUTE format($q$
    WITH starts AS (
      SELECT k FROM (SELECT b.lo::%1$s AS k, row_number() OVER (ORDER BY b.lo::%1$s) AS rn
                       FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
                      WHERE b.job_id = $1 AND b.lo IS NOT NULL
                        AND CASE WHEN $4 THEN b.stage_no = $5 ELSE s.kind = 'rollout' END) c
       WHERE rn %% 100 = 0),
    ranges AS (
      SELECT 0::bigint AS batch, NULL::%1$s AS lo
      UNION ALL
      SELECT row_number() OVER (ORDER BY k), k FROM (SELECT DISTINCT k FROM starts) d)
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    SELECT $1, $2 + 1 + batch, $3, lo::text, lead(lo::text) OVER (ORDER BY batch), 0
      FROM ranges$q$, rekey.checked_column_type(j.schema_name, j.table_name, j.pk_column, j.pk_type))
    USING p_job, first_batch, p_stage, st.kind = 'rollback', j.rollback_stage;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Job definitions.

-- Job definitions and rollbacks are checked against the unfinished jobs; this lock, held to the
-- end of the transaction, makes those checks and the writes they allow one step (two concurrent
-- creations could otherwise each pass before the other commits). Tag 'REKJ' in the high 32 bits:
-- apart from the key locks ('REKY', 0012) and the two-int4 batch locks.
CREATE FUNCTION rekey.lock_job_definitions() RETURNS void
LANGUAGE sql VOLATILE AS $$
  SELECT pg_advisory_xact_lock(x'52454b4a'::bigint << 32)
$$;

-- A job "unfinished" in the sense of the checks below: it may still write values.
CREATE FUNCTION rekey.job_unfinished(p_state text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT p_state NOT IN ('completed', 'cancelled', 'rolled_back')
$$;

-- Refuses (object_not_in_prerequisite_state, naming the job) when an unfinished job other than
-- p_job rotates one of p_job's columns, whatever either job's scope: two jobs writing one column
-- race for its values and undo each other's work.
CREATE FUNCTION rekey.refuse_column_collision(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  other record;
BEGIN
  -- By identity (rekey.target_columns, migrations/0013): a job registered before a rename and
  -- one created under the new name still rotate the same column.
  SELECT o.job_id, o.state, string_agg(DISTINCT format('%I.%I.%I', ot.schema_name, ot.table_name, ot.column_name), ', ') AS cols
    INTO other
    FROM rekey.job_columns mc
    JOIN rekey.target_columns() mt ON mt.target_id = mc.target_id
    JOIN rekey.target_columns() ot ON ot.relid = mt.relid AND ot.attnum = mt.attnum
    JOIN rekey.job_columns oc ON oc.target_id = ot.target_id
    JOIN rekey.jobs o ON o.job_id = oc.job_id AND o.job_id <> p_job AND rekey.job_unfinished(o.state)
   WHERE mc.job_id = p_job
   GROUP BY o.job_id, o.state ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) is still rotating %: a column has one unfinished job at a time; let job % finish, or cancel it (rekey job cancel %)',
      other.job_id, other.state, other.cols, other.job_id, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- Refuses (object_not_in_prerequisite_state, naming the job) when an unfinished job other than
-- p_job uses one of p_job's keys (as source or target) and the two do not map the keys they
-- share identically: only parts of one rotation (the same source -> target pairs over several
-- tables, as rekey rotate-due creates them) may run side by side. Anything else -- 1->2 beside
-- 1->3, or 1->2 beside 2->3 -- promotes, demotes and retires keys under the other's feet.
CREATE FUNCTION rekey.refuse_key_collision(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  other record;
BEGIN
  WITH mine AS (SELECT source_key_id AS s, target_key_id AS d FROM rekey.job_keys WHERE job_id = p_job),
       my_keys AS (SELECT s AS k FROM mine UNION SELECT d FROM mine)
  SELECT o.job_id, o.state,
         (SELECT string_agg(q.source_key_id || '->' || q.target_key_id, ', ' ORDER BY q.source_key_id)
            FROM rekey.job_keys q WHERE q.job_id = o.job_id) AS pairs
    INTO other
    FROM rekey.jobs o
   WHERE o.job_id <> p_job AND rekey.job_unfinished(o.state)
     AND EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                    AND (q.source_key_id IN (SELECT k FROM my_keys) OR q.target_key_id IN (SELECT k FROM my_keys)))
     AND (EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                     AND (q.source_key_id IN (SELECT k FROM my_keys) OR q.target_key_id IN (SELECT k FROM my_keys))
                     AND (q.source_key_id, q.target_key_id) NOT IN (SELECT s, d FROM mine))
          OR EXISTS (SELECT 1 FROM mine m
                      WHERE EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                                       AND (m.s IN (q.source_key_id, q.target_key_id) OR m.d IN (q.source_key_id, q.target_key_id)))
                        AND (m.s, m.d) NOT IN (SELECT q.source_key_id, q.target_key_id FROM rekey.job_keys q
                                                WHERE q.job_id = o.job_id)))
   ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) already rotates keys % : unfinished jobs may share a key only when they map it the same way; let job % finish, or cancel it (rekey job cancel %)',
      other.job_id, other.state, other.pairs, other.job_id, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- Defines a rotation job; as 0002's rekey.create_job (whose parameters it keeps, in order), and:
--   p_scope_value  stored in canonical form (rekey.canonical_scope_value), as are the targets'
--   p_not_governed columns of the table that are not encrypted under the key-id column's key;
--                  NULL = those the latest job on the same table and key-id column recorded
--   p_cross_scope  allow target keys outside their source key's keyring scope
-- Refusals, each naming what it found (nothing is written):
--   * a job that rewrites a key-id column must rotate every column that key-id column governs:
--     every registered target of the table with the same key-id column, and every other bytea or
--     text column holding a value in the job's scope, unless listed in p_not_governed
--     (invalid_parameter_value);
--   * a target key outside its source key's scope without p_cross_scope (invalid_parameter_value);
--   * an unfinished job on one of the columns, or one sharing keys but mapping them otherwise
--     (object_not_in_prerequisite_state).
-- Replaces 0002's definition (DROP + CREATE: two parameters were added).
DROP FUNCTION rekey.create_job(text, text[], jsonb, text[], text, text, text, text, integer, text,
                               boolean, integer, numeric[], integer, numeric, interval, integer);
CREATE FUNCTION rekey.create_job(
  p_table text,
  p_columns text[],
  p_key_map jsonb,
  p_codecs text[] DEFAULT NULL,
  p_key_id_column text DEFAULT NULL,
  p_ad_template text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_per_row_audit boolean DEFAULT false,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_promote_at_stage integer DEFAULT NULL,
  p_error_threshold numeric DEFAULT 0.001,
  p_observe interval DEFAULT NULL,
  p_gate_sample_size integer DEFAULT 10000,
  p_not_governed text[] DEFAULT NULL,
  p_cross_scope boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  v_scope_value text;
  v_not_governed text[];
  governed text[];
  col_type text;
  v_codec text;
  job bigint;
  tid bigint;
  src text;
  dst jsonb;
  batches integer;
  src_status text;
  dst_status text;
  src_scope text;
  dst_scope text;
  candidate record;
  has_value boolean;
  i integer;
  prev numeric := 0;
BEGIN
  t := rekey.resolve_table(p_table);
  -- Policies that hide rows from this role would hide them from the plan too: those rows would
  -- never be rotated, and the job would still complete (docs/safety.md, invariant 4). The
  -- table as this role sees it is not fit for a job: a definition error (exit 2), with the grant.
  IF rekey.row_security_blocker(format('%I.%I', t.schema_name, t.table_name)::regclass) IS NOT NULL THEN
    RAISE EXCEPTION '%', rekey.row_security_blocker(format('%I.%I', t.schema_name, t.table_name)::regclass)
      USING ERRCODE = 'invalid_table_definition';
  END IF;
  PERFORM rekey.lock_job_definitions();
  -- Exactly one primary-key column: batches are ranges over it.
  SELECT min(a.attname), count(*) INTO pk_col, i
    FROM pg_index x
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
   WHERE x.indrelid = format('%I.%I', t.schema_name, t.table_name)::regclass AND x.indisprimary;
  IF i = 0 THEN
    RAISE EXCEPTION 'table %.% has no primary key; rekey needs a single-column primary key to split it into batches',
      quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'invalid_table_definition';
  ELSIF i > 1 THEN
    RAISE EXCEPTION 'table %.% has a composite primary key; rekey supports single-column primary keys',
      quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'feature_not_supported';
  END IF;
  pk_type := rekey.column_type(t.schema_name, t.table_name, pk_col);

  IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
    RAISE EXCEPTION 'a job needs at least one ciphertext column' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_codecs IS NOT NULL AND cardinality(p_codecs) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'give one codec per column (% columns, % codecs)', cardinality(p_columns), cardinality(p_codecs)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 1000000 THEN
    RAISE EXCEPTION 'batch size must be between 1 and 1000000, got %', p_batch_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    col_type := rekey.column_type(t.schema_name, t.table_name, p_columns[i]);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'column % does not exist in %.%', quote_ident(p_columns[i]),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type <> 'bytea' THEN
      RAISE EXCEPTION 'column %.%.% is %, not bytea; rekey rewrites binary ciphertext columns',
        quote_ident(t.schema_name), quote_ident(t.table_name), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF p_columns[i] = pk_col THEN
      RAISE EXCEPTION 'column % is the primary key', quote_ident(p_columns[i]) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_codec := coalesce(p_codecs[i], 'tink');
    IF v_codec NOT IN ('tink', 'raw') THEN
      RAISE EXCEPTION 'unknown codec % for column %: use tink or raw', quote_literal(v_codec), quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_codec = 'raw' AND p_key_id_column IS NULL THEN
      RAISE EXCEPTION 'column % uses the raw codec, which needs a key-id column', quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
  IF (SELECT count(DISTINCT c) FROM unnest(p_columns) c) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'a column is listed twice' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_id_column IS NOT NULL THEN
    col_type := rekey.column_type(t.schema_name, t.table_name, p_key_id_column);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'key-id column % does not exist in %.%', quote_ident(p_key_id_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type NOT IN ('integer', 'bigint') THEN
      RAISE EXCEPTION 'key-id column % is %, not integer or bigint', quote_ident(p_key_id_column), col_type
        USING ERRCODE = 'datatype_mismatch';
    END IF;
  END IF;
  IF (p_scope_column IS NULL) <> (p_scope_value IS NULL) THEN
    RAISE EXCEPTION 'a scope needs both a column and a value' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_scope_column IS NOT NULL THEN
    IF rekey.column_type(t.schema_name, t.table_name, p_scope_column) IS NULL THEN
      RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_scope_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    END IF;
    scope_type := rekey.checked_column_type(t.schema_name, t.table_name, p_scope_column);
    v_scope_value := rekey.canonical_scope_value(t.schema_name, t.table_name, p_scope_column, p_scope_value);
  END IF;
  IF p_ad_template IS NOT NULL AND
     regexp_replace(regexp_replace(p_ad_template, '\{\{|\}\}', '', 'g'),
                    '\{(schema|table|column|pk)\}', '', 'g') ~ '[{}]' THEN
    RAISE EXCEPTION 'invalid associated-data template %: use {schema}, {table}, {column}, {pk}; write {{ and }} for braces',
      quote_literal(p_ad_template) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_stages IS NULL OR cardinality(p_stages) = 0 OR p_stages[cardinality(p_stages)] <> 100 THEN
    RAISE EXCEPTION 'the stage plan must end at 100 (percent), as in 1,25,50,75,100' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    IF p_stages[i] IS NULL OR p_stages[i] <= prev OR p_stages[i] * 100 <> round(p_stages[i] * 100) THEN
      RAISE EXCEPTION 'bad stage plan %: percentages must increase, with at most two decimals', p_stages
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := p_stages[i];
  END LOOP;
  IF p_promote_at_stage IS NOT NULL AND (p_promote_at_stage < 1 OR p_promote_at_stage > cardinality(p_stages)) THEN
    RAISE EXCEPTION 'promote-at-stage must be between 1 and % (the number of stages)', cardinality(p_stages)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_error_threshold IS NULL OR p_error_threshold < 0 OR p_error_threshold > 1 THEN
    RAISE EXCEPTION 'the error threshold is a fraction between 0 and 1, e.g. 0.001 for 0.1%%' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_map IS NULL OR jsonb_typeof(p_key_map) <> 'object' OR p_key_map = '{}' THEN
    RAISE EXCEPTION 'the key map must be a JSON object {"source key id": target key id}' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- The columns the key-id column governs. Rewriting key_id to the target key re-labels every
  -- value of the row: a column left out keeps its old ciphertext under a new label and no longer
  -- decrypts with its row's key.
  IF p_not_governed IS NOT NULL AND p_key_id_column IS NULL AND cardinality(p_not_governed) > 0 THEN
    RAISE EXCEPTION 'not-governed columns describe what a key-id column governs, and this job has none (--key-id-column)'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_id_column IS NOT NULL THEN
    v_not_governed := p_not_governed;
    IF v_not_governed IS NULL THEN
      -- The operator's statement about the table outlives one job (rekey rotate-due repeats jobs).
      -- Only what still applies: columns that exist and that this job does not rotate itself.
      SELECT array(SELECT g FROM unnest(x.not_governed::text[]) g
                    WHERE g <> ALL (p_columns)
                      AND rekey.column_type(t.schema_name, t.table_name, g) IS NOT NULL)
        INTO v_not_governed FROM rekey.jobs x
       WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name
         AND x.key_id_column = p_key_id_column
       ORDER BY x.job_id DESC LIMIT 1;
    END IF;
    v_not_governed := coalesce(v_not_governed, '{}');
    FOR i IN 1 .. coalesce(cardinality(v_not_governed), 0) LOOP
      IF rekey.column_type(t.schema_name, t.table_name, v_not_governed[i]) IS NULL THEN
        RAISE EXCEPTION 'not-governed column % does not exist in %.%', quote_ident(v_not_governed[i]),
          quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
      ELSIF v_not_governed[i] = ANY (p_columns) THEN
        RAISE EXCEPTION 'column % is both rotated and declared not governed by %', quote_ident(v_not_governed[i]),
          quote_ident(p_key_id_column) USING ERRCODE = 'invalid_parameter_value';
      END IF;
    END LOOP;
    SELECT array_agg(DISTINCT x.column_name::text ORDER BY x.column_name::text) INTO governed
      FROM rekey.targets x
     WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name
       AND x.key_id_column = p_key_id_column AND x.column_name <> ALL (p_columns);
    IF governed IS NOT NULL THEN
      RAISE EXCEPTION 'key-id column % of %.% also governs %, registered under it: a job that rewrites % must rotate it too; add --column for each',
        quote_ident(p_key_id_column), quote_ident(t.schema_name), quote_ident(t.table_name),
        array_to_string(governed, ', '), quote_ident(p_key_id_column) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR candidate IN
      SELECT a.attname FROM pg_attribute a
       WHERE a.attrelid = format('%I.%I', t.schema_name, t.table_name)::regclass
         AND a.attnum > 0 AND NOT a.attisdropped
         AND a.atttypid IN ('bytea'::regtype, 'text'::regtype, 'varchar'::regtype)
         AND a.attname <> ALL (p_columns) AND a.attname <> pk_col
         AND a.attname IS DISTINCT FROM p_scope_column
         AND a.attname <> ALL (v_not_governed)
       ORDER BY a.attnum
    LOOP
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I AS t WHERE t.%I IS NOT NULL%s)',
                     t.schema_name, t.table_name, candidate.attname,
                     CASE WHEN p_scope_column IS NULL THEN ''
                          ELSE format(' AND t.%I = %L::%s', p_scope_column, v_scope_value, scope_type) END)
        INTO has_value;
      IF has_value THEN
        governed := coalesce(governed, '{}') || candidate.attname::text;
      END IF;
    END LOOP;
    IF governed IS NOT NULL THEN
      RAISE EXCEPTION 'key-id column % of %.% may also govern % (holding values): rotate them too (--column), or state that they are not encrypted under % (--not-governed %)',
        quote_ident(p_key_id_column), quote_ident(t.schema_name), quote_ident(t.table_name),
        array_to_string(governed, ', '), quote_ident(p_key_id_column), array_to_string(governed, ',')
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;

  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_id_column, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts, per_row_audit,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          not_governed, cross_scope)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, p_key_id_column, p_ad_template,
          p_scope_column, v_scope_value, scope_type, p_batch_size, p_max_attempts, p_per_row_audit,
          p_stages, coalesce(p_promote_at_stage, cardinality(p_stages)), p_error_threshold, p_observe,
          p_gate_sample_size, coalesce(v_not_governed, '{}')::name[], coalesce(p_cross_scope, false))
  RETURNING job_id INTO job;

  FOR src, dst IN SELECT * FROM jsonb_each(p_key_map) LOOP
    IF src !~ '^[0-9]{1,10}$' OR jsonb_typeof(dst) <> 'number' THEN
      RAISE EXCEPTION 'bad key map entry "%": %; key ids are integers', src, dst USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT status, scope INTO src_status, src_scope FROM rekey.keys WHERE key_id = src::bigint;
    SELECT status, scope INTO dst_status, dst_scope FROM rekey.keys WHERE key_id = dst::text::bigint;
    IF src_status IS NULL THEN
      RAISE EXCEPTION 'unknown source key %; rekey keys list shows the keyring', src USING ERRCODE = 'foreign_key_violation';
    ELSIF dst_status IS NULL THEN
      RAISE EXCEPTION 'unknown target key %; rekey keys list shows the keyring', dst USING ERRCODE = 'foreign_key_violation';
    ELSIF src::bigint = dst::text::bigint THEN
      RAISE EXCEPTION 'key % is both source and target: a rotation needs a different target key', src
        USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_status = 'destroyed' THEN
      RAISE EXCEPTION 'source key % is destroyed: its values cannot be decrypted', src USING ERRCODE = 'invalid_parameter_value';
    ELSIF dst_status NOT IN ('enabled', 'primary') THEN
      RAISE EXCEPTION 'target key % is %, it must be enabled or primary', dst, dst_status USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_scope <> dst_scope AND NOT coalesce(p_cross_scope, false) THEN
      -- Promotion makes the target primary in its own scope and leaves the source's scope with
      -- its old primary: applications of that scope keep writing under the source key.
      RAISE EXCEPTION 'target key % is in keyring scope %, source key % in scope %: a rotation stays within a scope; pass --cross-scope (p_cross_scope => true) if the move is intended',
        dst, quote_literal(dst_scope), src, quote_literal(src_scope) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_keys VALUES (job, src::bigint, dst::text::bigint);
  END LOOP;
  IF EXISTS (SELECT 1 FROM rekey.job_keys a JOIN rekey.job_keys b USING (job_id)
              WHERE a.job_id = job AND a.target_key_id = b.source_key_id) THEN
    RAISE EXCEPTION 'a target key is also a source key in the key map' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  FOR i IN 1 .. cardinality(p_columns) LOOP
    v_codec := coalesce(p_codecs[i], 'tink');
    -- The column's target by identity (migrations/0013), so a renamed table keeps its target.
    SELECT x.target_id INTO tid FROM rekey.targets x JOIN rekey.target_columns() tc USING (target_id)
     WHERE tc.relid = format('%I.%I', t.schema_name, t.table_name)::regclass
       AND tc.column_name = p_columns[i]
       AND x.scope_column IS NOT DISTINCT FROM p_scope_column AND x.scope_value IS NOT DISTINCT FROM v_scope_value;
    IF tid IS NULL THEN
      INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, key_id_column,
                                 ad_template, scope_column, scope_value)
      VALUES (t.schema_name, t.table_name, pk_col, p_columns[i], v_codec, p_key_id_column, p_ad_template,
              p_scope_column, v_scope_value)
      RETURNING target_id INTO tid;
    ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid AND
                  (x.codec, x.key_id_column, x.ad_template) IS DISTINCT FROM (v_codec, p_key_id_column::name, p_ad_template)) THEN
      RAISE EXCEPTION 'column % is registered with another codec, key-id column or associated data (target %)',
        quote_ident(p_columns[i]), tid USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_columns VALUES (job, i, tid);
  END LOOP;
  PERFORM rekey.refuse_column_collision(job);
  PERFORM rekey.refuse_key_collision(job);

  prev := 0;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    PERFORM rekey.add_stage(job, 'rollout', p_stages[i], (prev * 100)::integer, (p_stages[i] * 100)::integer);
    prev := p_stages[i];
  END LOOP;
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = job;
  PERFORM rekey.audit_event('job.created', job, jsonb_build_object(
    'table', format('%I.%I', t.schema_name, t.table_name), 'columns', to_jsonb(p_columns),
    'key_map', p_key_map, 'batches', batches, 'batch_size', p_batch_size, 'stages', to_jsonb(p_stages),
    'promote_at_stage', coalesce(p_promote_at_stage, cardinality(p_stages)),
    'error_threshold', p_error_threshold, 'observe', p_observe::text,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, v_scope_value) END,
    'not_governed', to_jsonb(coalesce(v_not_governed, '{}')),
    'cross_scope', coalesce(p_cross_scope, false)));
  PERFORM rekey.open_stage(job, 1);
  RETURN job;
END $$;

-- Replaces 0007's definition: the scope value in canonical form, and no column of another
-- unfinished job (rekey.refuse_column_collision). Parameters and everything else as in 0007.
CREATE OR REPLACE FUNCTION rekey.create_transit_job(
  p_table text,
  p_columns text[],
  p_transit_key text,
  p_min_version integer,
  p_ad_template text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_error_threshold numeric DEFAULT 0.001,
  p_observe interval DEFAULT NULL,
  p_gate_sample_size integer DEFAULT 10000)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  v_scope_value text;
  col_type text;
  job bigint;
  tid bigint;
  batches integer;
  i integer;
  prev numeric := 0;
BEGIN
  t := rekey.resolve_table(p_table);
  -- Policies that hide rows from this role would hide them from the plan too: those rows would
  -- never be rotated, and the job would still complete (docs/safety.md, invariant 4). The
  -- table as this role sees it is not fit for a job: a definition error (exit 2), with the grant.
  IF rekey.row_security_blocker(format('%I.%I', t.schema_name, t.table_name)::regclass) IS NOT NULL THEN
    RAISE EXCEPTION '%', rekey.row_security_blocker(format('%I.%I', t.schema_name, t.table_name)::regclass)
      USING ERRCODE = 'invalid_table_definition';
  END IF;
  PERFORM rekey.lock_job_definitions();
  SELECT min(a.attname), count(*) INTO pk_col, i
    FROM pg_index x
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
   WHERE x.indrelid = format('%I.%I', t.schema_name, t.table_name)::regclass AND x.indisprimary;
  IF i <> 1 THEN
    RAISE EXCEPTION 'table %.% needs a single-column primary key to split it into batches',
      quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'invalid_table_definition';
  END IF;
  pk_type := rekey.column_type(t.schema_name, t.table_name, pk_col);
  IF p_transit_key IS NULL OR p_transit_key !~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$' THEN
    RAISE EXCEPTION 'Transit key % is not a key path <mount>/keys/<name> (e.g. transit/keys/app)',
      quote_literal(coalesce(p_transit_key, '')) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_min_version IS NULL OR p_min_version < 1 THEN
    RAISE EXCEPTION 'the target Transit key version must be 1 or more, got %', p_min_version
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
    RAISE EXCEPTION 'a job needs at least one ciphertext column' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF (SELECT count(DISTINCT c) FROM unnest(p_columns) c) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'a column is listed twice' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 1000000 THEN
    RAISE EXCEPTION 'batch size must be between 1 and 1000000, got %', p_batch_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    col_type := rekey.column_type(t.schema_name, t.table_name, p_columns[i]);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'column % does not exist in %.%', quote_ident(p_columns[i]),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type <> 'text' AND col_type NOT LIKE 'character varying%' THEN
      RAISE EXCEPTION 'column %.%.% is %, not text: Transit ciphertexts (vault:vN:...) are stored as text',
        quote_ident(t.schema_name), quote_ident(t.table_name), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF p_columns[i] = pk_col THEN
      RAISE EXCEPTION 'column % is the primary key', quote_ident(p_columns[i]) USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
  IF (p_scope_column IS NULL) <> (p_scope_value IS NULL) THEN
    RAISE EXCEPTION 'a scope needs both a column and a value' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_scope_column IS NOT NULL THEN
    IF rekey.column_type(t.schema_name, t.table_name, p_scope_column) IS NULL THEN
      RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_scope_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    END IF;
    scope_type := rekey.checked_column_type(t.schema_name, t.table_name, p_scope_column);
    v_scope_value := rekey.canonical_scope_value(t.schema_name, t.table_name, p_scope_column, p_scope_value);
  END IF;
  IF p_ad_template IS NOT NULL AND
     regexp_replace(regexp_replace(p_ad_template, '\{\{|\}\}', '', 'g'),
                    '\{(schema|table|column|pk)\}', '', 'g') ~ '[{}]' THEN
    RAISE EXCEPTION 'invalid associated-data template %: use {schema}, {table}, {column}, {pk}; write {{ and }} for braces',
      quote_literal(p_ad_template) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_stages IS NULL OR cardinality(p_stages) = 0 OR p_stages[cardinality(p_stages)] <> 100 THEN
    RAISE EXCEPTION 'the stage plan must end at 100 (percent), as in 1,25,50,75,100' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    IF p_stages[i] IS NULL OR p_stages[i] <= prev OR p_stages[i] * 100 <> round(p_stages[i] * 100) THEN
      RAISE EXCEPTION 'bad stage plan %: percentages must increase, with at most two decimals', p_stages
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := p_stages[i];
  END LOOP;
  IF p_error_threshold IS NULL OR p_error_threshold < 0 OR p_error_threshold > 1 THEN
    RAISE EXCEPTION 'the error threshold is a fraction between 0 and 1, e.g. 0.001 for 0.1%%' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- keys_promoted from the start: there is no keyring key to promote (open_stage skips it).
  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          keys_promoted, transit_key_ref, transit_min_version)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, p_ad_template,
          p_scope_column, v_scope_value, scope_type, p_batch_size, p_max_attempts,
          p_stages, cardinality(p_stages), p_error_threshold, p_observe, p_gate_sample_size,
          true, p_transit_key, p_min_version)
  RETURNING job_id INTO job;

  FOR i IN 1 .. cardinality(p_columns) LOOP
    -- The column's target by identity (migrations/0013), so a renamed table keeps its target.
    SELECT x.target_id INTO tid FROM rekey.targets x JOIN rekey.target_columns() tc USING (target_id)
     WHERE tc.relid = format('%I.%I', t.schema_name, t.table_name)::regclass
       AND tc.column_name = p_columns[i]
       AND x.scope_column IS NOT DISTINCT FROM p_scope_column AND x.scope_value IS NOT DISTINCT FROM v_scope_value;
    IF tid IS NULL THEN
      INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, ad_template,
                                 scope_column, scope_value)
      VALUES (t.schema_name, t.table_name, pk_col, p_columns[i], 'vault-transit', p_ad_template,
              p_scope_column, v_scope_value)
      RETURNING target_id INTO tid;
    ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid AND
                  (x.codec, x.ad_template) IS DISTINCT FROM ('vault-transit', p_ad_template)) THEN
      RAISE EXCEPTION 'column % is registered with another codec or associated data (target %)',
        quote_ident(p_columns[i]), tid USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_columns VALUES (job, i, tid);
  END LOOP;
  PERFORM rekey.refuse_column_collision(job);

  prev := 0;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    PERFORM rekey.add_stage(job, 'rollout', p_stages[i], (prev * 100)::integer, (p_stages[i] * 100)::integer);
    prev := p_stages[i];
  END LOOP;
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = job;
  PERFORM rekey.audit_event('job.created', job, jsonb_build_object(
    'table', format('%I.%I', t.schema_name, t.table_name), 'columns', to_jsonb(p_columns),
    'codec', 'vault-transit', 'transit_key', p_transit_key, 'min_version', p_min_version,
    'batches', batches, 'batch_size', p_batch_size, 'stages', to_jsonb(p_stages),
    'error_threshold', p_error_threshold, 'observe', p_observe::text,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, v_scope_value) END));
  PERFORM rekey.open_stage(job, 1);
  RETURN job;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Batches commit only into the job's open stage.

-- Raises serialization_failure ('no longer claimed': the worker's signal that it lost the batch,
-- so nothing of it commits) unless batch p_batch belongs to the open stage of job p_job: the
-- batch's stage is jobs.current_stage, that stage is running, and the job is active or paused (a
-- pause changes no stage: batches in flight finish, docs/operations.md).
--
-- The job row is read FOR KEY SHARE, held to the end of the batch's transaction. Every stage or
-- state change (rekey.rollback_job, open_stage, finish_stages, advance_job, record_gate and the
-- DBA verbs) locks the row FOR UPDATE first, which conflicts: a rollback either waits until this
-- transaction has committed, so that its planning and its batches see the values committed here,
-- or commits first, and then this check sees its new stage. KEY SHARE rather than SHARE because
-- rekey.complete_batch may go on to UPDATE the job row (the error threshold pauses the job):
-- that takes FOR NO KEY UPDATE, which KEY SHARE locks of other batches do not block, so two
-- batches pausing the job at once never deadlock on a lock upgrade, and a waiting FOR UPDATE
-- does not block a holder's own upgrade either (the holder is already a locker of the row).
CREATE FUNCTION rekey.require_open_stage_batch(p_job bigint, p_batch integer, p_worker text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  job_state text;
  open_stage integer;
  batch_stage integer;
  stage_state text;
BEGIN
  SELECT state, current_stage INTO job_state, open_stage FROM rekey.jobs WHERE job_id = p_job FOR KEY SHARE;
  -- A new statement, so a new snapshot: it sees whatever committed before the lock was granted.
  SELECT b.stage_no, s.state INTO batch_stage, stage_state
    FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
   WHERE b.job_id = p_job AND b.batch_no = p_batch;
  IF job_state IS NULL OR job_state NOT IN ('active', 'paused') OR batch_stage IS DISTINCT FROM open_stage
     OR stage_state IS DISTINCT FROM 'running' THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %: it belongs to stage %, and job % is % at stage %; nothing of it was written',
      p_job, p_batch, p_worker, coalesce(batch_stage::text, '?'), p_job, coalesce(job_state, 'gone'),
      coalesce(open_stage::text, '?') USING ERRCODE = 'serialization_failure';
  END IF;
END $$;

-- Replaces 0003's definition: first rekey.require_open_stage_batch.
CREATE OR REPLACE FUNCTION rekey.checkpoint_batch(p_job bigint, p_batch integer, p_worker text, p_after text,
                                                  p_done integer, p_skipped integer, p_failed integer,
                                                  p_duration_ms double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  PERFORM rekey.require_open_stage_batch(p_job, p_batch, p_worker);
  UPDATE rekey.batches SET resume_after = p_after, rows_done = rows_done + p_done,
         rows_skipped = rows_skipped + p_skipped, rows_failed = rows_failed + p_failed,
         duration_ms = coalesce(duration_ms, 0) + p_duration_ms
   WHERE job_id = p_job AND batch_no = p_batch AND state = 'running' AND worker_id = p_worker;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', p_job, p_batch, p_worker
      USING ERRCODE = 'serialization_failure';
  END IF;
END $$;

-- Replaces 0002's definition: first rekey.require_open_stage_batch; the rest as before.
CREATE OR REPLACE FUNCTION rekey.complete_batch(p_job bigint, p_batch integer, p_worker text,
                                                p_done integer, p_skipped integer, p_failed integer,
                                                p_duration_ms double precision, p_details jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  stage integer;
  failed bigint;
  seen bigint;
  planned bigint;
  j rekey.jobs;
BEGIN
  PERFORM rekey.require_open_stage_batch(p_job, p_batch, p_worker);
  UPDATE rekey.batches SET state = 'done', finished_at = now(), rows_done = p_done,
         rows_skipped = p_skipped, rows_failed = p_failed, duration_ms = p_duration_ms,
         last_error = NULL
   WHERE job_id = p_job AND batch_no = p_batch AND state = 'running' AND worker_id = p_worker
  RETURNING stage_no INTO stage;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', p_job, p_batch, p_worker
      USING ERRCODE = 'serialization_failure';
  END IF;
  PERFORM rekey.audit_event('rotation.batch.completed', p_job,
    p_details || jsonb_build_object('stage', stage, 'rows_reencrypted', p_done, 'rows_skipped', p_skipped,
                                    'rows_quarantined', p_failed, 'duration_ms', round(p_duration_ms::numeric, 3)),
    'success', p_batch, p_worker);
  IF p_failed > 0 THEN
    SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job;
    SELECT sum(rows_failed), sum(rows_done + rows_failed), (SELECT sum(planned_rows) FROM rekey.batches
             WHERE job_id = p_job AND stage_no = stage)
      INTO failed, seen, planned
      FROM rekey.batches WHERE job_id = p_job AND stage_no = stage AND state = 'done';
    -- Judge the rate once it rests on a meaningful number of values (or the whole stage).
    IF seen >= least(1000, planned) AND failed::numeric / greatest(seen, 1) > j.error_threshold
       AND j.state = 'active' THEN
      UPDATE rekey.jobs SET state = 'paused', updated_at = now(),
             state_reason = format('decrypt error rate %s%% in stage %s exceeds the threshold %s%%: %s of %s values quarantined; see rekey.row_failures, then resume or roll back',
                                   round(100.0 * failed / seen, 3), stage, round(100 * j.error_threshold, 3), failed, seen)
       WHERE job_id = p_job AND state = 'active';
      IF FOUND THEN
        PERFORM rekey.audit_event('job.paused', p_job, jsonb_build_object(
          'reason', 'error threshold', 'stage', stage, 'quarantined', failed, 'values', seen,
          'threshold', j.error_threshold), 'failure', NULL, p_worker);
      END IF;
    END IF;
  END IF;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Rollbacks: refused while another part of the rotation runs; ended by sweeps.

-- Replaces 0002's definition: serialized with job definitions (rekey.lock_job_definitions),
-- refused while another unfinished job shares a key with this one, and records the rollback's
-- first stage (jobs.rollback_stage) for its sweeps. The rest as before.
CREATE OR REPLACE FUNCTION rekey.rollback_job(p_job bigint, p_to_percent numeric DEFAULT 0,
                                              p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  r record;
  other record;
  stage integer;
BEGIN
  PERFORM rekey.lock_job_definitions();
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF j.state IN ('cancelled', 'rolled_back') THEN
    RAISE EXCEPTION 'job % is %: nothing to roll back', p_job, j.state USING ERRCODE = 'object_not_in_prerequisite_state';
  ELSIF p_to_percent IS NULL OR (p_to_percent <> 0 AND NOT p_to_percent = ANY (j.stage_plan[1:cardinality(j.stage_plan) - 1])) THEN
    RAISE EXCEPTION 'roll back to 0 or to one of the earlier stages'' percentages (%)', j.stage_plan
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT 1 FROM rekey.keys k JOIN rekey.job_keys jk ON jk.source_key_id = k.key_id
              WHERE jk.job_id = p_job AND k.status = 'destroyed') THEN
    RAISE EXCEPTION 'a source key of job % is destroyed: its values cannot be restored', p_job
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  -- Another part of the same rotation (or any job on these keys) would promote the target key
  -- again, or demote the restored source key, when it completes: the scope would end with its
  -- values split between keys and the wrong primary.
  SELECT o.job_id, o.state,
         (SELECT string_agg(DISTINCT k::text, ', ') FROM rekey.job_keys q,
                 LATERAL unnest(ARRAY[q.source_key_id, q.target_key_id]) k
           WHERE q.job_id = o.job_id
             AND k IN (SELECT unnest(ARRAY[m.source_key_id, m.target_key_id]) FROM rekey.job_keys m
                        WHERE m.job_id = p_job)) AS shared
    INTO other
    FROM rekey.jobs o
   WHERE o.job_id <> p_job AND rekey.job_unfinished(o.state)
     AND EXISTS (SELECT 1 FROM rekey.job_keys q JOIN rekey.job_keys m
                     ON m.job_id = p_job
                    AND (q.source_key_id IN (m.source_key_id, m.target_key_id)
                         OR q.target_key_id IN (m.source_key_id, m.target_key_id))
                  WHERE q.job_id = o.job_id)
   ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) shares key % with job %: rolling back one part of a rotation would leave the scope without a primary when the other completes; roll back or cancel job % first',
      other.job_id, other.state, other.shared, p_job, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  -- Stop the forward work: stages not yet finished are cancelled.
  UPDATE rekey.job_stages SET state = 'cancelled'
   WHERE job_id = p_job AND state IN ('planned', 'running', 'verifying');
  -- The keyring as before the job: each source key primary again in its scope.
  FOR r IN SELECT jk.source_key_id, jk.target_key_id, k.scope, k.status AS source_status
             FROM rekey.job_keys jk JOIN rekey.keys k ON k.key_id = jk.source_key_id
            WHERE jk.job_id = p_job LOOP
    UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.target_key_id AND status IN ('primary', 'enabled');
    IF r.source_status = 'retired' THEN
      UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.source_key_id;
    END IF;
    IF j.keys_promoted AND NOT EXISTS (SELECT 1 FROM rekey.keys WHERE scope = r.scope AND status = 'primary') THEN
      UPDATE rekey.keys SET status = 'primary' WHERE key_id = r.source_key_id;
    END IF;
  END LOOP;
  UPDATE rekey.jobs SET keys_promoted = false, rollback_stage = NULL WHERE job_id = p_job;
  stage := rekey.add_stage(p_job, 'rollback', p_to_percent, (p_to_percent * 100)::integer, 10000);
  UPDATE rekey.jobs SET rollback_stage = stage WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.rollback_started', p_job, jsonb_build_object(
    'from_state', j.state, 'from_stage', j.current_stage, 'to_percent', p_to_percent, 'reason', p_reason,
    'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = p_job AND stage_no = stage)));
  PERFORM rekey.open_stage(p_job, stage);
  UPDATE rekey.jobs SET finished_at = NULL, state_reason = format('rolling back to %s%%', p_to_percent)
   WHERE job_id = p_job;
  RETURN format('job %s: rolling back to %s%% (stage %s); run rekey work --job %s', p_job, p_to_percent, stage, p_job);
END $$;

-- Adds a sweep of the job's latest rollback: a rollback stage over the same buckets, planned
-- like a forward sweep (ranges over the whole key space, without reading the table), and opens
-- it. Returns the stage number.
CREATE FUNCTION rekey.open_rollback_sweep(p_job bigint) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  first_pass rekey.job_stages;
  n integer;
BEGIN
  SELECT s.* INTO STRICT first_pass FROM rekey.job_stages s JOIN rekey.jobs j
      ON j.job_id = s.job_id AND s.stage_no = j.rollback_stage
   WHERE s.job_id = p_job;
  SELECT max(stage_no) + 1 INTO n FROM rekey.job_stages WHERE job_id = p_job;
  INSERT INTO rekey.job_stages (job_id, stage_no, kind, percent, bucket_lo, bucket_hi)
  VALUES (p_job, n, 'rollback', first_pass.percent, first_pass.bucket_lo, first_pass.bucket_hi);
  PERFORM rekey.plan_sweep(p_job, n);
  PERFORM rekey.open_stage(p_job, n);
  RETURN n;
END $$;

-- Replaces 0002's definition: a finished rollback stage is followed by sweeps over the same
-- buckets -- values applications still wrote under the target keys meanwhile (from a cached
-- primary) go back too -- until one finds none, at most 20 (then the job pauses with the reason,
-- like the forward sweep); only then is the job rolled_back (or back at its earlier stage).
CREATE OR REPLACE FUNCTION rekey.finish_stages(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, state text) LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  n_failed bigint;
  n_done bigint;
  target_stage integer;
  sweeps integer;
  restored bigint;
BEGIN
  FOR j IN
    SELECT x.* FROM rekey.jobs x
     WHERE x.state = 'active' AND (p_job IS NULL OR x.job_id = p_job)
       AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = x.job_id
                          AND b.stage_no = x.current_stage AND b.state IN ('pending', 'running'))
     FOR UPDATE SKIP LOCKED
  LOOP
    -- Re-check under the lock: a batch may have been requeued meanwhile.
    CONTINUE WHEN EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = j.job_id
                            AND b.stage_no = j.current_stage AND b.state IN ('pending', 'running'));
    SELECT * INTO st FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
    SELECT count(*) FILTER (WHERE b.state = 'failed'), coalesce(sum(b.rows_done), 0)
      INTO n_failed, n_done
      FROM rekey.batches b WHERE b.job_id = j.job_id AND b.stage_no = j.current_stage;
    job_id := j.job_id;
    IF n_failed > 0 THEN
      UPDATE rekey.jobs x SET state = 'failed', finished_at = now(), updated_at = now(),
             state_reason = format('%s batches failed in stage %s; see rekey.batch_status and run rekey.retry_failed(%s)',
                                   n_failed, j.current_stage, j.job_id)
       WHERE x.job_id = j.job_id;
      PERFORM rekey.audit_event('job.failed', j.job_id, jsonb_build_object('stage', j.current_stage, 'batches_failed', n_failed), 'failure');
      state := 'failed';
    ELSIF st.kind = 'rollout' THEN
      UPDATE rekey.job_stages s SET state = 'verifying', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      UPDATE rekey.jobs x SET state = 'verifying', updated_at = now() WHERE x.job_id = j.job_id;
      state := 'verifying';
    ELSIF st.kind = 'sweep' THEN
      UPDATE rekey.job_stages s SET state = 'done', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      PERFORM rekey.audit_event('stage.completed', j.job_id, jsonb_build_object(
        'stage', j.current_stage, 'kind', 'sweep', 'rows_reencrypted', n_done));
      SELECT count(*) INTO sweeps FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.kind = 'sweep';
      IF n_done = 0 THEN
        PERFORM rekey.complete_job(j.job_id);
        state := 'completed';
      ELSIF sweeps >= 20 THEN
        UPDATE rekey.jobs x SET state = 'paused', updated_at = now(),
               state_reason = 'applications keep writing under the old key after 20 sweeps; check that every application reads the keyring''s primary key'
         WHERE x.job_id = j.job_id;
        state := 'paused';
      ELSE
        PERFORM rekey.open_stage(j.job_id, rekey.add_stage(j.job_id, 'sweep', 100, 0, 10000));
        state := 'active';
      END IF;
    ELSE  -- rollback: its first pass, or one of its sweeps
      UPDATE rekey.job_stages s SET state = 'done', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      IF j.rollback_stage IS NULL THEN
        -- A rollback started before this migration: its open stage is its first pass.
        UPDATE rekey.jobs x SET rollback_stage = j.current_stage WHERE x.job_id = j.job_id;
        j.rollback_stage := j.current_stage;
      END IF;
      PERFORM rekey.audit_event('stage.completed', j.job_id, jsonb_build_object(
        'stage', j.current_stage, 'kind', 'rollback', 'sweep', j.current_stage <> j.rollback_stage,
        'rows_restored', n_done));
      SELECT count(*) INTO sweeps FROM rekey.job_stages s
       WHERE s.job_id = j.job_id AND s.kind = 'rollback' AND s.stage_no > j.rollback_stage;
      IF j.current_stage = j.rollback_stage OR n_done > 0 THEN
        IF sweeps >= 20 THEN
          UPDATE rekey.jobs x SET state = 'paused', updated_at = now(),
                 state_reason = 'applications keep writing under the new key after 20 rollback sweeps; check that every application reads the keyring''s primary key'
           WHERE x.job_id = j.job_id;
          state := 'paused';
        ELSE
          PERFORM rekey.open_rollback_sweep(j.job_id);
          state := 'active';
        END IF;
        RETURN NEXT;
        CONTINUE;
      END IF;
      SELECT coalesce(sum(b.rows_done), 0) INTO restored FROM rekey.batches b
       WHERE b.job_id = j.job_id AND b.stage_no >= j.rollback_stage;
      SELECT max(s.stage_no) INTO target_stage FROM rekey.job_stages s
       WHERE s.job_id = j.job_id AND s.kind = 'rollout' AND s.bucket_hi <= st.bucket_lo;
      IF target_stage IS NULL THEN
        UPDATE rekey.jobs x SET state = 'rolled_back', finished_at = now(), updated_at = now(),
               state_reason = 'rolled back: every value is under its source key again'
         WHERE x.job_id = j.job_id;
        PERFORM rekey.audit_event('job.rolled_back', j.job_id, jsonb_build_object('stage', j.current_stage, 'rows_restored', restored));
        state := 'rolled_back';
      ELSE
        UPDATE rekey.jobs x SET state = 'awaiting_approval', current_stage = target_stage, updated_at = now(),
               state_reason = format('rolled back to stage %s (%s%%); rekey job advance %s goes forward again',
                                     target_stage, (SELECT percent FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.stage_no = target_stage), j.job_id)
         WHERE x.job_id = j.job_id;
        PERFORM rekey.audit_event('job.rolled_back', j.job_id, jsonb_build_object(
          'stage', j.current_stage, 'rows_restored', restored, 'back_to_stage', target_stage));
        state := 'awaiting_approval';
      END IF;
    END IF;
    RETURN NEXT;
  END LOOP;
END $$;
