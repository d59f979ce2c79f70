-- Checkpoints inside a batch, for paced workers (`rekey work --target-batch-ms` or
-- `--max-rows-per-second`, src/rotation/pacer.h). Such a worker processes its claimed batch in
-- chunks, each its own transaction: the chunk's rows, the batch's advanced checkpoint and its
-- running counts commit together (rekey.checkpoint_batch); the last chunk completes the batch
-- with rekey.complete_batch and its single completion audit row, passing the batch's totals.
--
-- resume_after is the primary key (text form) of the last row a committed chunk of this batch
-- handled: whoever holds the batch next starts after it. Rows before it were rewritten or
-- quarantined, and rows still needing work are found again by the worker's filter anyway, so a
-- checkpoint only saves re-scanning; it never decides whether a value is re-encrypted.

ALTER TABLE rekey.batches ADD COLUMN resume_after text;

-- Advances the checkpoint of a batch held by p_worker and adds a chunk's counts. Called by the
-- worker in the transaction that rewrote the chunk's rows.
CREATE FUNCTION rekey.checkpoint_batch(p_job bigint, p_batch integer, p_worker text, p_after text,
                                       p_done integer, p_skipped integer, p_failed integer,
                                       p_duration_ms double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
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
CREATE FUNCTION rekey.reset_batch_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.resume_after := NULL;
  NEW.duration_ms := NULL;
  RETURN NEW;
END $$;
CREATE TRIGGER batches_reset_checkpoint BEFORE UPDATE OF state ON rekey.batches
  FOR EACH ROW WHEN (OLD.state IN ('done', 'failed') AND NEW.state IN ('pending', 'running'))
  EXECUTE FUNCTION rekey.reset_batch_checkpoint();
