-- Side effects of a rewrite (issue #19, items 2-3; docs/operations.md, "Side effects of a
-- rewrite").
--   rekey.jobs.triggers      the operator's choice for the table's user triggers, made at job
--                            create: 'fire' (they run on every rewritten row, as before), 'skip'
--                            (the batch's UPDATE runs with session_replication_role = replica);
--                            NULL for a job created without one (a table without user triggers
--                            firing on the rewrite, a job created before this migration, or one
--                            created by SQL): the triggers fire.
--   rekey.jobs.vacuum_after  VACUUM (ANALYZE) the target when the job completes.
--   rekey.job_side_effects   what `rekey job create` listed before the first batch, as JSON.
--   rekey.job_table_counters the target's pg_stat_user_tables counters and the server's WAL
--                            position when the job's first batch started ('start') and when the
--                            job finished ('end'), for the report's dead tuples, HOT share and
--                            WAL bytes per row.
--   rekey.job_vacuums        the --vacuum-after run: who, when, and how it ended.
ALTER TABLE rekey.jobs ADD COLUMN triggers text CHECK (triggers IN ('fire', 'skip'));
ALTER TABLE rekey.jobs ADD COLUMN vacuum_after boolean NOT NULL DEFAULT false;

CREATE TABLE rekey.job_side_effects (
  job_id      bigint PRIMARY KEY REFERENCES rekey.jobs ON DELETE CASCADE,
  declared    jsonb NOT NULL,
  declared_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rekey.job_table_counters (
  job_id        bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  phase         text NOT NULL CHECK (phase IN ('start', 'end')),
  at            timestamptz NOT NULL DEFAULT now(),
  wal_lsn       pg_lsn NOT NULL,
  n_tup_upd     bigint NOT NULL,
  n_tup_hot_upd bigint NOT NULL,
  n_dead_tup    bigint NOT NULL,
  n_live_tup    bigint NOT NULL,
  table_bytes   bigint NOT NULL,
  PRIMARY KEY (job_id, phase)
);

CREATE TABLE rekey.job_vacuums (
  job_id      bigint PRIMARY KEY REFERENCES rekey.jobs ON DELETE CASCADE,
  worker_id   text NOT NULL,
  pid         integer NOT NULL,
  started_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  state       text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'failed')),
  error       text
);
