-- The operator's verbs on a job (src/jobs/job_control.cpp). Each is one call of the SQL function
-- a DBA would call from psql, so the CLI and psql do exactly the same; each returns the
-- function's one-line account as `message`, or raises with a one-line reason.

-- name: pause
-- rekey.pause_job: workers stop claiming the job's batches. An empty reason records none.
SELECT rekey.pause_job($1::bigint, nullif($2::text, '')) AS message

-- name: resume
-- rekey.resume_job: the job's batches are claimed again (a failed gate is verified again).
SELECT rekey.resume_job($1::bigint) AS message

-- name: cancel
-- rekey.cancel_job: the job is given up; rows already rotated stay rotated.
SELECT rekey.cancel_job($1::bigint, nullif($2::text, '')) AS message

-- name: retry_failed
-- rekey.retry_failed: the job's failed batches are queued again with fresh attempts.
SELECT rekey.retry_failed($1::bigint) AS message

-- name: rerun
-- rekey.rerun_job: a no-op for a completed job, the failed batches for a failed one.
SELECT rekey.rerun_job($1::bigint) AS message

-- name: advance
-- rekey.advance_job: approves the passed gate and opens the next stage. An empty observe keeps
-- the job's observation period; force advances past a failed gate.
SELECT rekey.advance_job($1::bigint, nullif($2::text, '')::interval, $3::boolean) AS message

-- name: rollback
-- rekey.rollback_job: moves rows back to the old keys down to the given cumulative percentage
-- (0: everything). An empty reason records none.
SELECT rekey.rollback_job($1::bigint, $2::numeric, nullif($3::text, '')) AS message

-- name: requeue
-- rekey.requeue: batches from..to of the job's open (or last) stage are queued again.
SELECT rekey.requeue($1::bigint, $2::integer, $3::integer) AS message
