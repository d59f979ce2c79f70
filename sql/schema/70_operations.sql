-- Operations: the progress and status views (`rekey status`, psql), key age and the keys due for
-- rotation (`rekey rotate-due`), the targets of a rotation, and the append-only compliance
-- reports (`rekey report`).

-- Per-job progress, for psql and `rekey status`. Totals and percent count the rollout stages
-- (each row once); the stage_* columns describe the open stage (a rollout, sweep or rollback
-- pass), and last_gate_* the latest verification gate.
CREATE OR REPLACE VIEW rekey.progress AS
WITH b AS (
  SELECT x.job_id,
         count(*) FILTER (WHERE s.kind = 'rollout') AS batches_total,
         count(*) FILTER (WHERE s.kind = 'rollout' AND x.state = 'done') AS batches_done,
         count(*) FILTER (WHERE x.state = 'failed') AS batches_failed,
         count(*) FILTER (WHERE x.state = 'running') AS batches_running,
         count(*) FILTER (WHERE x.state = 'pending' AND x.stage_no = j.current_stage) AS batches_pending,
         coalesce(sum(x.planned_rows) FILTER (WHERE s.kind = 'rollout'), 0) AS rows_total,
         coalesce(sum(x.planned_rows) FILTER (WHERE s.kind = 'rollout' AND x.state = 'done'), 0) AS rows_processed,
         coalesce(sum(x.rows_done) FILTER (WHERE s.kind <> 'rollback'), 0) AS rows_reencrypted,
         coalesce(sum(x.rows_done) FILTER (WHERE s.kind = 'rollback'), 0) AS rows_restored,
         coalesce(sum(x.rows_failed), 0) AS rows_quarantined,
         coalesce(sum(x.planned_rows) FILTER (WHERE x.stage_no = j.current_stage), 0) AS stage_rows,
         coalesce(sum(x.planned_rows) FILTER (WHERE x.stage_no = j.current_stage AND x.state = 'done'), 0) AS stage_rows_done,
         coalesce(sum(x.planned_rows) FILTER (WHERE x.state = 'done' AND x.finished_at > now() - interval '1 minute'), 0)
           AS rows_last_minute,
         min(x.finished_at) FILTER (WHERE x.state = 'done' AND x.finished_at > now() - interval '1 minute') AS window_start,
         count(DISTINCT x.worker_id) FILTER (WHERE x.state = 'running') AS active_workers
    FROM rekey.batches x
    JOIN rekey.jobs j ON j.job_id = x.job_id
    JOIN rekey.job_stages s ON s.job_id = x.job_id AND s.stage_no = x.stage_no
   GROUP BY x.job_id
), rate AS (
  SELECT job_id, rows_last_minute::numeric
                 / greatest(extract(epoch FROM now() - least(window_start, now() - interval '1 second')), 1)::numeric
                 AS rows_per_second
    FROM b
)
SELECT j.job_id, j.name, j.state, j.state_reason,
       format('%I.%I', j.schema_name, j.table_name) AS target,
       (SELECT string_agg(source_key_id || '->' || target_key_id, ', ' ORDER BY source_key_id)
          FROM rekey.job_keys k WHERE k.job_id = j.job_id) AS keys,
       j.current_stage, s.kind AS stage_kind, s.percent AS stage_percent, s.state AS stage_state,
       b.stage_rows, b.stage_rows_done,
       array_to_string(j.stage_plan, ',') AS stage_plan,
       b.rows_total, b.rows_processed, b.rows_reencrypted, b.rows_restored, b.rows_quarantined,
       b.rows_total - b.rows_processed AS rows_remaining,
       b.batches_total, b.batches_done, b.batches_failed, b.batches_running, b.batches_pending,
       round(100.0 * b.rows_processed / greatest(b.rows_total, 1), 2) AS percent,
       round(r.rows_per_second, 1) AS rows_per_second,
       CASE WHEN r.rows_per_second > 0 AND j.state = 'active'
            THEN make_interval(secs => ((b.stage_rows - b.stage_rows_done) / r.rows_per_second)::double precision)
       END AS stage_eta,
       b.active_workers,
       g.passed AS last_gate_passed, g.stage_no AS last_gate_stage, g.error_rate AS last_gate_error_rate,
       g.values_checked AS last_gate_values_checked,
       j.observe, j.created_at, j.started_at, j.finished_at,
       j.finished_at - j.started_at AS duration,
       -- While an active job waits for readers (sql/schema/45_readers.sql): what it waits to do
       -- (first_batch, batches, promotion, rollback), since when, and the lagging readers
       -- [{reader, scope, key_id, last_seen}]; NULL otherwise.
       CASE WHEN j.state = 'active' THEN j.readers_waiting_for END AS readers_waiting_for,
       CASE WHEN j.state = 'active' THEN j.readers_waiting_since END AS readers_waiting_since,
       CASE WHEN j.state = 'active' THEN j.readers_lagging END AS lagging_readers,
       j.reader_window,
       -- While an active job's worker processes hold back on a brake (src/rotation/brake.h):
       -- the reasons (replication_lag, wal_rate, slot_lag, archive_backlog, autovacuum,
       -- lock_wait, prometheus) and since when; NULL otherwise. A process republishes its
       -- brakes every few seconds: a row not refreshed for 30 seconds is a dead worker's.
       CASE WHEN j.state = 'active' THEN br.brakes_active END AS brakes_active,
       CASE WHEN j.state = 'active' THEN br.brakes_since END AS brakes_since,
       -- Batches that ended because their leaf partition was detached or dropped mid-job
       -- (rekey.lock_batch_partition): how many, and the reasons naming each partition.
       coalesce(pg.batches, 0) AS batches_partition_gone, pg.reasons AS partitions_gone
  FROM rekey.jobs j
  LEFT JOIN b USING (job_id)
  LEFT JOIN rate r USING (job_id)
  LEFT JOIN rekey.job_stages s ON s.job_id = j.job_id AND s.stage_no = j.current_stage
  LEFT JOIN LATERAL (SELECT * FROM rekey.gates x WHERE x.job_id = j.job_id ORDER BY gate_id DESC LIMIT 1) g ON true
  LEFT JOIN LATERAL (SELECT array_agg(DISTINCT r ORDER BY r) AS brakes_active, min(w.braked_since) AS brakes_since
                       FROM rekey.workers w CROSS JOIN LATERAL unnest(w.brakes) AS r
                      WHERE (w.job_id = j.job_id OR w.job_id IS NULL)
                        AND w.last_seen > now() - interval '30 seconds') br ON true
  LEFT JOIN LATERAL (SELECT count(*) AS batches, string_agg(DISTINCT x.end_reason, '; ') AS reasons
                       FROM rekey.batches x
                      WHERE x.job_id = j.job_id AND x.end_reason IS NOT NULL) pg ON true;

-- One row per stage of each job: what it covers, how far it is, and its gate.
CREATE OR REPLACE VIEW rekey.stage_status AS
SELECT s.job_id, s.stage_no, s.kind, s.percent, s.bucket_lo, s.bucket_hi, s.state,
       count(b.*) AS batches, count(b.*) FILTER (WHERE b.state = 'done') AS batches_done,
       coalesce(sum(b.planned_rows), 0) AS rows_planned,
       coalesce(sum(b.rows_done), 0) AS rows_reencrypted,
       coalesce(sum(b.rows_failed), 0) AS rows_quarantined,
       s.opened_at, s.finished_at,
       (SELECT g.passed FROM rekey.gates g WHERE g.job_id = s.job_id AND g.stage_no = s.stage_no ORDER BY g.gate_id DESC LIMIT 1) AS gate_passed,
       (SELECT g.error_rate FROM rekey.gates g WHERE g.job_id = s.job_id AND g.stage_no = s.stage_no ORDER BY g.gate_id DESC LIMIT 1) AS gate_error_rate
  FROM rekey.job_stages s LEFT JOIN rekey.batches b ON b.job_id = s.job_id AND b.stage_no = s.stage_no
 GROUP BY s.job_id, s.stage_no;

-- One row per batch.
CREATE OR REPLACE VIEW rekey.batch_status AS
SELECT job_id, batch_no, stage_no, state, attempts, worker_id, lo, hi, planned_rows, rows_done, rows_skipped,
       rows_failed, round(duration_ms::numeric, 1) AS duration_ms, claimed_at, finished_at, last_error,
       CASE WHEN state = 'running' THEN now() - claimed_at END AS running_for
  FROM rekey.batches;

-- The age of every usable key, its maximum age and where that comes from, its due date, and
-- whether it is overdue. Only the primary key of a scope can be overdue: it is the one new values
-- are written under; an older decrypt_only key is already being rotated away.
CREATE OR REPLACE VIEW rekey.key_age AS
SELECT k.key_id, k.scope, k.status, k.kms_provider, k.kms_key_ref, k.created_at,
       now() - k.created_at AS age,
       coalesce(k.max_age, p.max_age, d.max_age) AS max_age,
       CASE WHEN k.max_age IS NOT NULL THEN 'key'
            WHEN p.max_age IS NOT NULL THEN 'scope'
            WHEN d.max_age IS NOT NULL THEN 'default' END AS max_age_source,
       k.created_at + coalesce(k.max_age, p.max_age, d.max_age) AS due_at,
       coalesce(k.status = 'primary' AND now() >= k.created_at + coalesce(k.max_age, p.max_age, d.max_age),
                false) AS overdue
  FROM rekey.keys k
  LEFT JOIN rekey.key_policies p ON p.scope = k.scope
  LEFT JOIN rekey.key_policies d ON d.scope = '*'
 WHERE k.status IN ('enabled', 'primary', 'decrypt_only');

-- Jobs that block a new automatic rotation of a key: any job moving values off it that did not
-- complete or was not cancelled. A failed or rolled-back job needs a person first.
CREATE OR REPLACE FUNCTION rekey.rotation_in_flight(p_key bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT max(j.job_id) FROM rekey.jobs j JOIN rekey.job_keys k ON k.job_id = j.job_id
   WHERE k.source_key_id = p_key AND j.state NOT IN ('completed', 'cancelled')
$$;

-- Overdue primary keys, oldest due first, with the job already handling each (if any).
CREATE OR REPLACE VIEW rekey.rotation_due AS
SELECT a.scope, a.key_id, a.kms_provider, a.age, a.max_age, a.due_at,
       rekey.rotation_in_flight(a.key_id) AS job_in_flight
  FROM rekey.key_age a
 WHERE a.overdue;

-- The registered targets that hold values under key p_key, grouped into the jobs a rotation of
-- that key needs: one per table (columns of one table rotate together). The registered columns
-- holding values under p_key are found by identity and whole-column usage
-- (rekey.key_usage), one job per table under the table's current name, unscoped (scope_column
-- and scope_value are always NULL): a job only moves rows under its source keys, so a tenant's
-- values registered under a scope written in another case, or rows outside every scope, are
-- rotated too.
CREATE OR REPLACE FUNCTION rekey.rotation_targets(p_key bigint)
RETURNS TABLE (table_name text, columns text[], codecs text[], key_id_column name,
               ad_template text, scope_column name, scope_value text, values_under_key bigint)
LANGUAGE sql VOLATILE AS $$
  SELECT format('%I.%I', tc.schema_name, tc.table_name),
         array_agg(tc.column_name::text ORDER BY tc.attnum), array_agg(tc.codec ORDER BY tc.attnum),
         min(tc.key_id_column), min(tc.ad_template), NULL::name, NULL::text, sum(u.n)::bigint
    FROM rekey.key_usage(p_key) u JOIN rekey.target_columns() tc ON tc.target_id = u.target_id
   WHERE u.n > 0
   GROUP BY tc.relid, tc.schema_name, tc.table_name
   ORDER BY 1
$$;

-- Evidence of one job, as JSON: keys before and after (ids and KMS references, never material),
-- the stage timeline with gate results and approvals, row counts, decrypt error rate, quarantined
-- values, an audit-completeness check, and durations. Read-only.
-- Actors, verifiers and approvers are the server-stamped roles; the worker ids clients supplied
-- sit beside them as such ('worker' of an approval event, 'verified_by_worker' of a gate), never
-- in their place.
CREATE OR REPLACE FUNCTION rekey.job_report(p_job bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  j rekey.jobs;
  p record;
  done_batches bigint;
  audited bigint;
  missing jsonb;
  result jsonb;
BEGIN
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  SELECT * INTO p FROM rekey.progress WHERE job_id = p_job;

  -- Audit completeness: every done batch has its completion audit row (written in the same
  -- transaction as the batch's rows, so a gap means the log was tampered with or lost).
  SELECT count(*), count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
              AND a.action = 'rotation.batch.completed')),
         coalesce(jsonb_agg(b.batch_no ORDER BY b.batch_no) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
              AND a.action = 'rotation.batch.completed')), '[]')
    INTO done_batches, audited, missing
    FROM rekey.batches b WHERE b.job_id = p_job AND b.state = 'done';

  result := jsonb_build_object(
    'report_version', 1,
    'generated_at', now(),
    'generated_by', current_user,
    'job', jsonb_build_object(
      'job_id', j.job_id, 'name', j.name, 'target', format('%I.%I', j.schema_name, j.table_name),
      'columns', (SELECT jsonb_agg(t.column_name ORDER BY c.ordinal) FROM rekey.job_columns c
                    JOIN rekey.targets t ON t.target_id = c.target_id WHERE c.job_id = p_job),
      'scope', CASE WHEN j.scope_column IS NULL THEN NULL
                    ELSE jsonb_build_object('column', j.scope_column, 'value', j.scope_value) END,
      'state', j.state, 'state_reason', j.state_reason,
      'stage_plan', to_jsonb(j.stage_plan), 'error_threshold', j.error_threshold,
      'created_at', j.created_at, 'created_by', j.created_by,
      'started_at', j.started_at, 'finished_at', j.finished_at,
      'duration_seconds', round(extract(epoch FROM j.finished_at - j.started_at)::numeric, 3)),
    'outcome', CASE j.state WHEN 'completed' THEN 'rotated' WHEN 'rolled_back' THEN 'rolled_back'
                            ELSE 'in_progress_or_stopped' END,
    'keys', (SELECT jsonb_agg(jsonb_build_object(
               'before', jsonb_build_object('key_id', s.key_id, 'scope', s.scope,
                         'kms_provider', s.kms_provider, 'kms_key_ref', s.kms_key_ref,
                         'status_now', s.status, 'created_at', s.created_at),
               'after', jsonb_build_object('key_id', t.key_id, 'scope', t.scope,
                        'kms_provider', t.kms_provider, 'kms_key_ref', t.kms_key_ref,
                        'status_now', t.status, 'created_at', t.created_at))
               ORDER BY k.source_key_id)
               FROM rekey.job_keys k JOIN rekey.keys s ON s.key_id = k.source_key_id
               JOIN rekey.keys t ON t.key_id = k.target_key_id WHERE k.job_id = p_job),
    'stages', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                 'stage_no', s.stage_no, 'kind', s.kind, 'percent', s.percent, 'state', s.state,
                 'opened_at', s.opened_at, 'finished_at', s.finished_at,
                 'duration_seconds', round(extract(epoch FROM s.finished_at - s.opened_at)::numeric, 3),
                 'batches', s.batches, 'batches_done', s.batches_done, 'rows_planned', s.rows_planned,
                 'rows_reencrypted', s.rows_reencrypted, 'rows_quarantined', s.rows_quarantined,
                 'gates', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'passed', g.passed, 'values_checked', g.values_checked,
                             'decrypt_errors', g.decrypt_errors, 'quarantined', g.quarantined,
                             'error_rate', g.error_rate, 'threshold', g.threshold,
                             'audit_complete', g.audit_complete, 'verified_at', g.verified_at,
                             'verified_by', g.verified_by,
                             'verified_by_worker', g.details->>'verified_by_worker',
                             'approved_at', g.approved_at,
                             'approved_by', g.approved_by) ORDER BY g.gate_id), '[]')
                             FROM rekey.gates g WHERE g.job_id = s.job_id AND g.stage_no = s.stage_no))
                 ORDER BY s.stage_no), '[]')
                 FROM rekey.stage_status s WHERE s.job_id = p_job),
    'rows', jsonb_build_object(
      'total', coalesce(p.rows_total, 0), 'processed', coalesce(p.rows_processed, 0),
      'reencrypted', coalesce(p.rows_reencrypted, 0), 'restored_by_rollback', coalesce(p.rows_restored, 0),
      'quarantined', coalesce(p.rows_quarantined, 0)),
    'decrypt_error_rate', round(coalesce(p.rows_quarantined, 0)::numeric
                                / greatest(coalesce(p.rows_reencrypted, 0) + coalesce(p.rows_quarantined, 0), 1), 6),
    'max_gate_error_rate', (SELECT max(error_rate) FROM rekey.gates WHERE job_id = p_job),
    -- Leaf partitions detached or dropped mid-job: their rows are no longer the table's and were
    -- not rotated by this job (docs/safety.md); each named, to be rotated as a table of its own.
    'partitions_gone', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'partition', format('%I.%I', g.partition_schema, g.partition_name),
                          'reason', g.end_reason, 'batches', g.batches)
                          ORDER BY g.partition_schema, g.partition_name), '[]')
                          FROM (SELECT partition_schema, partition_name, end_reason, count(*) AS batches
                                  FROM rekey.batches WHERE job_id = p_job AND end_reason IS NOT NULL
                                 GROUP BY 1, 2, 3) g),
    'quarantine', jsonb_build_object(
      'values', (SELECT count(*) FROM rekey.row_failures WHERE job_id = p_job),
      'by_error_class', (SELECT coalesce(jsonb_object_agg(error_class, n), '{}') FROM (
                           SELECT error_class, count(*) AS n FROM rekey.row_failures
                            WHERE job_id = p_job GROUP BY error_class) x)),
    'audit', jsonb_build_object(
      'batches_done', done_batches, 'batches_with_audit_row', audited,
      'complete', done_batches = audited, 'batches_missing_audit_row', missing,
      'events', (SELECT count(*) FROM rekey.audit WHERE job_id = p_job),
      'first_event_at', (SELECT min(at) FROM rekey.audit WHERE job_id = p_job),
      'last_event_at', (SELECT max(at) FROM rekey.audit WHERE job_id = p_job)),
    'approvals', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'action', a.action, 'actor', a.actor, 'worker', a.details->>'worker',
                    'at', a.at, 'outcome', a.outcome,
                    'details', a.details) ORDER BY a.audit_id), '[]')
                    FROM rekey.audit a WHERE a.job_id = p_job
                     AND a.action IN ('job.created', 'job.advanced', 'job.keys_promoted',
                                      'job.rollback_started', 'job.rolled_back', 'job.completed',
                                      'job.paused', 'job.resumed', 'job.cancelled')));
  RETURN result;
END $$;

CREATE OR REPLACE FUNCTION rekey.reject_report_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'rekey.reports is append-only: % is not allowed; generate a new report instead', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE TRIGGER reports_append_only BEFORE UPDATE OR DELETE ON rekey.reports
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_report_change();
