-- The deployment-wide gauges /metrics reads at scrape time (src/ops/database_collector.cpp):
-- plain SELECTs on rekey's tables and views, each cheap however long the history grows.

-- name: statement_timeout
-- A scrape never waits long on a busy database: its transaction gives up after 5 s.
SET LOCAL statement_timeout = '5s'

-- name: key_ages
-- Every usable key's age and maximum age in seconds (NULL: no policy applies), and whether it is
-- an overdue primary key (rekey.key_age).
SELECT key_id, scope, status, extract(epoch FROM age)::float8 AS age_seconds,
       extract(epoch FROM max_age)::float8 AS max_age_seconds, overdue
  FROM rekey.key_age
 ORDER BY key_id

-- name: last_rotation
-- When the last job completed, in unix seconds; NULL if none has.
SELECT extract(epoch FROM max(finished_at))::float8 AS finished_at
  FROM rekey.jobs
 WHERE state = 'completed'

-- name: jobs_by_state
-- How many jobs are in each state.
SELECT state, count(*) AS jobs
  FROM rekey.jobs
 GROUP BY state

-- name: unfinished_job_progress
-- Each unfinished job (rekey.job_unfinished) with its rollout rows planned and done, and, while an
-- active job waits for readers (sql/schema/45_readers.sql), how many distinct readers lag and
-- for how many seconds it has waited (0 and 0 otherwise). Only those jobs' batches are read
-- (rekey.progress would aggregate every job ever run).
SELECT j.job_id, j.state,
       coalesce(sum(b.planned_rows) FILTER (WHERE s.kind = 'rollout'), 0)::float8 AS rows_total,
       coalesce(sum(b.planned_rows) FILTER (WHERE s.kind = 'rollout' AND b.state = 'done'),
                0)::float8 AS rows_done,
       CASE WHEN j.state = 'active' AND j.readers_waiting_for IS NOT NULL
            THEN (SELECT count(DISTINCT (x->>'scope', x->>'reader'))
                    FROM jsonb_array_elements(j.readers_lagging) x)
            ELSE 0 END::float8 AS lagging_readers,
       CASE WHEN j.state = 'active' AND j.readers_waiting_for IS NOT NULL
            THEN extract(epoch FROM now() - j.readers_waiting_since)
            ELSE 0 END::float8 AS waiting_for_readers_seconds
  FROM rekey.jobs j
  LEFT JOIN rekey.batches b ON b.job_id = j.job_id
  LEFT JOIN rekey.job_stages s ON s.job_id = b.job_id AND s.stage_no = b.stage_no
 WHERE rekey.job_unfinished(j.state)
 GROUP BY j.job_id, j.state
 ORDER BY j.job_id

-- name: unfinished_stage_progress
-- Each stage of each unfinished job with its planned and done rows (rows of the stage's batches;
-- a stage whose batches are not planned yet has none and is left out), and the rotation the job
-- belongs to ('' when it was created alone): the dashboard's progress and ETA per job and stage,
-- and per rotation. Only unfinished jobs' batches are read, as above.
SELECT j.job_id, coalesce(j.rotation_id::text, '') AS rotation_id, s.stage_no, s.kind,
       sum(b.planned_rows)::float8 AS rows_total,
       coalesce(sum(b.planned_rows) FILTER (WHERE b.state = 'done'), 0)::float8 AS rows_done
  FROM rekey.jobs j
  JOIN rekey.job_stages s ON s.job_id = j.job_id
  JOIN rekey.batches b ON b.job_id = s.job_id AND b.stage_no = s.stage_no
 WHERE rekey.job_unfinished(j.state)
 GROUP BY j.job_id, j.rotation_id, s.stage_no, s.kind
 ORDER BY j.job_id, s.stage_no

-- name: unfinished_rotation_progress
-- Each unfinished rotation (`rekey rotate`) with the rollout rows of all its jobs, planned and
-- done, as rekey.rotation_progress counts them (its finished jobs included, so the figure never
-- drops when one of its jobs completes). Read through the view, which the monitor role may read
-- (sql/roles.sql), and only for rotations with an unfinished job, so the view's sums run over
-- those rotations' jobs alone.
SELECT rotation_id::text AS rotation_id, scope, rows_total::float8 AS rows_total,
       rows_done::float8 AS rows_done
  FROM rekey.rotation_progress
 WHERE rotation_id IN (SELECT j.rotation_id FROM rekey.jobs j
                        WHERE j.rotation_id IS NOT NULL AND rekey.job_unfinished(j.state))
   AND state IN ('creating', 'rotating', 'promoted', 'rolling_back')
 ORDER BY rotation_id
