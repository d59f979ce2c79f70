-- Planning a staged job's rollout stages in the client (src/jobs/rollout_planner.cpp); the plan
-- is rekey.plan_rollout's (migrations/0008_one_pass_planning.sql), byte for byte.

-- name: defer_planning
-- For the rest of the transaction, rekey.create_job leaves a staged job's rollout stages
-- unplanned; the client must plan them before committing (rekey.require_planned_stage).
SET LOCAL rekey.defer_rollout_planning = on

-- name: job
-- What planning job $1 needs: its table, quoted for pasting into SQL; its key's text and its
-- key's ORDER BY list over the alias t (rekey.job_key_text_sql, rekey.key_order_sql: the very
-- expressions rekey.plan_rollout uses); its batch size; its scope as a condition to append after "WHERE true" (rekey.scope_condition, '' for
-- none); and the highest batch number it has so far (0 for none).
SELECT format('%I.%I', j.schema_name, j.table_name) AS qualified_table,
       rekey.job_key_text_sql(j, 't') AS key_text, rekey.key_order_sql(j.key_columns, 't') AS key_order,
       j.batch_size,
       rekey.scope_condition(j) AS scope_condition,
       (SELECT coalesce(max(batch_no), 0) FROM rekey.batches b WHERE b.job_id = j.job_id)
         AS last_batch_no
  FROM rekey.jobs j
 WHERE j.job_id = $1::bigint

-- name: leaves
-- The relations job $1 is planned over, in rekey.job_leaves' order (the order rekey.plan_rollout
-- plans them in): each leaf partition of a partitioned table (schema, name, and quoted for pasting
-- into SQL), or one row with NULL names and the job's table itself.
SELECT l.leaf_schema, l.leaf_name, rekey.batch_relation_sql(j, l.leaf_schema, l.leaf_name) AS relation
  FROM rekey.jobs j, rekey.job_leaves(j) WITH ORDINALITY AS l(leaf_schema, leaf_name, n)
 WHERE j.job_id = $1::bigint
 ORDER BY l.n

-- name: stages_to_plan
-- The job's rollout stages that have no batches yet, in bucket order: the stages
-- rekey.plan_rollout plans.
SELECT s.stage_no, s.bucket_lo, s.bucket_hi
  FROM rekey.job_stages s
 WHERE s.job_id = $1::bigint AND s.kind = 'rollout'
   AND NOT EXISTS (SELECT 1 FROM rekey.batches b
                    WHERE b.job_id = s.job_id AND b.stage_no = s.stage_no)
 ORDER BY s.bucket_lo

-- name: stream_settings
-- As rekey.plan_rollout does, the key cursor's plan must stream from the primary key's index
-- rather than sort the table (enable_sort off), and is too simple to be worth compiling (jit
-- off): sets both for the transaction and returns the values they had, for restore_settings.
SELECT current_setting('enable_sort') AS enable_sort, current_setting('jit') AS jit,
       set_config('enable_sort', 'off', true) AS enable_sort_now,
       set_config('jit', 'off', true) AS jit_now

-- name: restore_settings
-- Gives enable_sort ($1) and jit ($2) back the values stream_settings returned.
SELECT set_config('enable_sort', $1::text, true) AS enable_sort,
       set_config('jit', $2::text, true) AS jit

-- name: insert_batches
-- Writes finished batches of job $1, one per element of the parallel arrays: number (provisional
-- until renumber), stage, bounds [lo, hi) (NULL: unbounded), planned rows, and the recorded keys
-- as a text[] literal (NULL: not recorded); all over leaf partition $8.$9 (NULL: the table).
INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows, keys,
                           partition_schema, partition_name)
SELECT $1::bigint, b.no, b.stage_no, b.lo, b.hi, b.rows, b.keys::text[], $8::name, $9::name
  FROM unnest($2::integer[], $3::integer[], $4::text[], $5::text[], $6::integer[], $7::text[])
       AS b(no, stage_no, lo, hi, rows, keys)

-- name: renumber
-- Gives job $1's batches numbered $2[i] the number $3[i].
UPDATE rekey.batches b
   SET batch_no = m.final
  FROM unnest($2::integer[], $3::integer[]) AS m(provisional, final)
 WHERE b.job_id = $1::bigint AND b.batch_no = m.provisional
