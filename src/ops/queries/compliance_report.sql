-- The compliance report of a job (src/ops/compliance_report.cpp).

-- name: job_report
-- The report's JSON as text, built by the database from the job's own records
-- (rekey.job_report); raises for an unknown job.
SELECT rekey.job_report($1::bigint)::text AS report

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
