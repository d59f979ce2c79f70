-- name: lock_keys
-- Takes rekey.lock_keys_for_write (migrations/0012) on every key the batch writes under ($1,
-- bigint[]), held to commit. Raises SQLSTATE 55000 for a key that is retired, destroyed or unknown.
SELECT rekey.lock_keys_for_write($1::bigint[])

-- name: lock_batch
-- Locks batch ($1 job, $2 batch_no)'s queue row and returns its state, holder and progress with
-- its job's state. On the way: $3 'off' makes the transaction commit without waiting for its WAL
-- flush (set_config(..., true) is SET LOCAL, here to save a round trip; NULL keeps the session's
-- setting), and row_security_blocker says whether policies hide rows of table $4 from this role
-- (policies can appear while a job runs, and asking here costs no round trip). No row: no such
-- batch.
SELECT b.state AS batch_state, b.worker_id, j.state AS job_state, b.resume_after, b.rows_done,
       b.rows_skipped, b.rows_failed, coalesce(b.duration_ms, 0) AS duration_ms,
       b.keys::text AS planned_keys,
       set_config('synchronous_commit', coalesce($3, current_setting('synchronous_commit')), true)
         AS synchronous_commit,
       rekey.row_security_blocker($4::regclass) AS row_security_blocker
FROM rekey.batches b JOIN rekey.jobs j USING (job_id)
WHERE b.job_id = $1 AND b.batch_no = $2
FOR UPDATE OF b

-- name: lock_partition
-- For batch ($1 job, $2 batch_no) held by worker $3 over a leaf partition: locks the job's table
-- so the leaf stays attached until commit; partition_gone is NULL if it still is one, else the
-- reason, the batch then completed with no rows (rekey.lock_batch_partition).
SELECT rekey.lock_batch_partition($1, $2, $3) AS partition_gone

-- name: failures
-- Quarantines values of batch ($1 job, $2 batch_no) of table $3 found by worker $4: parallel
-- arrays of primary keys, columns, error classes, key ids (NULL: none) and details ('': none).
-- Returns the primary key of each value recorded now; a value this job quarantined before is not
-- returned again.
INSERT INTO rekey.row_failures (job_id, batch_no, table_name, pk, column_name, error_class,
                                key_id, worker_id, detail)
SELECT $1, $2, $3, f.pk, f.col, f.cls, f.kid, $4, nullif(f.detail, '')
FROM unnest($5::text[], $6::text[], $7::text[], $8::bigint[], $9::text[])
  AS f(pk, col, cls, kid, detail)
ON CONFLICT (job_id, table_name, pk, column_name) DO NOTHING
RETURNING pk

-- name: value_audit
-- Records each value batch ($1 job, $2 batch_no) moved: parallel arrays of primary keys, columns,
-- and the keys it was and is now under.
INSERT INTO rekey.value_audit (job_id, batch_no, pk, column_name, from_key_id, to_key_id)
SELECT $1, $2, a.pk, a.col, a.from_key, a.to_key
FROM unnest($3::text[], $4::text[], $5::bigint[], $6::bigint[]) AS a(pk, col, from_key, to_key)

-- name: checkpoint
-- Commits a chunk of batch ($1 job, $2 batch_no) held by worker $3: resumes after key $4, with the
-- chunk's counts (done, skipped, failed) and milliseconds added. Raises SQLSTATE 40001 "no longer
-- claimed" if $3 no longer holds the batch or its stage is no longer the job's open stage.
SELECT rekey.checkpoint_batch($1, $2, $3, $4, $5, $6, $7, $8)

-- name: complete
-- Completes batch ($1 job, $2 batch_no) held by worker $3 with its totals (done, skipped, failed,
-- milliseconds) and its audit row's details ($8, jsonb). Raises SQLSTATE 40001 "no longer claimed"
-- as checkpoint does.
SELECT rekey.complete_batch($1, $2, $3, $4, $5, $6, $7, $8::jsonb)

-- name: release
-- Gives batch ($1 job, $2 batch_no) held by worker $3 back to the queue with error $4; $5 says
-- whether the attempt is free (a transient error, or no error of the batch). Returns the batch's
-- state after it (rekey.release_batch).
SELECT rekey.release_batch($1, $2, $3, $4, $5) AS batch_state

-- name: skip_triggers
-- For the rest of the transaction, until restore_role: session_replication_role = replica, so
-- the table's ordinary triggers do not fire on the rewrite's UPDATE (a job created with
-- --triggers skip; jobs/side_effects.h). Returns the setting before, for restore_role.
SELECT current_setting('session_replication_role') AS previous,
       set_config('session_replication_role', 'replica', true)

-- name: restore_role
-- Puts session_replication_role back to $1 (skip_triggers' previous) for the rest of the
-- transaction: rekey's own triggers (audit stamping and sealing, job-state triggers) must fire.
SELECT set_config('session_replication_role', $1::text, true)
