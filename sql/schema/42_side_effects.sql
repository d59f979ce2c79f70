-- Side effects of a rewrite (issue #19 items 2-3, migration 0025; docs/operations.md, "Side
-- effects of a rewrite"): what `rekey job create` declared, the target's counters at the job's
-- start and end, and the --vacuum-after run.

-- Records job p_job's side effects as `rekey job create` listed them (p_declared, JSON) and the
-- operator's choices: p_triggers 'fire' or 'skip' (NULL: none was needed) for the table's user
-- triggers, and p_vacuum_after. Audited as job.side_effects. Called once, in the transaction that
-- creates the job.
CREATE OR REPLACE FUNCTION rekey.declare_side_effects(p_job bigint, p_triggers text,
                                                      p_vacuum_after boolean, p_declared jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.jobs SET triggers = p_triggers, vacuum_after = coalesce(p_vacuum_after, false)
   WHERE job_id = p_job;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  INSERT INTO rekey.job_side_effects (job_id, declared) VALUES (p_job, p_declared);
  PERFORM rekey.audit_event('job.side_effects', p_job, jsonb_build_object(
    'triggers', coalesce(p_triggers, 'none needed'), 'vacuum_after', coalesce(p_vacuum_after, false),
    'declared', p_declared));
END $$;

-- Average bytes of a row of p_rel (pg_column_size of the whole row) over its first 1000 rows,
-- 0 for an empty table: the size of the new row version each rewritten row writes.
CREATE OR REPLACE FUNCTION rekey.sample_row_bytes(p_rel regclass) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
  bytes bigint;
BEGIN
  EXECUTE format('SELECT coalesce(avg(pg_column_size(t.*)), 0)::bigint FROM (SELECT * FROM %s LIMIT 1000) t', p_rel)
    INTO bytes;
  RETURN bytes;
END $$;

-- Records the counters of job p_job's table now (pg_stat_user_tables, the server's WAL position,
-- the table's size) as its p_phase: 'start' is kept once written (the first batch of the job
-- records it); 'end' is replaced by a later reading. Nothing is written for a table that no
-- longer exists. The counters are the whole table's, whoever updated it.
CREATE OR REPLACE FUNCTION rekey.record_table_counters(p_job bigint, p_phase text) RETURNS void
LANGUAGE sql AS $$
  INSERT INTO rekey.job_table_counters AS c (job_id, phase, wal_lsn, n_tup_upd, n_tup_hot_upd,
                                             n_dead_tup, n_live_tup, table_bytes)
  SELECT j.job_id, p_phase, pg_current_wal_lsn(), s.n_tup_upd, s.n_tup_hot_upd, s.n_dead_tup,
         s.n_live_tup, pg_table_size(s.relid)
    FROM rekey.jobs j
    JOIN pg_stat_user_tables s ON s.relid = to_regclass(format('%I.%I', j.schema_name, j.table_name))
   WHERE j.job_id = p_job
  ON CONFLICT (job_id, phase) DO UPDATE
     SET at = now(), wal_lsn = excluded.wal_lsn, n_tup_upd = excluded.n_tup_upd,
         n_tup_hot_upd = excluded.n_tup_hot_upd, n_dead_tup = excluded.n_dead_tup,
         n_live_tup = excluded.n_live_tup, table_bytes = excluded.table_bytes
   WHERE c.phase = 'end';
$$;

-- A job that started rewriting and reaches a final state (completed, cancelled, rolled back)
-- records its 'end' counters in the same transaction; the worker that completes it reads them
-- again once every worker's statistics are flushed (jobs/after_rewrite.h).
CREATE OR REPLACE FUNCTION rekey.jobs_record_end_counters() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.job_table_counters c WHERE c.job_id = NEW.job_id AND c.phase = 'start') THEN
    PERFORM rekey.record_table_counters(NEW.job_id, 'end');
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER jobs_record_end_counters AFTER UPDATE OF state ON rekey.jobs
  FOR EACH ROW WHEN (NOT rekey.job_unfinished(NEW.state) AND rekey.job_unfinished(OLD.state))
  EXECUTE FUNCTION rekey.jobs_record_end_counters();

-- The --vacuum-after run of job p_job starts on this backend (worker p_worker): recorded and
-- audited (job.vacuum_started). False, and nothing written, if the job asked for none or a run
-- was already recorded (one run per job, by the worker that completed it).
CREATE OR REPLACE FUNCTION rekey.vacuum_started(p_job bigint, p_worker text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM rekey.jobs WHERE job_id = p_job AND vacuum_after) THEN
    RETURN false;
  END IF;
  INSERT INTO rekey.job_vacuums (job_id, worker_id, pid) VALUES (p_job, p_worker, pg_backend_pid())
  ON CONFLICT (job_id) DO NOTHING;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM rekey.audit_event('job.vacuum_started', p_job,
    jsonb_build_object('table', (SELECT format('%I.%I', schema_name, table_name) FROM rekey.jobs WHERE job_id = p_job)),
    'success', NULL, p_worker);
  RETURN true;
END $$;

-- The --vacuum-after run of job p_job ended: p_error NULL for success, else what went wrong
-- (the job stays completed; the failure is recorded and audited with outcome 'failure').
CREATE OR REPLACE FUNCTION rekey.vacuum_finished(p_job bigint, p_worker text, p_error text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.job_vacuums SET finished_at = now(), error = p_error,
         state = CASE WHEN p_error IS NULL THEN 'done' ELSE 'failed' END
   WHERE job_id = p_job;
  PERFORM rekey.audit_event(CASE WHEN p_error IS NULL THEN 'job.vacuumed' ELSE 'job.vacuum_failed' END, p_job,
    jsonb_build_object('error', p_error,
                       'seconds', (SELECT extract(epoch FROM finished_at - started_at) FROM rekey.job_vacuums WHERE job_id = p_job)),
    CASE WHEN p_error IS NULL THEN 'success' ELSE 'failure' END, NULL, p_worker);
END $$;

-- The side effects of job p_job for its report (rekey.job_report's "side_effects"): the choices,
-- what create declared, the counters at start and end and what they give (dead tuples created,
-- the share of HOT updates, WAL bytes per rewritten row, table growth), and the vacuum run.
-- Figures are NULL until both readings exist.
CREATE OR REPLACE FUNCTION rekey.job_side_effects_report(p_job bigint) RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object(
    'triggers', j.triggers,
    'vacuum_after', j.vacuum_after,
    'declared', (SELECT d.declared FROM rekey.job_side_effects d WHERE d.job_id = j.job_id),
    'counters', jsonb_build_object(
      'start_at', s.at, 'end_at', e.at,
      'rows_rewritten', rows.n,
      'updates', e.n_tup_upd - s.n_tup_upd,
      'hot_updates', e.n_tup_hot_upd - s.n_tup_hot_upd,
      'hot_share', CASE WHEN e.n_tup_upd > s.n_tup_upd
                        THEN round((e.n_tup_hot_upd - s.n_tup_hot_upd)::numeric / (e.n_tup_upd - s.n_tup_upd), 4) END,
      'dead_tuples_created', e.n_dead_tup - s.n_dead_tup,
      'dead_tuples_at_end', e.n_dead_tup,
      'wal_bytes', pg_wal_lsn_diff(e.wal_lsn, s.wal_lsn)::bigint,
      'wal_bytes_per_row', CASE WHEN rows.n > 0 THEN round(pg_wal_lsn_diff(e.wal_lsn, s.wal_lsn) / rows.n, 1) END,
      'table_bytes_start', s.table_bytes, 'table_bytes_end', e.table_bytes,
      'table_growth_bytes', e.table_bytes - s.table_bytes),
    'vacuum', (SELECT jsonb_build_object('state', v.state, 'worker', v.worker_id, 'started_at', v.started_at,
                                         'finished_at', v.finished_at, 'error', v.error)
                 FROM rekey.job_vacuums v WHERE v.job_id = j.job_id))
    FROM rekey.jobs j
    LEFT JOIN rekey.job_table_counters s ON s.job_id = j.job_id AND s.phase = 'start'
    LEFT JOIN rekey.job_table_counters e ON e.job_id = j.job_id AND e.phase = 'end'
    CROSS JOIN LATERAL (SELECT coalesce(sum(b.rows_done), 0)::bigint AS n FROM rekey.batches b
                         WHERE b.job_id = j.job_id) rows
   WHERE j.job_id = p_job;
$$;
