-- The PDF report's progress chart (src/ops/pdf_report.cpp).

-- name: stage_progress
-- Rows re-encrypted by job $1 over time, per stage, from its rotation.batch.completed audit rows:
-- `seconds` after the job started (the end of the time bucket's last batch) and the `rows` of
-- that bucket, in stage and time order. Buckets of 1/400 of the job's span keep the curve's shape
-- while bounding the points: a million-row job has thousands of batches, a chart needs a few
-- hundred points.
WITH t0 AS (SELECT coalesce(started_at, created_at) AS t FROM rekey.jobs WHERE job_id = $1::bigint),
     done AS (SELECT (a.details->>'stage')::int AS stage_no,
                     extract(epoch FROM a.at - t0.t)::float8 AS s,
                     coalesce((a.details->>'rows_reencrypted')::bigint, 0) AS n
                FROM rekey.audit a, t0
               WHERE a.job_id = $1::bigint AND a.action = 'rotation.batch.completed'
                 AND a.details ? 'stage'),
     span AS (SELECT greatest(max(s), 0.001) / 400 AS width FROM done)
SELECT stage_no, max(s) AS seconds, sum(n)::bigint AS rows
  FROM done, span
 GROUP BY stage_no, floor(s / span.width)
 ORDER BY stage_no, seconds
