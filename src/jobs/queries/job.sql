-- Jobs as the worker loads and creates them (src/jobs/job.cpp).

-- name: load
-- The job's definition, one row, none if there is no such job. The key's and the scope's types
-- are the catalog's: rekey.checked_column_type raises (55000) if rekey.jobs records another.
-- scope_type is '' for a job without a scope. key_columns and key_types (checked the same way) are
-- JSON arrays of the whole key, in key order; key_text_form 'canonical' or 'legacy'.
SELECT job_id, coalesce(name, '') AS name, schema_name, table_name, pk_column,
       rekey.checked_column_type(schema_name, table_name, pk_column, pk_type) AS pk_type,
       array_to_json(key_columns)::text AS key_columns,
       array_to_json(rekey.job_key_types(j))::text AS key_types, key_text_form,
       key_id_column, ad_template, scope_column, scope_value,
       CASE WHEN scope_column IS NULL THEN ''
            ELSE rekey.checked_column_type(schema_name, table_name, scope_column, scope_type)
       END AS scope_type,
       batch_size, per_row_audit, state, current_stage, transit_key_ref, transit_min_version,
       aws_kms_source_key_arn, aws_kms_key_arn, aws_kms_context::text AS aws_kms_context
  FROM rekey.jobs j
 WHERE job_id = $1::bigint

-- name: columns
-- The job's ciphertext columns, their codecs and stored forms (encoding; json_path as a text[]
-- array as JSON, NULL for a column that holds the value itself), in the order the job lists them;
-- a lockbox column's key names as recorded (NULL: Lockbox's default).
SELECT t.column_name, t.codec, t.encoding, to_json(t.json_path)::text AS json_path,
       t.lockbox_key_table, t.lockbox_key_attribute
  FROM rekey.job_columns c
  JOIN rekey.targets t USING (target_id)
 WHERE c.job_id = $1::bigint
 ORDER BY c.ordinal

-- name: keys
-- The job's key map: each source key and the target key its values move to (none for transit).
SELECT source_key_id, target_key_id
  FROM rekey.job_keys
 WHERE job_id = $1::bigint

-- name: request_key_columns
-- For the rest of the transaction, the key of the jobs created is the unique index on the
-- columns of the text[] literal $1 ('' = the primary key): rekey.requested_key_columns.
SELECT set_config('rekey.key_columns', $1::text, true)

-- name: create_job
-- rekey.create_job with every argument (its contract is beside its definition): returns the
-- new job's id, or raises with a one-line reason and writes nothing.
SELECT rekey.create_job($1, $2::text[], $3::jsonb, $4::text[], $5, $6, $7, $8, $9::integer,
                        $10, $11::boolean, $12::integer, $13::numeric[], $14::integer,
                        $15::numeric, $16::interval, $17::integer, $18::text[],
                        $19::boolean, $20, $21::text[]) AS job_id

-- name: set_lockbox_key_names
-- rekey.set_lockbox_key_names: records the Lockbox key table and attribute ($2, $3; NULL for
-- Lockbox's default) of job $1's lockbox columns, or raises with a one-line reason.
SELECT rekey.set_lockbox_key_names($1::bigint, $2, $3)

-- name: create_transit_job
-- rekey.create_transit_job with every argument: returns the new vault-transit job's id, or
-- raises with a one-line reason and writes nothing.
SELECT rekey.create_transit_job($1, $2::text[], $3, $4::integer, $5, $6, $7, $8::integer, $9,
                                $10::integer, $11::numeric[], $12::numeric, $13::interval,
                                $14::integer) AS job_id

-- name: create_aws_kms_job
-- rekey.create_aws_kms_job with every argument: returns the new aws-kms job's id, or raises with
-- a one-line reason and writes nothing.
SELECT rekey.create_aws_kms_job($1, $2::text[], $3, $4, $5::jsonb, $6, $7, $8, $9::integer, $10,
                                $11::boolean, $12::integer, $13::numeric[], $14::numeric,
                                $15::interval, $16::integer) AS job_id

-- name: stage_plan
-- The job's stages as planned, in order (rekey.stage_status): rows and batches of each, and
-- whether opening it makes the new keys primary.
SELECT s.stage_no, s.kind, s.percent::text AS percent, s.rows_planned, s.batches,
       s.stage_no = j.promote_at_stage AS promotes
  FROM rekey.stage_status s
  JOIN rekey.jobs j USING (job_id)
 WHERE s.job_id = $1::bigint
 ORDER BY s.stage_no

-- name: exists
-- True iff job $1 exists.
SELECT EXISTS (SELECT 1 FROM rekey.jobs WHERE job_id = $1::bigint) AS job_exists
