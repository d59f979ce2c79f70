-- Catalog helpers: table and column names resolved by PostgreSQL's own parser, column types and
-- scope values read from the catalog (never from a rekey table a writer could turn into SQL), and
-- the row-level security check. They read only the catalog, so a migration may apply this file
-- at any point of its history (0014 does, for its scope-value backfill).

-- Resolves a possibly schema-qualified, possibly quoted table name with PostgreSQL's own parser,
-- and checks it exists. Never pastes the text into SQL.
CREATE OR REPLACE FUNCTION rekey.resolve_table(p_table text, OUT schema_name name, OUT table_name name)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  parts text[];
  rel oid;
BEGIN
  BEGIN
    parts := parse_ident(p_table);
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'invalid table name %: write schema.table, quoting unusual names with double quotes', quote_literal(p_table)
      USING ERRCODE = 'invalid_name';
  END;
  IF array_length(parts, 1) = 1 THEN
    parts := ARRAY['public', parts[1]];
  ELSIF array_length(parts, 1) <> 2 THEN
    RAISE EXCEPTION 'invalid table name %: write schema.table', quote_literal(p_table)
      USING ERRCODE = 'invalid_name';
  END IF;
  SELECT c.oid, n.nspname, c.relname INTO rel, schema_name, table_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = parts[1] AND c.relname = parts[2] AND c.relkind IN ('r', 'p');
  IF rel IS NULL THEN
    RAISE EXCEPTION 'table %.% does not exist', quote_ident(parts[1]), quote_ident(parts[2])
      USING ERRCODE = 'undefined_table';
  END IF;
END $$;

-- format_type of a column of schema.table, or NULL iff there is no such column.
CREATE OR REPLACE FUNCTION rekey.column_type(p_schema name, p_table name, p_column text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
$$;

-- The type a column stores, through any domains over it.
CREATE OR REPLACE FUNCTION rekey.base_type(p_type oid) RETURNS oid
LANGUAGE sql STABLE STRICT AS $$
  WITH RECURSIVE d(oid, base, depth) AS (
    SELECT t.oid, t.typbasetype, 0 FROM pg_type t WHERE t.oid = p_type
    UNION ALL
    SELECT t.oid, t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.base
     WHERE d.base <> 0 AND d.depth < 32)
  SELECT oid FROM d ORDER BY depth DESC LIMIT 1
$$;

-- The type of column p_column of p_schema.p_table as the catalog has it, ready to paste after
-- "::" (format_type without a type modifier: a cast to varchar(2) or numeric(5,2) would truncate
-- or round the value it casts). p_recorded, if given, is the type a job recorded for the column:
-- it must name the same type (checked through regtype, which parses a type name and nothing
-- else), or this raises: a tampered or stale rekey.jobs row stops the job instead of running.
CREATE OR REPLACE FUNCTION rekey.checked_column_type(p_schema name, p_table name, p_column name,
                                          p_recorded text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  actual oid;
  recorded regtype;
BEGIN
  SELECT a.atttypid INTO actual FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
  IF actual IS NULL THEN
    RAISE EXCEPTION 'column % of %.% no longer exists', quote_ident(p_column), quote_ident(p_schema),
      quote_ident(p_table) USING ERRCODE = 'undefined_column';
  END IF;
  IF p_recorded IS NOT NULL THEN
    BEGIN
      recorded := p_recorded::regtype;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'the job records type % for column %.%.%, which is not a type name: rekey.jobs was edited; cancel the job and create it again',
        quote_literal(p_recorded), quote_ident(p_schema), quote_ident(p_table), quote_ident(p_column)
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END;
    IF recorded <> actual THEN
      RAISE EXCEPTION 'the job records type % for column %.%.% but the catalog says %: the column changed type, or rekey.jobs was edited; cancel the job and create it again',
        format_type(recorded, NULL), quote_ident(p_schema), quote_ident(p_table), quote_ident(p_column),
        format_type(actual, NULL) USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
  END IF;
  RETURN format_type(actual, NULL);
END $$;

-- The canonical text of scope value p_value for column p_column: the value parsed as the column's
-- type (with its modifier) and printed by that type, which is what p_column::text gives for the
-- rows it selects. Raises invalid_parameter_value when the text is not such a value, or is one
-- only after the type modifier changed it (a varchar(2) scope 'abc' would select the rows of 'ab').
CREATE OR REPLACE FUNCTION rekey.canonical_scope_value(p_schema name, p_table name, p_column name, p_value text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  exact_type text;
  base_type text;
  canonical text;
  unchanged boolean;
BEGIN
  SELECT format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, NULL)
    INTO exact_type, base_type
    FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
  IF exact_type IS NULL THEN
    RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_column),
      quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
  END IF;
  BEGIN
    EXECUTE format('SELECT (%1$L::%2$s)::text, %1$L::%3$s = (%1$L::%2$s)::%3$s', p_value, exact_type, base_type)
      INTO canonical, unchanged;
  EXCEPTION WHEN others THEN
    unchanged := NULL;
  END;
  IF unchanged IS NOT TRUE THEN
    RAISE EXCEPTION 'scope value % is not a valid %', quote_literal(coalesce(p_value, '')), exact_type
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN canonical;
END $$;

-- Row-level security: NULL iff every row of `p_rel` is visible to the current role; otherwise the
-- one-line reason and the grant that fixes it. Policies hide rows silently, so a job, a gate,
-- `job verify` or a key census that read through them would count hidden values as absent and
-- report a rotation complete while those rows stay under the old key. Row security applies unless
-- the role is a superuser, has BYPASSRLS, or owns the table (through membership too) and the
-- table is not FORCE ROW LEVEL SECURITY.
CREATE OR REPLACE FUNCTION rekey.row_security_blocker(p_rel regclass) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT format('row-level security on %s hides rows from role %I: %s', c.oid::regclass,
                current_user,
                CASE WHEN c.relforcerowsecurity
                     THEN format('the table forces row security even on its owner; ALTER ROLE %I BYPASSRLS (or ALTER TABLE %s NO FORCE ROW LEVEL SECURITY and run rekey as its owner)',
                                 current_user, c.oid::regclass)
                     ELSE format('ALTER ROLE %I BYPASSRLS, or run rekey as the table''s owner %I',
                                 current_user, c.relowner::regrole)
                END)
    FROM pg_class c
   WHERE c.oid = p_rel AND c.relrowsecurity
     AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = current_user
                        AND (r.rolsuper OR r.rolbypassrls))
     AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
$$;
