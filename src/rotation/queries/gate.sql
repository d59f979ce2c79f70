-- Queries of rotation/gate.cpp: verification gates (rekey.next_gate and rekey.record_gate,
-- migrations/0002_jobs.sql).

-- name: next_gate
-- The stage waiting for its gate, of job $1 (bigint; NULL: of any job), its job row locked (FOR
-- UPDATE SKIP LOCKED); no row iff none waits: job_id, stage_no, bucket_hi, sample_size.
SELECT job_id, stage_no, bucket_hi, sample_size FROM rekey.next_gate($1::bigint)

-- name: rows_moved
-- rows_moved: the rows planned by the rollout stages of job $1 up to stage $2. Read from the
-- tables rather than rekey.stage_status, which the worker role may not read (sql/roles.sql).
SELECT coalesce(sum(b.planned_rows), 0) AS rows_moved
  FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
 WHERE b.job_id = $1 AND s.kind = 'rollout' AND s.stage_no <= $2

-- name: record_gate
-- Records the gate of job $1's stage $2: $3 values checked, $4 that did not decrypt, verified by
-- worker $5, details $6 (jsonb text); rekey.record_gate decides what the job does next. Returns
-- the new gate's gate_id.
SELECT rekey.record_gate($1, $2, $3, $4, $5, $6::jsonb) AS gate_id

-- name: outcome
-- After gate $1 (bigint): its job's state and state_reason ('' if none), and whether it passed.
SELECT j.state, coalesce(j.state_reason, '') AS state_reason, g.passed
  FROM rekey.gates g JOIN rekey.jobs j ON j.job_id = g.job_id
 WHERE g.gate_id = $1
