-- rekey keyring: data keys (wrapped by a KMS), their lifecycle, and the registry of encrypted
-- columns ("targets") that reference them.
--
-- The lifecycle is enforced here, in the database, so that psql, other tools and rekey itself are
-- held to the same rules: rekey.key_lifecycle() is the single table of legal transitions, and the
-- triggers below reject every other status change, every DELETE, and any retire/destroy while a
-- registered target still holds values under the key. See docs/keyring.md.
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

-- The legal lifecycle transitions: the single source of truth for the trigger, rekey itself and
-- docs/keyring.md. A status "staying the same" is not a transition.
CREATE FUNCTION rekey.key_lifecycle()
RETURNS TABLE (from_status text, to_status text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  VALUES ('enabled',      'primary'),
         ('enabled',      'decrypt_only'),
         ('enabled',      'retired'),
         ('primary',      'decrypt_only'),
         ('decrypt_only', 'primary'),       -- rollback: the old key becomes primary again
         ('decrypt_only', 'retired'),
         ('retired',      'decrypt_only'),  -- un-retire, possible until destroyed
         ('retired',      'destroyed')
$$;

CREATE FUNCTION rekey.key_transition_allowed(from_status text, to_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT EXISTS (SELECT 1 FROM rekey.key_lifecycle() l
                 WHERE l.from_status = $1 AND l.to_status = $2)
$$;

-- The statuses reachable from `from_status`, for error messages: 'decrypt_only, retired' or 'none'.
CREATE FUNCTION rekey.key_transitions_from(from_status text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT coalesce(string_agg(l.to_status, ', ' ORDER BY l.to_status), 'none')
  FROM rekey.key_lifecycle() l WHERE l.from_status = $1
$$;

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

-- How many values each registered target holds under `key_id` (n may be 0). Scans each target
-- table (a sequential scan unless an index matches), so it is meant for retire/destroy and
-- reports, not hot paths. A target whose table or column no longer exists is skipped with a NOTICE.
CREATE FUNCTION rekey.key_usage(key_id bigint)
RETURNS TABLE (target_id bigint, target text, n bigint)
LANGUAGE plpgsql STABLE
AS $$
DECLARE
  t     rekey.targets%ROWTYPE;
  query text;
BEGIN
  FOR t IN SELECT * FROM rekey.targets ORDER BY targets.target_id LOOP
    target_id := t.target_id;
    target := format('%I.%I.%I', t.schema_name, t.table_name, t.column_name);
    IF t.scope_column IS NOT NULL THEN
      target := target || format(' where %I = %L', t.scope_column, t.scope_value);
    END IF;

    IF to_regclass(format('%I.%I', t.schema_name, t.table_name)) IS NULL
       OR NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = to_regclass(format('%I.%I', t.schema_name, t.table_name))
                        AND a.attname = t.column_name AND a.attnum > 0 AND NOT a.attisdropped) THEN
      RAISE NOTICE 'rekey.key_usage: skipping target % (%): the table or column no longer exists',
        t.target_id, target;
      CONTINUE;
    END IF;

    IF t.codec = 'tink' THEN
      query := format('SELECT count(*) FROM %I.%I WHERE substring(%I from 1 for 5) = '
                      '''\x01''::bytea || substring(int8send($1) from 5 for 4)',
                      t.schema_name, t.table_name, t.column_name);
    ELSE
      query := format('SELECT count(*) FROM %I.%I WHERE %I = $1 AND %I IS NOT NULL',
                      t.schema_name, t.table_name, t.key_id_column, t.column_name);
    END IF;
    IF t.scope_column IS NOT NULL THEN
      query := query || format(' AND %I::text = $2', t.scope_column);
    END IF;

    EXECUTE query INTO n USING key_usage.key_id, t.scope_value;
    RETURN NEXT;
  END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Lifecycle enforcement
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION rekey.keys_enforce_lifecycle()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  in_use text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.status IS DISTINCT FROM 'enabled' THEN
      RAISE EXCEPTION 'new key % must be inserted with status enabled, not %; promote it afterwards',
        NEW.key_id, NEW.status;
    END IF;
    NEW.created_at := coalesce(NEW.created_at, now());
    NEW.enabled_at := NEW.created_at;
    NEW.primary_at := NULL;
    NEW.decrypt_only_at := NULL;
    NEW.retired_at := NULL;
    NEW.destroyed_at := NULL;
    NEW.updated_by := NULL;
    RETURN NEW;
  END IF;

  -- UPDATE
  IF NEW.key_id IS DISTINCT FROM OLD.key_id THEN
    RAISE EXCEPTION 'key_id of key % is immutable', OLD.key_id;
  END IF;
  IF NEW.scope IS DISTINCT FROM OLD.scope THEN
    RAISE EXCEPTION 'scope of key % is immutable (it is %)', OLD.key_id, OLD.scope;
  END IF;
  IF NEW.created_at IS DISTINCT FROM OLD.created_at
     OR NEW.created_by IS DISTINCT FROM OLD.created_by
     OR NEW.origin IS DISTINCT FROM OLD.origin
     OR NEW.algorithm IS DISTINCT FROM OLD.algorithm THEN
    RAISE EXCEPTION 'created_at, created_by, origin and algorithm of key % are immutable', OLD.key_id;
  END IF;

  IF OLD.status = 'destroyed'
     AND (NEW.wrapped_key IS DISTINCT FROM OLD.wrapped_key
          OR NEW.kms_key_ref IS DISTINCT FROM OLD.kms_key_ref
          OR NEW.kms_provider IS DISTINCT FROM OLD.kms_provider) THEN
    RAISE EXCEPTION 'key % is destroyed: its wrapped key, kms_key_ref and kms_provider cannot change',
      OLD.key_id;
  END IF;

  IF NEW.status IS DISTINCT FROM OLD.status THEN
    IF NOT rekey.key_transition_allowed(OLD.status, NEW.status) THEN
      RAISE EXCEPTION 'illegal key lifecycle transition for key %: % -> % (allowed from %: %)',
        OLD.key_id, OLD.status, NEW.status, OLD.status, rekey.key_transitions_from(OLD.status);
    END IF;

    IF NEW.status IN ('retired', 'destroyed') THEN
      SELECT string_agg(format('%s values in %s', u.n, u.target), ', ' ORDER BY u.target_id)
        INTO in_use
        FROM rekey.key_usage(OLD.key_id) u
       WHERE u.n > 0;
      IF in_use IS NOT NULL THEN
        RAISE EXCEPTION 'key % is still used by %; run the rotation job to completion first',
          OLD.key_id, in_use;
      END IF;
    END IF;

    CASE NEW.status
      WHEN 'primary'      THEN NEW.primary_at := now();
      WHEN 'decrypt_only' THEN NEW.decrypt_only_at := now();
      WHEN 'retired'      THEN NEW.retired_at := now();
      WHEN 'destroyed'    THEN NEW.destroyed_at := now();
                               NEW.wrapped_key := NULL;  -- crypto-shredding: the key is gone
      ELSE NULL;
    END CASE;
  ELSE
    -- Not a transition: the stamps stay as they were.
    NEW.enabled_at := OLD.enabled_at;
    NEW.primary_at := OLD.primary_at;
    NEW.decrypt_only_at := OLD.decrypt_only_at;
    NEW.retired_at := OLD.retired_at;
    NEW.destroyed_at := OLD.destroyed_at;
  END IF;

  NEW.updated_by := current_user;
  RETURN NEW;
END
$$;

CREATE TRIGGER keys_enforce_lifecycle
  BEFORE INSERT OR UPDATE ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.keys_enforce_lifecycle();

-- Key records are audit evidence (which key protected which data, when it was destroyed).
CREATE FUNCTION rekey.keys_reject_delete()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    RAISE EXCEPTION 'key % cannot be deleted: key records are audit evidence; destroy the key instead (rekey keys destroy %)',
      OLD.key_id, OLD.key_id;
  END IF;
  RAISE EXCEPTION 'rekey.keys cannot be truncated: key records are audit evidence';
END
$$;

CREATE TRIGGER keys_reject_delete
  BEFORE DELETE ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.keys_reject_delete();

CREATE TRIGGER keys_reject_truncate
  BEFORE TRUNCATE ON rekey.keys
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.keys_reject_delete();
