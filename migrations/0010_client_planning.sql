-- A staged job's rollout stages may be planned by the client that creates the job
-- (src/jobs/rollout_planner.h), and a stage is never committed without its plan.
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
