-- The per-batch control-plane statements stop scanning history, the sweep is planned without a
-- scan, and idle workers wake when a stage opens (bench/README.md, "Latest figures").
--
-- pg_stat_statements over a 1M-row rotation showed each batch paying two scans that grow with
-- what is already done:
--
-- * rekey.claim_batch looked for the first pending batch through the batches' primary key and
--   filtered out the done ones: half a job's batches per claim on average (0.39 ms per claim at
--   1,000 batches, quadratic in the job's size). It now asks, per active job, for the first
--   claimable batch of the job's open stage in batch order, an equality on (job_id, stage_no) and
--   an order the partial index batches_claimable already has, so one claim visits a handful of
--   index entries however many batches are done.
--
-- * rekey.seal_audit found the rows to seal with an anti-join against rekey.audit_chain that the
--   cached generic plan ran as a hash join over the whole chain: every batch hashed every audit
--   row ever sealed (0.18 ms per batch at 2,000 rows, growing with the history forever). The
--   candidates are now the rows between the last seal's horizon and the scan's own snapshot's
--   xmax (a closed range, which the planner reads from audit_xid whatever the parameters; it
--   excludes no visible row), and each is checked against the chain by its unique key.
--
-- Both functions keep their signatures, contracts and comments in 0002 and 0006;
-- tests/control_plane_pg_test.cpp counts the buffers a claim and a seal read.
--
-- A sweep is planned without reading the table. 0008 planned it from one filtered scan for the
-- values still under a source key, cutting a batch after every batch_size of them; that scan ran
-- alone, between the last gate and the sweep, while the other workers waited (0.5 s per million
-- rows, 9 % of a single-stage job: it was the first to read the rotated table and set its hint
-- bits). Now the sweep's ranges are every 100th boundary of the rollout's batches (about
-- 100 x batch_size rows of the table each, as before), and the workers' scans of those ranges, in
-- parallel, are the only ones. What bounded a sweep batch's transaction, the cut every batch_size
-- pending values, is now the worker's: every batch is processed in chunks of at most batch_size
-- rows, each its own transaction with a checkpoint (rekey.checkpoint_batch, 0003), so a range
-- that turns out to hold many values is still moved in short transactions. A sweep batch's
-- planned_rows is 0: what it moves is in rows_done.
--
-- And idle workers stop sleeping through stage changes: a claim loop with nothing to claim while
-- other workers finish a stage used to sleep its whole idle poll (500 ms), so every stage of a
-- staged job, and the sweep after the last, ran on one worker for up to half a second -- for a
-- small table, as long as the rotation itself. rekey.jobs now notifies channel rekey_jobs (payload:
-- the job id) when a job is created or changes state or stage, and idle loops LISTEN on it
-- (src/rotation/worker_pool.cpp). The poll remains for what sends no notification: a worker that
-- dies holding a batch.

CREATE OR REPLACE FUNCTION rekey.claim_batch(p_worker text, p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, batch_no integer, lo text, hi text, attempt integer, stage_no integer,
               bucket_lo integer, bucket_hi integer, rollback boolean)
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
      RETURN NEXT;
      RETURN;
    END LOOP;
  END LOOP;
END $$;

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
  -- Rows of transactions older than the newest seal's horizon were sealed by it (or are forged):
  -- only younger ones can still need sealing. Every row the scan can see has an xid below its
  -- snapshot's xmax, or is this transaction's own; the upper bound changes nothing but the plan.
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

CREATE FUNCTION rekey.notify_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('rekey_jobs', NEW.job_id::text);
  RETURN NULL;
END $$;
CREATE TRIGGER jobs_notify_created AFTER INSERT ON rekey.jobs
  FOR EACH ROW EXECUTE FUNCTION rekey.notify_job_change();
CREATE TRIGGER jobs_notify_changed AFTER UPDATE OF state, current_stage ON rekey.jobs
  FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.current_stage IS DISTINCT FROM NEW.current_stage)
  EXECUTE FUNCTION rekey.notify_job_change();

CREATE OR REPLACE FUNCTION rekey.plan_sweep(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  first_batch integer;
  n integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  -- The ranges tile the whole key space (the first starts at NULL, the last ends at NULL), so a
  -- value written anywhere under an old key is in one of them.
  EXECUTE format($q$
    WITH starts AS (
      SELECT k FROM (SELECT b.lo::%1$s AS k, row_number() OVER (ORDER BY b.lo::%1$s) AS rn
                       FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
                      WHERE b.job_id = $1 AND s.kind = 'rollout' AND b.lo IS NOT NULL) c
       WHERE rn %% 100 = 0),
    ranges AS (
      SELECT 0::bigint AS batch, NULL::%1$s AS lo
      UNION ALL
      SELECT row_number() OVER (ORDER BY k), k FROM (SELECT DISTINCT k FROM starts) d)
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    SELECT $1, $2 + 1 + batch, $3, lo::text, lead(lo::text) OVER (ORDER BY batch), 0
      FROM ranges$q$, j.pk_type)
    USING p_job, first_batch, p_stage;
  GET DIAGNOSTICS n = ROW_COUNT;
  RETURN n;
END $$;

-- Only 0008's sweep planner used it; the workers' own condition (BatchRotator) is the one left.
DROP FUNCTION rekey.pending_condition(bigint);
