-- Bookkeeping of src/db/migrator.cpp: which versioned migrations (migrations/NNNN_*.sql) and which
-- definition files (sql/schema/NN_*.sql) a database has, by checksum.

-- name: create_bookkeeping
-- Creates schema rekey and the migrator's tables if missing, and enters every definition text
-- recorded before the history existed into it; safe to run concurrently with itself only under
-- the migration lock.
CREATE SCHEMA IF NOT EXISTS rekey;
CREATE TABLE IF NOT EXISTS rekey.schema_migrations (
  version int PRIMARY KEY,
  name text NOT NULL,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  applied_by text NOT NULL DEFAULT current_user);
CREATE TABLE IF NOT EXISTS rekey.schema_definitions (
  name text PRIMARY KEY,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  applied_by text NOT NULL DEFAULT current_user);
-- Every text each definition file ever had here: a binary whose text of a file was applied once
-- and since replaced is older than the schema, and must not put its text back.
CREATE TABLE IF NOT EXISTS rekey.schema_definition_texts (
  name text NOT NULL,
  checksum text NOT NULL,
  first_applied_at timestamptz NOT NULL DEFAULT now(),
  first_applied_by text NOT NULL DEFAULT current_user,
  PRIMARY KEY (name, checksum));
INSERT INTO rekey.schema_definition_texts (name, checksum, first_applied_at, first_applied_by)
SELECT name, checksum, applied_at, applied_by FROM rekey.schema_definitions
ON CONFLICT (name, checksum) DO NOTHING;

-- name: bookkeeping_tables
-- One row: whether each bookkeeping table exists (a database never migrated has none).
SELECT to_regclass('rekey.schema_migrations') IS NOT NULL AS has_migrations,
       to_regclass('rekey.schema_definitions') IS NOT NULL AS has_definitions,
       to_regclass('rekey.schema_definition_texts') IS NOT NULL AS has_definition_texts

-- name: applied_migrations
-- Every applied migration, as recorded when it was applied.
SELECT version, name, checksum, applied_at::text AS applied_at, applied_by
  FROM rekey.schema_migrations

-- name: applied_definitions
-- Every definition file applied, with the checksum of its latest application.
SELECT name, checksum, applied_at::text AS applied_at, applied_by
  FROM rekey.schema_definitions

-- name: record_migration
-- $1 version, $2 file name, $3 SHA-256 of the file; in the transaction that applied it.
INSERT INTO rekey.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)

-- name: record_definition
-- $1 file name, $2 SHA-256 of the file; in the transaction that applied it. Enters the text into
-- the history too.
WITH history AS (
  INSERT INTO rekey.schema_definition_texts (name, checksum) VALUES ($1, $2)
  ON CONFLICT (name, checksum) DO NOTHING)
INSERT INTO rekey.schema_definitions AS d (name, checksum) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE
  SET checksum = EXCLUDED.checksum, applied_at = now(), applied_by = current_user

-- name: replaced_definition_texts
-- Every earlier text of a definition file: applied here once, and no longer the file's current
-- text (rekey.schema_definitions).
SELECT t.name, t.checksum, t.first_applied_at::text AS first_applied_at,
       d.applied_at::text AS replaced_by_applied_at
  FROM rekey.schema_definition_texts t
  JOIN rekey.schema_definitions d ON d.name = t.name AND d.checksum <> t.checksum

-- name: lock
-- $1 the migration lock key: waits for a concurrent migrator to finish.
SELECT pg_advisory_lock($1)

-- name: unlock
-- $1 the migration lock key.
SELECT pg_advisory_unlock($1)
