-- Least-privilege roles for rekey. Apply after `rekey migrate`, as the owner of the rekey schema
-- (or a superuser); safe to re-run after every upgrade:
--
--   psql -v ON_ERROR_STOP=1 -f sql/roles.sql
--
-- Four group roles (NOLOGIN); make your login roles members of them:
--   rekey_worker    what `rekey work` needs and nothing more: read the job definitions and the
--                   wrapped keys, move batches, gates and stages along (their state columns only:
--                   a worker cannot change what a job is), promote the job's keys at
--                   the configured stage, quarantine values, and append audit rows (no UPDATE,
--                   DELETE or TRUNCATE of the audit log for any role). Plus, per job, the
--                   target's primary key, ciphertext and key-id columns (rekey.worker_grants
--                   below). Never superuser, never the table owner.
--   rekey_operator  the DBA's verbs (create_job, advance, rollback, pause, resume, cancel, retry,
--                   requeue, rerun), the keyring CLI (rekey keys ...), rotate-due (the CronJob)
--                   and reports: the rekey tables, no UPDATE or DELETE of the audit log or reports.
--   rekey_monitor   read-only (`rekey exporter`): the progress and key-age views, gates, failures,
--                   reports and the audit log; the keyring without its wrapped keys.
--   rekey_application  what an application instance needs to take part in rotations
--                   (docs/applications.md): read its scope's keys (rekey.application_keys) and
--                   report as a reader (rekey.reader_heartbeat); no table privileges.
--
--   CREATE ROLE rekey_worker_login LOGIN PASSWORD '...' IN ROLE rekey_worker;
--   SELECT rekey.worker_grants(42) \gexec     -- the job's target columns, for the workers
--
-- rekey's functions run with the caller's rights (SECURITY INVOKER), so these table privileges
-- are what bounds each role; rekey.seal_audit (it appends to the audit chain, which no role may
-- write directly) and rekey.reader_heartbeat (rekey_application below) are the SECURITY DEFINER
-- functions.

DO $$
DECLARE r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['rekey_worker', 'rekey_operator', 'rekey_monitor', 'rekey_application'] LOOP
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
      EXECUTE format('CREATE ROLE %I NOLOGIN', r);
    END IF;
  END LOOP;
END $$;

GRANT USAGE ON SCHEMA rekey TO rekey_worker, rekey_operator, rekey_monitor, rekey_application;

-- The audit log is insert-only for everyone (UPDATE/DELETE are also refused by triggers).
REVOKE ALL ON rekey.audit, rekey.value_audit, rekey.audit_chain
  FROM rekey_worker, rekey_operator, rekey_monitor;

-- ---------------------------------------------------------------------------------------------
-- rekey_worker
-- ---------------------------------------------------------------------------------------------
GRANT SELECT ON rekey.jobs, rekey.job_columns, rekey.job_keys, rekey.job_stages, rekey.batches,
                rekey.gates, rekey.workers, rekey.targets, rekey.row_failures
  TO rekey_worker;
-- Unwrapping needs the wrapped key and its KMS reference; promotion changes only the status
-- (the lifecycle trigger stamps the times).
GRANT SELECT ON rekey.keys TO rekey_worker;
GRANT UPDATE (status) ON rekey.keys TO rekey_worker;
-- The queue and the rollout state machine: only the state columns the functions a worker calls
-- write (claim_batch, release_batch, checkpoint_batch, complete_batch, finish_stages, next_gate,
-- record_gate, advance_due/advance_job, open_stage, promote_job_keys, complete_job, pause_job),
-- never a job's definition. A worker that could rewrite pk_type or scope_type would have them
-- pasted into SQL, scope_value or a key map would point it at other rows or keys, batch bounds
-- at other ranges, thresholds would let a failing gate pass. Earlier versions of this file
-- granted UPDATE on whole tables: the REVOKE takes that back on upgrade. (FOR UPDATE row locks
-- need UPDATE on one column, which these grants give.)
REVOKE UPDATE ON rekey.jobs, rekey.job_stages, rekey.batches, rekey.gates FROM rekey_worker;
-- rollback_stage: rekey.finish_stages (0014) records a rollback's first pass for its sweeps.
GRANT UPDATE (state, state_reason, current_stage, keys_promoted, started_at, finished_at,
              updated_at, rollback_stage)
  ON rekey.jobs TO rekey_worker;
-- A claim records what a job waits for while a live reader lacks its key (rekey.readers_ready, 0017).
GRANT UPDATE (readers_waiting_for, readers_waiting_since, readers_lagging) ON rekey.jobs TO rekey_worker;
GRANT UPDATE (state, opened_at, finished_at) ON rekey.job_stages TO rekey_worker;
-- keys: rekey.clear_planned_keys (0008) sets it to NULL when the worker completes the job.
GRANT UPDATE (state, attempts, worker_id, claimed_at, finished_at, rows_done, rows_skipped,
              rows_failed, duration_ms, last_error, resume_after, keys, end_reason)
  ON rekey.batches TO rekey_worker;
-- A stage that opens on its own after its observation period records who approved it: the worker.
-- A gate's figures and verdict are written once, by record_gate's INSERT, and never changed.
GRANT UPDATE (approved_at, approved_by) ON rekey.gates TO rekey_worker;
-- Sweep stages and their batches are added as the job runs (rekey.add_stage).
GRANT INSERT ON rekey.batches, rekey.gates, rekey.row_failures, rekey.job_stages TO rekey_worker;
-- Job definitions, key maps and registered targets belong to the operator.
REVOKE INSERT, UPDATE, DELETE ON rekey.job_keys, rekey.job_columns, rekey.targets FROM rekey_worker;
GRANT INSERT, UPDATE, DELETE ON rekey.workers TO rekey_worker;
-- Audit: append, never change. SELECT on rekey.audit because a gate checks that every completed
-- batch has its completion event; the per-value log is write-only.
GRANT SELECT, INSERT ON rekey.audit TO rekey_worker;
GRANT INSERT ON rekey.value_audit TO rekey_worker;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA rekey TO rekey_worker;
-- `rekey work --listen` exports the keyring and job gauges (views run with their owner's rights).
GRANT SELECT ON rekey.key_age, rekey.progress TO rekey_worker;
-- Rotations (sql/schema/55_rotations.sql): a job reaching the promotion stage promotes its
-- rotation's key, and the rotation's state follows its jobs'.
GRANT SELECT ON rekey.rotations TO rekey_worker;
GRANT UPDATE (state, promoted_at, finished_at, updated_at) ON rekey.rotations TO rekey_worker;
-- Side effects of a rewrite (sql/schema/42_side_effects.sql): the first batch records the
-- table's counters, the completing worker records them again and runs --vacuum-after.
GRANT SELECT, INSERT, UPDATE ON rekey.job_table_counters, rekey.job_vacuums TO rekey_worker;
-- --triggers skip (the batch's UPDATE with session_replication_role = replica) is NOT granted by
-- default: with it a worker could silence every trigger of every table it may update, audit
-- triggers of the application included, and replica mode skips foreign-key checks on any column
-- it writes. The DBA opts in, for the worker's role, when a job needs it (a job that skips
-- triggers is refused at create, and by every worker, until then):
--   GRANT SET ON PARAMETER session_replication_role TO rekey_worker;   -- PostgreSQL 15+

-- ---------------------------------------------------------------------------------------------
-- rekey_operator
-- ---------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE ON rekey.jobs, rekey.job_columns, rekey.job_keys, rekey.job_stages,
                                rekey.batches, rekey.gates, rekey.keys, rekey.targets
  TO rekey_operator;
GRANT SELECT, DELETE ON rekey.workers TO rekey_operator;
GRANT SELECT ON rekey.row_failures TO rekey_operator;
GRANT SELECT, INSERT ON rekey.audit, rekey.value_audit TO rekey_operator;
GRANT SELECT ON rekey.audit_chain TO rekey_operator;
GRANT SELECT ON rekey.progress, rekey.stage_status, rekey.batch_status, rekey.audit_head,
                rekey.key_age, rekey.rotation_due, rekey.schema_migrations
  TO rekey_operator;
-- Key-age policy, rotate-due (the CronJob) and compliance reports (append-only).
GRANT SELECT, INSERT, UPDATE ON rekey.key_policies TO rekey_operator;
GRANT SELECT, INSERT ON rekey.reports TO rekey_operator;
GRANT SELECT, INSERT, UPDATE ON rekey.rotations TO rekey_operator;
GRANT SELECT ON rekey.rotation_progress TO rekey_operator, rekey_monitor;
-- What job create declares, and the counters a job cancelled or rolled back by the operator ends
-- with (rekey.jobs_record_end_counters).
GRANT SELECT, INSERT ON rekey.job_side_effects TO rekey_operator;
GRANT SELECT, INSERT, UPDATE ON rekey.job_table_counters TO rekey_operator;
GRANT SELECT ON rekey.job_vacuums TO rekey_operator;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA rekey TO rekey_operator;

-- ---------------------------------------------------------------------------------------------
-- rekey_monitor
-- ---------------------------------------------------------------------------------------------
GRANT SELECT ON rekey.progress, rekey.stage_status, rekey.batch_status, rekey.audit_head,
                rekey.key_age, rekey.rotation_due, rekey.jobs, rekey.job_stages, rekey.batches,
                rekey.gates, rekey.row_failures, rekey.audit, rekey.audit_chain, rekey.reports,
                rekey.job_side_effects, rekey.job_table_counters, rekey.job_vacuums
  TO rekey_monitor;
GRANT SELECT (key_id, scope, kms_provider, kms_key_ref, algorithm, status, origin, max_age,
              created_at, enabled_at, primary_at, decrypt_only_at, retired_at, destroyed_at,
              created_by, updated_by)
  ON rekey.keys TO rekey_monitor;

-- ---------------------------------------------------------------------------------------------
-- rekey_application
-- ---------------------------------------------------------------------------------------------
-- The reader heartbeat: a SECURITY DEFINER function (it reads rekey.keys and writes
-- rekey.readers for the caller), so the role needs no privilege on any table. The operator and
-- the monitor see the readers; the operator may delete a reader that is gone for good.
GRANT EXECUTE ON FUNCTION rekey.reader_heartbeat(text, text, bigint[]) TO rekey_application;
GRANT SELECT, DELETE ON rekey.readers TO rekey_operator;
GRANT SELECT ON rekey.readers TO rekey_monitor, rekey_worker;
-- The keys an application may decrypt with: a view, run with its owner's rights, so the role
-- reads the wrapped keys of live keys through it and nothing of rekey.keys itself.
GRANT SELECT ON rekey.application_keys TO rekey_application;

-- The GRANT statements that give `p_role` exactly the columns job `p_job` touches on its target:
-- SELECT on the key's columns (all of a composite key), scope, ciphertext and key-id columns;
-- UPDATE on the ciphertext and key-id columns. Run them with psql's \gexec:  SELECT rekey.worker_grants(42) \gexec
CREATE OR REPLACE FUNCTION rekey.worker_grants(p_job bigint, p_role name DEFAULT 'rekey_worker')
RETURNS SETOF text
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  j rekey.jobs;
  written text[];
  read text[];
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT array_agg(DISTINCT quote_ident(t.column_name)) INTO written
    FROM rekey.job_columns c JOIN rekey.targets t USING (target_id) WHERE c.job_id = p_job;
  IF j.key_id_column IS NOT NULL THEN
    written := written || quote_ident(j.key_id_column);
  END IF;
  read := written || (SELECT array_agg(quote_ident(c) ORDER BY i)
                        FROM unnest(j.key_columns) WITH ORDINALITY AS k(c, i));
  IF j.scope_column IS NOT NULL THEN
    read := read || quote_ident(j.scope_column);
  END IF;
  RETURN NEXT format('GRANT USAGE ON SCHEMA %I TO %I', j.schema_name, p_role);
  RETURN NEXT format('GRANT SELECT (%s) ON %I.%I TO %I', array_to_string(read, ', '),
                     j.schema_name, j.table_name, p_role);
  RETURN NEXT format('GRANT UPDATE (%s) ON %I.%I TO %I', array_to_string(written, ', '),
                     j.schema_name, j.table_name, p_role);
  -- A partitioned table's batches name its leaves (migrations/0026), whose privileges are their
  -- own: the same grants on each leaf attached now (run again after attaching one).
  RETURN QUERY
    SELECT DISTINCT format('GRANT USAGE ON SCHEMA %I TO %I', l.leaf_schema, p_role)
      FROM rekey.job_leaves(j) l WHERE l.leaf_name IS NOT NULL AND l.leaf_schema <> j.schema_name;
  RETURN QUERY
    SELECT x.statement
      FROM rekey.job_leaves(j) l,
           LATERAL (VALUES (1, format('GRANT SELECT (%s) ON %I.%I TO %I', array_to_string(read, ', '),
                                      l.leaf_schema, l.leaf_name, p_role)),
                           (2, format('GRANT UPDATE (%s) ON %I.%I TO %I', array_to_string(written, ', '),
                                      l.leaf_schema, l.leaf_name, p_role))) AS x(o, statement)
     WHERE l.leaf_name IS NOT NULL
     ORDER BY l.leaf_schema, l.leaf_name, x.o;
END $$;
REVOKE EXECUTE ON FUNCTION rekey.worker_grants(bigint, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION rekey.worker_grants(bigint, name) TO rekey_operator;
