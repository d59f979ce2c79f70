-- The batch queue: claiming a batch (with the advisory lock that marks its worker alive),
-- releasing it, checkpoints inside it, and completing it with its audit row -- each refused
-- unless the batch still belongs to its job's open stage (SQLSTATE 40001 then means "no longer
-- claimed": the worker drops the batch).

-- Claims one batch for p_worker (any active job, or only p_job) from each job's open stage,
-- and records the worker's heartbeat. A job whose readers are not ready (rekey.readers_allow_claim)
-- is skipped.
--
-- Liveness: the claiming session takes a session-level advisory lock on (job_id, batch_no) and
-- keeps it while it processes the batch, so it survives the claim's commit; the worker's next
-- claim releases it (pg_advisory_unlock_all), and so does the end of the session if the worker
-- dies. A 'running' batch whose advisory lock is free therefore belongs to a dead worker: it is
-- claimable at once and counts as an attempt. A batch whose attempts are used up is marked
-- failed instead.
--
-- relation: the leaf partition the batch covers, quoted for pasting into SQL, or NULL for the
-- job's table itself (migrations/0026; rekey.lock_batch_partition checks it is still a partition).
CREATE OR REPLACE FUNCTION rekey.claim_batch(p_worker text, p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, batch_no integer, lo text, hi text, attempt integer, stage_no integer,
               bucket_lo integer, bucket_hi integer, rollback boolean, relation text)
LANGUAGE plpgsql AS $$
DECLARE
  b rekey.batches;
  st rekey.job_stages;
  j record;
  max_att integer;
  busy integer[];
BEGIN
  PERFORM pg_advisory_unlock_all();
  INSERT INTO rekey.workers AS w (worker_id, job_id) VALUES (p_worker, p_job)
  ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), job_id = EXCLUDED.job_id;
  FOR j IN
    SELECT a.job_id, a.current_stage, a.max_attempts FROM rekey.jobs a
     WHERE a.state = 'active' AND (p_job IS NULL OR a.job_id = p_job)
     ORDER BY a.job_id
  LOOP
    -- Nothing under a key that a live reader of its scope cannot decrypt (45_readers.sql).
    CONTINUE WHEN NOT rekey.readers_allow_claim(j.job_id);
    busy := '{}';
    LOOP
      SELECT x.* INTO b FROM rekey.batches x
       WHERE x.job_id = j.job_id AND x.stage_no = j.current_stage
         AND x.state IN ('pending', 'running')
         AND x.batch_no <> ALL (busy)
       ORDER BY x.batch_no
       LIMIT 1 FOR UPDATE SKIP LOCKED;
      EXIT WHEN NOT FOUND;
      IF NOT pg_try_advisory_lock(b.job_id::integer, b.batch_no) THEN
        busy := busy || b.batch_no;  -- a live worker holds it
        CONTINUE;
      END IF;
      max_att := j.max_attempts;
      IF b.attempts >= max_att THEN
        UPDATE rekey.batches x SET state = 'failed', finished_at = now(),
               last_error = coalesce(x.last_error, 'worker ' || coalesce(x.worker_id, '?') || ' died while processing this batch')
                            || format(' (gave up after %s attempts)', x.attempts)
         WHERE x.job_id = b.job_id AND x.batch_no = b.batch_no;
        PERFORM rekey.audit_event('rotation.batch.failed', b.job_id,
          jsonb_build_object('attempts', b.attempts, 'last_error', b.last_error), 'failure', b.batch_no, p_worker);
        PERFORM pg_advisory_unlock(b.job_id::integer, b.batch_no);
        CONTINUE;
      END IF;
      UPDATE rekey.batches x SET state = 'running', attempts = x.attempts + 1, worker_id = p_worker,
             claimed_at = now()
       WHERE x.job_id = b.job_id AND x.batch_no = b.batch_no;
      UPDATE rekey.jobs a SET started_at = now() WHERE a.job_id = b.job_id AND a.started_at IS NULL;
      SELECT * INTO st FROM rekey.job_stages s WHERE s.job_id = b.job_id AND s.stage_no = b.stage_no;
      job_id := b.job_id; batch_no := b.batch_no; lo := b.lo; hi := b.hi; attempt := b.attempts + 1;
      stage_no := b.stage_no;
      bucket_lo := CASE WHEN st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN st.bucket_lo END;
      bucket_hi := CASE WHEN st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN st.bucket_hi END;
      rollback := st.kind = 'rollback';
      relation := CASE WHEN b.partition_name IS NOT NULL
                       THEN format('%I.%I', b.partition_schema, b.partition_name) END;
      RETURN NEXT;
      RETURN;
    END LOOP;
  END LOOP;
END $$;

-- Records a batch whose processing failed before it could commit. Transient failures (the
-- database or KMS will likely recover) give the attempt back; permanent ones consume it, and
-- the last permitted attempt marks the batch failed.
CREATE OR REPLACE FUNCTION rekey.release_batch(p_job bigint, p_batch integer, p_worker text, p_error text,
                                    p_transient boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  b rekey.batches;
  max_att integer;
  new_state text;
BEGIN
  SELECT * INTO b FROM rekey.batches WHERE job_id = p_job AND batch_no = p_batch FOR UPDATE;
  IF NOT FOUND OR b.state <> 'running' OR b.worker_id IS DISTINCT FROM p_worker THEN
    RETURN 'not-owner';
  END IF;
  SELECT max_attempts INTO max_att FROM rekey.jobs WHERE job_id = p_job;
  IF p_transient THEN
    new_state := 'pending';
    UPDATE rekey.batches SET state = 'pending', attempts = greatest(attempts - 1, 0), last_error = p_error
     WHERE job_id = p_job AND batch_no = p_batch;
  ELSE
    new_state := CASE WHEN b.attempts >= max_att THEN 'failed' ELSE 'pending' END;
    UPDATE rekey.batches SET state = new_state, last_error = p_error,
           finished_at = CASE WHEN new_state = 'failed' THEN now() END
     WHERE job_id = p_job AND batch_no = p_batch;
    IF new_state = 'failed' THEN
      PERFORM rekey.audit_event('rotation.batch.failed', p_job,
        jsonb_build_object('attempts', b.attempts, 'last_error', p_error), 'failure', p_batch, p_worker);
    END IF;
  END IF;
  RETURN new_state;
END $$;

-- Marks the batch done with its counts and appends its completion audit row. Called by the
-- worker in the same transaction that rewrote the rows, so rows, checkpoint and audit commit
-- together or not at all. When the stage's decrypt error rate passes the job's threshold, the
-- job pauses itself with the reason.
-- Refused (rekey.require_open_stage_batch) unless the batch belongs to the job's open stage.
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

-- Advances the checkpoint of a batch held by p_worker and adds a chunk's counts. Called by the
-- worker in the transaction that rewrote the chunk's rows.
-- Refused (rekey.require_open_stage_batch) unless the batch belongs to the job's open stage.
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

-- A finished batch that is put back (rekey.requeue, rekey.retry_failed, a rerun) is checked again
-- from its start: its old checkpoint and time no longer describe the new pass.
CREATE OR REPLACE FUNCTION rekey.reset_batch_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.resume_after := NULL;
  NEW.duration_ms := NULL;
  NEW.end_reason := NULL;  -- a partition gone is checked again (rekey.lock_batch_partition)
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER batches_reset_checkpoint BEFORE UPDATE OF state ON rekey.batches
  FOR EACH ROW WHEN (OLD.state IN ('done', 'failed') AND NEW.state IN ('pending', 'running'))
  EXECUTE FUNCTION rekey.reset_batch_checkpoint();

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
CREATE OR REPLACE FUNCTION rekey.require_open_stage_batch(p_job bigint, p_batch integer, p_worker text)
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

-- In the transaction of a chunk of batch (p_job, p_batch), held by p_worker, right after its
-- queue row is locked: for a batch over a leaf partition (rekey.batches.partition_name), locks
-- the job's table itself (ONLY the parent, ACCESS SHARE) and asks whether the leaf is still one
-- of its partitions (rekey.partition_gone). NULL: it is, and stays so until the transaction ends,
-- since DETACH PARTITION and DROP TABLE of a partition both take ACCESS EXCLUSIVE on the parent
-- first (DETACH ... CONCURRENTLY waits for every transaction locking the parent before it
-- finishes), so the chunk's statements on the leaf cannot meet a relation that is gone or no
-- longer the table's. Otherwise the batch is completed here with no rows (its completion audit
-- row and end_reason say why, so gates and the report count it) and the reason is returned: the
-- worker commits and moves on, nothing of the leaf touched. A batch over the table itself
-- returns NULL without a lock (no cost for a table that is not partitioned).
CREATE OR REPLACE FUNCTION rekey.lock_batch_partition(p_job bigint, p_batch integer, p_worker text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  b rekey.batches;
  reason text;
BEGIN
  SELECT * INTO STRICT b FROM rekey.batches WHERE job_id = p_job AND batch_no = p_batch;
  IF b.partition_name IS NULL THEN
    RETURN NULL;
  END IF;
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  EXECUTE format('LOCK TABLE ONLY %I.%I IN ACCESS SHARE MODE', j.schema_name, j.table_name);
  -- A new statement, so a new snapshot: it sees a DETACH or DROP that committed before the lock.
  reason := rekey.partition_gone(j, b.partition_schema, b.partition_name);
  IF reason IS NULL THEN
    RETURN NULL;
  END IF;
  PERFORM rekey.complete_batch(p_job, p_batch, p_worker, 0, 0, 0, 0,
                               jsonb_build_object('partition_gone', reason));
  UPDATE rekey.batches SET end_reason = reason WHERE job_id = p_job AND batch_no = p_batch;
  RETURN reason;
END $$;
