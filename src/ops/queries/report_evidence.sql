-- Evidence `rekey report` adds to a job's report (src/ops/report_evidence.cpp).

-- name: now
-- The database's clock, as JSON writes a timestamptz ("2026-01-31T12:00:00.123+00:00"): the
-- time a piece of evidence was taken, on the same clock as the report's other times.
SELECT to_json(now()) #>> '{}' AS now
