-- The compliance report of a job (src/ops/compliance_report.cpp).

-- name: job_report
-- The report's JSON as text, built by the database from the job's own records
-- (rekey.job_report); raises for an unknown job.
SELECT rekey.job_report($1::bigint)::text AS report

-- name: aws_kms_keys
-- The AWS KMS keys of job $1 if it is an aws-kms job (no row otherwise): the key ARNs its blobs
-- move from and to, and the encryption context bound to them (JSON text, NULL for none). Such a
-- job has no keyring keys (rekey.job_keys), so rekey.job_report's "keys" has none of its own.
SELECT aws_kms_source_key_arn, aws_kms_key_arn, aws_kms_context::text AS aws_kms_context
  FROM rekey.jobs
 WHERE job_id = $1::bigint AND aws_kms_key_arn IS NOT NULL

-- name: store
-- Appends the report (JSON $2, Markdown $3) of job $1 to rekey.reports with the SHA-256 of the
-- body's text as the database stores it (jsonb normalizes key order and spacing), so anyone can
-- recompute it from the row with sha256(convert_to(body::text, 'UTF8')).
INSERT INTO rekey.reports (job_id, body, markdown, sha256)
SELECT $1::bigint, b, $3::text, encode(sha256(convert_to(b::text, 'UTF8')), 'hex')
  FROM (SELECT $2::jsonb AS b) x
RETURNING report_id, sha256

-- name: job_unfinished
-- True iff a job in state $1 may still move rows (rekey.job_unfinished: not completed, rolled
-- back or cancelled).
SELECT rekey.job_unfinished($1::text) AS unfinished
