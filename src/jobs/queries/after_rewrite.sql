-- What a rewrite left behind: the job's end counters and the --vacuum-after run
-- (src/jobs/after_rewrite.cpp).

-- name: record_end
-- Records job $1's 'end' counters again (rekey.record_table_counters), in a fresh statistics
-- snapshot, if its 'start' ones exist.
SELECT pg_stat_clear_snapshot(), rekey.record_table_counters(c.job_id, 'end')
  FROM rekey.job_table_counters c
 WHERE c.job_id = $1::bigint AND c.phase = 'start'

-- name: vacuum_started
-- Records the start of job $1's vacuum on this backend by worker $2 (rekey.vacuum_started):
-- started is false if the job asked for none or a run is already recorded. table is the job's
-- table as SQL writes it; may_vacuum whether this role may vacuum it (its owner, the database's
-- owner or a superuser), owner the table's owner.
SELECT rekey.vacuum_started(j.job_id, $2::text) AS started,
       format('%I.%I', j.schema_name, j.table_name) AS qualified,
       coalesce(pg_has_role(c.relowner, 'USAGE')
                OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
                OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) AS may_vacuum,
       coalesce(c.relowner::regrole::text, '') AS owner
  FROM rekey.jobs j
  LEFT JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', j.schema_name, j.table_name))
 WHERE j.job_id = $1::bigint

-- name: vacuum_finished
-- Records the end of job $1's vacuum by worker $2: $3 NULL for success, else the error.
SELECT rekey.vacuum_finished($1::bigint, $2::text, $3::text)

-- name: vacuum_progress
-- Job $1's vacuum run, with the progress views' row of the backend running it while it runs.
SELECT v.state, v.started_at, v.finished_at, v.error, v.worker_id,
       p.phase AS vacuum_phase, p.heap_blks_total, p.heap_blks_scanned, p.heap_blks_vacuumed,
       a.phase AS analyze_phase
  FROM rekey.job_vacuums v
  LEFT JOIN pg_stat_progress_vacuum p ON p.pid = v.pid AND v.state = 'running'
  LEFT JOIN pg_stat_progress_analyze a ON a.pid = v.pid AND v.state = 'running'
 WHERE v.job_id = $1::bigint

-- name: flush_wait
-- Asks this backend to publish its statistics when it goes idle after this transaction
-- (pg_stat_force_next_flush), and returns how long to wait ($3, in seconds, after the last batch
-- of job $1 that a worker other than $2 finished) before every worker's are published.
SELECT pg_stat_force_next_flush(),
       coalesce(greatest(0, $3::float8 - extract(epoch FROM clock_timestamp() - max(b.finished_at))), 0)::float8
         AS wait_seconds
  FROM rekey.batches b
 WHERE b.job_id = $1::bigint AND b.worker_id IS DISTINCT FROM $2::text AND b.finished_at IS NOT NULL
