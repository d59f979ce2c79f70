-- Evidence `rekey report` adds to a job's report (src/ops/report_evidence.cpp).

-- name: now
-- The database's clock, as JSON writes a timestamptz ("2026-01-31T12:00:00.123+00:00"): the
-- time a piece of evidence was taken, on the same clock as the report's other times.
SELECT to_json(now()) #>> '{}' AS now

-- name: side_effects
-- Job $1's side effects as JSON text (rekey.job_side_effects_report); no row for an unknown job.
SELECT rekey.job_side_effects_report($1::bigint)::text AS side_effects
