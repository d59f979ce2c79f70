-- Least-privilege PostgreSQL roles for rekey (run as the owner of the rekey schema, after
-- `rekey migrate`, which itself runs as that owner: only it can create or change the schema).
--
--   rekey_worker   `rekey work`, `rekey rotate-due`, `rekey report`, `rekey job ...`: the
--                  control functions are SECURITY INVOKER, so it needs rights on rekey's tables,
--                  never DELETE or TRUNCATE (the audit log and reports are append-only, and key
--                  rows are evidence), plus UPDATE of the encrypted columns of the registered
--                  target tables only.
--   rekey_monitor  `rekey exporter`: reads the views and jobs; never sees wrapped keys.
--
-- psql -v target_table=public.payment_methods -f jobs/database-role.sql
\set ON_ERROR_STOP on

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rekey_worker') THEN
    CREATE ROLE rekey_worker LOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rekey_monitor') THEN
    CREATE ROLE rekey_monitor LOGIN;
  END IF;
END $$;

GRANT USAGE ON SCHEMA rekey TO rekey_worker, rekey_monitor;

-- Worker: read and write the control plane, append to the logs, nothing else.
GRANT SELECT, INSERT, UPDATE ON rekey.jobs, rekey.job_columns, rekey.job_keys, rekey.job_stages,
  rekey.gates, rekey.batches, rekey.row_failures, rekey.targets, rekey.keys, rekey.key_policies
  TO rekey_worker;
GRANT DELETE ON rekey.workers TO rekey_worker;  -- a worker removes its own heartbeat row
GRANT SELECT, INSERT, UPDATE ON rekey.workers TO rekey_worker;
GRANT SELECT, INSERT ON rekey.audit, rekey.value_audit, rekey.reports TO rekey_worker;
GRANT SELECT ON rekey.schema_migrations, rekey.progress, rekey.stage_status, rekey.batch_status,
  rekey.key_age, rekey.rotation_due TO rekey_worker;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA rekey TO rekey_worker;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA rekey TO rekey_worker;

-- The application table whose ciphertexts rotate: read every row, update only what rekey writes.
-- Repeat per target table (and list its ciphertext and key-id columns).
GRANT SELECT ON :target_table TO rekey_worker;
GRANT UPDATE (token, key_id) ON :target_table TO rekey_worker;

-- Monitor: the views the exporter reads (views run with their owner's rights, so the wrapped
-- keys in rekey.keys stay out of reach).
GRANT SELECT ON rekey.key_age, rekey.progress, rekey.jobs, rekey.batches, rekey.job_stages
  TO rekey_monitor;
REVOKE ALL ON rekey.keys FROM rekey_monitor;
