-- Queries of keyring/keyring.cpp: the data keys of rekey.keys and their lifecycle
-- (migrations/0001_keyring.sql; the trigger on rekey.keys enforces the lifecycle).

-- name: select_keys
-- Keys matching both filters, by key_id: $1 key_id (bigint; NULL: any), $2 scope (text; NULL: every
-- key, else only that scope's primary). One row per key:
--   key_id, scope, kms_provider, kms_key_ref, wrapped_key_hex (NULL iff destroyed), algorithm,
--   status, origin, max_age_seconds (NULL: no limit), created_at, enabled_at, primary_at,
--   decrypt_only_at, retired_at, destroyed_at (ISO 8601 UTC, independent of DateStyle and
--   TimeZone; NULL: state never entered), created_by ('' if unknown), updated_by,
--   age_seconds (now() - created_at, at least 0).
SELECT key_id, scope, kms_provider, kms_key_ref, encode(wrapped_key, 'hex') AS wrapped_key_hex,
       algorithm, status, origin, extract(epoch FROM max_age)::bigint AS max_age_seconds,
       to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS created_at,
       to_char(enabled_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS enabled_at,
       to_char(primary_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS primary_at,
       to_char(decrypt_only_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS decrypt_only_at,
       to_char(retired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS retired_at,
       to_char(destroyed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS destroyed_at,
       coalesce(created_by, '') AS created_by, updated_by,
       greatest(0, extract(epoch FROM now() - created_at))::bigint AS age_seconds
  FROM rekey.keys
 WHERE ($1::bigint IS NULL OR key_id = $1::bigint)
   AND ($2::text IS NULL OR (scope = $2::text AND status = 'primary'))
 ORDER BY key_id

-- name: lock_key_ids
-- Serialises key id allocation between concurrent creators until their transactions end.
SELECT pg_advisory_xact_lock(hashtext('rekey.keys.key_id')) AS locked

-- name: next_key_id
-- One more than the largest key id (1 in an empty keyring): next_key_id (bigint).
SELECT coalesce(max(key_id), 0) + 1 AS next_key_id FROM rekey.keys

-- name: insert_key
-- Inserts a key with status enabled: $1 key_id, $2 scope, $3 kms_provider, $4 kms_key_ref,
-- $5 wrapped key as hex, $6 origin ('generated' or 'imported'), $7 max_age in seconds as text
-- ('': no limit).
INSERT INTO rekey.keys (key_id, scope, kms_provider, kms_key_ref, wrapped_key, status, origin,
                        max_age)
VALUES ($1, $2, $3, $4, decode($5, 'hex'), 'enabled', $6,
        make_interval(secs => nullif($7, '')::bigint))

-- name: set_status
-- Moves key $1 to status $2; the lifecycle trigger refuses an illegal or unsafe step.
UPDATE rekey.keys SET status = $2 WHERE key_id = $1

-- name: transition_allowed
-- allowed: whether the lifecycle permits a key in status $1 to become $2.
SELECT rekey.key_transition_allowed($1, $2) AS allowed
