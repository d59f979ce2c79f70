-- Application formats (issue #18; docs/FORMAT.md, "Stored forms" and "fernet"). How a target
-- column stores its values is a property of the column, like its codec: rekey.targets records it,
-- so every reader of the column (a rotation, verify, gates, rekey.key_usage) reads it the same way.
--   encoding   'bytea': the binary value in a bytea column (as before); 'base64', 'base64url',
--              'hex': the binary value as text, in a text or varchar column or in a JSON string
--   json_path  NULL: the column holds the value; else the jsonb column holds a document whose
--              string at this path (jsonb #>> path) is the value; the rest is the application's
ALTER TABLE rekey.targets ADD COLUMN encoding text NOT NULL DEFAULT 'bytea'
  CONSTRAINT targets_encoding_check CHECK (encoding IN ('bytea', 'base64', 'base64url', 'hex'));
ALTER TABLE rekey.targets ADD COLUMN json_path text[];
ALTER TABLE rekey.targets ADD CONSTRAINT targets_json_path_holds_text
  CHECK (json_path IS NULL OR (encoding <> 'bytea' AND cardinality(json_path) > 0));

-- fernet: Fernet tokens (base64url text), opened by trial decryption with the job's source keys
-- (rekey.job_value_form admits no other encoding for them).
ALTER TABLE rekey.targets DROP CONSTRAINT targets_codec_check;
ALTER TABLE rekey.targets ADD CONSTRAINT targets_codec_check
  CHECK (codec IN ('tink', 'raw', 'vault-transit', 'fernet'));

-- rekey.create_job gains p_encoding and p_json_path: a new signature, so the old one goes
-- (sql/schema/40_jobs.sql defines the new one).
DROP FUNCTION IF EXISTS rekey.create_job(text, text[], jsonb, text[], text, text, text, text, integer, text,
                               boolean, integer, numeric[], integer, numeric, interval, integer,
                               text[], boolean);
