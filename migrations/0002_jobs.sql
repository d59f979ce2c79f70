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

CREATE FUNCTION rekey.reject_audit_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'rekey.audit is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON rekey.audit
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON rekey.audit
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.reject_audit_change();
CREATE TRIGGER value_audit_append_only BEFORE UPDATE OR DELETE ON rekey.value_audit
  FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();
REVOKE UPDATE, DELETE, TRUNCATE ON rekey.audit, rekey.value_audit FROM PUBLIC;

CREATE FUNCTION rekey.audit_event(p_action text, p_job bigint, p_details jsonb DEFAULT '{}',
                                  p_outcome text DEFAULT 'success', p_batch integer DEFAULT NULL,
                                  p_actor text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO rekey.audit (actor, action, outcome, job_id, batch_no, details)
  VALUES (coalesce(p_actor, current_user), p_action, p_outcome, p_job, p_batch, p_details);
$$;

-- The stage bucket of a row: a uniform pseudo-random number in 0..9999 derived from the text
-- form of its primary key, the same in every database and language:
--   bucket = (first 4 bytes of MD5(pk text), read as a big-endian unsigned integer) mod 10000
-- A row belongs to the rollout up to p percent iff bucket < p * 100, so stages nest. The 1%
-- canary of a table, from psql:  SELECT * FROM t WHERE rekey.stage_bucket(id::text) < 100;
CREATE FUNCTION rekey.stage_bucket(pk text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT (('x' || substr(md5(pk), 1, 8))::bit(32)::bigint % 10000)::integer
$$;

-- Splits one stage of a job into batches of batch_size rows, as half-open primary-key ranges.
-- A stage covering every bucket is planned by a keyset walk: each step asks the primary-key
-- index for the key batch_size rows further on, so the server streams the table and nothing is
-- held in memory. A partial stage numbers its rows in key order with a window function and cuts
-- every batch_size-th, so a 1% stage of a million rows costs ten batches, not a thousand.
-- The same data gives the same plan. Returns the number of batches.
CREATE FUNCTION rekey.plan_stage(p_job bigint, p_stage integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  rel text;
  scope_sql text := '';
  lo text := NULL;
  hi text;
  n integer := 0;
  first_batch integer;
  remaining bigint;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF EXISTS (SELECT 1 FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage) THEN
    RAISE EXCEPTION 'stage % of job % is already planned', p_stage, p_job;
  END IF;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  rel := format('%I.%I', j.schema_name, j.table_name);
  IF j.scope_column IS NOT NULL THEN
    scope_sql := format(' AND t.%I = %L::%s', j.scope_column, j.scope_value, j.scope_type);
  END IF;

  IF st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN
    EXECUTE format($q$
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
      SELECT $1, $2 + 1 + n, $3, CASE WHEN n = 0 THEN NULL ELSE k END,
             lead(k) OVER (ORDER BY n), least($4, total - n * $4)
        FROM (SELECT k, rn / $4 AS n, count(*) OVER () AS total, rn %% $4 AS r
                FROM (SELECT t.%1$I::text AS k, row_number() OVER (ORDER BY t.%1$I) - 1 AS rn
                        FROM %2$s AS t
                       WHERE rekey.stage_bucket(t.%1$I::text) >= $5
                         AND rekey.stage_bucket(t.%1$I::text) < $6%3$s) numbered) cut
       WHERE r = 0$q$, j.pk_column, rel, scope_sql)
      USING p_job, first_batch, p_stage, j.batch_size, st.bucket_lo, st.bucket_hi;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
      VALUES (p_job, first_batch + 1, p_stage, NULL, NULL, 0);
      n := 1;
    END IF;
    RETURN n;
  END IF;

  LOOP
    IF lo IS NULL THEN
      -- ORDER BY the qualified column: the unqualified name would sort the text output.
      EXECUTE format('SELECT t.%1$I::text FROM %2$s AS t WHERE true%3$s ORDER BY t.%1$I OFFSET $1 LIMIT 1',
                     j.pk_column, rel, scope_sql)
        INTO hi USING j.batch_size;
    ELSE
      EXECUTE format('SELECT t.%1$I::text FROM %2$s AS t WHERE t.%1$I >= $2::%4$s%3$s ORDER BY t.%1$I OFFSET $1 LIMIT 1',
                     j.pk_column, rel, scope_sql, j.pk_type)
        INTO hi USING j.batch_size, lo;
    END IF;
    n := n + 1;
    IF hi IS NULL THEN
      IF lo IS NULL THEN
        EXECUTE format('SELECT count(*) FROM %s AS t WHERE true%s', rel, scope_sql) INTO remaining;
      ELSE
        EXECUTE format('SELECT count(*) FROM %1$s AS t WHERE t.%2$I >= $1::%3$s%4$s',
                       rel, j.pk_column, j.pk_type, scope_sql)
          INTO remaining USING lo;
      END IF;
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
      VALUES (p_job, first_batch + n, p_stage, lo, NULL, remaining);
      EXIT;
    END IF;
    INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows)
    VALUES (p_job, first_batch + n, p_stage, lo, hi, j.batch_size);
    lo := hi;
  END LOOP;
  RETURN n;
END $$;

-- Adds a stage to a job and plans it. Returns the stage number.
CREATE FUNCTION rekey.add_stage(p_job bigint, p_kind text, p_percent numeric, p_bucket_lo integer,
                                p_bucket_hi integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
BEGIN
  SELECT coalesce(max(stage_no), 0) + 1 INTO n FROM rekey.job_stages WHERE job_id = p_job;
  INSERT INTO rekey.job_stages (job_id, stage_no, kind, percent, bucket_lo, bucket_hi)
  VALUES (p_job, n, p_kind, p_percent, p_bucket_lo, p_bucket_hi);
  PERFORM rekey.plan_stage(p_job, n);
  RETURN n;
END $$;

-- Resolves a possibly schema-qualified, possibly quoted table name with PostgreSQL's own parser,
-- and checks it exists. Never pastes the text into SQL.
CREATE FUNCTION rekey.resolve_table(p_table text, OUT schema_name name, OUT table_name name)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  parts text[];
  rel oid;
BEGIN
  BEGIN
    parts := parse_ident(p_table);
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'invalid table name %: write schema.table, quoting unusual names with double quotes', quote_literal(p_table)
      USING ERRCODE = 'invalid_name';
  END;
  IF array_length(parts, 1) = 1 THEN
    parts := ARRAY['public', parts[1]];
  ELSIF array_length(parts, 1) <> 2 THEN
    RAISE EXCEPTION 'invalid table name %: write schema.table', quote_literal(p_table)
      USING ERRCODE = 'invalid_name';
  END IF;
  SELECT c.oid, n.nspname, c.relname INTO rel, schema_name, table_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = parts[1] AND c.relname = parts[2] AND c.relkind IN ('r', 'p');
  IF rel IS NULL THEN
    RAISE EXCEPTION 'table %.% does not exist', quote_ident(parts[1]), quote_ident(parts[2])
      USING ERRCODE = 'undefined_table';
  END IF;
END $$;

-- format_type of a column of schema.table, or NULL iff there is no such column.
CREATE FUNCTION rekey.column_type(p_schema name, p_table name, p_column text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
$$;

-- Defines a rotation job, registers its columns as targets, plans it, and audits it.
--   p_table       schema.table (PostgreSQL identifier syntax)
--   p_columns     ciphertext columns (bytea)
--   p_key_map     {"source key id": target key id, ...}
--   p_codecs      one codec per column ('tink' or 'raw'); NULL = all 'tink'
--   p_key_id_column  integer column holding the key id: required by 'raw', kept in step otherwise
--   p_scope_column/p_scope_value  restrict the job to rows where column = value
--   p_stages      cumulative percentages, increasing, ending at 100 (default 1,25,50,75,100)
--   p_promote_at_stage  the stage whose opening makes the target keys primary (default: the last)
--   p_error_threshold   a gate fails when its decrypt error rate is not below this (default 0.1%)
--   p_observe     advance on its own this long after a passed gate; NULL = wait for approval
-- Every identifier is checked against the catalog and quoted; bad input raises and writes nothing.
CREATE FUNCTION rekey.create_job(
  p_table text,
  p_columns text[],
  p_key_map jsonb,
  p_codecs text[] DEFAULT NULL,
  p_key_id_column text DEFAULT NULL,
  p_ad_template text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_per_row_audit boolean DEFAULT false,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_promote_at_stage integer DEFAULT NULL,
  p_error_threshold numeric DEFAULT 0.001,
  p_observe interval DEFAULT NULL,
  p_gate_sample_size integer DEFAULT 10000)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  col_type text;
  v_codec text;
  job bigint;
  tid bigint;
  src text;
  dst jsonb;
  batches integer;
  src_status text;
  dst_status text;
  i integer;
  prev numeric := 0;
BEGIN
  t := rekey.resolve_table(p_table);
  -- Exactly one primary-key column: batches are ranges over it.
  SELECT min(a.attname), count(*) INTO pk_col, i
    FROM pg_index x
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
   WHERE x.indrelid = format('%I.%I', t.schema_name, t.table_name)::regclass AND x.indisprimary;
  IF i = 0 THEN
    RAISE EXCEPTION 'table %.% has no primary key; rekey needs a single-column primary key to split it into batches',
      quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'invalid_table_definition';
  ELSIF i > 1 THEN
    RAISE EXCEPTION 'table %.% has a composite primary key; rekey supports single-column primary keys',
      quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'feature_not_supported';
  END IF;
  pk_type := rekey.column_type(t.schema_name, t.table_name, pk_col);

  IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
    RAISE EXCEPTION 'a job needs at least one ciphertext column' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_codecs IS NOT NULL AND cardinality(p_codecs) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'give one codec per column (% columns, % codecs)', cardinality(p_columns), cardinality(p_codecs)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 1000000 THEN
    RAISE EXCEPTION 'batch size must be between 1 and 1000000, got %', p_batch_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    col_type := rekey.column_type(t.schema_name, t.table_name, p_columns[i]);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'column % does not exist in %.%', quote_ident(p_columns[i]),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type <> 'bytea' THEN
      RAISE EXCEPTION 'column %.%.% is %, not bytea; rekey rewrites binary ciphertext columns',
        quote_ident(t.schema_name), quote_ident(t.table_name), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF p_columns[i] = pk_col THEN
      RAISE EXCEPTION 'column % is the primary key', quote_ident(p_columns[i]) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_codec := coalesce(p_codecs[i], 'tink');
    IF v_codec NOT IN ('tink', 'raw') THEN
      RAISE EXCEPTION 'unknown codec % for column %: use tink or raw', quote_literal(v_codec), quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_codec = 'raw' AND p_key_id_column IS NULL THEN
      RAISE EXCEPTION 'column % uses the raw codec, which needs a key-id column', quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
  IF (SELECT count(DISTINCT c) FROM unnest(p_columns) c) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'a column is listed twice' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_id_column IS NOT NULL THEN
    col_type := rekey.column_type(t.schema_name, t.table_name, p_key_id_column);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'key-id column % does not exist in %.%', quote_ident(p_key_id_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type NOT IN ('integer', 'bigint') THEN
      RAISE EXCEPTION 'key-id column % is %, not integer or bigint', quote_ident(p_key_id_column), col_type
        USING ERRCODE = 'datatype_mismatch';
    END IF;
  END IF;
  IF (p_scope_column IS NULL) <> (p_scope_value IS NULL) THEN
    RAISE EXCEPTION 'a scope needs both a column and a value' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_scope_column IS NOT NULL THEN
    scope_type := rekey.column_type(t.schema_name, t.table_name, p_scope_column);
    IF scope_type IS NULL THEN
      RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_scope_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    END IF;
    BEGIN
      EXECUTE format('SELECT %L::%s', p_scope_value, scope_type);
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'scope value % is not a valid %', quote_literal(p_scope_value), scope_type
        USING ERRCODE = 'invalid_parameter_value';
    END;
  END IF;
  IF p_ad_template IS NOT NULL AND
     regexp_replace(regexp_replace(p_ad_template, '\{\{|\}\}', '', 'g'),
                    '\{(schema|table|column|pk)\}', '', 'g') ~ '[{}]' THEN
    RAISE EXCEPTION 'invalid associated-data template %: use {schema}, {table}, {column}, {pk}; write {{ and }} for braces',
      quote_literal(p_ad_template) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_stages IS NULL OR cardinality(p_stages) = 0 OR p_stages[cardinality(p_stages)] <> 100 THEN
    RAISE EXCEPTION 'the stage plan must end at 100 (percent), as in 1,25,50,75,100' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    IF p_stages[i] IS NULL OR p_stages[i] <= prev OR p_stages[i] * 100 <> round(p_stages[i] * 100) THEN
      RAISE EXCEPTION 'bad stage plan %: percentages must increase, with at most two decimals', p_stages
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := p_stages[i];
  END LOOP;
  IF p_promote_at_stage IS NOT NULL AND (p_promote_at_stage < 1 OR p_promote_at_stage > cardinality(p_stages)) THEN
    RAISE EXCEPTION 'promote-at-stage must be between 1 and % (the number of stages)', cardinality(p_stages)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_error_threshold IS NULL OR p_error_threshold < 0 OR p_error_threshold > 1 THEN
    RAISE EXCEPTION 'the error threshold is a fraction between 0 and 1, e.g. 0.001 for 0.1%%' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_map IS NULL OR jsonb_typeof(p_key_map) <> 'object' OR p_key_map = '{}' THEN
    RAISE EXCEPTION 'the key map must be a JSON object {"source key id": target key id}' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_id_column, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts, per_row_audit,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, p_key_id_column, p_ad_template,
          p_scope_column, p_scope_value, scope_type, p_batch_size, p_max_attempts, p_per_row_audit,
          p_stages, coalesce(p_promote_at_stage, cardinality(p_stages)), p_error_threshold, p_observe,
          p_gate_sample_size)
  RETURNING job_id INTO job;

  FOR src, dst IN SELECT * FROM jsonb_each(p_key_map) LOOP
    IF src !~ '^[0-9]{1,10}$' OR jsonb_typeof(dst) <> 'number' THEN
      RAISE EXCEPTION 'bad key map entry "%": %; key ids are integers', src, dst USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT status INTO src_status FROM rekey.keys WHERE key_id = src::bigint;
    SELECT status INTO dst_status FROM rekey.keys WHERE key_id = dst::text::bigint;
    IF src_status IS NULL THEN
      RAISE EXCEPTION 'unknown source key %; rekey keys list shows the keyring', src USING ERRCODE = 'foreign_key_violation';
    ELSIF dst_status IS NULL THEN
      RAISE EXCEPTION 'unknown target key %; rekey keys list shows the keyring', dst USING ERRCODE = 'foreign_key_violation';
    ELSIF src::bigint = dst::text::bigint THEN
      RAISE EXCEPTION 'key % is both source and target: a rotation needs a different target key', src
        USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_status = 'destroyed' THEN
      RAISE EXCEPTION 'source key % is destroyed: its values cannot be decrypted', src USING ERRCODE = 'invalid_parameter_value';
    ELSIF dst_status NOT IN ('enabled', 'primary') THEN
      RAISE EXCEPTION 'target key % is %, it must be enabled or primary', dst, dst_status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_keys VALUES (job, src::bigint, dst::text::bigint);
  END LOOP;
  IF EXISTS (SELECT 1 FROM rekey.job_keys a JOIN rekey.job_keys b USING (job_id)
              WHERE a.job_id = job AND a.target_key_id = b.source_key_id) THEN
    RAISE EXCEPTION 'a target key is also a source key in the key map' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  FOR i IN 1 .. cardinality(p_columns) LOOP
    v_codec := coalesce(p_codecs[i], 'tink');
    SELECT target_id INTO tid FROM rekey.targets x
     WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name AND x.column_name = p_columns[i]
       AND x.scope_column IS NOT DISTINCT FROM p_scope_column AND x.scope_value IS NOT DISTINCT FROM p_scope_value;
    IF tid IS NULL THEN
      INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, key_id_column,
                                 ad_template, scope_column, scope_value)
      VALUES (t.schema_name, t.table_name, pk_col, p_columns[i], v_codec, p_key_id_column, p_ad_template,
              p_scope_column, p_scope_value)
      RETURNING target_id INTO tid;
    ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid AND
                  (x.codec, x.key_id_column, x.ad_template) IS DISTINCT FROM (v_codec, p_key_id_column::name, p_ad_template)) THEN
      RAISE EXCEPTION 'column % is registered with another codec, key-id column or associated data (target %)',
        quote_ident(p_columns[i]), tid USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_columns VALUES (job, i, tid);
  END LOOP;

  prev := 0;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    PERFORM rekey.add_stage(job, 'rollout', p_stages[i], (prev * 100)::integer, (p_stages[i] * 100)::integer);
    prev := p_stages[i];
  END LOOP;
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = job;
  PERFORM rekey.audit_event('job.created', job, jsonb_build_object(
    'table', format('%I.%I', t.schema_name, t.table_name), 'columns', to_jsonb(p_columns),
    'key_map', p_key_map, 'batches', batches, 'batch_size', p_batch_size, 'stages', to_jsonb(p_stages),
    'promote_at_stage', coalesce(p_promote_at_stage, cardinality(p_stages)),
    'error_threshold', p_error_threshold, 'observe', p_observe::text,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, p_scope_value) END));
  PERFORM rekey.open_stage(job, 1);
  RETURN job;
END $$;

-- Opens stage p_stage of a job: workers may claim its batches from now on. Opening the
-- promotion stage makes the target keys primary for application writes.
CREATE FUNCTION rekey.open_stage(p_job bigint, p_stage integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  -- Batches finished by an earlier pass (before a rollback) are checked again.
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL, rows_done = 0,
         rows_skipped = 0, rows_failed = 0, last_error = NULL
   WHERE job_id = p_job AND stage_no = p_stage AND state <> 'pending';
  UPDATE rekey.job_stages SET state = 'running', opened_at = now(), finished_at = NULL
   WHERE job_id = p_job AND stage_no = p_stage;
  UPDATE rekey.jobs SET current_stage = p_stage, state = 'active', state_reason = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('stage.opened', p_job, jsonb_build_object(
    'stage', p_stage, 'kind', st.kind, 'percent', st.percent,
    'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage),
    'rows', (SELECT sum(planned_rows) FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage)));
  IF st.kind = 'rollout' AND p_stage >= j.promote_at_stage AND NOT j.keys_promoted THEN
    PERFORM rekey.promote_job_keys(p_job);
  END IF;
END $$;

-- Makes each target key primary in its scope (the scope's current primary becomes
-- decrypt_only), so applications write under the new key from now on. A scope that receives
-- several target keys in this job keeps its keys as they are: there can be only one primary.
CREATE FUNCTION rekey.promote_job_keys(p_job bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  FOR r IN
    SELECT k.key_id, k.scope, k.status FROM rekey.keys k
     WHERE k.key_id IN (SELECT target_key_id FROM rekey.job_keys WHERE job_id = p_job)
       AND (SELECT count(DISTINCT jk.target_key_id) FROM rekey.job_keys jk JOIN rekey.keys x ON x.key_id = jk.target_key_id
             WHERE jk.job_id = p_job AND x.scope = k.scope) = 1
  LOOP
    IF r.status <> 'primary' THEN
      UPDATE rekey.keys SET status = 'decrypt_only' WHERE scope = r.scope AND status = 'primary';
      UPDATE rekey.keys SET status = 'primary' WHERE key_id = r.key_id;
    END IF;
  END LOOP;
  UPDATE rekey.jobs SET keys_promoted = true WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.keys_promoted', p_job, jsonb_build_object(
    'primary', (SELECT jsonb_agg(target_key_id) FROM rekey.job_keys WHERE job_id = p_job)));
END $$;

-- Claims one batch for p_worker (any active job, or only p_job) from each job's open stage,
-- and records the worker's heartbeat.
--
-- Liveness: the claiming session takes a session-level advisory lock on (job_id, batch_no) and
-- keeps it while it processes the batch, so it survives the claim's commit; the worker's next
-- claim releases it (pg_advisory_unlock_all), and so does the end of the session if the worker
-- dies. A 'running' batch whose advisory lock is free therefore belongs to a dead worker: it is
-- claimable at once and counts as an attempt. A batch whose attempts are used up is marked
-- failed instead.
CREATE FUNCTION rekey.claim_batch(p_worker text, p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, batch_no integer, lo text, hi text, attempt integer, stage_no integer,
               bucket_lo integer, bucket_hi integer, rollback boolean)
LANGUAGE plpgsql AS $$
DECLARE
  b rekey.batches;
  st rekey.job_stages;
  max_att integer;
  busy text[] := '{}';
BEGIN
  PERFORM pg_advisory_unlock_all();
  INSERT INTO rekey.workers AS w (worker_id, job_id) VALUES (p_worker, p_job)
  ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), job_id = EXCLUDED.job_id;
  LOOP
    SELECT x.* INTO b FROM rekey.jobs j JOIN rekey.batches x
        ON x.job_id = j.job_id AND x.stage_no = j.current_stage
     WHERE j.state = 'active' AND (p_job IS NULL OR j.job_id = p_job)
       AND x.state IN ('pending', 'running')
       AND (x.job_id || ':' || x.batch_no) <> ALL (busy)
     ORDER BY x.job_id, x.batch_no
     LIMIT 1 FOR UPDATE OF x SKIP LOCKED;
    IF NOT FOUND THEN
      RETURN;
    END IF;
    IF NOT pg_try_advisory_lock(b.job_id::integer, b.batch_no) THEN
      busy := busy || (b.job_id || ':' || b.batch_no);  -- a live worker holds it
      CONTINUE;
    END IF;
    SELECT j.max_attempts INTO max_att FROM rekey.jobs j WHERE j.job_id = b.job_id;
    IF b.attempts >= max_att THEN
      UPDATE rekey.batches x SET state = 'failed', finished_at = now(),
             last_error = coalesce(x.last_error, 'worker ' || coalesce(x.worker_id, '?') || ' died while processing this batch')
                          || format(' (gave up after %s attempts)', x.attempts)
       WHERE x.job_id = b.job_id AND x.batch_no = b.batch_no;
      PERFORM rekey.audit_event('rotation.batch.failed', b.job_id,
        jsonb_build_object('attempts', b.attempts, 'last_error', b.last_error), 'failure', b.batch_no, p_worker);
      PERFORM pg_advisory_unlock(b.job_id::integer, b.batch_no);
      CONTINUE;
    END IF;
    UPDATE rekey.batches x SET state = 'running', attempts = x.attempts + 1, worker_id = p_worker,
           claimed_at = now()
     WHERE x.job_id = b.job_id AND x.batch_no = b.batch_no;
    UPDATE rekey.jobs j SET started_at = now() WHERE j.job_id = b.job_id AND j.started_at IS NULL;
    SELECT * INTO st FROM rekey.job_stages s WHERE s.job_id = b.job_id AND s.stage_no = b.stage_no;
    job_id := b.job_id; batch_no := b.batch_no; lo := b.lo; hi := b.hi; attempt := b.attempts + 1;
    stage_no := b.stage_no;
    bucket_lo := CASE WHEN st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN st.bucket_lo END;
    bucket_hi := CASE WHEN st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN st.bucket_hi END;
    rollback := st.kind = 'rollback';
    RETURN NEXT;
    RETURN;
  END LOOP;
END $$;

-- Records a batch whose processing failed before it could commit. Transient failures (the
-- database or KMS will likely recover) give the attempt back; permanent ones consume it, and
-- the last permitted attempt marks the batch failed.
CREATE FUNCTION rekey.release_batch(p_job bigint, p_batch integer, p_worker text, p_error text,
                                    p_transient boolean)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  b rekey.batches;
  max_att integer;
  new_state text;
BEGIN
  SELECT * INTO b FROM rekey.batches WHERE job_id = p_job AND batch_no = p_batch FOR UPDATE;
  IF NOT FOUND OR b.state <> 'running' OR b.worker_id IS DISTINCT FROM p_worker THEN
    RETURN 'not-owner';
  END IF;
  SELECT max_attempts INTO max_att FROM rekey.jobs WHERE job_id = p_job;
  IF p_transient THEN
    new_state := 'pending';
    UPDATE rekey.batches SET state = 'pending', attempts = greatest(attempts - 1, 0), last_error = p_error
     WHERE job_id = p_job AND batch_no = p_batch;
  ELSE
    new_state := CASE WHEN b.attempts >= max_att THEN 'failed' ELSE 'pending' END;
    UPDATE rekey.batches SET state = new_state, last_error = p_error,
           finished_at = CASE WHEN new_state = 'failed' THEN now() END
     WHERE job_id = p_job AND batch_no = p_batch;
    IF new_state = 'failed' THEN
      PERFORM rekey.audit_event('rotation.batch.failed', p_job,
        jsonb_build_object('attempts', b.attempts, 'last_error', p_error), 'failure', p_batch, p_worker);
    END IF;
  END IF;
  RETURN new_state;
END $$;

-- Marks the batch done with its counts and appends its completion audit row. Called by the
-- worker in the same transaction that rewrote the rows, so rows, checkpoint and audit commit
-- together or not at all. When the stage's decrypt error rate passes the job's threshold, the
-- job pauses itself with the reason.
CREATE FUNCTION rekey.complete_batch(p_job bigint, p_batch integer, p_worker text,
                                     p_done integer, p_skipped integer, p_failed integer,
                                     p_duration_ms double precision, p_details jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  stage integer;
  failed bigint;
  seen bigint;
  planned bigint;
  j rekey.jobs;
BEGIN
  UPDATE rekey.batches SET state = 'done', finished_at = now(), rows_done = p_done,
         rows_skipped = p_skipped, rows_failed = p_failed, duration_ms = p_duration_ms,
         last_error = NULL
   WHERE job_id = p_job AND batch_no = p_batch AND state = 'running' AND worker_id = p_worker
  RETURNING stage_no INTO stage;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', p_job, p_batch, p_worker
      USING ERRCODE = 'serialization_failure';
  END IF;
  PERFORM rekey.audit_event('rotation.batch.completed', p_job,
    p_details || jsonb_build_object('stage', stage, 'rows_reencrypted', p_done, 'rows_skipped', p_skipped,
                                    'rows_quarantined', p_failed, 'duration_ms', round(p_duration_ms::numeric, 3)),
    'success', p_batch, p_worker);
  IF p_failed > 0 THEN
    SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job;
    SELECT sum(rows_failed), sum(rows_done + rows_failed), (SELECT sum(planned_rows) FROM rekey.batches
             WHERE job_id = p_job AND stage_no = stage)
      INTO failed, seen, planned
      FROM rekey.batches WHERE job_id = p_job AND stage_no = stage AND state = 'done';
    -- Judge the rate once it rests on a meaningful number of values (or the whole stage).
    IF seen >= least(1000, planned) AND failed::numeric / greatest(seen, 1) > j.error_threshold
       AND j.state = 'active' THEN
      UPDATE rekey.jobs SET state = 'paused', updated_at = now(),
             state_reason = format('decrypt error rate %s%% in stage %s exceeds the threshold %s%%: %s of %s values quarantined; see rekey.row_failures, then resume or roll back',
                                   round(100.0 * failed / seen, 3), stage, round(100 * j.error_threshold, 3), failed, seen)
       WHERE job_id = p_job;
      PERFORM rekey.audit_event('job.paused', p_job, jsonb_build_object(
        'reason', 'error threshold', 'stage', stage, 'quarantined', failed, 'values', seen,
        'threshold', j.error_threshold), 'failure', NULL, p_worker);
    END IF;
  END IF;
END $$;

-- Moves every active job (or p_job) whose open stage has no batch left to run to its next
-- state: a finished rollout stage waits for its verification gate ('verifying'); a sweep that
-- found nothing completes the job, otherwise another sweep starts; a rollback ends the job
-- 'rolled_back' (or back at an earlier stage); failed batches make the job 'failed'. Returns
-- the jobs it moved and their new state. Safe to call concurrently: the job row is locked.
CREATE FUNCTION rekey.finish_stages(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, state text) LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  n_failed bigint;
  n_done bigint;
  target_stage integer;
  sweeps integer;
BEGIN
  FOR j IN
    SELECT x.* FROM rekey.jobs x
     WHERE x.state = 'active' AND (p_job IS NULL OR x.job_id = p_job)
       AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = x.job_id
                          AND b.stage_no = x.current_stage AND b.state IN ('pending', 'running'))
     FOR UPDATE SKIP LOCKED
  LOOP
    -- Re-check under the lock: a batch may have been requeued meanwhile.
    CONTINUE WHEN EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = j.job_id
                            AND b.stage_no = j.current_stage AND b.state IN ('pending', 'running'));
    SELECT * INTO st FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
    SELECT count(*) FILTER (WHERE b.state = 'failed'), coalesce(sum(b.rows_done), 0)
      INTO n_failed, n_done
      FROM rekey.batches b WHERE b.job_id = j.job_id AND b.stage_no = j.current_stage;
    job_id := j.job_id;
    IF n_failed > 0 THEN
      UPDATE rekey.jobs x SET state = 'failed', finished_at = now(), updated_at = now(),
             state_reason = format('%s batches failed in stage %s; see rekey.batch_status and run rekey.retry_failed(%s)',
                                   n_failed, j.current_stage, j.job_id)
       WHERE x.job_id = j.job_id;
      PERFORM rekey.audit_event('job.failed', j.job_id, jsonb_build_object('stage', j.current_stage, 'batches_failed', n_failed), 'failure');
      state := 'failed';
    ELSIF st.kind = 'rollout' THEN
      UPDATE rekey.job_stages s SET state = 'verifying', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      UPDATE rekey.jobs x SET state = 'verifying', updated_at = now() WHERE x.job_id = j.job_id;
      state := 'verifying';
    ELSIF st.kind = 'sweep' THEN
      UPDATE rekey.job_stages s SET state = 'done', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      PERFORM rekey.audit_event('stage.completed', j.job_id, jsonb_build_object(
        'stage', j.current_stage, 'kind', 'sweep', 'rows_reencrypted', n_done));
      SELECT count(*) INTO sweeps FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.kind = 'sweep';
      IF n_done = 0 THEN
        PERFORM rekey.complete_job(j.job_id);
        state := 'completed';
      ELSIF sweeps >= 20 THEN
        UPDATE rekey.jobs x SET state = 'paused', updated_at = now(),
               state_reason = 'applications keep writing under the old key after 20 sweeps; check that every application reads the keyring''s primary key'
         WHERE x.job_id = j.job_id;
        state := 'paused';
      ELSE
        PERFORM rekey.open_stage(j.job_id, rekey.add_stage(j.job_id, 'sweep', 100, 0, 10000));
        state := 'active';
      END IF;
    ELSE  -- rollback
      UPDATE rekey.job_stages s SET state = 'done', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      SELECT max(s.stage_no) INTO target_stage FROM rekey.job_stages s
       WHERE s.job_id = j.job_id AND s.kind = 'rollout' AND s.bucket_hi <= st.bucket_lo;
      IF target_stage IS NULL THEN
        UPDATE rekey.jobs x SET state = 'rolled_back', finished_at = now(), updated_at = now(),
               state_reason = 'rolled back: every value is under its source key again'
         WHERE x.job_id = j.job_id;
        PERFORM rekey.audit_event('job.rolled_back', j.job_id, jsonb_build_object('stage', j.current_stage, 'rows_restored', n_done));
        state := 'rolled_back';
      ELSE
        UPDATE rekey.jobs x SET state = 'awaiting_approval', current_stage = target_stage, updated_at = now(),
               state_reason = format('rolled back to stage %s (%s%%); rekey job advance %s goes forward again',
                                     target_stage, (SELECT percent FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.stage_no = target_stage), j.job_id)
         WHERE x.job_id = j.job_id;
        PERFORM rekey.audit_event('job.rolled_back', j.job_id, jsonb_build_object(
          'stage', j.current_stage, 'rows_restored', n_done, 'back_to_stage', target_stage));
        state := 'awaiting_approval';
      END IF;
    END IF;
    RETURN NEXT;
  END LOOP;
END $$;

-- The end of a successful job: the source keys become decrypt_only (readable, no longer
-- written), and the job is completed.
CREATE FUNCTION rekey.complete_job(p_job bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.keys SET status = 'decrypt_only'
   WHERE key_id IN (SELECT source_key_id FROM rekey.job_keys WHERE job_id = p_job)
     AND status IN ('enabled', 'primary');
  UPDATE rekey.jobs SET state = 'completed', state_reason = NULL, finished_at = now(), updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.completed', p_job,
    (SELECT jsonb_build_object('rows_reencrypted', sum(rows_done), 'rows_quarantined', sum(rows_failed),
                               'batches', count(*))
       FROM rekey.batches b WHERE b.job_id = p_job));
END $$;

-- Records the verification gate of a job's finished rollout stage (the worker decrypted the
-- sample) and moves the job on: a passed gate waits for approval (or opens the sweep after the
-- last stage); a failed one pauses the job with the reason. Returns the gate's id.
CREATE FUNCTION rekey.record_gate(p_job bigint, p_stage integer, p_values_checked bigint,
                                  p_decrypt_errors bigint, p_verified_by text,
                                  p_details jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  quarantined bigint;
  rate numeric;
  audit_ok boolean;
  ok boolean;
  gate bigint;
  last_stage integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF j.state <> 'verifying' OR j.current_stage <> p_stage THEN
    RAISE EXCEPTION 'job % is not waiting for the gate of stage %', p_job, p_stage
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT coalesce(sum(rows_failed), 0) INTO quarantined
    FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage;
  rate := (p_decrypt_errors + quarantined)::numeric / greatest(p_values_checked + quarantined, 1);
  -- Each run of a batch (claim to commit) appends one completion row; a batch run again after a
  -- rollback or requeue has one per run, so count those since its latest claim.
  audit_ok := NOT EXISTS (
    SELECT 1 FROM rekey.batches b WHERE b.job_id = p_job AND b.state = 'done'
       AND (SELECT count(*) FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
               AND a.action = 'rotation.batch.completed' AND a.at >= b.claimed_at) <> 1);
  ok := rate <= j.error_threshold AND audit_ok AND (rate < j.error_threshold OR j.error_threshold = 0);
  INSERT INTO rekey.gates (job_id, stage_no, percent, values_checked, decrypt_errors, quarantined,
                           error_rate, threshold, audit_complete, passed, verified_by, details)
  VALUES (p_job, p_stage, st.percent, p_values_checked, p_decrypt_errors, quarantined, rate,
          j.error_threshold, audit_ok, ok, p_verified_by, p_details)
  RETURNING gate_id INTO gate;
  PERFORM rekey.audit_event(CASE WHEN ok THEN 'gate.passed' ELSE 'gate.failed' END, p_job,
    jsonb_build_object('stage', p_stage, 'percent', st.percent, 'values_checked', p_values_checked,
                       'decrypt_errors', p_decrypt_errors, 'quarantined', quarantined,
                       'error_rate', rate, 'threshold', j.error_threshold, 'audit_complete', audit_ok),
    CASE WHEN ok THEN 'success' ELSE 'failure' END, NULL, p_verified_by);
  IF NOT ok THEN
    UPDATE rekey.job_stages SET state = 'gate_failed' WHERE job_id = p_job AND stage_no = p_stage;
    UPDATE rekey.jobs SET state = 'paused', updated_at = now(),
           state_reason = format('gate of stage %s (%s%%) failed: decrypt error rate %s%% (%s of %s values) against a threshold of %s%%%s; see rekey.gates and rekey.row_failures, then roll back or fix and resume',
                                 p_stage, st.percent, round(100 * rate, 3), p_decrypt_errors + quarantined,
                                 p_values_checked + quarantined, round(100 * j.error_threshold, 3),
                                 CASE WHEN audit_ok THEN '' ELSE '; audit rows are missing' END)
     WHERE job_id = p_job;
    RETURN gate;
  END IF;
  UPDATE rekey.job_stages SET state = 'passed' WHERE job_id = p_job AND stage_no = p_stage;
  SELECT max(stage_no) INTO last_stage FROM rekey.job_stages WHERE job_id = p_job AND kind = 'rollout';
  IF p_stage = last_stage THEN
    -- Everything has moved and the new key is primary: sweep up what applications wrote meanwhile.
    IF NOT j.keys_promoted THEN
      PERFORM rekey.promote_job_keys(p_job);
    END IF;
    PERFORM rekey.open_stage(p_job, rekey.add_stage(p_job, 'sweep', 100, 0, 10000));
  ELSE
    UPDATE rekey.jobs SET state = 'awaiting_approval', updated_at = now(),
           state_reason = format('gate of stage %s (%s%%) passed; %s', p_stage, st.percent,
                                 CASE WHEN j.observe IS NULL THEN format('approve with rekey job advance %s', p_job)
                                      ELSE format('advances on its own at %s', now() + j.observe) END)
     WHERE job_id = p_job;
  END IF;
  RETURN gate;
END $$;

-- Opens the next rollout stage of a job waiting for approval. p_observe, when given, becomes the
-- job's observation period for later gates (0 = advance as soon as a gate passes).
CREATE FUNCTION rekey.advance_job(p_job bigint, p_observe interval DEFAULT NULL,
                                  p_force boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  next_stage integer;
BEGIN
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  IF j.state <> 'awaiting_approval' AND NOT (p_force AND j.state = 'paused') THEN
    RAISE EXCEPTION 'job % is %: only a job awaiting approval can advance%', p_job, j.state,
      CASE WHEN j.state = 'paused' THEN ' (a paused job resumes with rekey job resume, or advances past a failed gate with --force)' ELSE '' END
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT min(stage_no) INTO next_stage FROM rekey.job_stages
   WHERE job_id = p_job AND kind = 'rollout' AND stage_no > j.current_stage;
  IF p_observe IS NOT NULL THEN
    UPDATE rekey.jobs SET observe = p_observe WHERE job_id = p_job;
  END IF;
  UPDATE rekey.gates SET approved_at = now(), approved_by = current_user
   WHERE gate_id = (SELECT max(gate_id) FROM rekey.gates WHERE job_id = p_job AND stage_no = j.current_stage);
  PERFORM rekey.audit_event('job.advanced', p_job, jsonb_build_object(
    'from_stage', j.current_stage, 'to_stage', next_stage, 'forced', p_force));
  IF next_stage IS NULL THEN
    -- Past the last rollout stage (a forced advance over its failed gate): sweep.
    IF NOT j.keys_promoted THEN
      PERFORM rekey.promote_job_keys(p_job);
    END IF;
    PERFORM rekey.open_stage(p_job, rekey.add_stage(p_job, 'sweep', 100, 0, 10000));
    RETURN format('job %s: stage %s approved; sweeping for values still under the old key', p_job, j.current_stage);
  END IF;
  PERFORM rekey.open_stage(p_job, next_stage);
  RETURN format('job %s: stage %s (%s%%) opened', p_job, next_stage,
                (SELECT percent FROM rekey.job_stages WHERE job_id = p_job AND stage_no = next_stage));
END $$;

-- Advances every job whose gate passed at least `observe` ago. Workers call it while polling.
CREATE FUNCTION rekey.advance_due(p_job bigint DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  j record;
  n integer := 0;
BEGIN
  FOR j IN
    SELECT x.job_id FROM rekey.jobs x
     WHERE x.state = 'awaiting_approval' AND x.observe IS NOT NULL AND (p_job IS NULL OR x.job_id = p_job)
       AND EXISTS (SELECT 1 FROM rekey.gates g WHERE g.job_id = x.job_id AND g.stage_no = x.current_stage
                      AND g.passed AND g.verified_at + x.observe <= now())
     FOR UPDATE SKIP LOCKED
  LOOP
    PERFORM rekey.advance_job(j.job_id);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

-- Rolls a job back: the rows moved beyond p_to_percent (0 = all of them) are re-encrypted back to
-- their source keys by the same worker pool -- batched, resumable, audited -- and the keyring is
-- restored (source keys primary again, target keys decrypt_only). Possible at any stage and
-- after completion, as long as no source key is destroyed.
CREATE FUNCTION rekey.rollback_job(p_job bigint, p_to_percent numeric DEFAULT 0,
                                   p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  r record;
  stage integer;
BEGIN
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF j.state IN ('cancelled', 'rolled_back') THEN
    RAISE EXCEPTION 'job % is %: nothing to roll back', p_job, j.state USING ERRCODE = 'object_not_in_prerequisite_state';
  ELSIF p_to_percent IS NULL OR (p_to_percent <> 0 AND NOT p_to_percent = ANY (j.stage_plan[1:cardinality(j.stage_plan) - 1])) THEN
    RAISE EXCEPTION 'roll back to 0 or to one of the earlier stages'' percentages (%)', j.stage_plan
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF EXISTS (SELECT 1 FROM rekey.keys k JOIN rekey.job_keys jk ON jk.source_key_id = k.key_id
              WHERE jk.job_id = p_job AND k.status = 'destroyed') THEN
    RAISE EXCEPTION 'a source key of job % is destroyed: its values cannot be restored', p_job
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  -- Stop the forward work: stages not yet finished are cancelled.
  UPDATE rekey.job_stages SET state = 'cancelled'
   WHERE job_id = p_job AND state IN ('planned', 'running', 'verifying');
  -- The keyring as before the job: each source key primary again in its scope.
  FOR r IN SELECT jk.source_key_id, jk.target_key_id, k.scope, k.status AS source_status
             FROM rekey.job_keys jk JOIN rekey.keys k ON k.key_id = jk.source_key_id
            WHERE jk.job_id = p_job LOOP
    UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.target_key_id AND status IN ('primary', 'enabled');
    IF r.source_status = 'retired' THEN
      UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.source_key_id;
    END IF;
    IF j.keys_promoted AND NOT EXISTS (SELECT 1 FROM rekey.keys WHERE scope = r.scope AND status = 'primary') THEN
      UPDATE rekey.keys SET status = 'primary' WHERE key_id = r.source_key_id;
    END IF;
  END LOOP;
  UPDATE rekey.jobs SET keys_promoted = false WHERE job_id = p_job;
  stage := rekey.add_stage(p_job, 'rollback', p_to_percent, (p_to_percent * 100)::integer, 10000);
  PERFORM rekey.audit_event('job.rollback_started', p_job, jsonb_build_object(
    'from_state', j.state, 'from_stage', j.current_stage, 'to_percent', p_to_percent, 'reason', p_reason,
    'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = p_job AND stage_no = stage)));
  PERFORM rekey.open_stage(p_job, stage);
  UPDATE rekey.jobs SET finished_at = NULL, state_reason = format('rolling back to %s%%', p_to_percent)
   WHERE job_id = p_job;
  RETURN format('job %s: rolling back to %s%% (stage %s); run rekey work --job %s', p_job, p_to_percent, stage, p_job);
END $$;

-- Picks a job (or p_job) whose rollout stage waits for its gate, for the caller to verify.
-- Locks the job row (SKIP LOCKED), so two workers never verify the same stage.
CREATE FUNCTION rekey.next_gate(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, stage_no integer, bucket_hi integer, sample_size integer)
LANGUAGE sql AS $$
  SELECT j.job_id, j.current_stage, s.bucket_hi, j.gate_sample_size
    FROM rekey.jobs j JOIN rekey.job_stages s ON s.job_id = j.job_id AND s.stage_no = j.current_stage
   WHERE j.state = 'verifying' AND (p_job IS NULL OR j.job_id = p_job)
   ORDER BY j.job_id LIMIT 1
   FOR UPDATE OF j SKIP LOCKED;
$$;

-- DBA operations. Each is audited with the database user as actor.
CREATE FUNCTION rekey.set_job_state(p_job bigint, p_to text, p_from text[], p_action text,
                                    p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %; SELECT * FROM rekey.progress lists the jobs', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = p_to THEN
    RETURN format('job %s is already %s: nothing to do', p_job, cur);
  ELSIF NOT cur = ANY (p_from) THEN
    RAISE EXCEPTION 'job % is %; % is possible only when it is %', p_job, cur, p_action, array_to_string(p_from, ' or ')
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.jobs SET state = p_to, state_reason = p_reason, updated_at = now(),
         finished_at = CASE WHEN p_to IN ('completed', 'failed', 'cancelled', 'rolled_back') THEN now() ELSE NULL END
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.' || p_action, p_job, jsonb_build_object('from', cur, 'to', p_to, 'reason', p_reason));
  RETURN format('job %s: %s -> %s', p_job, cur, p_to);
END $$;

CREATE FUNCTION rekey.pause_job(p_job bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT rekey.set_job_state(p_job, 'paused', ARRAY['active'], 'paused', p_reason) $$;

-- A job paused by its error threshold or a failed gate resumes where it stopped: batches of the
-- open stage continue, and a failed gate is verified again (after the operator fixed the data).
CREATE FUNCTION rekey.resume_job(p_job bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  msg text;
BEGIN
  msg := rekey.set_job_state(p_job, 'active', ARRAY['paused'], 'resumed');
  UPDATE rekey.job_stages s SET state = 'running'
   WHERE s.job_id = p_job AND s.state = 'gate_failed';
  RETURN msg;
END $$;

CREATE FUNCTION rekey.cancel_job(p_job bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT rekey.set_job_state(p_job, 'cancelled', ARRAY['active', 'verifying', 'awaiting_approval', 'paused', 'failed'], 'cancelled', p_reason) $$;

-- Puts failed batches back in the queue with fresh attempts, and reopens the job.
CREATE FUNCTION rekey.retry_failed(p_job bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'cancelled' THEN
    RAISE EXCEPTION 'job % is cancelled; create a new job instead', p_job USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL
   WHERE job_id = p_job AND state = 'failed';
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s has no failed batches: nothing to do', p_job);
  END IF;
  UPDATE rekey.jobs SET state = CASE WHEN state = 'failed' THEN 'active' ELSE state END,
         state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.retry_failed', p_job, jsonb_build_object('batches', n, 'from_state', cur));
  RETURN format('job %s: %s failed batches requeued', p_job, n);
END $$;

-- Requeues batches p_from..p_to (done or failed) of the job's open -- or, once it finished, its
-- last -- stage, so workers re-check them: only values still under a source key are rewritten,
-- so a requeue never encrypts a value twice.
CREATE FUNCTION rekey.requeue(p_job bigint, p_from integer, p_to integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  cur text;
  stage integer;
BEGIN
  SELECT state, current_stage INTO cur, stage FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur IN ('cancelled', 'rolled_back', 'verifying', 'awaiting_approval') THEN
    RAISE EXCEPTION 'job % is %: requeue works on an active, paused, failed or completed job', p_job, cur
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL, rows_done = 0,
         rows_skipped = 0, rows_failed = 0
   WHERE job_id = p_job AND stage_no = stage AND batch_no BETWEEN p_from AND p_to
     AND state IN ('done', 'failed');
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s: no finished batches in %s..%s of stage %s (batches %s): nothing to do', p_job, p_from, p_to, stage,
                  (SELECT min(batch_no) || '..' || max(batch_no) FROM rekey.batches WHERE job_id = p_job AND stage_no = stage));
  END IF;
  UPDATE rekey.job_stages SET state = 'running', finished_at = NULL
   WHERE job_id = p_job AND stage_no = stage AND kind <> 'rollout';
  UPDATE rekey.jobs SET state = CASE WHEN state IN ('completed', 'failed') THEN 'active' ELSE state END,
         state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.requeued', p_job, jsonb_build_object('from_batch', p_from, 'to_batch', p_to, 'batches', n));
  RETURN format('job %s: %s batches requeued', p_job, n);
END $$;

-- Re-running a finished job is a no-op that says so; a failed job reruns its failed batches.
CREATE FUNCTION rekey.rerun_job(p_job bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'completed' THEN
    PERFORM rekey.audit_event('job.rerun', p_job, '{"result": "no-op: already completed"}');
    RETURN format('job %s is already completed: nothing to do', p_job);
  ELSIF cur = 'failed' THEN
    RETURN rekey.retry_failed(p_job);
  END IF;
  RETURN format('job %s is %s: nothing to rerun', p_job, cur);
END $$;

-- Per-job progress, for psql and `rekey status`. Totals and percent count the rollout stages
-- (each row once); the stage_* columns describe the open stage (a rollout, sweep or rollback
-- pass), and last_gate_* the latest verification gate.
CREATE VIEW rekey.progress AS
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
       j.finished_at - j.started_at AS duration
  FROM rekey.jobs j
  LEFT JOIN b USING (job_id)
  LEFT JOIN rate r USING (job_id)
  LEFT JOIN rekey.job_stages s ON s.job_id = j.job_id AND s.stage_no = j.current_stage
  LEFT JOIN LATERAL (SELECT * FROM rekey.gates x WHERE x.job_id = j.job_id ORDER BY gate_id DESC LIMIT 1) g ON true;

-- One row per stage of each job: what it covers, how far it is, and its gate.
CREATE VIEW rekey.stage_status AS
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
CREATE VIEW rekey.batch_status AS
SELECT job_id, batch_no, stage_no, state, attempts, worker_id, lo, hi, planned_rows, rows_done, rows_skipped,
       rows_failed, round(duration_ms::numeric, 1) AS duration_ms, claimed_at, finished_at, last_error,
       CASE WHEN state = 'running' THEN now() - claimed_at END AS running_for
  FROM rekey.batches;

-- Every keyring change is audited by the database itself, whoever makes it (CLI or psql).
CREATE FUNCTION rekey.audit_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM rekey.audit_event('key.created', NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'scope', NEW.scope, 'kms_provider', NEW.kms_provider,
      'kms_key_ref', NEW.kms_key_ref, 'origin', NEW.origin, 'status', NEW.status));
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM rekey.audit_event('key.' || NEW.status, NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'scope', NEW.scope, 'from', OLD.status, 'to', NEW.status));
  ELSIF NEW.kms_key_ref IS DISTINCT FROM OLD.kms_key_ref OR NEW.kms_provider IS DISTINCT FROM OLD.kms_provider THEN
    PERFORM rekey.audit_event('key.rewrapped', NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'from', OLD.kms_provider || ':' || OLD.kms_key_ref,
      'to', NEW.kms_provider || ':' || NEW.kms_key_ref));
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER keys_audit AFTER INSERT OR UPDATE ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.audit_key_change();
