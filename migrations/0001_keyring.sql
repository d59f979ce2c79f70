-- rekey keyring: data keys (wrapped by a KMS), their lifecycle, and the registry of encrypted
-- columns ("targets") that reference them.
--
-- The lifecycle is enforced here, in the database, so that psql, other tools and rekey itself are
-- held to the same rules: rekey.key_lifecycle() is the single table of legal transitions, and the
-- triggers of sql/schema/30_keyring.sql reject every other status change, every DELETE, and any
-- retire/destroy while a value may still be under the key. See docs/keyring.md.
--
-- Plain SQL on purpose: teams that apply migrations with their own tool (Flyway, sqitch, psql -f)
-- can use this file unchanged.

CREATE SCHEMA IF NOT EXISTS rekey;

-- ---------------------------------------------------------------------------------------------
-- Keys
-- ---------------------------------------------------------------------------------------------

CREATE TABLE rekey.keys (
  -- A uint32: the key id embedded in every Tink ciphertext prefix (0x01 || key_id big-endian).
  key_id          bigint PRIMARY KEY CHECK (key_id BETWEEN 0 AND 4294967295),
  scope           text NOT NULL DEFAULT 'default',   -- tenant or purpose; one primary per scope
  kms_provider    text NOT NULL CHECK (kms_provider IN ('local', 'aws-kms', 'vault-transit')),
  kms_key_ref     text NOT NULL,                     -- the KMS key the data key is wrapped under
  wrapped_key     bytea,                             -- NULL iff destroyed (erased)
  algorithm       text NOT NULL DEFAULT 'AES-256-GCM',
  status          text NOT NULL
                  CHECK (status IN ('enabled', 'primary', 'decrypt_only', 'retired', 'destroyed')),
  origin          text NOT NULL DEFAULT 'generated' CHECK (origin IN ('generated', 'imported')),
  max_age         interval,                          -- NULL = no limit
  created_at      timestamptz NOT NULL DEFAULT now(),
  enabled_at      timestamptz,
  primary_at      timestamptz,                       -- the latest time each state was entered
  decrypt_only_at timestamptz,
  retired_at      timestamptz,
  destroyed_at    timestamptz,
  created_by      text DEFAULT current_user,
  updated_by      text,
  CONSTRAINT keys_wrapped_key_iff_not_destroyed
    CHECK ((wrapped_key IS NULL) = (status = 'destroyed'))
);

COMMENT ON TABLE rekey.keys IS
  'rekey keyring: wrapped data keys and their lifecycle (see docs/keyring.md). Rows are never deleted.';

-- At most one primary (the key new values are encrypted under) per scope.
CREATE UNIQUE INDEX keys_one_primary_per_scope ON rekey.keys (scope) WHERE status = 'primary';

-- ---------------------------------------------------------------------------------------------
-- Targets: the registry of encrypted columns
-- ---------------------------------------------------------------------------------------------

CREATE TABLE rekey.targets (
  target_id     bigserial PRIMARY KEY,
  schema_name   name NOT NULL,
  table_name    name NOT NULL,
  pk_column     name NOT NULL,
  column_name   name NOT NULL,
  -- tink: 0x01 || key_id(4, big-endian) prefix in the value; raw: key id in key_id_column.
  codec         text NOT NULL CHECK (codec IN ('tink', 'raw')),
  key_id_column name,
  ad_template   text,                 -- associated data bound into each value (see docs/FORMAT.md)
  scope_column  name,                 -- only rows WHERE scope_column::text = scope_value
  scope_value   text,
  created_at    timestamptz DEFAULT now(),
  created_by    text DEFAULT current_user,
  CONSTRAINT targets_raw_needs_key_id_column CHECK (codec <> 'raw' OR key_id_column IS NOT NULL),
  CONSTRAINT targets_scope_both_or_neither CHECK ((scope_column IS NULL) = (scope_value IS NULL))
);

CREATE UNIQUE INDEX targets_unique_column ON rekey.targets
  (schema_name, table_name, column_name, coalesce(scope_column, ''), coalesce(scope_value, ''));

COMMENT ON TABLE rekey.targets IS
  'rekey: the encrypted columns rekey manages; key retire/destroy is refused while any holds values under the key.';
