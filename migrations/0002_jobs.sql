-- Rotation jobs, the batch work queue, quarantined values, the append-only audit log, and the
-- control-plane functions a DBA runs from psql. Plain SQL: a team may apply it with its own tool.
--
-- A job re-encrypts the ciphertext columns of one table (optionally one scope of it, such as one
-- tenant) from source keys to target keys, in stages: a 1% canary, then 25/50/75/100%, each
-- closed by a verification gate. Which rows belong to a stage is a fixed function of the primary
-- key (rekey.stage_bucket). Planning splits each stage into primary-key ranges of about
-- batch_size rows (rekey.batches). Workers claim batches with FOR UPDATE SKIP LOCKED and commit
-- the rewritten rows, the batch checkpoint and its audit row in one transaction.

CREATE SCHEMA IF NOT EXISTS rekey;

CREATE TABLE rekey.jobs (
  job_id        bigserial PRIMARY KEY,
  name          text,
  schema_name   name NOT NULL,
  table_name    name NOT NULL,
  pk_column     name NOT NULL,
  pk_type       text NOT NULL,          -- format_type() of the primary key, e.g. bigint, uuid, text
  key_id_column name,                   -- integer column kept in step with the ciphertext's key
  ad_template   text,                   -- associated-data template (docs/FORMAT.md); NULL = none
  scope_column  name,
  scope_value   text,
  scope_type    text,                   -- format_type() of scope_column
  batch_size    integer NOT NULL CHECK (batch_size BETWEEN 1 AND 1000000),
  max_attempts  integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
  per_row_audit boolean NOT NULL DEFAULT false,
  stage_plan    numeric[] NOT NULL DEFAULT '{1,25,50,75,100}',  -- cumulative percentages
  promote_at_stage integer NOT NULL,    -- the stage whose opening makes the target keys primary
  error_threshold numeric NOT NULL DEFAULT 0.001 CHECK (error_threshold >= 0 AND error_threshold <= 1),
  observe       interval,               -- auto-advance this long after a passed gate; NULL = wait for approval
  gate_sample_size integer NOT NULL DEFAULT 10000 CHECK (gate_sample_size > 0),
  current_stage integer NOT NULL DEFAULT 1,
  keys_promoted boolean NOT NULL DEFAULT false,
  state         text NOT NULL DEFAULT 'active'
                CHECK (state IN ('active', 'verifying', 'awaiting_approval', 'paused', 'completed',
                                 'failed', 'cancelled', 'rolled_back')),
  state_reason  text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  created_by    text NOT NULL DEFAULT current_user,
  started_at    timestamptz,
  finished_at   timestamptz,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  CHECK ((scope_column IS NULL) = (scope_value IS NULL))
);

-- The ciphertext columns a job rewrites, each registered in rekey.targets with its codec.
CREATE TABLE rekey.job_columns (
  job_id    bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  ordinal   integer NOT NULL,
  target_id bigint NOT NULL REFERENCES rekey.targets,
  PRIMARY KEY (job_id, ordinal)
);

-- Which key each source key moves to (one job may rotate tenant A 3->7 and tenant B 4->8).
CREATE TABLE rekey.job_keys (
  job_id        bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  source_key_id bigint NOT NULL REFERENCES rekey.keys (key_id),
  target_key_id bigint NOT NULL REFERENCES rekey.keys (key_id),
  PRIMARY KEY (job_id, source_key_id),
  CHECK (source_key_id <> target_key_id)
);

-- A job's passes over its target. Rollout stages 1..n take the rows whose bucket lies in
-- [bucket_lo, bucket_hi) (stage k: from the previous stage's percentage to its own, in basis
-- points), so stages nest: the 1% canary is inside the 25%. After the last rollout stage, sweep
-- stages re-check the whole scope for values applications still wrote under a source key, until
-- one finds none. A rollback stage moves values back to the source keys.
CREATE TABLE rekey.job_stages (
  job_id      bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  stage_no    integer NOT NULL,
  kind        text NOT NULL CHECK (kind IN ('rollout', 'sweep', 'rollback')),
  percent     numeric NOT NULL,
  bucket_lo   integer NOT NULL,
  bucket_hi   integer NOT NULL,
  state       text NOT NULL DEFAULT 'planned'
              CHECK (state IN ('planned', 'running', 'verifying', 'passed', 'gate_failed', 'done', 'cancelled')),
  opened_at   timestamptz,
  finished_at timestamptz,
  PRIMARY KEY (job_id, stage_no),
  CHECK (0 <= bucket_lo AND bucket_lo <= bucket_hi AND bucket_hi <= 10000)
);

-- Verification gates: after a rollout stage, a sample of the rows moved so far is decrypted.
CREATE TABLE rekey.gates (
  gate_id         bigserial PRIMARY KEY,
  job_id          bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  stage_no        integer NOT NULL,
  percent         numeric NOT NULL,
  values_checked  bigint NOT NULL,      -- values decrypted by the verification sample
  decrypt_errors  bigint NOT NULL,      -- of those, values that failed to decrypt
  quarantined     bigint NOT NULL,      -- values quarantined by the stage's batches
  error_rate      numeric NOT NULL,     -- (decrypt_errors + quarantined) / (values_checked + quarantined)
  threshold       numeric NOT NULL,
  audit_complete  boolean NOT NULL,     -- every done batch has its completion audit row
  passed          boolean NOT NULL,
  verified_at     timestamptz NOT NULL DEFAULT now(),
  verified_by     text NOT NULL,
  approved_at     timestamptz,
  approved_by     text,
  details         jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX gates_job ON rekey.gates (job_id, stage_no);

-- The work queue. A batch is the half-open primary-key range [lo, hi) (NULL = unbounded), kept as
-- the key's text form and cast back to pk_type in queries, so bigint, uuid and text keys share
-- one table. A batch being processed is held by its worker's session (see rekey.claim_batch):
-- state 'running' without that hold means the worker died, and the batch is claimable again.
CREATE TABLE rekey.batches (
  job_id       bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  batch_no     integer NOT NULL,
  stage_no     integer NOT NULL,
  lo           text,
  hi           text,
  planned_rows integer NOT NULL,
  state        text NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'running', 'done', 'failed')),
  attempts     integer NOT NULL DEFAULT 0,
  worker_id    text,
  claimed_at   timestamptz,
  finished_at  timestamptz,
  rows_done    integer NOT NULL DEFAULT 0,   -- values re-encrypted (rows written)
  rows_skipped integer NOT NULL DEFAULT 0,   -- rows locked that needed no change
  rows_failed  integer NOT NULL DEFAULT 0,   -- rows quarantined in rekey.row_failures
  duration_ms  double precision,
  last_error   text,
  PRIMARY KEY (job_id, batch_no),
  FOREIGN KEY (job_id, stage_no) REFERENCES rekey.job_stages
);
CREATE INDEX batches_claimable ON rekey.batches (job_id, stage_no, batch_no)
  WHERE state IN ('pending', 'running');
CREATE INDEX batches_stage ON rekey.batches (job_id, stage_no);
CREATE INDEX batches_finished ON rekey.batches (job_id, finished_at) WHERE state = 'done';

-- Poison values: the row is left untouched and the reason kept here for the operator.
CREATE TABLE rekey.row_failures (
  failure_id  bigserial PRIMARY KEY,
  job_id      bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  batch_no    integer NOT NULL,
  table_name  text NOT NULL,              -- schema-qualified
  pk          text NOT NULL,
  column_name name NOT NULL,
  error_class text NOT NULL,              -- crypto::DecodeStatusName: auth_failed, truncated, ...
  key_id      bigint,                     -- the key the value claimed, when it could be parsed
  at          timestamptz NOT NULL DEFAULT now(),
  worker_id   text
);
CREATE INDEX row_failures_job ON rekey.row_failures (job_id, batch_no);
-- A value is quarantined once per job: later passes (sweeps, requeues) that meet it again count
-- it as skipped.
CREATE UNIQUE INDEX row_failures_once ON rekey.row_failures (job_id, table_name, pk, column_name);

-- Live worker processes' claim loops; last_seen is refreshed at every claim.
CREATE TABLE rekey.workers (
  worker_id  text PRIMARY KEY,
  started_at timestamptz NOT NULL DEFAULT now(),
  last_seen  timestamptz NOT NULL DEFAULT now(),
  job_id     bigint
);

-- Append-only audit log: who did what, when. UPDATE, DELETE and TRUNCATE are rejected by
-- triggers (and revoked from PUBLIC), so even the owner cannot quietly rewrite history.
CREATE TABLE rekey.audit (
  audit_id bigserial PRIMARY KEY,
  at       timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor    text NOT NULL DEFAULT current_user,
  action   text NOT NULL,            -- e.g. job.created, rotation.batch.completed, job.paused
  outcome  text NOT NULL DEFAULT 'success',
  job_id   bigint,
  batch_no integer,
  details  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_job ON rekey.audit (job_id, action);

-- Optional per-value audit (jobs.per_row_audit), like a payment team's token_reencrypted rows.
CREATE TABLE rekey.value_audit (
  job_id      bigint NOT NULL,
  batch_no    integer NOT NULL,
  pk          text NOT NULL,
  column_name name NOT NULL,
  from_key_id bigint NOT NULL,
  to_key_id   bigint NOT NULL,
  at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX value_audit_job ON rekey.value_audit (job_id, pk);

REVOKE UPDATE, DELETE, TRUNCATE ON rekey.audit, rekey.value_audit FROM PUBLIC;
