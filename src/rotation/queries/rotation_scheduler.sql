-- Queries of rotation/rotation_scheduler.cpp (`rekey rotate-due`): overdue keys (the view
-- rekey.rotation_due) and the jobs that rotate their values (rekey.rotation_targets,
-- migrations/0005_operations.sql and 0013).

-- name: try_lock
-- locked: whether this session took advisory lock $1 (bigint), which serializes rotate-due runs.
SELECT pg_try_advisory_lock($1) AS locked

-- name: unlock
-- Releases this session's advisory lock $1 (bigint).
SELECT pg_advisory_unlock($1) AS unlocked

-- name: due_scopes
-- Overdue primary keys, oldest due first: scope, key_id, kms_provider, due_at (ISO 8601 UTC),
-- job_in_flight (the unfinished job already rotating the key, else NULL).
SELECT scope, key_id, kms_provider,
       to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS due_at, job_in_flight
  FROM rekey.rotation_due
 ORDER BY rotation_due.due_at, scope

-- name: targets
-- What a rotation of key $1 (bigint) moves, one row per job it needs: target, e.g.
-- "public.t where tenant = 7 (a, b; 12 values)".
SELECT table_name || coalesce(' where ' || scope_column || ' = ' || scope_value, '')
       || ' (' || array_to_string(columns, ', ') || '; ' || values_under_key || ' values)'
       AS target
  FROM rekey.rotation_targets($1)

-- name: lock_primary
-- Locks key $1 (bigint) iff it is still a primary; no row otherwise. job_in_flight: the
-- unfinished job rotating values off it (rekey.rotation_in_flight), else NULL.
SELECT rekey.rotation_in_flight(key_id) AS job_in_flight
  FROM rekey.keys
 WHERE key_id = $1 AND status = 'primary'
   FOR UPDATE

-- name: busy_column_job
-- job_id: the lowest unfinished job rotating a column that holds values under key $1 (bigint),
-- found by identity (rekey.target_columns); NULL if none. A column has one unfinished job at a
-- time (rekey.refuse_column_collision).
SELECT min(j.job_id) AS job_id
  FROM rekey.rotation_targets($1) r
 CROSS JOIN LATERAL unnest(r.columns) AS col
  JOIN rekey.target_columns() tc ON tc.relid = r.table_name::regclass AND tc.column_name = col
  JOIN rekey.job_columns jc ON jc.target_id = tc.target_id
  JOIN rekey.jobs j ON j.job_id = jc.job_id AND rekey.job_unfinished(j.state)

-- name: create_jobs
-- Creates the staged jobs moving the values under key $1 (text of a bigint) to key $2, one per
-- target of rekey.rotation_targets($1): batch size $3, name $4, stages $5 (numeric[] text),
-- observation time $6 (interval text; NULL: every gate waits for approval). One row per job:
-- job_id.
SELECT rekey.create_job(r.table_name, r.columns, jsonb_build_object($1::text, $2::bigint),
                        r.codecs, r.key_id_column, r.ad_template, r.scope_column, r.scope_value,
                        p_batch_size => $3, p_name => $4, p_stages => $5::numeric[],
                        p_observe => $6::interval) AS job_id
  FROM rekey.rotation_targets($1::bigint) r

-- name: audit_scheduled
-- Audits rotation.scheduled for job $1 (bigint; NULL: no job) with details $2 (jsonb text).
SELECT rekey.audit_event('rotation.scheduled', $1::bigint, $2::jsonb) AS audited
