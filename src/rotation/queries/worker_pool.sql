-- name: hidden_rows
-- The first job (job $1, or any when NULL) that a worker would run whose table has row-level
-- security policies hiding rows from this role, with rekey.row_security_blocker's reason.
-- to_regclass: a job whose table is gone is not this check's business (its batches say so).
SELECT j.job_id, b.reason
FROM rekey.jobs j,
     LATERAL (SELECT rekey.row_security_blocker(to_regclass(format('%I.%I', j.schema_name,
                                                                   j.table_name))) AS reason) b
WHERE ($1::bigint IS NULL OR j.job_id = $1::bigint)
  AND j.state IN ('active', 'verifying', 'awaiting_approval') AND b.reason IS NOT NULL
ORDER BY j.job_id
LIMIT 1

-- name: work_remains
-- Whether job $1 (or any job when NULL) still needs a worker: active or verifying, or awaiting
-- approval with an automatic observation period -- unless it waits for the rest of its rotation
-- (rekey.held_by_rotation), which other jobs' work ends.
SELECT EXISTS (SELECT 1 FROM rekey.jobs j
               WHERE ($1::bigint IS NULL OR j.job_id = $1::bigint)
                 AND (j.state IN ('active', 'verifying')
                      OR (j.state = 'awaiting_approval' AND j.observe IS NOT NULL
                          AND NOT rekey.held_by_rotation(j.job_id))))
  AS work_remains

-- name: finish_stages
-- Moves job $1 (or every job when NULL) whose open stage is done on to its gate or next stage;
-- one row (job_id, state) per job moved.
SELECT job_id, state FROM rekey.finish_stages($1::bigint)

-- name: advance_due
-- Opens the stages whose observation period has ended (job $1, or every job when NULL); returns
-- how many.
SELECT rekey.advance_due($1::bigint) AS opened

-- name: claim_without_flush
-- A claim need not wait for its WAL flush: the batch's own commit flushes it (WAL is sequential),
-- and a claim lost in a server crash just leaves the batch claimable.
SET LOCAL synchronous_commit = off

-- name: claim_batch
-- Claims the next batch for worker $1 (of job $2, or any job when NULL); no row when none is
-- claimable now. relation: the batch's leaf partition, quoted (NULL: the job's table).
SELECT job_id, batch_no, lo, hi, attempt, stage_no, bucket_lo, bucket_hi, rollback, relation
FROM rekey.claim_batch($1, $2::bigint)

-- name: leave
-- Removes worker $1's registration when $2 (it is leaving for good).
DELETE FROM rekey.workers WHERE worker_id = $1 AND $2

-- name: pause_for_key
-- Pauses job $1 with reason $2 if it is still active (whoever paused it first keeps the reason; a
-- job an operator moved on meanwhile is left as it is). One row iff it paused it.
WITH j AS (SELECT job_id FROM rekey.jobs WHERE job_id = $1 AND state = 'active' FOR UPDATE)
SELECT rekey.pause_job(job_id, $2) FROM j
