-- A verification gate checks that every completed batch of the job has its completion audit row
-- (rekey.record_gate, 0002). It counted them batch by batch through audit_job (job_id, action),
-- which holds every completion row of the job, so each gate read (batches done) x (audit rows)
-- index entries: 50 ms at 1,000 batches, a quarter of a gate, growing with the square of the job.
-- This index gives each batch its own few entries.
CREATE INDEX audit_batch_completed ON rekey.audit (job_id, batch_no, at)
  WHERE action = 'rotation.batch.completed';
