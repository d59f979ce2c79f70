-- Planning takes less of a rotation. A staged job's rollout stages may be planned by the client
-- that creates the job (src/jobs/rollout_planner.h), and a stage is never committed without its
-- plan; a stage of every row is walked in one statement (below).
--
-- rekey.plan_rollout (0008) spends most of a staged job's planning on one MD5 per row:
-- PostgreSQL 15's md5() sets up an OpenSSL 3 digest context per call, about 0.75 us, and the
-- numbering of the rows of each stage in one backend adds as much again (2.3 to 2.8 s per million
-- rows, a quarter of the rotation itself). The rekey CLI (`rekey job create`, `rekey rotate-due`)
-- reads the keys in order through a cursor instead, hashes and cuts them in its own process, and
-- writes the very plan plan_rollout would write (tests/planning_pg_test.cpp checks both against
-- the documented rule). It asks for this per transaction:
--
--   SET LOCAL rekey.defer_rollout_planning = on;   -- then rekey.create_job(...) plans no rollout
--
-- Every other path plans in the database as before: rekey.create_job from psql or a migration
-- script, single-stage jobs (a keyset walk with no hashing), sweeps, rollbacks.

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
CREATE FUNCTION rekey.require_planned_stage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.job_stages s WHERE s.job_id = NEW.job_id AND s.stage_no = NEW.stage_no)
     AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = NEW.job_id AND b.stage_no = NEW.stage_no) THEN
    RAISE EXCEPTION 'stage % of job % has no batches: it was never planned', NEW.stage_no, NEW.job_id
      USING ERRCODE = 'integrity_constraint_violation',
            HINT = 'with rekey.defer_rollout_planning on, the client must plan the job before committing';
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER job_stages_planned AFTER INSERT ON rekey.job_stages
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION rekey.require_planned_stage();

-- A stage of every row (a single-stage job, a full rollback) is still planned by a keyset walk
-- over the primary key, each step asking for the key batch_size rows further on; the walk is now
-- one recursive statement instead of a PL/pgSQL loop of dynamic queries, each parsed and planned
-- again (1,000 of them per million rows), and without JIT compilation, which the walk's estimated
-- cost used to trigger for ~0.1 to 0.25 s of compiling a query that runs for less: 0.43 s ->
-- 0.19 s per million rows in a new session. The batches are the same. A partial stage (a
-- rollback to a percentage) is planned as before.
CREATE OR REPLACE FUNCTION rekey.plan_stage(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  rel text;
  scope_sql text := '';
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

  -- walk: the batches' bounds, typed as the key; the walk ends after the batch whose upper bound
  -- is NULL (fewer than batch_size rows were left), which gets the count of what was left.
  -- ORDER BY the qualified column: the unqualified name would sort the text output.
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
      FROM walk w$q$, j.pk_column, rel, scope_sql, j.pk_type)
    USING p_job, first_batch, p_stage, j.batch_size;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;
