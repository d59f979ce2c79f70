-- Operations: key-age policy per scope, the views that say which keys are due for rotation, and
-- stored compliance reports. Plain SQL: a team may apply it with its own tool.

-- Maximum key age per key scope. The row with scope '*' is the default for scopes without a
-- row of their own; rekey.keys.max_age, when set, overrides both for that one key.
CREATE TABLE rekey.key_policies (
  scope      text PRIMARY KEY,
  max_age    interval NOT NULL CHECK (max_age > interval '0'),
  updated_at timestamptz NOT NULL DEFAULT now(),
  updated_by text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE rekey.key_policies IS
  'rekey: maximum data-key age per scope (''*'' = every other scope); rekey rotate-due rotates keys past it.';

CREATE FUNCTION rekey.audit_policy_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM rekey.audit_event('key_policy.deleted', NULL, jsonb_build_object('scope', OLD.scope, 'max_age', OLD.max_age));
    RETURN NULL;
  END IF;
  PERFORM rekey.audit_event('key_policy.set', NULL, jsonb_build_object('scope', NEW.scope, 'max_age', NEW.max_age));
  RETURN NULL;
END $$;
CREATE TRIGGER key_policies_audit AFTER INSERT OR UPDATE OR DELETE ON rekey.key_policies
  FOR EACH ROW EXECUTE FUNCTION rekey.audit_policy_change();

-- The age of every usable key, its maximum age and where that comes from, its due date, and
-- whether it is overdue. Only the primary key of a scope can be overdue: it is the one new values
-- are written under; an older decrypt_only key is already being rotated away.
CREATE VIEW rekey.key_age AS
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
CREATE FUNCTION rekey.rotation_in_flight(p_key bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT max(j.job_id) FROM rekey.jobs j JOIN rekey.job_keys k ON k.job_id = j.job_id
   WHERE k.source_key_id = p_key AND j.state NOT IN ('completed', 'cancelled')
$$;

-- Overdue primary keys, oldest due first, with the job already handling each (if any).
CREATE VIEW rekey.rotation_due AS
SELECT a.scope, a.key_id, a.kms_provider, a.age, a.max_age, a.due_at,
       rekey.rotation_in_flight(a.key_id) AS job_in_flight
  FROM rekey.key_age a
 WHERE a.overdue;

-- The registered targets that hold values under key p_key, grouped into the jobs a rotation of
-- that key needs: one per table and scope (columns of one table rotate together).
CREATE FUNCTION rekey.rotation_targets(p_key bigint)
RETURNS TABLE (table_name text, columns text[], codecs text[], key_id_column name,
               ad_template text, scope_column name, scope_value text, values_under_key bigint)
LANGUAGE sql AS $$
  SELECT format('%I.%I', t.schema_name, t.table_name), array_agg(t.column_name::text ORDER BY t.target_id),
         array_agg(t.codec ORDER BY t.target_id), min(t.key_id_column), min(t.ad_template),
         t.scope_column, t.scope_value, sum(u.n)
    FROM rekey.key_usage(p_key) u JOIN rekey.targets t ON t.target_id = u.target_id
   WHERE u.n > 0
   GROUP BY t.schema_name, t.table_name, t.scope_column, t.scope_value
   ORDER BY 1, t.scope_value
$$;

-- ---------------------------------------------------------------------------------------------
-- Compliance reports
-- ---------------------------------------------------------------------------------------------

-- Evidence of one job, as JSON: keys before and after (ids and KMS references, never material),
-- the stage timeline with gate results and approvals, row counts, decrypt error rate, quarantined
-- values, an audit-completeness check, and durations. Read-only.
CREATE FUNCTION rekey.job_report(p_job bigint) RETURNS jsonb
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
                             'verified_by', g.verified_by, 'approved_at', g.approved_at,
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
                    'action', a.action, 'actor', a.actor, 'at', a.at, 'outcome', a.outcome,
                    'details', a.details) ORDER BY a.audit_id), '[]')
                    FROM rekey.audit a WHERE a.job_id = p_job
                     AND a.action IN ('job.created', 'job.advanced', 'job.keys_promoted',
                                      'job.rollback_started', 'job.rolled_back', 'job.completed',
                                      'job.paused', 'job.resumed', 'job.cancelled')));
  RETURN result;
END $$;

-- Reports as handed to auditors: the JSON evidence, the Markdown rendering, and a SHA-256 of the
-- JSON text so a copy can be checked against the stored one. Append-only, like rekey.audit.
CREATE TABLE rekey.reports (
  report_id    bigserial PRIMARY KEY,
  job_id       bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  generated_at timestamptz NOT NULL DEFAULT now(),
  generated_by text NOT NULL DEFAULT current_user,
  body         jsonb NOT NULL,
  markdown     text,
  sha256       text NOT NULL
);
CREATE INDEX reports_job ON rekey.reports (job_id, generated_at);
CREATE FUNCTION rekey.reject_report_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'rekey.reports is append-only: % is not allowed; generate a new report instead', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER reports_append_only BEFORE UPDATE OR DELETE ON rekey.reports
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_report_change();
REVOKE UPDATE, DELETE, TRUNCATE ON rekey.reports FROM PUBLIC;
