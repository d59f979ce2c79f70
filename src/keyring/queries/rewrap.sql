-- Master-key rotation (keyring/rewrap.h): one transaction per key.

-- name: lock_key
-- Locks key $1 (key_id) for the rest of the transaction, so a concurrent rewrap or destroy of it
-- waits; returns its key_id, or no row if there is no such key.
SELECT key_id FROM rekey.keys WHERE key_id = $1 FOR UPDATE

-- name: store_wrapping
-- Replaces key $1's wrapping: provider $2, KMS key ref $3, wrapped key $4 (bytea). The data key
-- itself is unchanged. Audited by the database ('key.rewrapped', the keys' audit trigger).
UPDATE rekey.keys SET kms_provider = $2, kms_key_ref = $3, wrapped_key = $4 WHERE key_id = $1

-- name: audit_run
-- The summary audit row of a run: details $1 (jsonb: to, keys_considered, keys_rewrapped).
SELECT rekey.audit_event('keys.rewrap', NULL, $1::jsonb)
