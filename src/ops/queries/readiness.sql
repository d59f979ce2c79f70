-- The database check of /readyz (src/ops/readiness.cpp).

-- name: statement_timeout
-- A readiness probe answers within a few seconds: its session gives up on a statement after 3 s.
SET statement_timeout = '3s'

-- name: schema_missing
-- True iff the rekey schema is not installed: a worker against an unmigrated database cannot
-- work.
SELECT to_regclass('rekey.jobs') IS NULL AS schema_missing
