-- The report of a rotation (`rekey rotation report R`, src/ops/rotation_report.cpp).

-- name: promotion
-- The one promotion of rotation $1: when, by which database role, and whether the new key was
-- primary at once (false while a live reader lacked it); no row if it was never promoted.
SELECT to_json(a.at)::text AS at, a.actor, (a.details->>'primary')::bigint AS key_id,
       (a.details->>'key_primary_now')::boolean AS key_primary_now
  FROM rekey.audit a
 WHERE a.job_id IS NULL AND a.action = 'rotation.promoted'
   AND a.details->>'rotation' = $1::bigint::text
 ORDER BY a.audit_id
 LIMIT 1

-- name: unfinished
-- Whether rotation $1 is unfinished (it is while it is created, rotates, is promoted or rolls
-- back), with its state and its unfinished jobs as "7 (active), 8 (paused)" ('' if none).
SELECT r.state, r.state NOT IN ('completed', 'rolled_back', 'cancelled') AS unfinished,
       coalesce(string_agg(j.job_id || ' (' || j.state || ')', ', ' ORDER BY j.job_id)
                  FILTER (WHERE rekey.job_unfinished(j.state)), '') AS jobs
  FROM rekey.rotations r
  LEFT JOIN rekey.jobs j ON j.rotation_id = r.rotation_id
 WHERE r.rotation_id = $1::bigint
 GROUP BY r.rotation_id

-- name: job_progress
-- Rows re-encrypted by the jobs of rotation $1 over time, per job, from their
-- rotation.batch.completed audit rows: `seconds` after the rotation was created (the end of the
-- time bucket's last batch) and the `rows` of that bucket, in job and time order. Buckets of
-- 1/400 of the rotation's span bound the points, as for a job's chart (pdf_report.sql).
WITH t0 AS (SELECT created_at AS t FROM rekey.rotations WHERE rotation_id = $1::bigint),
     done AS (SELECT a.job_id, extract(epoch FROM a.at - t0.t)::float8 AS s,
                     coalesce((a.details->>'rows_reencrypted')::bigint, 0) AS n
                FROM rekey.audit a, t0
               WHERE a.job_id IN (SELECT job_id FROM rekey.jobs WHERE rotation_id = $1::bigint)
                 AND a.action = 'rotation.batch.completed'),
     span AS (SELECT greatest(max(s), 0.001) / 400 AS width FROM done)
SELECT job_id, max(s) AS seconds, sum(n)::bigint AS rows
  FROM done, span
 GROUP BY job_id, floor(s / span.width)
 ORDER BY job_id, seconds
