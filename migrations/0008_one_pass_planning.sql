-- Planning in one pass over the table (bench/README.md, "Planning").
--
-- A staged job used to plan each partial rollout stage on its own: one scan of the whole table
-- per stage, computing every row's stage bucket (an MD5) twice, then numbering the stage's rows
-- with a window function -- 8 s per million rows for the five default stages, most of a staged
-- job's overhead. Now the rollout stages of a job are planned together when the last of them is
-- added: one scan, one bucket per row, one sort by (stage, key). The batches, their numbers and
-- their ranges are the same as before (tests/planning_pg_test.cpp compares them).
--
-- A sweep used to be planned like a full stage, one batch per batch_size rows of the table,
-- although it usually finds nothing: on a million rows, a keyset walk over an index full of the
-- rollout's dead row versions, then a thousand batches that each lock nothing. Now it is planned
-- from the rows that still need work: a cut after every batch_size of them, and at least every
-- 100 x batch_size rows of the table, so that a batch stays a short transaction whatever it finds.
-- The ranges still tile the whole key space (the first starts at NULL, the last ends at NULL,
-- each ends where the next starts), so a value written under an old key between planning and the
-- sweep is caught by the batch whose range holds it.

-- The SQL condition (over the alias t) that is true iff a row of job p_job still holds a value
-- to rewrite in the forward direction, or one that cannot even be parsed (to be quarantined):
-- the same condition as BatchRotator's row-locking SELECT (src/rotation/batch_rotator.cpp).
CREATE FUNCTION rekey.pending_condition(p_job bigint) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
  j rekey.jobs;
  c record;
  prefixes text;
  ids text;
  condition text := '';
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  -- Tink's prefix: the version byte 0x01, then the key id as 4 bytes big-endian.
  SELECT string_agg(quote_literal('\x01'::bytea || substring(int8send(source_key_id) from 5 for 4)) || '::bytea',
                    ', ' ORDER BY source_key_id),
         string_agg(source_key_id::text, ',' ORDER BY source_key_id)
    INTO prefixes, ids
    FROM rekey.job_keys WHERE job_id = p_job;
  FOR c IN SELECT t.column_name, t.codec, t.key_id_column
             FROM rekey.job_columns jc JOIN rekey.targets t USING (target_id)
            WHERE jc.job_id = p_job ORDER BY jc.ordinal LOOP
    IF condition <> '' THEN
      condition := condition || ' OR ';
    END IF;
    IF c.codec = 'vault-transit' THEN
      condition := condition || format('coalesce(rekey.transit_version(t.%I), 0) < %s',
                                       c.column_name, j.transit_min_version);
    ELSIF c.codec = 'tink' THEN
      condition := condition || format(
        'substring(t.%1$I from 1 for 5) = ANY (ARRAY[%2$s]) OR substring(t.%1$I from 1 for 1) <> ''\x01''::bytea OR octet_length(t.%1$I) < 5',
        c.column_name, coalesce(prefixes, 'NULL::bytea'));
    ELSE
      condition := condition || format('(t.%I = ANY (''{%s}''::bigint[]) AND t.%I IS NOT NULL)',
                                       c.key_id_column, coalesce(ids, ''), c.column_name);
    END IF;
  END LOOP;
  RETURN '(' || condition || ')';
END $$;

-- Plans every rollout stage of p_job that has no batches yet, in one scan: each row's bucket
-- once, then per stage a cut every batch_size rows in key order (the first batch starts at NULL,
-- the last ends at NULL). A stage without rows gets one empty batch. Returns the number of
-- batches. The sort holds the table's keys: work_mem is raised for it so that it stays in memory
-- up to a few million rows and spills to disk (correctly, more slowly) beyond.
CREATE FUNCTION rekey.plan_rollout(p_job bigint) RETURNS integer
LANGUAGE plpgsql SET work_mem = '128MB' AS $$
DECLARE
  j rekey.jobs;
  scope_sql text := '';
  first_batch integer;
  stages integer[];
  los integer[];
  his integer[];
  n integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  IF j.scope_column IS NOT NULL THEN
    scope_sql := format(' AND t.%I = %L::%s', j.scope_column, j.scope_value, j.scope_type);
  END IF;
  SELECT array_agg(s.stage_no ORDER BY s.bucket_lo), array_agg(s.bucket_lo ORDER BY s.bucket_lo),
         array_agg(s.bucket_hi ORDER BY s.bucket_lo)
    INTO stages, los, his
    FROM rekey.job_stages s
   WHERE s.job_id = p_job AND s.kind = 'rollout'
     AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = s.job_id AND b.stage_no = s.stage_no);
  IF stages IS NULL THEN
    RETURN 0;
  END IF;
  -- Each row's stage by a binary search of the stages' lower bounds (width_bucket), from its
  -- bucket computed once: OFFSET 0 keeps the planner from inlining the bucket expression twice.
  EXECUTE format($q$
    WITH numbered AS (
      SELECT stage_no, k, row_number() OVER (PARTITION BY stage_no ORDER BY pk_order) - 1 AS rn,
             count(*) OVER (PARTITION BY stage_no) AS total
        FROM (SELECT pk_order, k, CASE WHEN bucket < $6[i] THEN $4[i] END AS stage_no
                FROM (SELECT pk_order, k, bucket, width_bucket(bucket, $5) AS i
                        FROM (SELECT t.%1$I AS pk_order, t.%1$I::text AS k,
                                     rekey.stage_bucket(t.%1$I::text) AS bucket
                                FROM %2$s AS t WHERE true%3$s OFFSET 0) r OFFSET 0) s) x
       WHERE stage_no IS NOT NULL),
    cut AS (
      SELECT stage_no, k, rn / $2 AS n, total FROM numbered WHERE rn %% $2 = 0),
    planned AS (
      SELECT stage_no, n, CASE WHEN n = 0 THEN NULL ELSE k END AS lo,
             lead(k) OVER (PARTITION BY stage_no ORDER BY n) AS hi, least($2, total - n * $2) AS rows
        FROM cut
      UNION ALL
      SELECT stage_no, 0, NULL, NULL, 0 FROM unnest($4) AS todo(stage_no)
       WHERE NOT EXISTS (SELECT 1 FROM cut WHERE cut.stage_no = todo.stage_no))
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    SELECT $1, $3 + row_number() OVER (ORDER BY stage_no, n), stage_no, lo, hi, rows FROM planned$q$,
    j.pk_column, format('%I.%I', j.schema_name, j.table_name), scope_sql)
    USING p_job, j.batch_size, first_batch, stages, los, his;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- Plans a sweep stage from the rows that still need work (see the top of this file). Returns
-- the number of batches (at least one).
CREATE FUNCTION rekey.plan_sweep(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  scope_sql text := '';
  first_batch integer;
  n integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  IF j.scope_column IS NOT NULL THEN
    scope_sql := format(' AND t.%I = %L::%s', j.scope_column, j.scope_value, j.scope_type);
  END IF;
  -- One streaming pass in key order (the CTEs are each read once, so nothing is materialized):
  -- rn numbers the rows, m counts the pending ones up to and including the current row. A row
  -- starts a batch iff it is the first row, the first of the next 100 x batch_size rows, or a
  -- pending row that follows a multiple of batch_size pending rows. The last row is kept too,
  -- for the last batch's count.
  EXECUTE format($q$
    WITH walk AS (
      SELECT t.%1$I::text AS k, %4$s AS pending,
             row_number() OVER w - 1 AS rn,
             count(*) FILTER (WHERE %4$s) OVER w AS m,
             lead(true) OVER w IS NULL AS last
        FROM %2$s AS t WHERE true%3$s
      WINDOW w AS (ORDER BY t.%1$I ROWS UNBOUNDED PRECEDING)),
    marked AS (
      SELECT k, rn, m, last, m - CASE WHEN pending THEN 1 ELSE 0 END AS before,
             rn = 0 OR rn %% ($2 * 100) = 0 OR (pending AND m > 1 AND (m - 1) %% $2 = 0) AS starts
        FROM walk),
    cut AS (
      SELECT k, rn, before, starts,
             lead(CASE WHEN starts THEN k END) OVER (ORDER BY rn) AS hi,
             coalesce(lead(CASE WHEN starts THEN before ELSE m END) OVER (ORDER BY rn), m) - before AS rows
        FROM marked WHERE starts OR last)
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    SELECT $1, $3 + row_number() OVER (ORDER BY rn), $4, CASE WHEN rn = 0 THEN NULL ELSE k END, hi, rows
      FROM cut WHERE starts$q$,
    j.pk_column, format('%I.%I', j.schema_name, j.table_name), scope_sql,
    rekey.pending_condition(p_job))
    USING p_job, j.batch_size, first_batch, p_stage;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN  -- an empty table (or scope): one batch over everything, which finds nothing
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    VALUES (p_job, first_batch + 1, p_stage, NULL, NULL, 0);
    n := 1;
  END IF;
  RETURN n;
END $$;

-- Adds a stage to a job and plans it; returns the stage number. The rollout stages of a staged
-- job are planned together, in one pass, once the last of them (per jobs.stage_plan) is added:
-- rekey.create_job adds them all before it reads the plan.
CREATE OR REPLACE FUNCTION rekey.add_stage(p_job bigint, p_kind text, p_percent numeric,
                                           p_bucket_lo integer, p_bucket_hi integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  plan numeric[];
BEGIN
  SELECT coalesce(max(stage_no), 0) + 1 INTO n FROM rekey.job_stages WHERE job_id = p_job;
  INSERT INTO rekey.job_stages (job_id, stage_no, kind, percent, bucket_lo, bucket_hi)
  VALUES (p_job, n, p_kind, p_percent, p_bucket_lo, p_bucket_hi);
  IF p_kind = 'sweep' THEN
    PERFORM rekey.plan_sweep(p_job, n);
  ELSIF p_kind = 'rollout' THEN
    SELECT stage_plan INTO STRICT plan FROM rekey.jobs WHERE job_id = p_job;
    IF cardinality(plan) = 1 THEN
      PERFORM rekey.plan_stage(p_job, n);  -- one stage of every row: the streaming keyset walk
    ELSIF (SELECT count(*) FROM rekey.job_stages WHERE job_id = p_job AND kind = 'rollout')
          >= cardinality(plan) THEN
      PERFORM rekey.plan_rollout(p_job);
    END IF;
  ELSE
    PERFORM rekey.plan_stage(p_job, n);
  END IF;
  RETURN n;
END $$;
