-- Defining aws-kms jobs: columns of AWS KMS ciphertext blobs rotated inside KMS by ReEncrypt
-- (docs/kms.md, "Columns of AWS KMS ciphertext blobs"; docs/FORMAT.md, "aws-kms"). Uses the
-- checks of 40_jobs.sql that rekey.create_transit_job uses, and its end (rekey.finish_kms_job).

-- Defines, plans and audits a job that re-encrypts the AWS KMS ciphertext blobs of p_columns
-- from KMS key p_source_key to KMS key p_destination_key (both key ARNs: the caller, `rekey job
-- create --codec aws-kms`, has resolved them with DescribeKey and checked both are Enabled; this
-- function cannot reach KMS).
--   p_context   the constant encryption context the application bound to every value (a JSON
--               object of strings), NULL for none. A per-row context cannot be given: there is
--               no associated-data template for this codec (refused)
--   p_encoding  'bytea' (default) for blobs in bytea columns, 'base64' for base64 text
-- The other parameters are those of rekey.create_job. Bad input raises and writes nothing. The
-- scope value is kept in canonical form, and a column of another unfinished job is refused
-- (rekey.refuse_column_collision).
CREATE OR REPLACE FUNCTION rekey.create_aws_kms_job(
  p_table text,
  p_columns text[],
  p_source_key text,
  p_destination_key text,
  p_context jsonb DEFAULT NULL,
  p_encoding text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_per_row_audit boolean DEFAULT false,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_error_threshold numeric DEFAULT 0.001,
  p_observe interval DEFAULT NULL,
  p_gate_sample_size integer DEFAULT 10000)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  arn constant text := '^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$';
  t record;
  key record;
  scope_type text;
  v_scope_value text;
  v_encoding text;
  job bigint;
BEGIN
  t := rekey.job_table(p_table);
  key := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());
  IF p_source_key IS NULL OR p_source_key !~ arn OR p_destination_key IS NULL OR p_destination_key !~ arn THEN
    RAISE EXCEPTION 'an aws-kms job names its KMS keys by key ARN (arn:aws:kms:<region>:<account>:key/<id>), got % and %',
      quote_literal(coalesce(p_source_key, '')), quote_literal(coalesce(p_destination_key, ''))
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_source_key = p_destination_key THEN
    RAISE EXCEPTION 'the source and destination KMS keys are the same key (%): nothing to rotate', p_source_key
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_context IS NOT NULL AND (jsonb_typeof(p_context) <> 'object'
        OR EXISTS (SELECT 1 FROM jsonb_each(p_context) e WHERE jsonb_typeof(e.value) <> 'string')) THEN
    RAISE EXCEPTION 'an encryption context is a JSON object of strings, e.g. {"app":"billing"}; got %', p_context
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF coalesce(p_encoding, 'bytea') NOT IN ('bytea', 'base64') THEN
    RAISE EXCEPTION 'AWS KMS ciphertext blobs are stored as bytea or base64 text; encoding % does not apply',
      quote_literal(p_encoding) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT f.v_encoding INTO v_encoding
    FROM rekey.job_value_form(t.schema_name, t.table_name, t.pk_column, p_columns, NULL,
                              p_encoding, NULL) f;
  IF v_encoding NOT IN ('bytea', 'base64') THEN
    RAISE EXCEPTION 'AWS KMS ciphertext blobs are stored as bytea or base64 text; encoding % does not apply',
      quote_literal(v_encoding) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM rekey.refuse_key_ciphertext(p_columns, key.key_columns);
  SELECT s.scope_type, s.scope_value INTO scope_type, v_scope_value
    FROM rekey.job_scope(t.schema_name, t.table_name, p_scope_column, p_scope_value) s;
  PERFORM rekey.check_job_settings(p_batch_size, NULL, p_stages, p_error_threshold);

  -- keys_promoted from the start: there is no keyring key to promote (open_stage skips it).
  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_columns, key_types,
                          scope_column, scope_value, scope_type, batch_size, per_row_audit,
                          max_attempts, stage_plan, promote_at_stage, error_threshold, observe,
                          gate_sample_size, keys_promoted, aws_kms_source_key_arn, aws_kms_key_arn,
                          aws_kms_context)
  VALUES (p_name, t.schema_name, t.table_name, t.pk_column, t.pk_type, key.key_columns, key.key_types,
          p_scope_column, v_scope_value, scope_type, p_batch_size, coalesce(p_per_row_audit, false),
          p_max_attempts, p_stages, cardinality(p_stages), p_error_threshold, p_observe,
          p_gate_sample_size, true, p_source_key, p_destination_key, p_context)
  RETURNING job_id INTO job;

  PERFORM rekey.finish_kms_job(job, p_columns, 'aws-kms', NULL, v_encoding, jsonb_build_object(
    'source_kms_key', p_source_key, 'kms_key', p_destination_key,
    'encryption_context', p_context, 'encoding', v_encoding));
  RETURN job;
END $$;
