-- Rotation jobs, the batch work queue, quarantined values, the append-only audit log, and the
-- control-plane functions a DBA runs from psql. Plain SQL: a team may apply it with its own tool.
--
-- A job re-encrypts the ciphertext columns of one table (optionally one scope of it, such as one
-- tenant) from source keys to target keys. Planning splits the table into primary-key ranges of
-- about batch_size rows (rekey.batches). Workers claim batches with FOR UPDATE SKIP LOCKED and
-- commit the rewritten rows, the batch checkpoint and its audit row in one transaction.

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
  state         text NOT NULL DEFAULT 'active'
                CHECK (state IN ('active', 'paused', 'completed', 'failed', 'cancelled')),
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

-- The work queue. A batch is the half-open primary-key range [lo, hi) (NULL = unbounded), kept as
-- the key's text form and cast back to pk_type in queries, so bigint, uuid and text keys share
-- one table. A batch being processed is held by its worker's session (see rekey.claim_batch):
-- state 'running' without that hold means the worker died, and the batch is claimable again.
CREATE TABLE rekey.batches (
  job_id       bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  batch_no     integer NOT NULL,
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
  PRIMARY KEY (job_id, batch_no)
);
CREATE INDEX batches_claimable ON rekey.batches (job_id, batch_no)
  WHERE state IN ('pending', 'running');
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

-- Splits a job's target into batches of batch_size rows by a keyset walk over the primary key:
-- each step asks the index for the key batch_size rows further on, so the server streams the
-- table and nothing is held in memory. The same data gives the same plan. Returns the number of
-- batches.
CREATE FUNCTION rekey.plan_job(p_job bigint) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  rel text;
  scope_sql text := '';
  lo text := NULL;
  hi text;
  n integer := 0;
  remaining bigint;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  IF EXISTS (SELECT 1 FROM rekey.batches WHERE job_id = p_job) THEN
    RAISE EXCEPTION 'job % is already planned', p_job;
  END IF;
  rel := format('%I.%I', j.schema_name, j.table_name);
  IF j.scope_column IS NOT NULL THEN
    scope_sql := format(' AND %I = %L::%s', j.scope_column, j.scope_value, j.scope_type);
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
        EXECUTE format('SELECT count(*) FROM %s WHERE true%s', rel, scope_sql) INTO remaining;
      ELSE
        EXECUTE format('SELECT count(*) FROM %1$s WHERE %2$I >= $1::%3$s%4$s',
                       rel, j.pk_column, j.pk_type, scope_sql)
          INTO remaining USING lo;
      END IF;
      INSERT INTO rekey.batches (job_id, batch_no, lo, hi, planned_rows)
      VALUES (p_job, n, lo, NULL, remaining);
      EXIT;
    END IF;
    INSERT INTO rekey.batches (job_id, batch_no, lo, hi, planned_rows)
    VALUES (p_job, n, lo, hi, j.batch_size);
    lo := hi;
  END LOOP;
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
  p_max_attempts integer DEFAULT 3)
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
  IF p_key_map IS NULL OR jsonb_typeof(p_key_map) <> 'object' OR p_key_map = '{}' THEN
    RAISE EXCEPTION 'the key map must be a JSON object {"source key id": target key id}' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_id_column, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts, per_row_audit)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, p_key_id_column, p_ad_template,
          p_scope_column, p_scope_value, scope_type, p_batch_size, p_max_attempts, p_per_row_audit)
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

  batches := rekey.plan_job(job);
  PERFORM rekey.audit_event('job.created', job, jsonb_build_object(
    'table', format('%I.%I', t.schema_name, t.table_name), 'columns', to_jsonb(p_columns),
    'key_map', p_key_map, 'batches', batches, 'batch_size', p_batch_size,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, p_scope_value) END));
  RETURN job;
END $$;

-- Claims one batch for p_worker (any active job, or only p_job), and records the worker's
-- heartbeat.
--
-- Liveness: the claiming session takes a session-level advisory lock on (job_id, batch_no) and
-- keeps it while it processes the batch, so it survives the claim's commit; the worker's next
-- claim releases it (pg_advisory_unlock_all), and so does the end of the session if the worker
-- dies. A 'running' batch whose advisory lock is free therefore belongs to a dead worker: it is
-- claimable at once and counts as an attempt. A batch whose attempts are used up is marked
-- failed instead.
CREATE FUNCTION rekey.claim_batch(p_worker text, p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, batch_no integer, lo text, hi text, attempt integer)
LANGUAGE plpgsql AS $$
DECLARE
  b rekey.batches;
  max_att integer;
  busy text[] := '{}';
BEGIN
  PERFORM pg_advisory_unlock_all();
  INSERT INTO rekey.workers AS w (worker_id, job_id) VALUES (p_worker, p_job)
  ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), job_id = EXCLUDED.job_id;
  LOOP
    SELECT x.* INTO b FROM rekey.batches x
     WHERE x.state IN ('pending', 'running')
       AND (p_job IS NULL OR x.job_id = p_job)
       AND EXISTS (SELECT 1 FROM rekey.jobs j WHERE j.job_id = x.job_id AND j.state = 'active')
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
    job_id := b.job_id; batch_no := b.batch_no; lo := b.lo; hi := b.hi; attempt := b.attempts + 1;
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
-- together or not at all.
CREATE FUNCTION rekey.complete_batch(p_job bigint, p_batch integer, p_worker text,
                                     p_done integer, p_skipped integer, p_failed integer,
                                     p_duration_ms double precision, p_details jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  UPDATE rekey.batches SET state = 'done', finished_at = now(), rows_done = p_done,
         rows_skipped = p_skipped, rows_failed = p_failed, duration_ms = p_duration_ms,
         last_error = NULL
   WHERE job_id = p_job AND batch_no = p_batch AND state = 'running' AND worker_id = p_worker;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', p_job, p_batch, p_worker
      USING ERRCODE = 'serialization_failure';
  END IF;
  PERFORM rekey.audit_event('rotation.batch.completed', p_job,
    p_details || jsonb_build_object('rows_reencrypted', p_done, 'rows_skipped', p_skipped,
                                    'rows_quarantined', p_failed, 'duration_ms', round(p_duration_ms::numeric, 3)),
    'success', p_batch, p_worker);
END $$;

-- Closes every active job (or p_job) that has no batch left to run: completed when all batches
-- are done, failed when some failed. Returns the jobs it closed. Safe to call concurrently: the
-- conditional UPDATE lets exactly one caller close a job.
CREATE FUNCTION rekey.finish_jobs(p_job bigint DEFAULT NULL)
RETURNS TABLE (job_id bigint, state text) LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  FOR r IN
    UPDATE rekey.jobs j
       SET state = CASE WHEN EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = j.job_id AND b.state = 'failed')
                        THEN 'failed' ELSE 'completed' END,
           state_reason = (SELECT CASE WHEN count(*) > 0 THEN count(*) || ' batches failed; see rekey.batch_status and run rekey.retry_failed(' || j.job_id || ')' END
                             FROM rekey.batches b WHERE b.job_id = j.job_id AND b.state = 'failed'),
           finished_at = now(), updated_at = now()
     WHERE j.state = 'active' AND (p_job IS NULL OR j.job_id = p_job)
       AND NOT EXISTS (SELECT 1 FROM rekey.batches b
                        WHERE b.job_id = j.job_id AND b.state IN ('pending', 'running'))
    RETURNING j.job_id, j.state, j.state_reason
  LOOP
    PERFORM rekey.audit_event(CASE WHEN r.state = 'completed' THEN 'job.completed' ELSE 'job.failed' END,
      r.job_id,
      (SELECT jsonb_build_object('rows_reencrypted', sum(rows_done), 'rows_quarantined', sum(rows_failed),
                                 'batches', count(*), 'batches_failed', count(*) FILTER (WHERE b.state = 'failed'))
         FROM rekey.batches b WHERE b.job_id = r.job_id),
      CASE WHEN r.state = 'completed' THEN 'success' ELSE 'failure' END);
    job_id := r.job_id; state := r.state;
    RETURN NEXT;
  END LOOP;
END $$;

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
         finished_at = CASE WHEN p_to IN ('completed', 'failed', 'cancelled') THEN now() ELSE NULL END
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.' || p_action, p_job, jsonb_build_object('from', cur, 'to', p_to, 'reason', p_reason));
  RETURN format('job %s: %s -> %s', p_job, cur, p_to);
END $$;

CREATE FUNCTION rekey.pause_job(p_job bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT rekey.set_job_state(p_job, 'paused', ARRAY['active'], 'paused', p_reason) $$;

CREATE FUNCTION rekey.resume_job(p_job bigint) RETURNS text
LANGUAGE sql AS $$ SELECT rekey.set_job_state(p_job, 'active', ARRAY['paused'], 'resumed') $$;

CREATE FUNCTION rekey.cancel_job(p_job bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT rekey.set_job_state(p_job, 'cancelled', ARRAY['active', 'paused', 'failed'], 'cancelled', p_reason) $$;

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
  UPDATE rekey.jobs SET state = 'active', state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.retry_failed', p_job, jsonb_build_object('batches', n, 'from_state', cur));
  RETURN format('job %s: %s failed batches requeued', p_job, n);
END $$;

-- Requeues batches p_from..p_to (done or failed) so workers re-check them: only values still
-- under a source key are rewritten, so a requeue never encrypts a value twice.
CREATE FUNCTION rekey.requeue(p_job bigint, p_from integer, p_to integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'cancelled' THEN
    RAISE EXCEPTION 'job % is cancelled', p_job USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL
   WHERE job_id = p_job AND batch_no BETWEEN p_from AND p_to AND state IN ('done', 'failed');
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s: no finished batches in %s..%s: nothing to do', p_job, p_from, p_to);
  END IF;
  UPDATE rekey.jobs SET state = CASE WHEN state = 'paused' THEN 'paused' ELSE 'active' END,
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

-- Per-job progress, for psql and `rekey status`.
CREATE VIEW rekey.progress AS
WITH b AS (
  SELECT job_id,
         count(*) AS batches_total,
         count(*) FILTER (WHERE state = 'done') AS batches_done,
         count(*) FILTER (WHERE state = 'failed') AS batches_failed,
         count(*) FILTER (WHERE state = 'running') AS batches_running,
         count(*) FILTER (WHERE state = 'pending') AS batches_pending,
         coalesce(sum(planned_rows), 0) AS rows_total,
         coalesce(sum(planned_rows) FILTER (WHERE state = 'done'), 0) AS rows_processed,
         coalesce(sum(rows_done), 0) AS rows_reencrypted,
         coalesce(sum(rows_failed), 0) AS rows_quarantined,
         coalesce(sum(planned_rows) FILTER (WHERE state = 'done' AND finished_at > now() - interval '1 minute'), 0)
           AS rows_last_minute,
         min(finished_at) FILTER (WHERE state = 'done' AND finished_at > now() - interval '1 minute') AS window_start,
         count(DISTINCT worker_id) FILTER (WHERE state = 'running') AS active_workers
    FROM rekey.batches GROUP BY job_id
)
SELECT j.job_id, j.name, j.state, j.state_reason,
       format('%I.%I', j.schema_name, j.table_name) AS target,
       (SELECT string_agg(source_key_id || '->' || target_key_id, ', ' ORDER BY source_key_id)
          FROM rekey.job_keys k WHERE k.job_id = j.job_id) AS keys,
       b.rows_total, b.rows_processed, b.rows_reencrypted, b.rows_quarantined,
       b.rows_total - b.rows_processed AS rows_remaining,
       b.batches_total, b.batches_done, b.batches_failed, b.batches_running, b.batches_pending,
       round(100.0 * b.rows_processed / greatest(b.rows_total, 1), 2) AS percent,
       round(b.rows_last_minute / greatest(extract(epoch FROM now() - least(b.window_start, now() - interval '1 second')), 1)::numeric, 1)
         AS rows_per_second,
       CASE WHEN b.rows_last_minute > 0 AND j.state = 'active'
            THEN make_interval(secs => (b.rows_total - b.rows_processed)
                   / (b.rows_last_minute / greatest(extract(epoch FROM now() - b.window_start), 1)))
       END AS eta,
       b.active_workers,
       j.created_at, j.started_at, j.finished_at,
       j.finished_at - j.started_at AS duration
  FROM rekey.jobs j LEFT JOIN b USING (job_id);

-- One row per batch, newest activity first within a job.
CREATE VIEW rekey.batch_status AS
SELECT job_id, batch_no, state, attempts, worker_id, lo, hi, planned_rows, rows_done, rows_skipped,
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
