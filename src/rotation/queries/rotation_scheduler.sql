-- Queries of rotation/rotation_scheduler.cpp (`rekey rotate-due`): overdue keys (the view
-- rekey.rotation_due) and the columns already being rotated (rekey.rotation_targets,
-- sql/schema/70_operations.sql). The rotation itself is jobs/rotation.h's.

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

-- name: audit_scheduled
-- Audits rotation.scheduled for job $1 (bigint; NULL: no job) with details $2 (jsonb text).
SELECT rekey.audit_event('rotation.scheduled', $1::bigint, $2::jsonb) AS audited
