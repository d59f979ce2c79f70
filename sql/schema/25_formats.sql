-- Stored forms of ciphertext values (issue #18; docs/FORMAT.md, "Stored forms"): how the SQL that
-- selects and counts values reads a value stored as text or inside a JSON document. Only the
-- value's head is decoded here, to match a key prefix; the whole value is decoded by rekey
-- itself (crypto/text_encoding.h), where a malformed one is quarantined. Nothing here raises for
-- what a value holds: one malformed value must not fail the statement that reads a batch.

-- The first five bytes of p_value, a binary value in text encoding p_encoding ('base64',
-- 'base64url' or 'hex'), or NULL iff its head is not of that encoding (or too short to hold five
-- bytes). The head alone: a value whose tail is malformed is found by its prefix, then
-- quarantined by the rotation that decodes it whole.
CREATE OR REPLACE FUNCTION rekey.encoded_head(p_value text, p_encoding text) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT CASE p_encoding
           WHEN 'hex' THEN
             CASE WHEN p_value ~ '^[0-9A-Fa-f]{10}' THEN decode(left(p_value, 10), 'hex') END
           WHEN 'base64' THEN
             CASE WHEN p_value ~ '^[A-Za-z0-9+/]{8}'
                  THEN substring(decode(left(p_value, 8), 'base64') from 1 for 5) END
           WHEN 'base64url' THEN
             CASE WHEN p_value ~ '^[A-Za-z0-9_-]{8}'
                  THEN substring(decode(translate(left(p_value, 8), '-_', '+/'), 'base64') from 1 for 5) END
         END
$$;

-- The SQL expression, over column p_column (quoted here), of the text that holds a target's value:
-- the column itself, or the string at p_json_path of its jsonb document (NULL where the path is
-- missing or holds no scalar).
CREATE OR REPLACE FUNCTION rekey.stored_text_sql(p_column name, p_json_path text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN p_json_path IS NULL THEN format('%I', p_column)
              ELSE format('(%I #>> %L::text[])', p_column, p_json_path) END
$$;

-- The SQL expression, over column p_column, of the first five bytes of a target's binary value in
-- stored form (p_encoding, p_json_path as rekey.targets records them): what a Tink key prefix
-- (rekey.tink_prefix) is compared with.
CREATE OR REPLACE FUNCTION rekey.value_head_sql(p_column name, p_encoding text, p_json_path text[])
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN p_encoding = 'bytea' AND p_json_path IS NULL
                THEN format('substring(%I from 1 for 5)', p_column)
              ELSE format('rekey.encoded_head(%s, %L)', rekey.stored_text_sql(p_column, p_json_path),
                          p_encoding) END
$$;

-- Whether SQL cannot tell which key holds a value of codec p_codec: the value names no key
-- (fernet, lockbox), at most a reference only decryption resolves (rails), or a fingerprint only
-- the key's material gives (cloak). keyring/trial_census.h counts such columns by decrypting. rekey.key_usage and
-- rekey.key_census count such a column as unknown for every key a job moved it from or to; only
-- decrypting its values can count them (docs/FORMAT.md, each codec's section).
CREATE OR REPLACE FUNCTION rekey.codec_keyed_by_decryption_only(p_codec text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT p_codec IN ('fernet', 'rails', 'lockbox', 'cloak')
$$;

-- What a column of codec p_codec holds, for the messages people read ("holds Fernet tokens").
CREATE OR REPLACE FUNCTION rekey.codec_values_noun(p_codec text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE p_codec
           WHEN 'tink' THEN 'Tink values'
           WHEN 'raw' THEN 'raw AES-GCM values'
           WHEN 'vault-transit' THEN 'Vault Transit ciphertexts'
           WHEN 'fernet' THEN 'Fernet tokens'
           WHEN 'rails' THEN 'Rails messages'
           WHEN 'lockbox' THEN 'Lockbox values'
           WHEN 'cloak' THEN 'cloak strings'
           WHEN 'aws-kms' THEN 'AWS KMS ciphertext blobs'
           ELSE p_codec || ' values'
         END
$$;
