-- Key safety, keyring slice (issue 15): no retire or destroy while any value in the database is
-- still under the key, or might be.
--
-- * Targets are tracked by identity (the table's oid, the column's attnum), so a renamed table, a
--   table moved to another schema and a renamed column are followed; a target whose table or
--   column is gone is never skipped: it blocks retire and destroy until an operator forgets it
--   (rekey.forget_target, audited).
-- * rekey.key_usage counts every value of each registered column, whatever job scope it was
--   registered under: a scope's text form is not a safe filter (a uuid registered in upper case
--   never equals its lower-case output), and values outside a job's scope are still under the key.
-- * rekey.key_census(key) finds values under the key in every bytea and text column of the whole
--   database, registered or not, and reports what it cannot read as unknown, never as zero.
-- * The lifecycle trigger refuses retire and destroy while the census finds a value, an unknown
--   the operator did not accept, an unresolved target or an unfinished job naming the key; it
--   takes the key's lifecycle lock first (migrations/0012_key_locks.sql) and counts in statements
--   that start after the lock, so no batch writing under the key can slip past the count.
-- See docs/keyring.md.

-- ---------------------------------------------------------------------------------------------
-- Targets by identity
-- ---------------------------------------------------------------------------------------------

ALTER TABLE rekey.targets
  ADD COLUMN relid oid,              -- pg_class.oid of the table; follows renames and SET SCHEMA
  ADD COLUMN attnum smallint,        -- the ciphertext column; follows RENAME COLUMN
  ADD COLUMN key_id_attnum smallint, -- raw: the key-id column
  ADD COLUMN forgotten_at timestamptz,
  ADD COLUMN forgotten_by text,
  ADD COLUMN forgotten_reason text;

COMMENT ON COLUMN rekey.targets.relid IS
  'the table by identity: schema_name/table_name are the names at registration, relid follows renames';

-- A target whose table or column no longer resolves keeps relid/attnum NULL: unresolved, so it
-- blocks retire and destroy until forgotten.
UPDATE rekey.targets t
   SET relid = r.oid,
       attnum = (SELECT a.attnum FROM pg_attribute a
                  WHERE a.attrelid = r.oid AND a.attname = t.column_name AND a.attnum > 0
                    AND NOT a.attisdropped),
       key_id_attnum = (SELECT a.attnum FROM pg_attribute a
                         WHERE a.attrelid = r.oid AND a.attname = t.key_id_column AND a.attnum > 0
                           AND NOT a.attisdropped)
  FROM (SELECT x.target_id, to_regclass(format('%I.%I', x.schema_name, x.table_name))::oid AS oid
          FROM rekey.targets x) r
 WHERE r.target_id = t.target_id AND r.oid IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Usage of registered targets
-- ---------------------------------------------------------------------------------------------

-- rekey.key_usage gains the `unknown` result column: a new signature, so the old one goes
-- (sql/schema/30_keyring.sql defines the new one).
DROP FUNCTION IF EXISTS rekey.key_usage(bigint);
