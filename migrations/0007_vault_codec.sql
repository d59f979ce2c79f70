-- The vault-transit column codec (docs/kms.md, "Columns encrypted by Transit itself").
--
-- Some applications encrypt through Vault Transit themselves and store its ciphertext,
-- "vault:v<N>:<base64>", in a text column. Such a column is rotated inside Vault with rewrap:
-- rekey never sees a plaintext and holds no data key. A transit job's "keys" are versions of one
-- Transit key (jobs.transit_key_ref, "<mount>/keys/<name>"): every value whose version is below
-- jobs.transit_min_version is rewrapped to the key's latest version. There is no keyring to
-- promote (keys_promoted is true from the start) and no rollback (Transit cannot encrypt under an
-- old version). Stages, gates and sweeps work as for any job; a gate checks the sampled values'
-- versions.

ALTER TABLE rekey.targets DROP CONSTRAINT targets_codec_check;
ALTER TABLE rekey.targets ADD CONSTRAINT targets_codec_check
  CHECK (codec IN ('tink', 'raw', 'vault-transit'));

ALTER TABLE rekey.jobs
  ADD COLUMN transit_key_ref text
    CHECK (transit_key_ref ~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$'),
  ADD COLUMN transit_min_version integer CHECK (transit_min_version >= 1),
  ADD CONSTRAINT jobs_transit_both_or_neither
    CHECK ((transit_key_ref IS NULL) = (transit_min_version IS NULL));

-- Vault's reason for a value it refused (e.g. "v1: cipher: message authentication failed");
-- NULL for values rekey's own codecs could not open.
ALTER TABLE rekey.row_failures ADD COLUMN detail text;

-- The version N of a Transit ciphertext "vault:vN:...", or NULL iff the value is not one.
CREATE FUNCTION rekey.transit_version(p_value text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT substring(p_value from '^vault:v([0-9]{1,9}):[A-Za-z0-9+/=]+$')::integer;
$$;

-- Defines, plans and audits a job that rewraps Transit ciphertexts in p_columns (text or
-- varchar) to the latest version of p_transit_key, for every value below version p_min_version.
-- The caller (`rekey job create --codec vault-transit`) has checked the key in Vault and chosen
-- p_min_version (by default the key's latest version); this function cannot reach Vault.
--   p_ad_template  the per-row Transit derivation context (rendered, then base64): required by
--                  a derived key, refused for another (the CLI checks which the key is)
-- The other parameters are those of rekey.create_job. Bad input raises and writes nothing.
CREATE FUNCTION rekey.create_transit_job(
  p_table text,
  p_columns text[],
  p_transit_key text,
  p_min_version integer,
  p_ad_template text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
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
  job bigint;
  tid bigint;
  batches integer;
  i integer;
  prev numeric := 0;
BEGIN
  t := rekey.resolve_table(p_table);
  SELECT min(a.attname), count(*) INTO pk_col, i
    FROM pg_index x
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey)
   WHERE x.indrelid = format('%I.%I', t.schema_name, t.table_name)::regclass AND x.indisprimary;
  IF i <> 1 THEN
    RAISE EXCEPTION 'table %.% needs a single-column primary key to split it into batches',
      quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'invalid_table_definition';
  END IF;
  pk_type := rekey.column_type(t.schema_name, t.table_name, pk_col);
  IF p_transit_key IS NULL OR p_transit_key !~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$' THEN
    RAISE EXCEPTION 'Transit key % is not a key path <mount>/keys/<name> (e.g. transit/keys/app)',
      quote_literal(coalesce(p_transit_key, '')) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_min_version IS NULL OR p_min_version < 1 THEN
    RAISE EXCEPTION 'the target Transit key version must be 1 or more, got %', p_min_version
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
    RAISE EXCEPTION 'a job needs at least one ciphertext column' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF (SELECT count(DISTINCT c) FROM unnest(p_columns) c) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'a column is listed twice' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 1000000 THEN
    RAISE EXCEPTION 'batch size must be between 1 and 1000000, got %', p_batch_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    col_type := rekey.column_type(t.schema_name, t.table_name, p_columns[i]);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'column % does not exist in %.%', quote_ident(p_columns[i]),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type <> 'text' AND col_type NOT LIKE 'character varying%' THEN
      RAISE EXCEPTION 'column %.%.% is %, not text: Transit ciphertexts (vault:vN:...) are stored as text',
        quote_ident(t.schema_name), quote_ident(t.table_name), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF p_columns[i] = pk_col THEN
      RAISE EXCEPTION 'column % is the primary key', quote_ident(p_columns[i]) USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
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
  IF p_error_threshold IS NULL OR p_error_threshold < 0 OR p_error_threshold > 1 THEN
    RAISE EXCEPTION 'the error threshold is a fraction between 0 and 1, e.g. 0.001 for 0.1%%' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- keys_promoted from the start: there is no keyring key to promote (open_stage skips it).
  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          keys_promoted, transit_key_ref, transit_min_version)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, p_ad_template,
          p_scope_column, p_scope_value, scope_type, p_batch_size, p_max_attempts,
          p_stages, cardinality(p_stages), p_error_threshold, p_observe, p_gate_sample_size,
          true, p_transit_key, p_min_version)
  RETURNING job_id INTO job;

  FOR i IN 1 .. cardinality(p_columns) LOOP
    SELECT target_id INTO tid FROM rekey.targets x
     WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name AND x.column_name = p_columns[i]
       AND x.scope_column IS NOT DISTINCT FROM p_scope_column AND x.scope_value IS NOT DISTINCT FROM p_scope_value;
    IF tid IS NULL THEN
      INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, ad_template,
                                 scope_column, scope_value)
      VALUES (t.schema_name, t.table_name, pk_col, p_columns[i], 'vault-transit', p_ad_template,
              p_scope_column, p_scope_value)
      RETURNING target_id INTO tid;
    ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid AND
                  (x.codec, x.ad_template) IS DISTINCT FROM ('vault-transit', p_ad_template)) THEN
      RAISE EXCEPTION 'column % is registered with another codec or associated data (target %)',
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
    'codec', 'vault-transit', 'transit_key', p_transit_key, 'min_version', p_min_version,
    'batches', batches, 'batch_size', p_batch_size, 'stages', to_jsonb(p_stages),
    'error_threshold', p_error_threshold, 'observe', p_observe::text,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, p_scope_value) END));
  PERFORM rekey.open_stage(job, 1);
  RETURN job;
END $$;

-- No rollback for a transit job, whatever the path (rekey.rollback_job adds a rollback stage):
-- Transit cannot encrypt under an older version, and rekey holds no plaintext to do it with.
CREATE FUNCTION rekey.refuse_transit_rollback() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.kind = 'rollback' AND
     EXISTS (SELECT 1 FROM rekey.jobs WHERE job_id = NEW.job_id AND transit_key_ref IS NOT NULL) THEN
    RAISE EXCEPTION 'job % rewraps Vault Transit values, which cannot be rolled back: Transit cannot encrypt under an older key version; cancel the job instead (values already rewrapped stay readable)',
      NEW.job_id USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER job_stages_no_transit_rollback BEFORE INSERT ON rekey.job_stages
  FOR EACH ROW EXECUTE FUNCTION rekey.refuse_transit_rollback();

-- rekey.key_usage as in 0001, but skipping vault-transit targets: they hold no keyring key's
-- values (and have no key-id column to count by), so retiring or destroying a key ignores them.
CREATE OR REPLACE FUNCTION rekey.key_usage(key_id bigint)
RETURNS TABLE (target_id bigint, target text, n bigint)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  t     rekey.targets%ROWTYPE;
  query text;
BEGIN
  FOR t IN SELECT * FROM rekey.targets ORDER BY targets.target_id LOOP
    -- Transit ciphertexts are under Vault's keys, never under a keyring key.
    CONTINUE WHEN t.codec = 'vault-transit';
    target_id := t.target_id;
    target := format('%I.%I.%I', t.schema_name, t.table_name, t.column_name);
    IF t.scope_column IS NOT NULL THEN
      target := target || format(' where %I = %L', t.scope_column, t.scope_value);
    END IF;

    IF to_regclass(format('%I.%I', t.schema_name, t.table_name)) IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = to_regclass(format('%I.%I', t.schema_name, t.table_name))
                        AND a.attname = t.column_name AND a.attnum > 0 AND NOT a.attisdropped) THEN
      RAISE NOTICE 'rekey.key_usage: skipping target % (%): the table or column no longer exists',
        t.target_id, target;
      CONTINUE;
    END IF;

    IF t.codec = 'tink' THEN
      query := format('SELECT count(*) FROM %I.%I WHERE substring(%I from 1 for 5) = '
                      '''\x01''::bytea || substring(int8send($1) from 5 for 4)',
                      t.schema_name, t.table_name, t.column_name);
    ELSE
      query := format('SELECT count(*) FROM %I.%I WHERE %I = $1 AND %I IS NOT NULL',
                      t.schema_name, t.table_name, t.key_id_column, t.column_name);
    END IF;
    IF t.scope_column IS NOT NULL THEN
      query := query || format(' AND %I::text = $2', t.scope_column);
    END IF;

    EXECUTE query INTO n USING key_usage.key_id, t.scope_value;
    RETURN NEXT;
  END LOOP;
END
$$;
