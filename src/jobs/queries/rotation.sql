-- Queries of jobs/rotation.cpp: one rotation of a keyring scope across its columns
-- (sql/schema/55_rotations.sql).

-- name: create
-- rekey.create_rotation: scope $1, target key $2 (bigint), stages $3 (numeric[] text), observe $4
-- (interval text; NULL: every gate waits for approval), batch size $5, name $6 (NULL: none),
-- columns to register $7 (text[]; NULL: none). rotation_id, or raises with a one-line reason.
SELECT rekey.create_rotation($1::text, $2::bigint, p_stages => $3::numeric[],
                             p_observe => $4::interval, p_batch_size => $5::integer,
                             p_name => $6::text, p_register => $7::text[]) AS rotation_id

-- name: jobs
-- job_id of every job of rotation $1 (bigint), in order.
SELECT job_id FROM rekey.jobs WHERE rotation_id = $1::bigint ORDER BY job_id

-- name: targets
-- What a rotation of scope $1 to key $2 (bigint) would move, one row per job: target, e.g.
-- "public.t (a, b by key_id; 12 values)".
SELECT t.table_name || ' (' || array_to_string(t.columns, ', ')
       || coalesce(' by ' || t.key_id_column, '') || '; ' || t.values_under_keys || ' values)'
       AS target
  FROM rekey.rotation_scope_targets(rekey.rotation_from_keys($1::text, $2::bigint)) t

-- name: progress
-- progress: rekey.rotation_progress as one JSON array, newest first: every rotation, or only
-- rotation $1 (bigint; NULL: all). Times are ISO 8601 UTC.
SELECT coalesce(json_agg(p ORDER BY p.rotation_id DESC), '[]')::text AS progress
  FROM (SELECT rotation_id, name, scope, from_keys, to_key, state, stage_plan, targets, jobs,
               tables, rows_done, rows_total, percent, slowest_stage, waiting, created_by,
               to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
               to_char(promoted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS promoted_at,
               to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS finished_at
          FROM rekey.rotation_progress
         WHERE $1::bigint IS NULL OR rotation_id = $1::bigint) p

-- name: rollback
-- rekey.rollback_rotation: rotation $1 (bigint), reason $2 (empty: none). message.
SELECT rekey.rollback_rotation($1::bigint, nullif($2::text, '')) AS message
