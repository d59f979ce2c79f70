-- Job progress as `rekey status` shows it (src/ops/progress.cpp).

-- name: jobs
-- The rekey.progress rows of job $1 (every job if $1 is 0) as one JSON array, in job order;
-- '[]' if there are none.
SELECT coalesce(json_agg(p ORDER BY job_id), '[]')::text AS progress
  FROM rekey.progress p
 WHERE $1::bigint = 0 OR job_id = $1::bigint
