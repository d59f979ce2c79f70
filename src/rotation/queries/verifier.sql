-- Queries of rotation/verifier.cpp. The statements that read a job's table are built there from
-- its quoted identifiers; these are the fixed ones.

-- name: row_security_blocker
-- blocker: why row-level security hides rows of table $1 (regclass text) from this role, and the
-- grant to give; NULL iff it hides none.
SELECT rekey.row_security_blocker($1::regclass) AS blocker

-- name: stage_keys_planned
-- keyed: whether job $1's stage $2 has batches and the plan recorded the keys of every one.
SELECT count(*) > 0 AND bool_and(keys IS NOT NULL) AS keyed
  FROM rekey.batches
 WHERE job_id = $1 AND stage_no = $2

-- name: next_planned_batch
-- The first batch of job $1's stage $2 after batch_no $3: batch_no and its planned primary keys
-- (keys, an array's text); no row after the last.
SELECT batch_no, keys::text AS keys
  FROM rekey.batches
 WHERE job_id = $1 AND stage_no = $2 AND batch_no > $3
 ORDER BY batch_no
 LIMIT 1
