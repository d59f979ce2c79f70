-- Planning in one pass over the table (bench/README.md, "Latest figures").
--
-- A staged job used to plan each partial rollout stage on its own: one scan of the whole table
-- per stage, computing every row's stage bucket (an MD5) twice, then numbering the stage's rows
-- with a window function -- 8 s per million rows for the five default stages, most of a staged
-- job's overhead. Now the rollout stages of a job are planned together when the last of them is
-- added: one scan in key order, one bucket per row, no sort of the table (2 s per million rows,
-- about half of it the MD5s). The batches, their numbers and their ranges are the same as before
-- (tests/planning_pg_test.cpp compares them). A batch of a stage that ends below 100% also keeps
-- its rows' keys, so that it locks them by key instead of scanning its range and hashing every
-- key in it (batches.keys below).
--
-- A sweep used to be planned like a full stage, one batch per batch_size rows of the table,
-- although it usually finds nothing: on a million rows, a keyset walk over an index full of the
-- rollout's dead row versions, then a thousand batches that each lock nothing. Now it is planned
-- from the rows that still need work, found by one filtered scan: a cut after every batch_size of
-- them, and at every 100th boundary of the rollout's batches (about every 100 x batch_size rows of
-- the table), so that a batch stays a short transaction whatever it finds.
-- The ranges still tile the whole key space (the first starts at NULL, the last ends at NULL,
-- each ends where the next starts), so a value written under an old key between planning and the
-- sweep is caught by the batch whose range holds it.

-- The keys of a partial rollout stage's batch, in key order, when it was planned: the batch locks
-- these rows (those still under a source key and, as before, in the stage's buckets) instead of
-- scanning its whole range and hashing every row's key to find its stage's -- for a 1% stage, a
-- hundred rows scanned per row moved. NULL for every other batch (a last rollout stage, sweeps,
-- rollbacks), which scans its range. A row inserted into a planned range since is left to the
-- last stage and the sweep. The keys are cleared when the job completes. They cost about the
-- size of the partial stages' primary keys (75% of the table's keys for 1,25,50,75,100).
ALTER TABLE rekey.batches ADD COLUMN keys text[];

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

-- " AND t.<scope column> = <scope value>" for a job limited to one scope, else "".
CREATE FUNCTION rekey.scope_condition(p_job rekey.jobs) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_job.scope_column IS NULL THEN ''
              ELSE format(' AND t.%I = %L::%s', p_job.scope_column, p_job.scope_value, p_job.scope_type) END
$$;

-- Plans every rollout stage of p_job that has no batches yet, in one scan: each row's bucket
-- once, then per stage a cut every batch_size rows in key order (the first batch starts at NULL,
-- the last ends at NULL). A stage without rows gets one empty batch. Returns the number of
-- batches. The sort holds the table's keys: work_mem is raised for it so that it stays in memory
-- up to a few million rows and spills to disk (correctly, more slowly) beyond.
CREATE FUNCTION rekey.plan_rollout(p_job bigint) RETURNS integer
LANGUAGE plpgsql SET work_mem = '128MB' SET enable_sort = off SET jit = off AS $$
DECLARE
  j rekey.jobs;
  scope_sql text;
  first_batch integer;
  stages integer[];
  los integer[];
  his integer[];
  counts text;
  n integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  scope_sql := rekey.scope_condition(j);
  SELECT array_agg(s.stage_no ORDER BY s.bucket_lo), array_agg(s.bucket_lo ORDER BY s.bucket_lo),
         array_agg(s.bucket_hi ORDER BY s.bucket_lo)
    INTO stages, los, his
    FROM rekey.job_stages s
   WHERE s.job_id = p_job AND s.kind = 'rollout'
     AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = s.job_id AND b.stage_no = s.stage_no);
  IF stages IS NULL THEN
    RETURN 0;
  END IF;
  -- The rows stream in key order from the primary-key index, each with its stage found by a
  -- binary search of the stages' lower bounds (width_bucket) from its bucket, computed once
  -- (OFFSET 0 keeps the planner from inlining the expression twice). One running count per stage
  -- over that stream numbers each row within its stage without sorting the table (enable_sort is
  -- off for this function so the planner streams rather than sorts), and the rows are grouped
  -- into batches by hashing. A batch of a stage that ends below 100% also records its rows' keys
  -- (see batches.keys), in key order.
  SELECT string_agg(format('count(*) FILTER (WHERE i = %s) OVER w', x), ', ' ORDER BY x)
    INTO counts FROM generate_subscripts(stages, 1) x;
  EXECUTE format($q$
    WITH numbered AS (
      SELECT i, k, (ARRAY[%4$s])[i] - 1 AS rn
        FROM (SELECT pk_order, k, CASE WHEN bucket < $6[x] THEN x END AS i
                FROM (SELECT pk_order, k, bucket, width_bucket(bucket, $5) AS x
                        FROM (SELECT t.%1$I AS pk_order, t.%1$I::text AS k,
                                     rekey.stage_bucket(t.%1$I::text) AS bucket
                                FROM %2$s AS t WHERE true%3$s ORDER BY t.%1$I OFFSET 0) r) s) y
       WHERE i IS NOT NULL
      WINDOW w AS (ORDER BY pk_order ROWS UNBOUNDED PRECEDING)),
    grouped AS (
      SELECT $4[i] AS stage_no, rn / $2 AS n, count(*) AS rows, array_agg(k) AS keys,
             min(k) FILTER (WHERE rn %% $2 = 0) AS first_key
        FROM numbered GROUP BY i, rn / $2),
    planned AS (
      SELECT stage_no, n, CASE WHEN n = 0 THEN NULL ELSE first_key END AS lo,
             lead(first_key) OVER (PARTITION BY stage_no ORDER BY n) AS hi, rows,
             CASE WHEN stage_no = ANY ($7) THEN keys END AS keys
        FROM grouped
      UNION ALL
      SELECT stage_no, 0, NULL, NULL, 0, NULL FROM unnest($4) AS todo(stage_no)
       WHERE NOT EXISTS (SELECT 1 FROM grouped WHERE grouped.stage_no = todo.stage_no))
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows, keys)
    SELECT $1, $3 + row_number() OVER (ORDER BY stage_no, n), stage_no, lo, hi, rows, keys
      FROM planned$q$,
    j.pk_column, format('%I.%I', j.schema_name, j.table_name), scope_sql, counts)
    USING p_job, j.batch_size, first_batch, stages, los, his,
          (SELECT array_agg(stages[x]) FROM generate_subscripts(stages, 1) x WHERE his[x] < 10000);
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- Plans a sweep stage from the rows that still need work (see the top of this file). Returns
-- the number of batches (at least one). The table is read once, without ordering it: a filtered
-- scan for the pending rows (usually none). The 100 x batch_size bound comes from the rollout's
-- own plan, whose batch boundaries lie batch_size rows apart: every 100th of them is a cut.
CREATE FUNCTION rekey.plan_sweep(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  scope_sql text;
  first_batch integer;
  n integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  scope_sql := rekey.scope_condition(j);
  -- pending: OFFSET 0 makes it a filtered scan whose few results are then sorted, where the
  -- planner would otherwise walk the whole primary-key index to number them in order. starts:
  -- the batches' first keys (the first batch starts at NULL). numbered: each pending row with the
  -- number of starts at or before it, which is its batch.
  EXECUTE format($q$
    WITH pending AS (
      SELECT k, row_number() OVER (ORDER BY k) - 1 AS rn
        FROM (SELECT t.%1$I AS k FROM %2$s AS t WHERE %4$s%3$s OFFSET 0) p),
    starts AS (
      SELECT k FROM (SELECT b.lo::%5$s AS k, row_number() OVER (ORDER BY b.lo::%5$s) AS rn
                       FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
                      WHERE b.job_id = $1 AND s.kind = 'rollout' AND b.lo IS NOT NULL) c
       WHERE rn %% 100 = 0
      UNION
      SELECT k FROM pending WHERE rn > 0 AND rn %% $2 = 0),
    ranges AS (
      SELECT 0::bigint AS batch, NULL::%5$s AS lo
      UNION ALL
      SELECT row_number() OVER (ORDER BY k), k FROM starts),
    numbered AS (
      SELECT kind, count(*) FILTER (WHERE kind = 0) OVER (ORDER BY k, kind ROWS UNBOUNDED PRECEDING) AS batch
        FROM (SELECT k, 0 AS kind FROM starts UNION ALL SELECT k, 1 FROM pending) events),
    counts AS (
      SELECT batch, count(*) FILTER (WHERE kind = 1) AS rows FROM numbered GROUP BY batch)
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    SELECT $1, $3 + 1 + batch, $4, lo::text, lead(lo::text) OVER (ORDER BY batch), coalesce(rows, 0)
      FROM ranges LEFT JOIN counts USING (batch)$q$,
    j.pk_column, format('%I.%I', j.schema_name, j.table_name), scope_sql,
    rekey.pending_condition(p_job), j.pk_type)
    USING p_job, j.batch_size, first_batch, p_stage;
  GET DIAGNOSTICS n = ROW_COUNT;
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

-- A completed job's planned keys are of no further use (a batch requeued later scans its range).
CREATE FUNCTION rekey.clear_planned_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.batches SET keys = NULL WHERE job_id = NEW.job_id AND keys IS NOT NULL;
  RETURN NULL;
END $$;
CREATE TRIGGER jobs_clear_planned_keys AFTER UPDATE OF state ON rekey.jobs
  FOR EACH ROW WHEN (NEW.state = 'completed' AND OLD.state <> 'completed')
  EXECUTE FUNCTION rekey.clear_planned_keys();
