-- The keyring: the lifecycle of data keys (rekey.key_lifecycle() is the single table of legal
-- transitions, enforced by triggers on rekey.keys), the key locks that keep batch writes and
-- retire/destroy apart, the registry of encrypted columns by identity, and the census that
-- refuses a retire or destroy while any value in the database may still be under the key.
-- See docs/keyring.md and docs/safety.md.

-- The legal lifecycle transitions: the single source of truth for the trigger, rekey itself and
-- docs/keyring.md. A status "staying the same" is not a transition.
CREATE OR REPLACE FUNCTION rekey.key_lifecycle()
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

CREATE OR REPLACE FUNCTION rekey.key_transition_allowed(from_status text, to_status text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT EXISTS (SELECT 1 FROM rekey.key_lifecycle() l
                 WHERE l.from_status = $1 AND l.to_status = $2)
$$;

-- The statuses reachable from `from_status`, for error messages: 'decrypt_only, retired' or 'none'.
CREATE OR REPLACE FUNCTION rekey.key_transitions_from(from_status text)
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
  SELECT coalesce(string_agg(l.to_status, ', ' ORDER BY l.to_status), 'none')
  FROM rekey.key_lifecycle() l WHERE l.from_status = $1
$$;

-- Key records are audit evidence (which key protected which data, when it was destroyed).
CREATE OR REPLACE FUNCTION rekey.keys_reject_delete()
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

CREATE OR REPLACE TRIGGER keys_reject_delete
  BEFORE DELETE ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.keys_reject_delete();

CREATE OR REPLACE TRIGGER keys_reject_truncate
  BEFORE TRUNCATE ON rekey.keys
  FOR EACH STATEMENT EXECUTE FUNCTION rekey.keys_reject_delete();

CREATE OR REPLACE FUNCTION rekey.key_lock_id(p_key bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT (x'52454b59'::bigint << 32) | p_key
$$;

-- Shared locks on `p_keys` (in ascending order, so two writers never deadlock), held to the end
-- of the transaction; raises object_not_in_prerequisite_state (SQLSTATE 55000) naming the key when
-- one of them is retired or destroyed (or unknown), so nothing is written under it.
CREATE OR REPLACE FUNCTION rekey.lock_keys_for_write(p_keys bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  k bigint;
  st text;
BEGIN
  FOR k IN SELECT DISTINCT x FROM unnest(p_keys) x WHERE x IS NOT NULL ORDER BY x LOOP
    PERFORM pg_advisory_xact_lock_shared(rekey.key_lock_id(k));
  END LOOP;
  -- A new statement: in READ COMMITTED its snapshot is taken after every lock was granted, so it
  -- sees a retire or destroy that committed while this transaction waited.
  FOR k, st IN
    SELECT x, ky.status FROM unnest(p_keys) x LEFT JOIN rekey.keys ky ON ky.key_id = x
     WHERE x IS NOT NULL AND (ky.status IS NULL OR ky.status IN ('retired', 'destroyed'))
     ORDER BY x LIMIT 1
  LOOP
    RAISE EXCEPTION 'key % is %: rekey writes no value under it', k, coalesce(st, 'unknown')
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'nothing of this batch was written; a retired key may be made decrypt_only again, a destroyed one is gone: roll the job back or cancel it';
  END LOOP;
END $$;

-- The exclusive lock a retire or destroy of `p_key` holds to the end of its transaction: it waits
-- for every transaction that holds the key's write lock.
CREATE OR REPLACE FUNCTION rekey.lock_key_for_lifecycle(p_key bigint) RETURNS void
LANGUAGE sql VOLATILE AS $$
  SELECT pg_advisory_xact_lock(rekey.key_lock_id(p_key))
$$;

-- Fills the identity from the names a target is registered (or re-registered) under. Refuses a
-- name that does not resolve: a target nobody can find would only ever block.
CREATE OR REPLACE FUNCTION rekey.targets_resolve_identity() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  rel oid;
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.schema_name, NEW.table_name, NEW.column_name, NEW.key_id_column)
                          IS NOT DISTINCT FROM
                          (OLD.schema_name, OLD.table_name, OLD.column_name, OLD.key_id_column) THEN
    RETURN NEW;
  END IF;
  rel := to_regclass(format('%I.%I', NEW.schema_name, NEW.table_name));
  IF rel IS NULL THEN
    RAISE EXCEPTION 'cannot register target %.%.%: no such table', quote_ident(NEW.schema_name),
      quote_ident(NEW.table_name), quote_ident(NEW.column_name) USING ERRCODE = 'undefined_table';
  END IF;
  NEW.relid := rel;
  SELECT a.attnum INTO NEW.attnum FROM pg_attribute a
   WHERE a.attrelid = rel AND a.attname = NEW.column_name AND a.attnum > 0 AND NOT a.attisdropped;
  IF NEW.attnum IS NULL THEN
    RAISE EXCEPTION 'cannot register target %.%.%: no such column', quote_ident(NEW.schema_name),
      quote_ident(NEW.table_name), quote_ident(NEW.column_name) USING ERRCODE = 'undefined_column';
  END IF;
  NEW.key_id_attnum := NULL;
  IF NEW.key_id_column IS NOT NULL THEN
    SELECT a.attnum INTO NEW.key_id_attnum FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attname = NEW.key_id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NEW.key_id_attnum IS NULL THEN
      RAISE EXCEPTION 'cannot register target %.%.%: no key-id column %', quote_ident(NEW.schema_name),
        quote_ident(NEW.table_name), quote_ident(NEW.column_name), quote_ident(NEW.key_id_column)
        USING ERRCODE = 'undefined_column';
    END IF;
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER targets_resolve_identity
  BEFORE INSERT OR UPDATE OF schema_name, table_name, column_name, key_id_column ON rekey.targets
  FOR EACH ROW EXECUTE FUNCTION rekey.targets_resolve_identity();

-- Every target not forgotten, under the current names of its table and columns. Identity first:
-- a renamed or moved table and a renamed column are followed by relid/attnum. Only when the
-- identity no longer resolves (the table or column was dropped and maybe created again under the
-- same name, or the database was restored from a logical dump, which gives every table a new oid)
-- are the registered names tried: a column found that way holds live values to count, and the
-- dropped one's values are gone with it. `unresolved` is NULL iff the table, the column and (raw)
-- the key-id column were found; else it says which is gone. A function rather than a view: it
-- runs with the caller's rights on rekey.targets, so no role needs a grant of its own.
CREATE OR REPLACE FUNCTION rekey.target_columns()
RETURNS TABLE (target_id bigint, codec text, relid oid, attnum smallint, key_id_attnum smallint,
               schema_name name, table_name name, column_name name, key_id_column name,
               ad_template text, registered_as text, unresolved text)
LANGUAGE sql STABLE AS $$
  SELECT t.target_id, t.codec, c.oid, a.attnum, ka.attnum,
         n.nspname, c.relname, a.attname, ka.attname, t.ad_template,
         format('%I.%I.%I', t.schema_name, t.table_name, t.column_name),
         CASE WHEN c.oid IS NULL THEN 'its table no longer exists'
              WHEN a.attname IS NULL
                THEN format('its column no longer exists in %I.%I', n.nspname, c.relname)
              WHEN t.codec = 'raw' AND ka.attname IS NULL
                THEN format('its key-id column no longer exists in %I.%I', n.nspname, c.relname)
         END
    FROM rekey.targets t
    LEFT JOIN LATERAL (
      SELECT coalesce((SELECT x.oid FROM pg_class x WHERE x.oid = t.relid),
                      to_regclass(format('%I.%I', t.schema_name, t.table_name))::oid) AS oid) r
      ON true
    LEFT JOIN pg_class c ON c.oid = r.oid
    LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN LATERAL (
      SELECT x.attnum, x.attname FROM pg_attribute x
       WHERE x.attrelid = c.oid AND x.attnum > 0 AND NOT x.attisdropped
         AND ((c.oid = t.relid AND x.attnum = t.attnum) OR x.attname = t.column_name)
       ORDER BY (c.oid = t.relid AND x.attnum = t.attnum) DESC LIMIT 1) a ON true
    LEFT JOIN LATERAL (
      SELECT x.attnum, x.attname FROM pg_attribute x
       WHERE x.attrelid = c.oid AND x.attnum > 0 AND NOT x.attisdropped
         AND ((c.oid = t.relid AND x.attnum = t.key_id_attnum) OR x.attname = t.key_id_column)
       ORDER BY (c.oid = t.relid AND x.attnum = t.key_id_attnum) DESC LIMIT 1) ka ON true
   WHERE t.forgotten_at IS NULL
$$;

-- The explicit way to stop an unresolved target from blocking retire and destroy, for a table or
-- column that is truly gone (dropped with its values). A target that still resolves cannot be
-- forgotten: its values are still there. Audited as target.forgotten.
CREATE OR REPLACE FUNCTION rekey.forget_target(p_target bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  tc record;
BEGIN
  SELECT * INTO tc FROM rekey.target_columns() x WHERE x.target_id = p_target;
  IF NOT FOUND THEN
    IF EXISTS (SELECT 1 FROM rekey.targets WHERE target_id = p_target) THEN
      RAISE EXCEPTION 'target % is already forgotten', p_target
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RAISE EXCEPTION 'unknown target %; SELECT * FROM rekey.target_columns() lists them', p_target
      USING ERRCODE = 'no_data_found';
  END IF;
  IF tc.unresolved IS NULL THEN
    RAISE EXCEPTION 'target % (%.%.%) still exists and may hold values; only a target whose table or column is gone can be forgotten',
      p_target, quote_ident(tc.schema_name), quote_ident(tc.table_name), quote_ident(tc.column_name)
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.targets SET forgotten_at = now(), forgotten_by = current_user,
         forgotten_reason = p_reason
   WHERE target_id = p_target;
  PERFORM rekey.audit_event('target.forgotten', NULL, jsonb_build_object(
    'target_id', p_target, 'registered_as', tc.registered_as, 'unresolved', tc.unresolved,
    'reason', p_reason));
  RETURN format('forgot target %s (%s): %s', p_target, tc.registered_as, tc.unresolved);
END $$;

-- The 5-byte Tink prefix of key p_key: 0x01 || key id (uint32 big-endian).
CREATE OR REPLACE FUNCTION rekey.tink_prefix(p_key bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT '\x01'::bytea || substring(int8send(p_key) from 5 for 4)
$$;

-- The version N of a Transit ciphertext "vault:vN:...", or NULL iff the value is not one.
CREATE OR REPLACE FUNCTION rekey.transit_version(p_value text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT substring(p_value from '^vault:v([0-9]{1,9}):[A-Za-z0-9+/=]+$')::integer;
$$;

-- How many values of each registered column are under key p_key. One row per registered column
-- (targets registered for several scopes are one column: target_id is the lowest of them),
-- current names, vault-transit and aws-kms targets left out (they hold no keyring key's values). n counts every value of the whole column under the key: Tink by
-- the value's prefix in the column's stored form (rekey.value_head_sql), raw by the key-id column (`key_id_column = key AND column IS NOT NULL`).
-- n is NULL iff the column could not be counted; `unknown` then says why (the table or column is
-- gone, no SELECT privilege) and what to do. When row-level security hides rows, n counts the
-- visible ones and `unknown` names the grant that would show the rest. VOLATILE: each count takes
-- a fresh snapshot (the lifecycle trigger counts after taking the key's lock).
-- Scans each target table (a sequential scan unless an index matches): meant for retire,
-- destroy and reports, not hot paths.
CREATE OR REPLACE FUNCTION rekey.key_usage(p_key bigint)
RETURNS TABLE (target_id bigint, target text, n bigint, unknown text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  g record;
  cond text;
  blocker text;
BEGIN
  FOR g IN
    SELECT min(tc.target_id) AS target_id, tc.relid, tc.attnum,
           min(tc.schema_name) AS schema_name, min(tc.table_name) AS table_name,
           min(tc.column_name) AS column_name, min(tc.registered_as) AS registered_as,
           min(tc.unresolved) AS unresolved,
           -- A Tink value's head as the column stores it (rekey.value_head_sql: bytea, or text
           -- in an encoding, maybe inside a JSON document), one per stored form registered.
           array_agg(DISTINCT rekey.value_head_sql(tc.column_name, x.encoding, x.json_path))
             FILTER (WHERE tc.codec = 'tink' AND tc.unresolved IS NULL) AS tink_heads,
           array_remove(array_agg(DISTINCT CASE WHEN tc.codec = 'raw' THEN tc.key_id_attnum END), NULL)
             AS key_id_attnums,
           -- Fernet tokens name no key (trial decryption): which key holds a token cannot be
           -- read by SQL, so a Fernet column counts as unknown for every key a job on it moved
           -- from or to.
           -- Rails and Lockbox likewise (rekey.codec_keyed_by_decryption_only).
           bool_or(rekey.codec_keyed_by_decryption_only(tc.codec) AND EXISTS (
             SELECT 1 FROM rekey.job_columns jc JOIN rekey.job_keys jk USING (job_id)
              WHERE jc.target_id = tc.target_id AND p_key IN (jk.source_key_id, jk.target_key_id)))
             AS keyed_by_decryption,
           min(tc.codec) FILTER (WHERE rekey.codec_keyed_by_decryption_only(tc.codec)) AS decrypted_codec
      FROM rekey.target_columns() tc
      JOIN rekey.targets x USING (target_id)
     WHERE tc.codec NOT IN ('vault-transit', 'aws-kms')
     GROUP BY tc.relid, tc.attnum, CASE WHEN tc.unresolved IS NOT NULL THEN tc.target_id END
     ORDER BY 1
  LOOP
    target_id := g.target_id;
    n := NULL;
    unknown := NULL;
    IF g.unresolved IS NOT NULL THEN
      target := g.registered_as;
      unknown := format('registered target %s (%s): %s; if its values are truly gone: rekey keys forget-target %s',
                        g.target_id, g.registered_as, g.unresolved, g.target_id);
      RETURN NEXT;
      CONTINUE;
    END IF;
    target := format('%I.%I.%I', g.schema_name, g.table_name, g.column_name);
    IF NOT has_column_privilege(g.relid, g.attnum, 'SELECT')
       OR EXISTS (SELECT 1 FROM unnest(g.key_id_attnums) k
                   WHERE NOT has_column_privilege(g.relid, k, 'SELECT')) THEN
      unknown := format('role %I may not read %s; GRANT SELECT ON %I.%I TO %I', current_user,
                        target, g.schema_name, g.table_name, current_user);
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF g.keyed_by_decryption THEN
      target := format('%I.%I.%I', g.schema_name, g.table_name, g.column_name);
      unknown := format('%s holds %s, which name no key SQL can read: SQL cannot count those under key %s (docs/FORMAT.md, "%s")',
                        target, rekey.codec_values_noun(g.decrypted_codec), p_key, g.decrypted_codec);
      RETURN NEXT;
      CONTINUE;
    END IF;
    SELECT string_agg(c, ' OR ') INTO cond FROM (
      SELECT format('%s = %L::bytea', h, rekey.tink_prefix(p_key)) AS c
        FROM unnest(g.tink_heads) h
      UNION ALL
      SELECT format('(%I = %s AND %I IS NOT NULL)', a.attname, p_key, g.column_name)
        FROM unnest(g.key_id_attnums) k JOIN pg_attribute a ON a.attrelid = g.relid AND a.attnum = k) x;
    IF cond IS NULL THEN
      n := 0;  -- a Fernet column no job moved this key in or out of
    ELSE
      EXECUTE format('SELECT count(*) FROM %s WHERE %s', g.relid::regclass, cond) INTO n;
    END IF;
    unknown := rekey.row_security_blocker(g.relid);
    RETURN NEXT;
  END LOOP;
END $$;

-- Where values under key p_key are, in the whole database: one row per column that holds some
-- (status in_use), could not be read completely (unknown), or is a registered target that no
-- longer resolves (unresolved). Columns without a value under the key are not listed.
--
-- Read: every bytea and text-like column (text, varchar, char, and domains over them) of every
-- table, partitioned table and materialized view outside pg_catalog, information_schema,
-- pg_toast, rekey and temporary schemas. A partitioned table is read through its parent only
-- (partitions are not read again); a plain table with FROM ONLY, its inheritance children as
-- tables of their own. Formats, matched by prefix only (nothing is decoded, so no value can make
-- the census fail):
--   tink         bytea starting with 0x01 || key id
--   raw          bytea in a table with a registered raw target: the row's key-id column = key
--   tink-base64  text holding the Tink value in base64 or base64url (at least 44 characters)
--   tink-hex     text holding it in hex, with or without a \x prefix (at least 66 hex digits)
--   tink-json    a jsonb column registered with a JSON path: the Tink prefix of the string there,
--                in the registered encoding (rekey.value_head_sql)
-- A registered Fernet column is unknown for every key a job on it moved in or out: a token names
-- no key, so SQL cannot count it (docs/FORMAT.md, "fernet"). So is a cloak column: its values name
-- their key by a fingerprint only the key material gives (docs/FORMAT.md, "cloak").
-- Unknown, never zero: a column the current role may not SELECT, a table whose row-level security
-- hides rows (the visible rows are still counted), a foreign table, a table that fails to read.
--
-- Cost: one sequential scan of every table holding a bytea or text column (all its candidate
-- columns counted in that one scan), so run it when a key is retired or destroyed, not on a hot
-- path. Memory: a count per column. A NOTICE per table reports progress.
-- VOLATILE: each table is counted with a fresh snapshot (see the lifecycle trigger).
CREATE OR REPLACE FUNCTION rekey.key_census(p_key bigint)
RETURNS TABLE (schema_name name, table_name name, column_name name, target_id bigint,
               formats text[], n bigint, unknown text, status text)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  tink bytea := rekey.tink_prefix(p_key);
  hex text := encode(rekey.tink_prefix(p_key), 'hex');
  b64 text[];
  rel record;
  col record;
  tables integer;
  done integer := 0;
  kid_cols name[];
  kid_hidden boolean;
  blocker text;
  -- One entry per counted (column, format): the column's index in cols_*, the format, and the
  -- FILTER condition; format '*' is the column's total (a value is counted once).
  e_col integer[];
  e_fmt text[];
  e_sql text[];
  cols_name name[];
  cols_attnum smallint[];
  cols_target bigint[];
  cols_unknown text[];
  cols_conds text[];
  conds text[];
  counts bigint[];
  i integer;
  j integer;
  total bigint;
  found_formats text[];
  scan_error text;
  -- The registered targets, read once: (relid, attnum, target_id, codec, key_id_attnum) of those
  -- that resolve.
  t_relid oid[];
  t_attnum smallint[];
  t_id bigint[];
  t_codec text[];
  t_kid smallint[];
  -- Per registered target: it holds JSON fields (rekey.targets.json_path); it holds Fernet
  -- tokens and a job on it moved key p_key in or out.
  t_json boolean[];
  t_decrypted_key boolean[];
  json_conds text[];
BEGIN
  SELECT coalesce(array_agg(tc.relid ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.attnum ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.target_id ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.codec ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.key_id_attnum ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(x.json_path IS NOT NULL ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(rekey.codec_keyed_by_decryption_only(tc.codec) AND EXISTS (
                    SELECT 1 FROM rekey.job_columns jc JOIN rekey.job_keys jk USING (job_id)
                     WHERE jc.target_id = tc.target_id AND p_key IN (jk.source_key_id, jk.target_key_id))
                  ORDER BY tc.target_id), '{}')
    INTO t_relid, t_attnum, t_id, t_codec, t_kid, t_json, t_decrypted_key
    FROM rekey.target_columns() tc JOIN rekey.targets x USING (target_id)
   WHERE tc.unresolved IS NULL;

  -- The first 7 characters of the base64 of 0x01 || key id || any byte: 6 are fixed, the 7th
  -- takes 4 values (it carries the top 2 bits of the next, random, byte).
  SELECT array_agg(DISTINCT v.prefix) INTO b64 FROM (
    SELECT left(encode(tink || set_byte('\x00'::bytea, 0, x.b) || '\x0000'::bytea, 'base64'), 7) AS std
      FROM unnest(ARRAY[0, 64, 128, 192]) x(b)) s,
    LATERAL unnest(ARRAY[s.std, translate(s.std, '+/', '-_')]) v(prefix);

  SELECT count(*) INTO tables
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'm', 'f') AND NOT c.relispartition
     AND ns.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'rekey')
     AND ns.nspname NOT LIKE 'pg\_temp\_%' AND ns.nspname NOT LIKE 'pg\_toast\_temp\_%';

  FOR rel IN
    SELECT c.oid, ns.nspname, c.relname, c.relkind, c.relispopulated
      FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'm', 'f') AND NOT c.relispartition
       AND ns.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'rekey')
       AND ns.nspname NOT LIKE 'pg\_temp\_%' AND ns.nspname NOT LIKE 'pg\_toast\_temp\_%'
     ORDER BY ns.nspname, c.relname
  LOOP
    done := done + 1;
    e_col := '{}'; e_fmt := '{}'; e_sql := '{}';
    cols_name := '{}'; cols_attnum := '{}'; cols_target := '{}'; cols_unknown := '{}';
    cols_conds := '{}';

    -- Raw values name no key: a registered raw target's key-id column governs every bytea value
    -- of its row, registered or not.
    SELECT array_agg(DISTINCT a.attname), bool_or(NOT has_column_privilege(rel.oid, a.attnum, 'SELECT'))
      INTO kid_cols, kid_hidden
      FROM unnest(t_relid, t_codec, t_kid) tc(relid, codec, key_id_attnum)
      JOIN pg_attribute a ON a.attrelid = tc.relid AND a.attnum = tc.key_id_attnum
     WHERE tc.relid = rel.oid AND tc.codec = 'raw';

    FOR col IN
      SELECT a.attname, a.attnum, bt.typname AS base,
             (SELECT min(tc.target_id) FROM unnest(t_relid, t_attnum, t_id) tc(relid, attnum, target_id)
               WHERE tc.relid = rel.oid AND tc.attnum = a.attnum) AS target_id
        FROM pg_attribute a
        JOIN pg_type bt ON bt.oid = rekey.base_type(a.atttypid)
       WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
         AND (bt.typname IN ('bytea', 'text', 'varchar', 'bpchar')
              OR (bt.typname = 'jsonb' AND EXISTS (
                    SELECT 1 FROM unnest(t_relid, t_attnum, t_json) tc(relid, attnum, json)
                     WHERE tc.relid = rel.oid AND tc.attnum = a.attnum AND tc.json)))
       ORDER BY a.attnum
    LOOP
      i := cardinality(cols_name) + 1;
      cols_name := cols_name || col.attname;
      cols_attnum := cols_attnum || col.attnum;
      cols_target := cols_target || col.target_id;
      cols_unknown := cols_unknown || NULL::text;
      conds := '{}';
      IF rel.relkind = 'f' THEN
        cols_unknown[i] := 'a foreign table: rekey does not read remote data; check where it lives';
      ELSIF NOT has_column_privilege(rel.oid, col.attnum, 'SELECT') THEN
        cols_unknown[i] := format('role %I may not read it; GRANT SELECT ON %I.%I TO %I',
                                  current_user, rel.nspname, rel.relname, current_user);
      ELSIF EXISTS (SELECT 1 FROM unnest(t_relid, t_attnum, t_decrypted_key) tc(relid, attnum, fk)
                     WHERE tc.relid = rel.oid AND tc.attnum = col.attnum AND tc.fk) THEN
        -- Values whose key SQL cannot read (rekey.codec_keyed_by_decryption_only).
        cols_unknown[i] := (
          SELECT format('holds %s, which name no key SQL can read: SQL cannot count those under key %s (docs/FORMAT.md, "%s")',
                        rekey.codec_values_noun(tc.codec), p_key, tc.codec)
            FROM unnest(t_relid, t_attnum, t_decrypted_key, t_codec) tc(relid, attnum, fk, codec)
           WHERE tc.relid = rel.oid AND tc.attnum = col.attnum AND tc.fk
           ORDER BY tc.codec LIMIT 1);
      ELSIF col.base = 'jsonb' THEN
        -- A registered JSON field (docs/FORMAT.md, "Stored forms"): the Tink prefix of the string
        -- at its path, in its encoding.
        SELECT array_agg(DISTINCT format('%s = %L::bytea',
                                         rekey.value_head_sql(col.attname, x.encoding, x.json_path), tink))
          INTO json_conds
          FROM rekey.targets x
         WHERE x.target_id = ANY (SELECT tc.target_id FROM unnest(t_relid, t_attnum, t_id) tc(relid, attnum, target_id)
                                   WHERE tc.relid = rel.oid AND tc.attnum = col.attnum)
           AND x.json_path IS NOT NULL;
        conds := conds || array_to_string(json_conds, ' OR ');
        e_col := e_col || i; e_fmt := e_fmt || 'tink-json'::text; e_sql := e_sql || conds[1];
      ELSIF col.base = 'bytea' THEN
        conds := conds || format('substring(%I from 1 for 5) = %L::bytea', col.attname, tink);
        e_col := e_col || i; e_fmt := e_fmt || 'tink'::text; e_sql := e_sql || conds[1];
        IF kid_cols IS NOT NULL THEN
          IF kid_hidden THEN
            cols_unknown[i] := format('role %I may not read the key-id column of %I.%I; GRANT SELECT ON %I.%I TO %I',
                                      current_user, rel.nspname, rel.relname, rel.nspname,
                                      rel.relname, current_user);
          ELSE
            conds := conds || (SELECT format('(%s) AND %I IS NOT NULL',
                                             string_agg(format('%I = %s', k, p_key), ' OR '), col.attname)
                                 FROM unnest(kid_cols) k);
            e_col := e_col || i; e_fmt := e_fmt || 'raw'::text; e_sql := e_sql || conds[2];
          END IF;
        END IF;
      ELSE
        conds := conds || format('left(%I::text, 7) = ANY (%L::text[]) AND octet_length(%I) >= 44',
                                 col.attname, b64, col.attname);
        e_col := e_col || i; e_fmt := e_fmt || 'tink-base64'::text; e_sql := e_sql || conds[1];
        conds := conds || format('(lower(left(%I::text, 10)) = %L OR lower(left(%I::text, 12)) = %L) AND octet_length(%I) >= 66',
                                 col.attname, hex, col.attname, '\x' || hex, col.attname);
        e_col := e_col || i; e_fmt := e_fmt || 'tink-hex'::text; e_sql := e_sql || conds[2];
      END IF;
      IF cardinality(conds) > 1 THEN
        e_col := e_col || i; e_fmt := e_fmt || '*'::text;
        e_sql := e_sql || array_to_string(conds, ' OR ');
      END IF;
    END LOOP;
    CONTINUE WHEN cardinality(cols_name) = 0;

    RAISE NOTICE 'rekey census of key %: table % of %: %.%', p_key, done, tables,
      quote_ident(rel.nspname), quote_ident(rel.relname);

    counts := NULL;
    scan_error := NULL;
    blocker := NULL;
    IF cardinality(e_sql) > 0 AND (rel.relkind <> 'm' OR rel.relispopulated) THEN
      blocker := rekey.row_security_blocker(rel.oid);
      BEGIN
        EXECUTE format('SELECT ARRAY[%s]::bigint[] FROM %s %s',
                       (SELECT string_agg(format('count(*) FILTER (WHERE %s)', s), ', ' ORDER BY o)
                          FROM unnest(e_sql) WITH ORDINALITY u(s, o)),
                       CASE WHEN rel.relkind = 'r' THEN 'ONLY' ELSE '' END, rel.oid::regclass)
          INTO counts;
      EXCEPTION WHEN others THEN
        scan_error := format('reading it failed: %s', SQLERRM);
      END;
    END IF;

    FOR i IN 1 .. cardinality(cols_name) LOOP
      total := NULL;
      found_formats := '{}';
      IF cols_unknown[i] IS NULL AND scan_error IS NULL AND counts IS NOT NULL THEN
        total := 0;
        FOR j IN 1 .. cardinality(e_col) LOOP
          CONTINUE WHEN e_col[j] <> i;
          IF e_fmt[j] = '*' THEN
            total := counts[j];
          ELSIF counts[j] > 0 THEN
            found_formats := found_formats || e_fmt[j];
            -- A column with one format has no '*' entry: its one count is the total.
            IF NOT ('*' = ANY (SELECT e_fmt[x] FROM generate_subscripts(e_col, 1) x WHERE e_col[x] = i)) THEN
              total := counts[j];
            END IF;
          END IF;
        END LOOP;
      ELSIF cols_unknown[i] IS NULL AND scan_error IS NULL THEN
        total := 0;  -- an unpopulated materialized view holds no rows
      END IF;
      schema_name := rel.nspname;
      table_name := rel.relname;
      column_name := cols_name[i];
      target_id := cols_target[i];
      n := total;
      unknown := coalesce(cols_unknown[i], scan_error, blocker);
      formats := CASE WHEN cardinality(found_formats) > 0 THEN found_formats
                      ELSE (SELECT array_agg(e_fmt[x] ORDER BY x) FROM generate_subscripts(e_col, 1) x
                             WHERE e_col[x] = i AND e_fmt[x] <> '*') END;
      status := CASE WHEN total > 0 THEN 'in_use' WHEN unknown IS NOT NULL THEN 'unknown' END;
      CONTINUE WHEN status IS NULL;
      RETURN NEXT;
    END LOOP;
  END LOOP;

  -- Registered targets that no longer resolve are never skipped.
  FOR col IN
    SELECT tc.* FROM rekey.target_columns() tc
     WHERE tc.unresolved IS NOT NULL AND tc.codec NOT IN ('vault-transit', 'aws-kms')
     ORDER BY tc.target_id
  LOOP
    SELECT t.schema_name, t.table_name, t.column_name INTO schema_name, table_name, column_name
      FROM rekey.targets t WHERE t.target_id = col.target_id;
    target_id := col.target_id;
    formats := ARRAY[col.codec];
    n := NULL;
    unknown := format('registered target %s (%s): %s; if its values are truly gone: rekey keys forget-target %s',
                      col.target_id, col.registered_as, col.unresolved, col.target_id);
    status := 'unresolved';
    RETURN NEXT;
  END LOOP;
END $$;

-- Raises unless key p_key may become p_to ('retired' or 'destroyed') now, in this order:
--   * a member of rekey_worker that is not a member of rekey_operator may not (least privilege:
--     workers promote keys, never retire or destroy them); superusers may;
--   * the transaction must be READ COMMITTED: a REPEATABLE READ or SERIALIZABLE snapshot predates
--     the key lock, so it would miss what a batch committed while the retire waited;
--   * the key's lifecycle lock is taken (waits for every transaction writing under the key);
--   * no unfinished job (not completed, cancelled or rolled back) may name the key;
--   * rekey.key_census(p_key) must list nothing, except unknown columns named in the
--     transaction-local setting rekey.accept_unknown (comma-separated schema.table.column), whose
--     acceptance is audited as key.unknown_accepted.
-- The message lists one line per column found.
CREATE OR REPLACE FUNCTION rekey.check_key_retirement(p_key bigint, p_to text) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  verb text := CASE p_to WHEN 'destroyed' THEN 'destroyed' ELSE 'retired' END;
  jobs text;
  accepted text[];
  accepted_found jsonb := '[]';
  lines text[] := '{}';
  trial text[] := '{}';
  trial_codecs text[] := '{}';
  r record;
  ref text;
  codec text;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rekey_worker')
     AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
    IF pg_has_role(current_user, 'rekey_worker', 'MEMBER') THEN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rekey_operator')
         OR NOT pg_has_role(current_user, 'rekey_operator', 'MEMBER') THEN
        RAISE EXCEPTION 'role % is a rekey_worker: workers may promote keys but never retire or destroy them; run rekey keys % % as a member of rekey_operator',
          current_user, CASE verb WHEN 'destroyed' THEN 'destroy' ELSE 'retire' END, p_key
          USING ERRCODE = 'insufficient_privilege';
      END IF;
    END IF;
  END IF;

  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'key % cannot be % in a % transaction: its snapshot predates the key lock, so values written meanwhile would go uncounted; use READ COMMITTED (rekey keys retire and destroy do)',
      p_key, verb, upper(current_setting('transaction_isolation'))
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;

  PERFORM rekey.lock_key_for_lifecycle(p_key);

  -- From here on every statement's snapshot is taken after the lock was granted.
  SELECT string_agg(format('job %s (%s)', j.job_id, j.state), ', ' ORDER BY j.job_id) INTO jobs
    FROM rekey.jobs j
   WHERE j.state NOT IN ('completed', 'cancelled', 'rolled_back')
     AND EXISTS (SELECT 1 FROM rekey.job_keys k
                  WHERE k.job_id = j.job_id AND p_key IN (k.source_key_id, k.target_key_id));
  IF jobs IS NOT NULL THEN
    RAISE EXCEPTION 'key % cannot be %: unfinished % names it as a source or target key; let it complete, or cancel or roll it back first',
      p_key, verb, jobs USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;

  SELECT coalesce(array_agg(btrim(a)), '{}') INTO accepted
    FROM unnest(string_to_array(current_setting('rekey.accept_unknown', true), ',')) a
   WHERE btrim(a) <> '';

  FOR r IN SELECT * FROM rekey.key_census(p_key) LOOP
    ref := format('%I.%I.%I', r.schema_name, r.table_name, r.column_name);
    IF r.status = 'unknown'
       AND (ref = ANY (accepted) OR format('%s.%s.%s', r.schema_name, r.table_name, r.column_name) = ANY (accepted)) THEN
      accepted_found := accepted_found || jsonb_build_object('column', ref, 'reason', r.unknown);
    ELSIF r.status = 'in_use' THEN
      lines := lines || format('%s: %s values under key %s (%s%s)%s', ref, r.n, p_key,
                               array_to_string(r.formats, ', '),
                               CASE WHEN r.target_id IS NOT NULL THEN '; registered target ' || r.target_id ELSE '' END,
                               CASE WHEN r.unknown IS NOT NULL THEN '; and maybe more: ' || r.unknown ELSE '' END);
    ELSIF r.status = 'unknown' THEN
      lines := lines || format('%s: unknown: %s', ref, r.unknown);
      -- A column only trial decryption with the keys can count: the CLI can, SQL cannot.
      SELECT t.codec INTO codec FROM rekey.targets t WHERE t.target_id = r.target_id;
      IF rekey.codec_keyed_by_decryption_only(codec) AND r.unknown LIKE '%which name no key SQL can read%' THEN
        trial := trial || ref;
        trial_codecs := trial_codecs || rekey.codec_values_noun(codec);
      END IF;
    ELSE
      lines := lines || format('%s: unresolved: %s', ref, r.unknown);
    END IF;
  END LOOP;
  IF cardinality(lines) > 0 AND cardinality(trial) = cardinality(lines) THEN
    RAISE EXCEPTION 'key % cannot be % from SQL: % hold(s) %, which SQL cannot count by key; run rekey keys % % instead: it counts them by trial decryption with the keys and refuses if any is under key %',
      p_key, verb, array_to_string(trial, ', '),
      (SELECT string_agg(DISTINCT c, ' and ') FROM unnest(trial_codecs) c),
      CASE verb WHEN 'destroyed' THEN 'destroy' ELSE 'retire' END, p_key, p_key
      USING ERRCODE = 'object_not_in_prerequisite_state';
  ELSIF cardinality(trial) > 0 THEN
    lines := lines || format('%s: SQL cannot count these by key; once the other columns are clear, run rekey keys %s %s: it counts them by trial decryption',
                             array_to_string(trial, ', '),
                             CASE verb WHEN 'destroyed' THEN 'destroy' ELSE 'retire' END, p_key);
  END IF;
  IF cardinality(lines) > 0 THEN
    RAISE EXCEPTION E'key % cannot be %: % column(s) hold values under it or could not be read; rotate the values to another key first (rekey keys usage % lists them), or accept a column that cannot be read with --accept-unknown SCHEMA.TABLE.COLUMN\n%',
      p_key, verb, cardinality(lines), p_key, array_to_string(lines, E'\n')
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  IF jsonb_array_length(accepted_found) > 0 THEN
    PERFORM rekey.audit_event('key.unknown_accepted', NULL, jsonb_build_object(
      'key_id', p_key, 'to', p_to, 'columns', accepted_found));
  END IF;
END $$;

-- The lifecycle of rekey.keys: a key is inserted enabled, changes status only as
-- rekey.key_lifecycle() allows, with the time of each state stamped; a retire or destroy is
-- checked first by rekey.check_key_retirement (whole-database census, key lock, unfinished jobs,
-- roles, isolation).
CREATE OR REPLACE FUNCTION rekey.keys_enforce_lifecycle()
RETURNS trigger
LANGUAGE plpgsql
AS $$
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
      PERFORM rekey.check_key_retirement(OLD.key_id, NEW.status);
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

CREATE OR REPLACE TRIGGER keys_enforce_lifecycle
  BEFORE INSERT OR UPDATE ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.keys_enforce_lifecycle();
