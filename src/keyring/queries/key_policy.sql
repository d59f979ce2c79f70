-- Queries of keyring/key_policy.cpp: key-age policies (rekey.key_policies) and the age of each
-- usable key (the view rekey.key_age, migrations/0005_operations.sql).

-- name: key_ages
-- Every usable key (enabled, primary, decrypt_only), by scope and key_id: key_id, scope, status,
-- kms_provider, kms_key_ref, created_at and due_at (ISO 8601 UTC; due_at NULL: no policy),
-- age_seconds, max_age_seconds (NULL: no policy), max_age_source ('key', 'scope', 'default' or
-- NULL), overdue, job_in_flight (of a primary key: the job rotating values off it, else NULL).
SELECT key_id, scope, status, kms_provider, kms_key_ref,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
       extract(epoch FROM age)::bigint AS age_seconds,
       extract(epoch FROM max_age)::bigint AS max_age_seconds, max_age_source,
       to_char(due_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS due_at, overdue,
       CASE WHEN status = 'primary' THEN rekey.rotation_in_flight(key_id) END AS job_in_flight
  FROM rekey.key_age
 ORDER BY scope, key_id

-- name: policies
-- Every policy, the default ('*') last, the others by scope: scope, max_age_seconds, max_age (as
-- PostgreSQL prints the interval), updated_at (ISO 8601 UTC), updated_by.
SELECT scope, extract(epoch FROM max_age)::bigint AS max_age_seconds, max_age::text AS max_age,
       to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS updated_at,
       updated_by
  FROM rekey.key_policies
 ORDER BY scope = '*', scope

-- name: set_policy
-- Sets the maximum key age of scope $1 ('*': the default) to $2 (an interval's text); returns the
-- policy as `policies` does. Fails with 22xxx for a malformed interval, 23514 for one not
-- positive.
INSERT INTO rekey.key_policies AS p (scope, max_age) VALUES ($1, $2::interval)
    ON CONFLICT (scope) DO UPDATE
   SET max_age = EXCLUDED.max_age, updated_at = now(), updated_by = current_user
RETURNING scope, extract(epoch FROM max_age)::bigint AS max_age_seconds, max_age::text AS max_age,
          to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS updated_at,
          updated_by

-- name: remove_policy
-- Removes the policy of scope $1; affects no row iff it had none.
DELETE FROM rekey.key_policies WHERE scope = $1
