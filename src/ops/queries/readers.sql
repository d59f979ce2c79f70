-- Readers, the application instances that report which keys they can decrypt
-- (src/ops/readers.cpp; the table and the gates are sql/schema/45_readers.sql).

-- name: list
-- Every reader (of scope $1 only, unless NULL) as one JSON array ordered by scope and reader:
-- its key ids, first and last seen, age in seconds, and the active jobs whose reader window it is
-- within (jobs that wait for it when it lacks one of their keys; [] when none: it is stale, or no
-- job of its scope is active).
SELECT coalesce(json_agg(json_build_object(
         'reader', r.reader, 'scope', r.scope, 'key_ids', r.key_ids,
         'first_seen', r.first_seen, 'last_seen', r.last_seen,
         'age_seconds', round(extract(epoch FROM now() - r.last_seen)::numeric, 1),
         'reported_by', r.reported_by, 'client_addr', r.client_addr,
         'live_for_jobs', coalesce((
            SELECT json_agg(j.job_id ORDER BY j.job_id) FROM rekey.jobs j
             WHERE rekey.job_unfinished(j.state) AND r.last_seen >= now() - j.reader_window
               AND EXISTS (SELECT 1 FROM rekey.job_keys jk JOIN rekey.keys k
                               ON k.key_id IN (jk.source_key_id, jk.target_key_id)
                            WHERE jk.job_id = j.job_id AND k.scope = r.scope)), '[]'))
         ORDER BY r.scope, r.reader), '[]')::text AS readers
  FROM rekey.readers r
 WHERE $1::text IS NULL OR r.scope = $1::text

-- name: set_window
-- Sets job $1's reader window to the interval $2 (audited); raises for an unknown job or a window
-- not longer than 0.
SELECT rekey.set_reader_window($1::bigint, $2::interval)

-- name: unreported_scopes
-- The keyring scopes of job $1's keys no reader has ever reported for, one row each, in order.
SELECT unnest(rekey.job_unreported_scopes($1::bigint)) AS scope

-- name: readiness
-- What the report says of reader readiness for job $1, as JSON: each check the job made before
-- its first batch, a promotion or a rollback (the job.readers_checked audit rows: the live
-- readers of the keys' scopes, the scopes no reader had reported for), and the verdict. Not
-- proven when a scope of the job had no reader at all (the checks', or now if none was made),
-- or when a check found no live reader.
WITH checks AS (
  SELECT a.at, a.details FROM rekey.audit a
   WHERE a.job_id = $1::bigint AND a.action = 'job.readers_checked'
), unreported AS (
  SELECT DISTINCT s FROM (
    SELECT jsonb_array_elements_text(c.details->'unreported_scopes') AS s FROM checks c
    UNION ALL
    SELECT unnest(rekey.job_unreported_scopes($1::bigint)) WHERE NOT EXISTS (SELECT 1 FROM checks)
  ) x
), verdict AS (
  SELECT (SELECT string_agg(s, ', ' ORDER BY s) FROM unreported) AS unreported,
         (SELECT string_agg(DISTINCT c.details->>'for', ', ') FROM checks c
           WHERE jsonb_array_length(c.details->'readers') = 0) AS empty_checks,
         (SELECT string_agg(DISTINCT (r->>'reader') || '@' || (r->>'scope'), ', ')
            FROM checks c, jsonb_array_elements(c.details->'readers') r) AS checked,
         EXISTS (SELECT 1 FROM checks) AS any_check
)
SELECT json_build_object(
         'proven', v.unreported IS NULL AND v.empty_checks IS NULL AND v.any_check,
         'unreported_scopes', coalesce((SELECT json_agg(s ORDER BY s) FROM unreported), '[]'),
         'checks', coalesce((SELECT json_agg(json_build_object(
                      'for', c.details->'for', 'at', c.at, 'reader_window', c.details->'reader_window',
                      'keys', c.details->'keys', 'readers', c.details->'readers') ORDER BY c.at)
                    FROM checks c), '[]'),
         'statement', CASE
           WHEN v.unreported IS NOT NULL
             THEN format('reader readiness: not proven (no reader reported for scope %s)', v.unreported)
           WHEN v.empty_checks IS NOT NULL
             THEN format('reader readiness: not proven (no live reader when checked before: %s)', v.empty_checks)
           WHEN NOT v.any_check
             THEN 'reader readiness: not checked yet (the job has not written)'
           ELSE format('reader readiness: proven (readers checked: %s)', v.checked) END
       )::text AS readiness
  FROM verdict v
