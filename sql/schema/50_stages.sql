-- Stages: planning a stage into batches (rollout stages in one pass, sweeps without reading the
-- table), opening and finishing stages, verification gates and approvals, and rollbacks.
-- docs/operations.md, "Staged rollout".

-- " AND t.<scope column> = <scope value>" for a job limited to one scope, else "".
-- The scope's type comes from the catalog (rekey.jobs.scope_type is only checked against it), so
-- nothing a writer of rekey.jobs controls is pasted as SQL. The
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

-- Plans every rollout stage of p_job that has no batches yet, in one scan: each row's bucket
-- once, then per stage a cut every batch_size rows in key order (the first batch starts at NULL,
-- the last ends at NULL). A stage without rows gets one empty batch. A partitioned table is
-- planned this way leaf by leaf (rekey.job_leaves), each batch naming its leaf. Returns the number of
-- batches. The sort holds the table's keys: work_mem is raised for it so that it stays in memory
-- up to a few million rows and spills to disk (correctly, more slowly) beyond.
CREATE OR REPLACE FUNCTION rekey.plan_rollout(p_job bigint) RETURNS integer
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
  key_text text;
  key_select text;
  key_names text;
  total integer := 0;
  leaf record;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  scope_sql := rekey.scope_condition(j);
  -- The key's columns stream as o1, o2, ... (the window orders by them, each in its own
  -- collation) beside the key's text k (rekey.job_key_text_sql).
  key_text := rekey.job_key_text_sql(j, 't');
  SELECT string_agg(format('t.%I AS o%s', c, i), ', ' ORDER BY i), string_agg('o' || i, ', ' ORDER BY i)
    INTO key_select, key_names FROM unnest(j.key_columns) WITH ORDINALITY AS x(c, i);
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
  -- A partitioned table one leaf at a time (rekey.job_leaves): each leaf's stages are cut on
  -- their own, and a stage without rows in a leaf gets one empty batch there.
  FOR leaf IN SELECT * FROM rekey.job_leaves(j) LOOP
    EXECUTE format($q$
      WITH numbered AS (
        SELECT i, k, (ARRAY[%4$s])[i] - 1 AS rn
          FROM (SELECT %5$s, k, CASE WHEN bucket < $6[x] THEN x END AS i
                  FROM (SELECT %5$s, k, bucket, width_bucket(bucket, $5) AS x
                          FROM (SELECT %1$s, %6$s AS k, rekey.stage_bucket(%6$s) AS bucket
                                  FROM %2$s AS t WHERE true%3$s ORDER BY %7$s OFFSET 0) r) s) y
         WHERE i IS NOT NULL
        WINDOW w AS (ORDER BY %5$s ROWS UNBOUNDED PRECEDING)),
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
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows, keys,
                                 partition_schema, partition_name)
      SELECT $1, $3 + row_number() OVER (ORDER BY stage_no, n), stage_no, lo, hi, rows, keys, $8, $9
        FROM planned$q$,
      key_select, rekey.batch_relation_sql(j, leaf.leaf_schema, leaf.leaf_name), scope_sql, counts,
      key_names, key_text, rekey.key_order_sql(j.key_columns, 't'))
      USING p_job, j.batch_size, first_batch + total, stages, los, his,
            (SELECT array_agg(stages[x]) FROM generate_subscripts(stages, 1) x WHERE his[x] < 10000),
            leaf.leaf_schema, leaf.leaf_name;
    GET DIAGNOSTICS n = ROW_COUNT;
    total := total + n;
  END LOOP;
  RETURN total;
END $$;

-- Plans a sweep stage without reading the table; returns the number of batches (at least one).
-- The ranges are every 100th boundary of the rollout's batches (about 100 x batch_size rows of
-- the table each), and tile the whole key space (the first starts at NULL, the last ends at
-- NULL), so a value written under an old key since the rollout is caught by the batch whose
-- range holds it. The workers process each batch in chunks of at most batch_size rows, each its
-- own transaction with a checkpoint (rekey.checkpoint_batch), so a range holding many values
-- still moves in short transactions. A sweep batch's planned_rows is 0: what it moves is in
-- rows_done. The key type comes from the catalog. A rollback stage can be planned as a sweep too
-- (a rollback's sweeps, see rekey.finish_stages): its ranges are every 100th boundary of the
-- rollback's first pass instead of the rollout's; a rollback sweep's worker keeps to the stage's
-- buckets itself. A partitioned table's sweep is planned per leaf attached when the sweep is
-- planned (it opens right after): every such leaf is covered, one attached after the rollout by
-- one batch over all of it; a leaf attached after the sweep opened is not (docs/operations.md,
-- "Table shapes").
CREATE OR REPLACE FUNCTION rekey.plan_sweep(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  first_batch integer;
  n integer;
  total integer := 0;
  leaf record;
  lo_key text;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  -- A rollout bound as the key it names (rekey.key_bound_sql), to order the bounds by key; the
  -- bounds stay in the key's text form. A composite key's bounds order as row values. A text
  -- column's bound orders in the column's collation, as its index and the rollout's ranges do
  -- (rekey.job_key_bound_types): in the default one, ranges over a COLLATE "en-x-icu" key could
  -- run backwards and leave rows in no sweep batch.
  lo_key := rekey.key_bound_sql(rekey.job_key_bound_types(j), 'b.lo');
  -- Per leaf attached now (rekey.job_leaves): from that leaf's bounds, so a leaf attached after
  -- the rollout (no bounds) gets one batch over all of it, and a leaf detached or dropped since
  -- gets none.
  FOR leaf IN SELECT * FROM rekey.job_leaves(j) LOOP
    EXECUTE format($q$
      WITH starts AS (
        SELECT k, lo FROM (SELECT %1$s AS k, b.lo, row_number() OVER (ORDER BY %1$s) AS rn
                             FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
                            WHERE b.job_id = $1 AND b.lo IS NOT NULL
                              AND b.partition_schema IS NOT DISTINCT FROM $6
                              AND b.partition_name IS NOT DISTINCT FROM $7
                              AND CASE WHEN $4 THEN b.stage_no = $5 ELSE s.kind = 'rollout' END) c
         WHERE rn %% 100 = 0),
      ranges AS (
        SELECT 0::bigint AS batch, NULL::text AS lo
        UNION ALL
        SELECT row_number() OVER (ORDER BY k), lo FROM (SELECT DISTINCT ON (k) k, lo FROM starts ORDER BY k) d)
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                 partition_schema, partition_name)
      SELECT $1, $2 + 1 + batch, $3, lo, lead(lo) OVER (ORDER BY batch), 0, $6, $7
        FROM ranges$q$, lo_key)
      USING p_job, first_batch + total, p_stage, st.kind = 'rollback', j.rollback_stage,
            leaf.leaf_schema, leaf.leaf_name;
    GET DIAGNOSTICS n = ROW_COUNT;
    total := total + n;
  END LOOP;
  RETURN total;
END $$;

-- Splits one stage of a job into batches of batch_size rows, as half-open primary-key ranges.
-- A stage covering every bucket is planned by a keyset walk: each step asks the primary-key
-- index for the key batch_size rows further on, so the server streams the table and nothing is
-- held in memory. A partial stage numbers its rows in key order with a window function and cuts
-- every batch_size-th, so a 1% stage of a million rows costs ten batches, not a thousand.
-- A partitioned table is planned leaf by leaf (rekey.job_leaves, in name order; each batch names
-- its leaf), so a batch never spans partitions; each leaf's ranges start and end unbounded, and a
-- leaf without rows of the stage gets one empty batch, so every leaf attached now is covered.
-- The same data gives the same plan. Returns the number of batches.
-- The key's types come from the catalog (rekey.job_key_bound_types: with a text column's collation),
-- not from rekey.jobs.key_types.
-- Bounds are key texts (rekey.job_key_text_sql); a composite key is walked as a row value.
CREATE OR REPLACE FUNCTION rekey.plan_stage(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  rel text;
  scope_sql text := '';
  key_text text;
  key_row text;
  key_order text;
  key_types text[];
  n integer := 0;
  total integer := 0;
  first_batch integer;
  leaf record;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF EXISTS (SELECT 1 FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage) THEN
    RAISE EXCEPTION 'stage % of job % is already planned', p_stage, p_job;
  END IF;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  scope_sql := rekey.scope_condition(j);
  key_types := rekey.job_key_bound_types(j);
  key_text := rekey.job_key_text_sql(j, 't');
  key_row := rekey.key_row_sql(j.key_columns, 't');
  key_order := rekey.key_order_sql(j.key_columns, 't');

  FOR leaf IN SELECT * FROM rekey.job_leaves(j) LOOP
    rel := rekey.batch_relation_sql(j, leaf.leaf_schema, leaf.leaf_name);
    IF st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN
      EXECUTE format($q$
        INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                   partition_schema, partition_name)
        SELECT $1, $2 + 1 + n, $3, CASE WHEN n = 0 THEN NULL ELSE k END,
               lead(k) OVER (ORDER BY n), least($4, total - n * $4), $7, $8
          FROM (SELECT k, rn / $4 AS n, count(*) OVER () AS total, rn %% $4 AS r
                  FROM (SELECT %1$s AS k, row_number() OVER (ORDER BY %4$s) - 1 AS rn
                          FROM %2$s AS t
                         WHERE rekey.stage_bucket(%1$s) >= $5
                           AND rekey.stage_bucket(%1$s) < $6%3$s) numbered) cut
         WHERE r = 0$q$, key_text, rel, scope_sql, key_order)
        USING p_job, first_batch + total, p_stage, j.batch_size, st.bucket_lo, st.bucket_hi,
              leaf.leaf_schema, leaf.leaf_name;
      GET DIAGNOSTICS n = ROW_COUNT;
      IF n = 0 THEN
        INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                   partition_schema, partition_name)
        VALUES (p_job, first_batch + total + 1, p_stage, NULL, NULL, 0, leaf.leaf_schema,
                leaf.leaf_name);
        n := 1;
      END IF;
    ELSE
      EXECUTE format($q$
        WITH RECURSIVE walk(lo, hi, n) AS (
          SELECT NULL::text, (SELECT %1$s FROM %2$s AS t WHERE true%3$s ORDER BY %5$s
                              OFFSET $4 LIMIT 1), 1
          UNION ALL
          SELECT w.hi, (SELECT %1$s FROM %2$s AS t WHERE %4$s >= %6$s%3$s ORDER BY %5$s
                        OFFSET $4 LIMIT 1), w.n + 1
            FROM walk w WHERE w.hi IS NOT NULL)
        INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                   partition_schema, partition_name)
        SELECT $1, $2 + w.n, $3, w.lo, w.hi,
               CASE WHEN w.hi IS NOT NULL THEN $4
                    WHEN w.lo IS NULL THEN (SELECT count(*) FROM %2$s AS t WHERE true%3$s)
                    ELSE (SELECT count(*) FROM %2$s AS t WHERE %4$s >= %7$s%3$s) END, $5, $6
          FROM walk w$q$, key_text, rel, scope_sql, key_row, key_order,
        rekey.key_bound_sql(key_types, 'w.hi'), rekey.key_bound_sql(key_types, 'w.lo'))
        USING p_job, first_batch + total, p_stage, j.batch_size, leaf.leaf_schema, leaf.leaf_name;
      GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    total := total + n;
  END LOOP;
  RETURN total;
END $$;

-- Adds a stage to a job and plans it; returns the stage number. The rollout stages of a staged
-- job are planned together, in one pass, once the last of them (per jobs.stage_plan) is added:
-- rekey.create_job adds them all before it reads the plan. With
-- `SET LOCAL rekey.defer_rollout_planning = on` a staged job's rollout stages are left for the
-- client to plan (src/jobs/rollout_planner.h writes the very plan rekey.plan_rollout would);
-- rekey.require_planned_stage refuses to commit a stage without batches.
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
          >= cardinality(plan)
          AND coalesce(current_setting('rekey.defer_rollout_planning', true), '') <> 'on' THEN
      PERFORM rekey.plan_rollout(p_job);
    END IF;
  ELSE
    PERFORM rekey.plan_stage(p_job, n);
  END IF;
  RETURN n;
END $$;

-- A stage without batches would look finished the moment it opened: its gate would pass on the
-- rows of earlier stages and the job would move on without moving a row. Whoever defers
-- planning must therefore plan before committing; this check runs at commit.
CREATE OR REPLACE FUNCTION rekey.require_planned_stage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.job_stages s WHERE s.job_id = NEW.job_id AND s.stage_no = NEW.stage_no)
     AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = NEW.job_id AND b.stage_no = NEW.stage_no) THEN
    RAISE EXCEPTION 'stage % of job % has no batches: it was never planned', NEW.stage_no, NEW.job_id
      USING ERRCODE = 'integrity_constraint_violation',
            HINT = 'with rekey.defer_rollout_planning on, the client must plan the job before committing';
  END IF;
  RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS job_stages_planned ON rekey.job_stages;
CREATE CONSTRAINT TRIGGER job_stages_planned AFTER INSERT ON rekey.job_stages
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION rekey.require_planned_stage();

-- Opens stage p_stage of a job: workers may claim its batches from now on. Opening the
-- promotion stage makes the target keys primary for application writes.
CREATE OR REPLACE FUNCTION rekey.open_stage(p_job bigint, p_stage integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  -- Batches finished by an earlier pass (before a rollback) are checked again.
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL, rows_done = 0,
         rows_skipped = 0, rows_failed = 0, last_error = NULL
   WHERE job_id = p_job AND stage_no = p_stage AND state <> 'pending';
  UPDATE rekey.job_stages SET state = 'running', opened_at = now(), finished_at = NULL
   WHERE job_id = p_job AND stage_no = p_stage;
  UPDATE rekey.jobs SET current_stage = p_stage, state = 'active', state_reason = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('stage.opened', p_job, jsonb_build_object(
    'stage', p_stage, 'kind', st.kind, 'percent', st.percent,
    'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage),
    'rows', (SELECT sum(planned_rows) FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage)));
  IF st.kind = 'rollout' AND p_stage >= j.promote_at_stage AND NOT j.keys_promoted THEN
    -- A job of a rotation defers to it (sql/schema/55_rotations.sql).
    PERFORM rekey.promote_or_defer(p_job);
  END IF;
END $$;

-- No rollback for a transit job, whatever the path (rekey.rollback_job adds a rollback stage):
-- Transit cannot encrypt under an older version, and rekey holds no plaintext to do it with.
CREATE OR REPLACE FUNCTION rekey.refuse_transit_rollback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.kind = 'rollback' AND
     EXISTS (SELECT 1 FROM rekey.jobs WHERE job_id = NEW.job_id AND transit_key_ref IS NOT NULL) THEN
    RAISE EXCEPTION 'job % rewraps Vault Transit values, which cannot be rolled back: Transit cannot encrypt under an older key version; cancel the job instead (values already rewrapped stay readable)',
      NEW.job_id USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER job_stages_no_transit_rollback BEFORE INSERT ON rekey.job_stages
  FOR EACH ROW EXECUTE FUNCTION rekey.refuse_transit_rollback();

-- A completed job's planned keys are of no further use (a batch requeued later scans its range).
CREATE OR REPLACE FUNCTION rekey.clear_planned_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.batches SET keys = NULL WHERE job_id = NEW.job_id AND keys IS NOT NULL;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER jobs_clear_planned_keys AFTER UPDATE OF state ON rekey.jobs
  FOR EACH ROW WHEN (NEW.state = 'completed' AND OLD.state <> 'completed')
  EXECUTE FUNCTION rekey.clear_planned_keys();

-- Moves every active job (or p_job) whose open stage has no batch left to run to its next
-- state: a finished rollout stage waits for its verification gate ('verifying'); a sweep that
-- found nothing completes the job, otherwise another sweep starts; a rollback ends the job
-- 'rolled_back' (or back at an earlier stage); failed batches make the job 'failed'. Returns
-- the jobs it moved and their new state. Safe to call concurrently: the job row is locked.
-- A finished rollback stage is followed by sweeps over the same
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

-- The end of a successful job: the source keys become decrypt_only (readable, no longer
-- written), and the job is completed.
CREATE OR REPLACE FUNCTION rekey.complete_job(p_job bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.keys SET status = 'decrypt_only'
   WHERE key_id IN (SELECT source_key_id FROM rekey.job_keys WHERE job_id = p_job)
     AND status IN ('enabled', 'primary');
  UPDATE rekey.jobs SET state = 'completed', state_reason = NULL, finished_at = now(), updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.completed', p_job,
    (SELECT jsonb_build_object('rows_reencrypted', sum(rows_done), 'rows_quarantined', sum(rows_failed),
                               'batches', count(*))
       FROM rekey.batches b WHERE b.job_id = p_job));
END $$;

-- Records the verification gate of a job's finished rollout stage (the worker decrypted the
-- sample) and moves the job on: a passed gate waits for approval (or opens the sweep after the
-- last stage); a failed one pauses the job with the reason. Returns the gate's id.
CREATE OR REPLACE FUNCTION rekey.record_gate(p_job bigint, p_stage integer, p_values_checked bigint,
                                  p_decrypt_errors bigint, p_verified_by text,
                                  p_details jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  quarantined bigint;
  rate numeric;
  audit_ok boolean;
  ok boolean;
  gate bigint;
  last_stage integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF j.state <> 'verifying' OR j.current_stage <> p_stage THEN
    RAISE EXCEPTION 'job % is not waiting for the gate of stage %', p_job, p_stage
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT coalesce(sum(rows_failed), 0) INTO quarantined
    FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage;
  rate := (p_decrypt_errors + quarantined)::numeric / greatest(p_values_checked + quarantined, 1);
  -- Each run of a batch (claim to commit) appends one completion row; a batch run again after a
  -- rollback or requeue has one per run, so count those since its latest claim.
  audit_ok := NOT EXISTS (
    SELECT 1 FROM rekey.batches b WHERE b.job_id = p_job AND b.state = 'done'
       AND (SELECT count(*) FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
               AND a.action = 'rotation.batch.completed' AND a.at >= b.claimed_at) <> 1);
  ok := rate <= j.error_threshold AND audit_ok AND (rate < j.error_threshold OR j.error_threshold = 0);
  INSERT INTO rekey.gates (job_id, stage_no, percent, values_checked, decrypt_errors, quarantined,
                           error_rate, threshold, audit_complete, passed, verified_by, details)
  VALUES (p_job, p_stage, st.percent, p_values_checked, p_decrypt_errors, quarantined, rate,
          j.error_threshold, audit_ok, ok, p_verified_by, p_details)
  RETURNING gate_id INTO gate;
  PERFORM rekey.audit_event(CASE WHEN ok THEN 'gate.passed' ELSE 'gate.failed' END, p_job,
    jsonb_build_object('stage', p_stage, 'percent', st.percent, 'values_checked', p_values_checked,
                       'decrypt_errors', p_decrypt_errors, 'quarantined', quarantined,
                       'error_rate', rate, 'threshold', j.error_threshold, 'audit_complete', audit_ok),
    CASE WHEN ok THEN 'success' ELSE 'failure' END, NULL, p_verified_by);
  IF NOT ok THEN
    UPDATE rekey.job_stages SET state = 'gate_failed' WHERE job_id = p_job AND stage_no = p_stage;
    UPDATE rekey.jobs SET state = 'paused', updated_at = now(),
           state_reason = format('gate of stage %s (%s%%) failed: decrypt error rate %s%% (%s of %s values) against a threshold of %s%%%s; see rekey.gates and rekey.row_failures, then roll back or fix and resume',
                                 p_stage, st.percent, round(100 * rate, 3), p_decrypt_errors + quarantined,
                                 p_values_checked + quarantined, round(100 * j.error_threshold, 3),
                                 CASE WHEN audit_ok THEN '' ELSE '; audit rows are missing' END)
     WHERE job_id = p_job;
    RETURN gate;
  END IF;
  UPDATE rekey.job_stages SET state = 'passed' WHERE job_id = p_job AND stage_no = p_stage;
  SELECT max(stage_no) INTO last_stage FROM rekey.job_stages WHERE job_id = p_job AND kind = 'rollout';
  IF p_stage = last_stage THEN
    -- Everything has moved and the new key is primary: sweep up what applications wrote meanwhile.
    -- A job of a rotation whose other jobs are short of the promotion stage waits for them.
    IF NOT j.keys_promoted AND NOT rekey.promote_or_defer(p_job) THEN
      PERFORM rekey.hold_for_rotation(p_job);
      RETURN gate;
    END IF;
    PERFORM rekey.open_stage(p_job, rekey.add_stage(p_job, 'sweep', 100, 0, 10000));
  ELSE
    UPDATE rekey.jobs SET state = 'awaiting_approval', updated_at = now(),
           state_reason = format('gate of stage %s (%s%%) passed; %s', p_stage, st.percent,
                                 CASE WHEN j.observe IS NULL THEN format('approve with rekey job advance %s', p_job)
                                      ELSE format('advances on its own at %s', now() + j.observe) END)
     WHERE job_id = p_job;
  END IF;
  RETURN gate;
END $$;

-- Opens the next rollout stage of a job waiting for approval. p_observe, when given, becomes the
-- job's observation period for later gates (0 = advance as soon as a gate passes).
CREATE OR REPLACE FUNCTION rekey.advance_job(p_job bigint, p_observe interval DEFAULT NULL,
                                  p_force boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  next_stage integer;
BEGIN
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  IF j.state <> 'awaiting_approval' AND NOT (p_force AND j.state = 'paused') THEN
    RAISE EXCEPTION 'job % is %: only a job awaiting approval can advance%', p_job, j.state,
      CASE WHEN j.state = 'paused' THEN ' (a paused job resumes with rekey job resume, or advances past a failed gate with --force)' ELSE '' END
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT min(stage_no) INTO next_stage FROM rekey.job_stages
   WHERE job_id = p_job AND kind = 'rollout' AND stage_no > j.current_stage;
  IF p_observe IS NOT NULL THEN
    UPDATE rekey.jobs SET observe = p_observe WHERE job_id = p_job;
  END IF;
  UPDATE rekey.gates SET approved_at = now(), approved_by = current_user
   WHERE gate_id = (SELECT max(gate_id) FROM rekey.gates WHERE job_id = p_job AND stage_no = j.current_stage);
  PERFORM rekey.audit_event('job.advanced', p_job, jsonb_build_object(
    'from_stage', j.current_stage, 'to_stage', next_stage, 'forced', p_force));
  IF next_stage IS NULL THEN
    -- Past the last rollout stage (a forced advance over its failed gate): sweep.
    IF NOT j.keys_promoted AND NOT rekey.promote_or_defer(p_job) THEN
      RETURN rekey.hold_for_rotation(p_job);
    END IF;
    PERFORM rekey.open_stage(p_job, rekey.add_stage(p_job, 'sweep', 100, 0, 10000));
    RETURN format('job %s: stage %s approved; sweeping for values still under the old key', p_job, j.current_stage);
  END IF;
  PERFORM rekey.open_stage(p_job, next_stage);
  RETURN format('job %s: stage %s (%s%%) opened', p_job, next_stage,
                (SELECT percent FROM rekey.job_stages WHERE job_id = p_job AND stage_no = next_stage));
END $$;

-- Advances every job whose gate passed at least `observe` ago. Workers call it while polling.
CREATE OR REPLACE FUNCTION rekey.advance_due(p_job bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j record;
  n integer := 0;
BEGIN
  FOR j IN
    SELECT x.job_id FROM rekey.jobs x
     WHERE x.state = 'awaiting_approval' AND x.observe IS NOT NULL AND (p_job IS NULL OR x.job_id = p_job)
       AND NOT rekey.held_by_rotation(x.job_id)
       AND EXISTS (SELECT 1 FROM rekey.gates g WHERE g.job_id = x.job_id AND g.stage_no = x.current_stage
                      AND g.passed AND g.verified_at + x.observe <= now())
     FOR UPDATE SKIP LOCKED
  LOOP
    PERFORM rekey.advance_job(j.job_id);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- Picks a job (or p_job) whose rollout stage waits for its gate, for the caller to verify.
-- Locks the job row (SKIP LOCKED), so two workers never verify the same stage.
CREATE OR REPLACE FUNCTION rekey.next_gate(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, stage_no integer, bucket_hi integer, sample_size integer)
LANGUAGE sql AS $$
  SELECT j.job_id, j.current_stage, s.bucket_hi, j.gate_sample_size
    FROM rekey.jobs j JOIN rekey.job_stages s ON s.job_id = j.job_id AND s.stage_no = j.current_stage
   WHERE j.state = 'verifying' AND (p_job IS NULL OR j.job_id = p_job)
   ORDER BY j.job_id LIMIT 1
   FOR UPDATE OF j SKIP LOCKED;
$$;

-- Rolls a job back: the rows moved beyond p_to_percent (0 = all of them) are re-encrypted back to
-- their source keys by the same worker pool -- batched, resumable, audited -- and the keyring is
-- restored (source keys primary again, target keys decrypt_only). Possible at any stage and
-- after completion, as long as no source key is destroyed.
-- Serialized with job definitions (rekey.lock_job_definitions), refused while another unfinished
-- job shares a key with this one, and after the promotion while a live reader lacks a source key
-- (rekey.refuse_rollback_for_readers); records the rollback's first stage (jobs.rollback_stage)
-- for its sweeps.
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
  PERFORM rekey.refuse_partial_rotation_rollback(p_job);
  PERFORM rekey.refuse_rollback_for_readers(p_job);
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
     AND o.rotation_id IS DISTINCT FROM coalesce(j.rotation_id, -1)  -- rolled back with it
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
CREATE OR REPLACE FUNCTION rekey.open_rollback_sweep(p_job bigint) RETURNS integer
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
