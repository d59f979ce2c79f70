-- Rotation jobs: the stage bucket of a row, defining a job (rekey.create_job and
-- rekey.create_transit_job, and the checks they share), the collisions refused between unfinished
-- jobs, the keyring promotion, and the operator's state changes (pause, resume, cancel, retry,
-- requeue, rerun). Workers learn of changes through NOTIFY rekey_jobs.

-- The stage bucket of a row: a uniform pseudo-random number in 0..9999 derived from the text
-- form of its primary key, the same in every database and language:
--   bucket = (first 4 bytes of MD5(pk text), read as a big-endian unsigned integer) mod 10000
-- A row belongs to the rollout up to p percent iff bucket < p * 100, so stages nest. The 1%
-- canary of a table, from psql:  SELECT * FROM t WHERE rekey.stage_bucket(id::text) < 100;
CREATE OR REPLACE FUNCTION rekey.stage_bucket(pk text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
  SELECT (('x' || substr(md5(pk), 1, 8))::bit(32)::bigint % 10000)::integer
$$;

-- ---------------------------------------------------------------------------------------------
-- The key of a job's rows (rekey.jobs.key_columns, key_types, key_text_form; migration 0020):
-- one or more columns of the primary key or of a unique, not-null index, in the index's order.
-- Batches are half-open ranges in the key's row order, compared as row values
-- (ROW(a, b) >= ROW(x, y)); the key's text is the stage bucket's input, the associated data's
-- {pk}, and the form in which batch bounds, checkpoints, recorded keys, quarantined and audited
-- rows name a row. docs/FORMAT.md ("The key's text") is its specification; these functions are
-- its implementation in SQL, and src/jobs/key_shape.cpp builds the same expressions for the
-- statements workers prepare (tests/table_shapes_pg_test.cpp compares the two on every type).

-- The key types rekey can order, bound and name rows by (format_type without a modifier).
CREATE OR REPLACE FUNCTION rekey.supported_key_types() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT ARRAY['bigint', 'integer', 'smallint', 'numeric', 'uuid', 'text', 'character varying',
               'date', 'timestamp with time zone']
$$;

-- The canonical text of a timestamptz key column: UTC, ISO 8601, always six fractional digits,
-- e.g. 2026-01-31T23:00:00.000000Z (" BC" appended before year 1; infinity and -infinity as
-- such). Neither DateStyle nor TimeZone changes it, and ::timestamptz reads it back under any.
CREATE OR REPLACE FUNCTION rekey.timestamptz_key_text(v timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN NOT isfinite(v) THEN v::text
              ELSE to_char(v AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                   || CASE WHEN v < '0001-01-01 00:00:00+00'::timestamptz THEN ' BC' ELSE '' END
         END
$$;

-- The canonical text of a date key column: ISO 8601, e.g. 2026-01-31 (" BC" appended before
-- year 1; infinity and -infinity as such), whatever DateStyle says; ::date reads it back.
CREATE OR REPLACE FUNCTION rekey.date_key_text(v date) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN NOT isfinite(v) THEN v::text
              ELSE to_char(v::timestamp, 'YYYY-MM-DD')
                   || CASE WHEN v < '0001-01-01'::date THEN ' BC' ELSE '' END
         END
$$;

-- The text of one key column p_expr of type p_type, as an SQL expression: rekey.date_key_text()
-- and rekey.timestamptz_key_text() (whose ::text follows DateStyle and TimeZone), ::text for the
-- others
-- (which no setting changes; a numeric keeps the scale it was stored with). A 'legacy' job
-- (created before migration 0020) keeps ::text for every type.
CREATE OR REPLACE FUNCTION rekey.key_column_text_sql(p_expr text, p_type text, p_form text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_form = 'canonical' AND p_type = 'date'
              THEN format('rekey.date_key_text(%s)', p_expr)
              WHEN p_form = 'canonical' AND p_type = 'timestamp with time zone'
              THEN format('rekey.timestamptz_key_text(%s)', p_expr)
              ELSE format('%s::text', p_expr) END
$$;

-- The key's text of the row p_alias, as an SQL expression: the column's text for a one-column
-- key; for a composite key a JSON array of the columns' texts as JSON strings, in key order,
-- without spaces: ["acme","2026-01-31T23:00:00.000000Z","42"].
CREATE OR REPLACE FUNCTION rekey.key_text_sql(p_columns name[], p_types text[], p_form text,
                                              p_alias text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN cardinality(p_columns) = 1
              THEN rekey.key_column_text_sql(format('%I.%I', p_alias, p_columns[1]), p_types[1],
                                             p_form)
              ELSE $s$'[' || $s$
                   || string_agg(format('to_json(%s)::text',
                                        rekey.key_column_text_sql(format('%I.%I', p_alias, k.c), k.ty,
                                                                  p_form)),
                                 $s$ || ',' || $s$ ORDER BY k.i)
                   || $s$ || ']'$s$
         END
    FROM unnest(p_columns, p_types) WITH ORDINALITY AS k(c, ty, i)
$$;

-- The key of the row p_alias as a value to compare: t.a for one column, ROW(t.a, t.b) for
-- several (compared column by column in key order, which a btree index on the key serves).
CREATE OR REPLACE FUNCTION rekey.key_row_sql(p_columns name[], p_alias text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN cardinality(p_columns) = 1 THEN format('%I.%I', p_alias, p_columns[1])
              ELSE 'ROW(' || string_agg(format('%I.%I', p_alias, c), ', ' ORDER BY i) || ')' END
    FROM unnest(p_columns) WITH ORDINALITY AS k(c, i)
$$;

-- "t.a, t.b": the key's columns for ORDER BY.
CREATE OR REPLACE FUNCTION rekey.key_order_sql(p_columns name[], p_alias text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT string_agg(format('%I.%I', p_alias, c), ', ' ORDER BY i)
    FROM unnest(p_columns) WITH ORDINALITY AS k(c, i)
$$;

-- The key whose text is the SQL expression p_text (a parameter, a column of rekey.batches), as a
-- value comparable with rekey.key_row_sql: (p_text::bigint) for one column,
-- ROW(((p_text)::jsonb ->> 0)::text, ...) for several. Every canonical text reads back.
CREATE OR REPLACE FUNCTION rekey.key_bound_sql(p_types text[], p_text text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN cardinality(p_types) = 1 THEN format('(%s::%s)', p_text, p_types[1])
              ELSE 'ROW(' || string_agg(format('((%s)::jsonb ->> %s)::%s', p_text, i - 1, ty),
                                        ', ' ORDER BY i) || ')' END
    FROM unnest(p_types) WITH ORDINALITY AS k(ty, i)
$$;

-- The types of job p_job's key columns as the catalog has them now: rekey.checked_column_type
-- raises (55000) if the job records another type for one of them, (42703) if one is gone.
CREATE OR REPLACE FUNCTION rekey.job_key_types(p_job rekey.jobs) RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT array_agg(rekey.checked_column_type(p_job.schema_name, p_job.table_name, k.c, k.ty)
                   ORDER BY k.i)
    FROM unnest(p_job.key_columns, p_job.key_types) WITH ORDINALITY AS k(c, ty, i)
$$;

-- rekey.job_key_types, each collatable column's type followed by the column's collation
-- (text COLLATE pg_catalog."en-x-icu"), for reading bounds back with rekey.key_bound_sql where
-- they are ordered or compared among themselves (rekey.plan_sweep) rather than against the key
-- column: a bound's text has the database's default collation, the key column (and its index)
-- its own, and the two orders differ as soon as the column's collation is not the default. Where
-- a bound is compared with the column, the column's collation governs anyway (an implicit
-- non-default collation wins over the default); the keyset walk names it all the same.
CREATE OR REPLACE FUNCTION rekey.job_key_bound_types(p_job rekey.jobs) RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT array_agg(k.ty || coalesce(' COLLATE ' || quote_ident(n.nspname) || '.'
                                    || quote_ident(co.collname), '') ORDER BY k.i)
    FROM unnest(p_job.key_columns, rekey.job_key_types(p_job)) WITH ORDINALITY AS k(c, ty, i)
    JOIN pg_attribute a
      ON a.attrelid = format('%I.%I', p_job.schema_name, p_job.table_name)::regclass
     AND a.attname = k.c
    LEFT JOIN pg_collation co ON co.oid = a.attcollation
    LEFT JOIN pg_namespace n ON n.oid = co.collnamespace
$$;

-- The key's text of job p_job's row p_alias (rekey.key_text_sql over the catalog's types).
CREATE OR REPLACE FUNCTION rekey.job_key_text_sql(p_job rekey.jobs, p_alias text) RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT rekey.key_text_sql(p_job.key_columns, rekey.job_key_types(p_job), p_job.key_text_form,
                            p_alias)
$$;

-- The relations job p_job's batches are planned over, in name order: for a declarative
-- partitioned table, every leaf partition attached now (at any depth; a partitioned table without
-- partitions holds no rows and is left out), each a batch's partition_schema/partition_name; for
-- any other table one row of NULLs, the table itself. Planning per leaf keeps a batch, and so each
-- of its statements, on one partition whatever the partition key (docs/operations.md, "Table
-- shapes").
CREATE OR REPLACE FUNCTION rekey.job_leaves(p_job rekey.jobs)
RETURNS TABLE (leaf_schema name, leaf_name name)
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN QUERY
    SELECT n.nspname, c.relname
      FROM pg_partition_tree(format('%I.%I', p_job.schema_name, p_job.table_name)::regclass) t
      JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE t.isleaf AND t.level > 0 AND c.relkind IN ('r', 'f')
     ORDER BY 1, 2;
  IF NOT FOUND THEN
    -- Not partitioned, or no partition yet: the table itself.
    RETURN QUERY SELECT NULL::name, NULL::name;
  END IF;
END $$;

-- The relation a batch of job p_job over leaf p_schema.p_name (NULL: the table itself) reads
-- and writes, quoted for pasting into SQL.
CREATE OR REPLACE FUNCTION rekey.batch_relation_sql(p_job rekey.jobs, p_schema name, p_name name)
RETURNS text LANGUAGE sql STABLE AS $$
  SELECT CASE WHEN p_name IS NULL THEN format('%I.%I', p_job.schema_name, p_job.table_name)
              ELSE format('%I.%I', p_schema, p_name) END
$$;

-- NULL while leaf p_schema.p_name is still a leaf partition of job p_job's table; otherwise why
-- not, in one line naming it: dropped (no such relation), or detached (a table of its own now,
-- or of another parent). Its rows are then no longer the job's table's: the batches over it end
-- with this reason, and the operator rotates it as its own table if it still holds values
-- (docs/safety.md). Asked under a lock on the parent (rekey.lock_batch_partition) it stays true
-- for the rest of the transaction.
CREATE OR REPLACE FUNCTION rekey.partition_gone(p_job rekey.jobs, p_schema name, p_name name)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
  leaf regclass := to_regclass(format('%I.%I', p_schema, p_name));
BEGIN
  IF p_name IS NULL THEN
    RETURN NULL;
  ELSIF leaf IS NULL THEN
    RETURN format('partition %I.%I was dropped', p_schema, p_name);
  ELSIF NOT EXISTS (SELECT 1 FROM pg_partition_tree(format('%I.%I', p_job.schema_name, p_job.table_name)::regclass) t
                     WHERE t.relid = leaf AND t.isleaf) THEN
    RETURN format('partition %I.%I was detached from %I.%I', p_schema, p_name, p_job.schema_name,
                  p_job.table_name);
  END IF;
  RETURN NULL;
END $$;

-- The key of a new job on p_schema.p_table. p_key_columns (the operator's --key-columns), if
-- given, must be the key columns of a unique, valid, non-partial index without expressions, in
-- the index's order, each NOT NULL; without it, the primary key's columns in its order, or for a
-- table without one the key the latest job on the table was given, if it still names such an
-- index. Every key
-- column must be of a type of rekey.supported_key_types(). Refuses, in one line naming the table
-- and what to change (nothing is written): a table with inheritance children (PostgreSQL keeps a
-- key unique per table, not across a parent and its children, so ranges over the parent could
-- mix two rows of one key); a table without a primary key (naming the usable unique indexes, if
-- any); named columns that are no such index; a key type rekey cannot order. A declarative
-- partitioned table is a table like any other here: its primary key holds the partition key and
-- is unique across its partitions (PostgreSQL refuses a unique index of a partitioned table
-- without the partition key, and an attached partition with a row outside its bounds, so no two
-- partitions share a key). One without such a key of its own is refused like any table without
-- a key, saying why its partitions' own keys do not count.
CREATE OR REPLACE FUNCTION rekey.job_key(p_schema name, p_table name, p_key_columns text[],
                                         OUT key_columns name[], OUT key_types text[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
  rel regclass := format('%I.%I', p_schema, p_table)::regclass;
  tbl text := format('%I.%I', p_schema, p_table);
  candidates text;
  bad record;
  -- For a declarative partitioned table: why a partition's own key is not enough.
  partitioned text := CASE WHEN (SELECT relkind FROM pg_class WHERE oid = rel) = 'p'
    THEN format(' (it is partitioned by %s: a key unique across its partitions is a primary key or unique index of the partitioned table itself, which PostgreSQL requires to include the partition key; an index of one partition is unique in that partition only)',
                pg_get_partkeydef(rel)) ELSE '' END;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = rel) = 'r'
     AND EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = rel) THEN
    RAISE EXCEPTION 'table % has inheritance children, and no key is unique across a parent and its children; create a job per child table, or move the rows to a declarative partitioned table (PARTITION BY)',
      tbl USING ERRCODE = 'feature_not_supported';
  END IF;
  IF p_key_columns IS NULL THEN
    SELECT array_agg(a.attname ORDER BY k.ord) INTO key_columns
      FROM pg_index x, unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
     WHERE x.indrelid = rel AND x.indisprimary AND a.attrelid = rel AND a.attnum = k.attnum;
    IF key_columns IS NULL THEN
      -- The key an earlier job on this table was given (--key-columns), while it still names a
      -- usable index: the operator's statement about the table outlives one job, as
      -- --not-governed does (rekey rotate-due repeats jobs without flags).
      SELECT u.columns INTO key_columns
        FROM (SELECT x.key_columns FROM rekey.jobs x
               WHERE x.schema_name = p_schema AND x.table_name = p_table
               ORDER BY x.job_id DESC LIMIT 1) latest
        JOIN rekey.unique_keys(rel) u ON u.columns = latest.key_columns AND u.not_null;
    END IF;
    IF key_columns IS NULL THEN
      SELECT string_agg(format('--key-columns %s', c.list), ' or ' ORDER BY c.list) INTO candidates
        FROM rekey.unique_keys(rel) u,
             LATERAL (SELECT string_agg(quote_ident(x), ',') AS list FROM unnest(u.columns) x) c
       WHERE u.not_null;
      IF candidates IS NOT NULL THEN
        RAISE EXCEPTION 'table % has no primary key; name a unique, not-null index as its key: %',
          tbl, candidates USING ERRCODE = 'invalid_table_definition';
      END IF;
      RAISE EXCEPTION 'table % has no primary key and no unique index on NOT NULL columns alone (an index on an expression, a partial index or a nullable column cannot key batches)%; add a primary key (ALTER TABLE % ADD PRIMARY KEY (...)) and create the job again',
        tbl, partitioned, tbl USING ERRCODE = 'invalid_table_definition';
    END IF;
  ELSE
    SELECT array_agg(c::name) INTO key_columns FROM unnest(p_key_columns) c
     WHERE rekey.column_type(p_schema, p_table, c) IS NULL;
    IF key_columns IS NOT NULL THEN
      RAISE EXCEPTION 'key column % does not exist in %', quote_ident(key_columns[1]), tbl
        USING ERRCODE = 'undefined_column';
    END IF;
    SELECT u.columns INTO key_columns FROM rekey.unique_keys(rel) u
     WHERE u.columns::text[] = p_key_columns AND u.not_null LIMIT 1;
    IF key_columns IS NULL THEN
      RAISE EXCEPTION 'table % has no unique index on exactly (%), in that order, without expressions or a WHERE clause, on NOT NULL columns%; create one (CREATE UNIQUE INDEX ON % (%)) or name the columns of an existing one with --key-columns',
        tbl, array_to_string(p_key_columns, ', '), partitioned, tbl,
        array_to_string(p_key_columns, ', ') USING ERRCODE = 'invalid_table_definition';
    END IF;
  END IF;
  SELECT array_agg(rekey.checked_column_type(p_schema, p_table, k.c) ORDER BY k.i) INTO key_types
    FROM unnest(key_columns) WITH ORDINALITY AS k(c, i);
  SELECT k.c, k.ty INTO bad FROM unnest(key_columns, key_types) AS k(c, ty)
   WHERE k.ty <> ALL (rekey.supported_key_types()) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'key column % of % is of type %, which rekey cannot order batches by (supported: %); name a unique, not-null index on supported columns with --key-columns',
      quote_ident(bad.c), tbl, bad.ty, array_to_string(rekey.supported_key_types(), ', ')
      USING ERRCODE = 'feature_not_supported';
  END IF;
END $$;

-- The unique indexes of p_rel that could key a job: valid, without a WHERE clause or an
-- expression; their key columns in index order, and whether every one is NOT NULL.
CREATE OR REPLACE FUNCTION rekey.unique_keys(p_rel regclass)
RETURNS TABLE (columns name[], not_null boolean)
LANGUAGE sql STABLE AS $$
  SELECT array_agg(a.attname ORDER BY k.ord), bool_and(a.attnotnull)
    FROM pg_index x, unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
   WHERE x.indrelid = p_rel AND x.indisunique AND x.indisvalid AND x.indpred IS NULL
     AND x.indexprs IS NULL AND a.attrelid = p_rel AND a.attnum = k.attnum
     AND k.ord <= x.indnkeyatts
   GROUP BY x.indexrelid
$$;

-- Job definitions and rollbacks are checked against the unfinished jobs; this lock, held to the
-- end of the transaction, makes those checks and the writes they allow one step (two concurrent
-- creations could otherwise each pass before the other commits). Tag 'REKJ' in the high 32 bits:
-- apart from the key locks ('REKY', rekey.key_lock_id) and the two-int4 batch locks.
CREATE OR REPLACE FUNCTION rekey.lock_job_definitions() RETURNS void
LANGUAGE sql VOLATILE AS $$
  SELECT pg_advisory_xact_lock(x'52454b4a'::bigint << 32)
$$;

-- A job "unfinished" in the sense of the checks below: it may still write values.
CREATE OR REPLACE FUNCTION rekey.job_unfinished(p_state text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
  SELECT p_state NOT IN ('completed', 'cancelled', 'rolled_back')
$$;

-- Refuses (object_not_in_prerequisite_state, naming the job) when an unfinished job other than
-- p_job rotates one of p_job's columns, whatever either job's scope: two jobs writing one column
-- race for its values and undo each other's work.
CREATE OR REPLACE FUNCTION rekey.refuse_column_collision(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  other record;
BEGIN
  -- By identity (rekey.target_columns, sql/schema/30_keyring.sql): a job registered before a rename and
  -- one created under the new name still rotate the same column.
  SELECT o.job_id, o.state, string_agg(DISTINCT format('%I.%I.%I', ot.schema_name, ot.table_name, ot.column_name), ', ') AS cols
    INTO other
    FROM rekey.job_columns mc
    JOIN rekey.target_columns() mt ON mt.target_id = mc.target_id
    JOIN rekey.target_columns() ot ON ot.relid = mt.relid AND ot.attnum = mt.attnum
    JOIN rekey.job_columns oc ON oc.target_id = ot.target_id
    JOIN rekey.jobs o ON o.job_id = oc.job_id AND o.job_id <> p_job AND rekey.job_unfinished(o.state)
   WHERE mc.job_id = p_job
   GROUP BY o.job_id, o.state ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) is still rotating %: a column has one unfinished job at a time; let job % finish, or cancel it (rekey job cancel %)',
      other.job_id, other.state, other.cols, other.job_id, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- Refuses (object_not_in_prerequisite_state, naming the job) when an unfinished job other than
-- p_job uses one of p_job's keys (as source or target) and the two do not map the keys they
-- share identically: only parts of one rotation (the same source -> target pairs over several
-- tables, as rekey rotate-due creates them) may run side by side. Anything else -- 1->2 beside
-- 1->3, or 1->2 beside 2->3 -- promotes, demotes and retires keys under the other's feet.
CREATE OR REPLACE FUNCTION rekey.refuse_key_collision(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  other record;
BEGIN
  WITH mine AS (SELECT source_key_id AS s, target_key_id AS d FROM rekey.job_keys WHERE job_id = p_job),
       my_keys AS (SELECT s AS k FROM mine UNION SELECT d FROM mine)
  SELECT o.job_id, o.state,
         (SELECT string_agg(q.source_key_id || '->' || q.target_key_id, ', ' ORDER BY q.source_key_id)
            FROM rekey.job_keys q WHERE q.job_id = o.job_id) AS pairs
    INTO other
    FROM rekey.jobs o
   WHERE o.job_id <> p_job AND rekey.job_unfinished(o.state)
     AND EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                    AND (q.source_key_id IN (SELECT k FROM my_keys) OR q.target_key_id IN (SELECT k FROM my_keys)))
     AND (EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                     AND (q.source_key_id IN (SELECT k FROM my_keys) OR q.target_key_id IN (SELECT k FROM my_keys))
                     AND (q.source_key_id, q.target_key_id) NOT IN (SELECT s, d FROM mine))
          OR EXISTS (SELECT 1 FROM mine m
                      WHERE EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                                       AND (m.s IN (q.source_key_id, q.target_key_id) OR m.d IN (q.source_key_id, q.target_key_id)))
                        AND (m.s, m.d) NOT IN (SELECT q.source_key_id, q.target_key_id FROM rekey.job_keys q
                                                WHERE q.job_id = o.job_id)))
   ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) already rotates keys % : unfinished jobs may share a key only when they map it the same way; let job % finish, or cancel it (rekey job cancel %)',
      other.job_id, other.state, other.pairs, other.job_id, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- ---------------------------------------------------------------------------------------------
-- What rekey.create_job and rekey.create_transit_job both check, each check in one place. Every
-- one raises (and so writes nothing) on bad input, naming what it found.

-- The table of a new job: p_table (schema.table, identifier syntax) must resolve, show this role
-- every row, and have a key (rekey.job_key: the primary key, or the unique index the operator
-- named with SET LOCAL rekey.key_columns = '{a,b}', as `rekey job create --key-columns a,b`
-- does; batches are ranges over it). pk_column and pk_type are the key's first column and its
-- type; rekey.job_key gives the whole key. Row-level security that hides rows from this role
-- would hide them from the plan too: those rows would never be rotated, and the job would still
-- complete (docs/safety.md, invariant 4); the table as this role sees it is not fit for a job, a
-- definition error (exit 2) that names the grant. Takes the job-definition lock
-- (rekey.lock_job_definitions) before reading the key, so the collision checks that follow see
-- every job defined before this one.
CREATE OR REPLACE FUNCTION rekey.job_table(p_table text, OUT schema_name name, OUT table_name name,
                                           OUT pk_column name, OUT pk_type text)
LANGUAGE plpgsql AS $$
DECLARE
  t record;
  k record;
  blocker text;
BEGIN
  t := rekey.resolve_table(p_table);
  blocker := rekey.row_security_blocker(format('%I.%I', t.schema_name, t.table_name)::regclass);
  IF blocker IS NOT NULL THEN
    RAISE EXCEPTION '%', blocker USING ERRCODE = 'invalid_table_definition';
  END IF;
  PERFORM rekey.lock_job_definitions();
  k := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());
  schema_name := t.schema_name;
  table_name := t.table_name;
  pk_column := k.key_columns[1];
  pk_type := k.key_types[1];
END $$;

-- The key columns the operator named for the jobs created in this transaction (the setting
-- rekey.key_columns, a text[] literal set with SET LOCAL), or NULL for the primary key.
CREATE OR REPLACE FUNCTION rekey.requested_key_columns() RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT nullif(current_setting('rekey.key_columns', true), '')::text[]
$$;

-- Refuses (invalid_parameter_value) a ciphertext column that is part of the job's key.
CREATE OR REPLACE FUNCTION rekey.refuse_key_ciphertext(p_columns text[], p_key name[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_columns && p_key::text[] THEN
    RAISE EXCEPTION 'column % is part of the key',
      (SELECT quote_ident(c) FROM unnest(p_columns) c WHERE c = ANY (p_key::text[]) LIMIT 1)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END $$;

-- The ciphertext columns of a new job on p_schema.p_table: at least one, none twice, each an
-- existing column other than the primary key p_pk, of the type its values are stored in --
-- bytea for rekey's own codecs, text or varchar for Vault Transit ciphertexts (p_transit), any
-- (p_transit NULL) where the caller checks the type itself (rekey.job_value_form).
CREATE OR REPLACE FUNCTION rekey.check_job_columns(p_schema name, p_table name, p_pk name,
                                                   p_columns text[], p_transit boolean)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  col_type text;
BEGIN
  IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
    RAISE EXCEPTION 'a job needs at least one ciphertext column' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF (SELECT count(DISTINCT c) FROM unnest(p_columns) c) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'a column is listed twice' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    col_type := rekey.column_type(p_schema, p_table, p_columns[i]);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'column % does not exist in %.%', quote_ident(p_columns[i]),
        quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
    ELSIF p_transit AND col_type <> 'text' AND col_type NOT LIKE 'character varying%' THEN
      RAISE EXCEPTION 'column %.%.% is %, not text: Transit ciphertexts (vault:vN:...) are stored as text',
        quote_ident(p_schema), quote_ident(p_table), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF NOT p_transit AND col_type <> 'bytea' THEN
      RAISE EXCEPTION 'column %.%.% is %, not bytea; rekey rewrites binary ciphertext columns',
        quote_ident(p_schema), quote_ident(p_table), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF p_columns[i] = p_pk THEN
      RAISE EXCEPTION 'column % is the primary key', quote_ident(p_columns[i]) USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
END $$;

-- The scope of a new job on p_schema.p_table: both a column and a value or neither; the column
-- must exist. Returns the column's type from the catalog (rekey.checked_column_type) and the value
-- in canonical form (rekey.canonical_scope_value), both NULL for an unscoped job.
CREATE OR REPLACE FUNCTION rekey.job_scope(p_schema name, p_table name, p_scope_column text,
                                           p_scope_value text, OUT scope_type text,
                                           OUT scope_value text)
LANGUAGE plpgsql AS $$
BEGIN
  IF (p_scope_column IS NULL) <> (p_scope_value IS NULL) THEN
    RAISE EXCEPTION 'a scope needs both a column and a value' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_scope_column IS NOT NULL THEN
    IF rekey.column_type(p_schema, p_table, p_scope_column) IS NULL THEN
      RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_scope_column),
        quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
    END IF;
    scope_type := rekey.checked_column_type(p_schema, p_table, p_scope_column);
    scope_value := rekey.canonical_scope_value(p_schema, p_table, p_scope_column, p_scope_value);
  END IF;
END $$;

-- The settings every job has: a batch size of 1 to 1,000,000 rows; an associated-data template
-- using only {schema}, {table}, {column}, {pk} (braces doubled); cumulative stage percentages,
-- increasing, with at most two decimals, ending at 100; an error threshold between 0 and 1.
CREATE OR REPLACE FUNCTION rekey.check_job_settings(p_batch_size integer, p_ad_template text,
                                                    p_stages numeric[], p_error_threshold numeric)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  prev numeric := 0;
BEGIN
  IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 1000000 THEN
    RAISE EXCEPTION 'batch size must be between 1 and 1000000, got %', p_batch_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_ad_template IS NOT NULL AND
     regexp_replace(regexp_replace(p_ad_template, '\{\{|\}\}', '', 'g'),
                    '\{(schema|table|column|pk)\}', '', 'g') ~ '[{}]' THEN
    RAISE EXCEPTION 'invalid associated-data template %: use {schema}, {table}, {column}, {pk}; write {{ and }} for braces',
      quote_literal(p_ad_template) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_stages IS NULL OR cardinality(p_stages) = 0 OR p_stages[cardinality(p_stages)] <> 100 THEN
    RAISE EXCEPTION 'the stage plan must end at 100 (percent), as in 1,25,50,75,100' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    IF p_stages[i] IS NULL OR p_stages[i] <= prev OR p_stages[i] * 100 <> round(p_stages[i] * 100) THEN
      RAISE EXCEPTION 'bad stage plan %: percentages must increase, with at most two decimals', p_stages
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := p_stages[i];
  END LOOP;
  IF p_error_threshold IS NULL OR p_error_threshold < 0 OR p_error_threshold > 1 THEN
    RAISE EXCEPTION 'the error threshold is a fraction between 0 and 1, e.g. 0.001 for 0.1%%' USING ERRCODE = 'invalid_parameter_value';
  END IF;
END $$;

-- The target of column p_column of a job on p_schema.p_table (with the job's scope, canonical):
-- the registered one, found by identity (rekey.target_columns) so a renamed table keeps its
-- target, or a new registration. Refuses a registered target that describes the column otherwise
-- (codec, key-id column or associated data): one column holds one kind of ciphertext.
CREATE OR REPLACE FUNCTION rekey.job_target(p_schema name, p_table name, p_pk name, p_column text,
                                            p_codec text, p_key_id_column text,
                                            p_ad_template text, p_scope_column text,
                                            p_scope_value text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  tid bigint;
BEGIN
  SELECT x.target_id INTO tid FROM rekey.targets x JOIN rekey.target_columns() tc USING (target_id)
   WHERE tc.relid = format('%I.%I', p_schema, p_table)::regclass
     AND tc.column_name = p_column
     AND x.scope_column IS NOT DISTINCT FROM p_scope_column AND x.scope_value IS NOT DISTINCT FROM p_scope_value;
  IF tid IS NULL THEN
    INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, key_id_column,
                               ad_template, scope_column, scope_value)
    VALUES (p_schema, p_table, p_pk, p_column, p_codec, p_key_id_column, p_ad_template,
            p_scope_column, p_scope_value)
    RETURNING target_id INTO tid;
  ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid AND
                (x.codec, x.key_id_column, x.ad_template) IS DISTINCT FROM (p_codec, p_key_id_column::name, p_ad_template)) THEN
    RAISE EXCEPTION 'column % is registered with another codec, key-id column or associated data (target %)',
      quote_ident(p_column), tid USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN tid;
END $$;

-- Adds job p_job's rollout stages, one per cumulative percentage of p_stages (checked by
-- rekey.check_job_settings), each covering the stage buckets its percentage adds.
CREATE OR REPLACE FUNCTION rekey.add_rollout_stages(p_job bigint, p_stages numeric[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  prev numeric := 0;
BEGIN
  FOR i IN 1 .. cardinality(p_stages) LOOP
    PERFORM rekey.add_stage(p_job, 'rollout', p_stages[i], (prev * 100)::integer, (p_stages[i] * 100)::integer);
    prev := p_stages[i];
  END LOOP;
END $$;

-- The stored form of a new job's values (issue #18; docs/FORMAT.md, "Stored forms"), checked
-- against the catalog; returns the form to record (v_encoding, v_json_path). Checks the columns as check_job_columns
-- does, for the form:
--   p_encoding  'bytea' (the default): binary values in bytea columns; 'base64', 'base64url' or
--               'hex': binary values as text, in text or varchar columns; the fernet codec's
--               tokens are base64url text (its default; any other encoding is refused); the
--               rails codec's messages are JSON text stored as it is, in text or varchar columns
--               (recorded as 'bytea': no text encoding applies; any other, or a JSON path, is
--               refused, and so is a job mixing rails with another codec)
--               cloak codec's strings are text columns read as stored, recorded as 'bytea' like
--               Vault Transit's (no encoding or JSON path applies; every column of the job cloak)
--   p_json_path the values are the strings at this path (a non-empty text[] of keys) of jsonb
--               documents; the encoding must then be a text one (default base64)
-- Neither given: the form a target of these columns already records (so rekey rotate-due, which
-- passes neither, rotates a text or JSON column in its form), else bytea.
CREATE OR REPLACE FUNCTION rekey.job_value_form(p_schema name, p_table name, p_pk name,
                                                p_columns text[], p_codecs text[],
                                                p_encoding text, p_json_path text[],
                                                OUT v_encoding text, OUT v_json_path text[])
LANGUAGE plpgsql AS $$
DECLARE
  fernet boolean := 'fernet' = ANY (coalesce(p_codecs, '{}'));
  lockbox boolean := 'lockbox' = ANY (coalesce(p_codecs, '{}'));
  enc text := p_encoding;
  col_type text;
BEGIN
  IF 'rails' = ANY (coalesce(p_codecs, '{}')) THEN
    IF EXISTS (SELECT 1 FROM unnest(p_codecs) c WHERE c IS DISTINCT FROM 'rails') THEN
      RAISE EXCEPTION 'a rails job rotates Rails messages only: give every column the rails codec'
        USING ERRCODE = 'invalid_parameter_value';
    ELSIF coalesce(p_encoding, 'bytea') <> 'bytea' OR p_json_path IS NOT NULL THEN
      RAISE EXCEPTION 'Rails messages are JSON text stored as it is: no encoding or JSON path applies'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, true);  -- text or varchar
    v_encoding := 'bytea';
    RETURN;
  ELSIF 'cloak' = ANY (coalesce(p_codecs, '{}')) THEN
    IF p_encoding IS NOT NULL OR p_json_path IS NOT NULL
       OR EXISTS (SELECT 1 FROM unnest(p_codecs) c WHERE c IS DISTINCT FROM 'cloak') THEN
      RAISE EXCEPTION 'cloak strings are text read as stored: no encoding or JSON path applies, and every column of the job must be cloak'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, true);
    v_encoding := 'bytea';
    RETURN;
  END IF;
  IF p_encoding IS NULL AND p_json_path IS NULL THEN
    SELECT x.encoding, x.json_path INTO enc, p_json_path FROM rekey.targets x
     WHERE x.schema_name = p_schema AND x.table_name = p_table AND x.column_name = ANY (p_columns)
       AND x.forgotten_at IS NULL AND (x.encoding <> 'bytea' OR x.json_path IS NOT NULL)
     ORDER BY x.target_id DESC LIMIT 1;
  END IF;
  enc := coalesce(enc, CASE WHEN fernet THEN 'base64url'
                            WHEN lockbox THEN 'base64'
                            WHEN p_json_path IS NOT NULL THEN 'base64'
                            ELSE 'bytea' END);
  IF enc NOT IN ('bytea', 'base64', 'base64url', 'hex') THEN
    RAISE EXCEPTION 'unknown encoding %: use bytea, base64, base64url or hex', quote_literal(enc)
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF fernet AND enc <> 'base64url' THEN
    RAISE EXCEPTION 'Fernet tokens are base64url text; encoding % does not apply', quote_literal(enc)
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF lockbox AND enc NOT IN ('base64', 'bytea') THEN
    RAISE EXCEPTION 'Lockbox stores base64 text (or the bytes, with encode: false); encoding % does not apply', quote_literal(enc)
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_json_path IS NOT NULL AND (cardinality(p_json_path) = 0
                                     OR EXISTS (SELECT 1 FROM unnest(p_json_path) k WHERE k IS NULL OR k = '')) THEN
    RAISE EXCEPTION 'a JSON path is a list of keys, as in {payment,token}' USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_json_path IS NOT NULL AND enc = 'bytea' THEN
    RAISE EXCEPTION 'a JSON document holds text: give a text encoding (base64, base64url or hex) with a JSON path'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF enc = 'bytea' THEN
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, false);
  ELSIF p_json_path IS NULL THEN
    -- Text or varchar, as for Transit ciphertexts.
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, true);
  ELSE
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, NULL);
    FOR i IN 1 .. cardinality(p_columns) LOOP
      col_type := rekey.column_type(p_schema, p_table, p_columns[i]);
      IF col_type <> 'jsonb' THEN
        RAISE EXCEPTION 'column %.%.% is %, not jsonb: a JSON path reads jsonb documents',
          quote_ident(p_schema), quote_ident(p_table), quote_ident(p_columns[i]), col_type
          USING ERRCODE = 'datatype_mismatch';
      END IF;
    END LOOP;
  END IF;
  v_encoding := enc;
  v_json_path := p_json_path;
END $$;

-- Records target p_target's stored form for job p_job. A form is the column's, like its codec:
-- a target that another job registered in another form is refused (its values cannot be in
-- both), so every reader of the column (rekey.key_usage among them) reads it one way.
CREATE OR REPLACE FUNCTION rekey.set_target_value_form(p_target bigint, p_job bigint,
                                                       p_encoding text, p_json_path text[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = p_target
                AND (x.encoding, x.json_path) IS DISTINCT FROM (p_encoding, p_json_path))
     AND EXISTS (SELECT 1 FROM rekey.job_columns c WHERE c.target_id = p_target AND c.job_id <> p_job) THEN
    RAISE EXCEPTION 'column of target % is registered with another encoding or JSON path: %',
      p_target, (SELECT format('%s %s', x.encoding, coalesce(x.json_path::text, '')) FROM rekey.targets x
                  WHERE x.target_id = p_target) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE rekey.targets SET encoding = p_encoding, json_path = p_json_path WHERE target_id = p_target;
END $$;

-- Records the names the attribute keys of job p_job's lockbox columns derive from (docs/FORMAT.md,
-- "lockbox"): Lockbox's key_table and key_attribute options, NULL for Lockbox's defaults (the
-- table's name; the column's name). Names are the column's, like its codec: a target another job
-- registered with other names is refused. Refuses names for a job without lockbox columns, and a
-- key attribute for several columns (as Lockbox refuses key_attribute with several attributes).
CREATE OR REPLACE FUNCTION rekey.set_lockbox_key_names(p_job bigint, p_key_table text,
                                                       p_key_attribute text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  targets bigint[];
  tid bigint;
BEGIN
  SELECT array_agg(x.target_id ORDER BY c.ordinal) INTO targets
    FROM rekey.job_columns c JOIN rekey.targets x USING (target_id)
   WHERE c.job_id = p_job AND x.codec = 'lockbox';
  IF targets IS NULL THEN
    RAISE EXCEPTION 'job % has no lockbox column: --lockbox-key-table and --lockbox-key-attribute do not apply', p_job
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_key_table = '' OR p_key_attribute = '' THEN
    RAISE EXCEPTION 'a Lockbox key table or key attribute is a name, not empty' USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_key_attribute IS NOT NULL AND cardinality(targets) > 1 THEN
    RAISE EXCEPTION 'job % has % lockbox columns: a key attribute names one (Lockbox refuses key_attribute with several attributes)',
      p_job, cardinality(targets) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOREACH tid IN ARRAY targets LOOP
    IF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid
                  AND (x.lockbox_key_table, x.lockbox_key_attribute) IS DISTINCT FROM (p_key_table, p_key_attribute))
       AND EXISTS (SELECT 1 FROM rekey.job_columns c WHERE c.target_id = tid AND c.job_id <> p_job) THEN
      RAISE EXCEPTION 'column of target % is registered with other Lockbox key names: %', tid,
        (SELECT format('key table %s, key attribute %s', coalesce(x.lockbox_key_table, '(the table''s)'),
                       coalesce(x.lockbox_key_attribute, '(the column''s)'))
           FROM rekey.targets x WHERE x.target_id = tid) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE rekey.targets SET lockbox_key_table = p_key_table, lockbox_key_attribute = p_key_attribute
     WHERE target_id = tid;
  END LOOP;
END $$;

-- Defines a rotation job, registers its columns as targets, plans it, and audits it.
--   p_table       schema.table (PostgreSQL identifier syntax)
--   p_columns     ciphertext columns (bytea)
--   p_key_map     {"source key id": target key id, ...}
--   p_codecs      one codec per column ('tink', 'raw', 'fernet', 'rails', 'lockbox' or 'cloak'); NULL = all 'tink'
--   p_key_id_column  integer column holding the key id: required by 'raw', kept in step otherwise
--   p_scope_column/p_scope_value  restrict the job to rows where column = value
--   p_stages      cumulative percentages, increasing, ending at 100 (default 1,25,50,75,100)
--   p_promote_at_stage  the stage whose opening makes the target keys primary (default: the last)
--   p_error_threshold   a gate fails when its decrypt error rate is not below this (default 0.1%)
--   p_observe     advance on its own this long after a passed gate; NULL = wait for approval
--   p_scope_value  stored in canonical form (rekey.canonical_scope_value), as are the targets'
--   p_not_governed columns of the table that are not encrypted under the key-id column's key;
--                  NULL = those the latest job on the same table and key-id column recorded
--   p_cross_scope  allow target keys outside their source key's keyring scope
--   p_encoding, p_json_path  the values' stored form (rekey.job_value_form; docs/FORMAT.md)
-- Every identifier is checked against the catalog and quoted; bad input raises and writes nothing.
-- Refusals, each naming what it found (nothing is written), beside the checks it shares with
-- rekey.create_transit_job (rekey.job_table, check_job_columns, job_scope, check_job_settings,
-- job_target):
--   * a job that rewrites a key-id column must rotate every column that key-id column governs:
--     every registered target of the table with the same key-id column, and every other bytea or
--     text column holding a value in the job's scope, unless listed in p_not_governed
--     (invalid_parameter_value);
--   * a target key outside its source key's scope without p_cross_scope (invalid_parameter_value);
--   * an unfinished job on one of the columns, or one sharing keys but mapping them otherwise
--     (object_not_in_prerequisite_state).
CREATE OR REPLACE FUNCTION rekey.create_job(
  p_table text,
  p_columns text[],
  p_key_map jsonb,
  p_codecs text[] DEFAULT NULL,
  p_key_id_column text DEFAULT NULL,
  p_ad_template text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_per_row_audit boolean DEFAULT false,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_promote_at_stage integer DEFAULT NULL,
  p_error_threshold numeric DEFAULT 0.001,
  p_observe interval DEFAULT NULL,
  p_gate_sample_size integer DEFAULT 10000,
  p_not_governed text[] DEFAULT NULL,
  p_cross_scope boolean DEFAULT false,
  p_encoding text DEFAULT NULL,
  p_json_path text[] DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  v_scope_value text;
  v_not_governed text[];
  governed text[];
  col_type text;
  v_codec text;
  v_encoding text;
  v_json_path text[];
  job bigint;
  tid bigint;
  src text;
  dst jsonb;
  batches integer;
  src_status text;
  dst_status text;
  src_scope text;
  dst_scope text;
  candidate record;
  has_value boolean;
  i integer;
  key record;
BEGIN
  t := rekey.job_table(p_table);
  pk_col := t.pk_column;
  pk_type := t.pk_type;
  key := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());

  SELECT f.v_encoding, f.v_json_path INTO v_encoding, v_json_path
    FROM rekey.job_value_form(t.schema_name, t.table_name, pk_col, p_columns, p_codecs, p_encoding,
                              p_json_path) f;
  PERFORM rekey.refuse_key_ciphertext(p_columns, key.key_columns);
  IF p_codecs IS NOT NULL AND cardinality(p_codecs) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'give one codec per column (% columns, % codecs)', cardinality(p_columns), cardinality(p_codecs)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    v_codec := coalesce(p_codecs[i], 'tink');
    IF v_codec NOT IN ('tink', 'raw', 'fernet', 'rails', 'lockbox', 'cloak') THEN
      RAISE EXCEPTION 'unknown codec % for column %: use tink, raw, fernet, rails, lockbox or cloak', quote_literal(v_codec), quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The applications of these formats bind no associated data (Lockbox's models, Rails'
    -- messages, Fernet and cloak themselves): a template would make every rewritten value
    -- unreadable to them.
    IF v_codec IN ('fernet', 'rails', 'lockbox', 'cloak') AND p_ad_template IS NOT NULL THEN
      RAISE EXCEPTION 'column % uses the % codec, whose applications bind no associated data: drop the template', quote_ident(p_columns[i]), v_codec
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_codec = 'raw' AND p_key_id_column IS NULL THEN
      RAISE EXCEPTION 'column % uses the raw codec, which needs a key-id column', quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
  IF p_key_id_column IS NOT NULL THEN
    col_type := rekey.column_type(t.schema_name, t.table_name, p_key_id_column);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'key-id column % does not exist in %.%', quote_ident(p_key_id_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type NOT IN ('integer', 'bigint') THEN
      RAISE EXCEPTION 'key-id column % is %, not integer or bigint', quote_ident(p_key_id_column), col_type
        USING ERRCODE = 'datatype_mismatch';
    END IF;
  END IF;
  SELECT s.scope_type, s.scope_value INTO scope_type, v_scope_value
    FROM rekey.job_scope(t.schema_name, t.table_name, p_scope_column, p_scope_value) s;
  PERFORM rekey.check_job_settings(p_batch_size, p_ad_template, p_stages, p_error_threshold);
  IF p_promote_at_stage IS NOT NULL AND (p_promote_at_stage < 1 OR p_promote_at_stage > cardinality(p_stages)) THEN
    RAISE EXCEPTION 'promote-at-stage must be between 1 and % (the number of stages)', cardinality(p_stages)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_map IS NULL OR jsonb_typeof(p_key_map) <> 'object' OR p_key_map = '{}' THEN
    RAISE EXCEPTION 'the key map must be a JSON object {"source key id": target key id}' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- The columns the key-id column governs. Rewriting key_id to the target key re-labels every
  -- value of the row: a column left out keeps its old ciphertext under a new label and no longer
  -- decrypts with its row's key.
  IF p_not_governed IS NOT NULL AND p_key_id_column IS NULL AND cardinality(p_not_governed) > 0 THEN
    RAISE EXCEPTION 'not-governed columns describe what a key-id column governs, and this job has none (--key-id-column)'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_id_column IS NOT NULL THEN
    v_not_governed := p_not_governed;
    IF v_not_governed IS NULL THEN
      -- The operator's statement about the table outlives one job (rekey rotate-due repeats jobs).
      -- Only what still applies: columns that exist and that this job does not rotate itself.
      SELECT array(SELECT g FROM unnest(x.not_governed::text[]) g
                    WHERE g <> ALL (p_columns)
                      AND rekey.column_type(t.schema_name, t.table_name, g) IS NOT NULL)
        INTO v_not_governed FROM rekey.jobs x
       WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name
         AND x.key_id_column = p_key_id_column
       ORDER BY x.job_id DESC LIMIT 1;
    END IF;
    v_not_governed := coalesce(v_not_governed, '{}');
    FOR i IN 1 .. coalesce(cardinality(v_not_governed), 0) LOOP
      IF rekey.column_type(t.schema_name, t.table_name, v_not_governed[i]) IS NULL THEN
        RAISE EXCEPTION 'not-governed column % does not exist in %.%', quote_ident(v_not_governed[i]),
          quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
      ELSIF v_not_governed[i] = ANY (p_columns) THEN
        RAISE EXCEPTION 'column % is both rotated and declared not governed by %', quote_ident(v_not_governed[i]),
          quote_ident(p_key_id_column) USING ERRCODE = 'invalid_parameter_value';
      END IF;
    END LOOP;
    SELECT array_agg(DISTINCT x.column_name::text ORDER BY x.column_name::text) INTO governed
      FROM rekey.targets x
     WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name
       AND x.key_id_column = p_key_id_column AND x.column_name <> ALL (p_columns);
    IF governed IS NOT NULL THEN
      RAISE EXCEPTION 'key-id column % of %.% also governs %, registered under it: a job that rewrites % must rotate it too; add --column for each',
        quote_ident(p_key_id_column), quote_ident(t.schema_name), quote_ident(t.table_name),
        array_to_string(governed, ', '), quote_ident(p_key_id_column) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR candidate IN
      SELECT a.attname FROM pg_attribute a
       WHERE a.attrelid = format('%I.%I', t.schema_name, t.table_name)::regclass
         AND a.attnum > 0 AND NOT a.attisdropped
         AND a.atttypid IN ('bytea'::regtype, 'text'::regtype, 'varchar'::regtype)
         AND a.attname <> ALL (p_columns) AND a.attname <> ALL (key.key_columns)
         AND a.attname IS DISTINCT FROM p_scope_column
         AND a.attname <> ALL (v_not_governed)
       ORDER BY a.attnum
    LOOP
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I AS t WHERE t.%I IS NOT NULL%s)',
                     t.schema_name, t.table_name, candidate.attname,
                     CASE WHEN p_scope_column IS NULL THEN ''
                          ELSE format(' AND t.%I = %L::%s', p_scope_column, v_scope_value, scope_type) END)
        INTO has_value;
      IF has_value THEN
        governed := coalesce(governed, '{}') || candidate.attname::text;
      END IF;
    END LOOP;
    IF governed IS NOT NULL THEN
      RAISE EXCEPTION 'key-id column % of %.% may also govern % (holding values): rotate them too (--column), or state that they are not encrypted under % (--not-governed %)',
        quote_ident(p_key_id_column), quote_ident(t.schema_name), quote_ident(t.table_name),
        array_to_string(governed, ', '), quote_ident(p_key_id_column), array_to_string(governed, ',')
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;

  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_columns, key_types,
                          key_id_column, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts, per_row_audit,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          not_governed, cross_scope)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, key.key_columns, key.key_types,
          p_key_id_column, p_ad_template,
          p_scope_column, v_scope_value, scope_type, p_batch_size, p_max_attempts, p_per_row_audit,
          p_stages, coalesce(p_promote_at_stage, cardinality(p_stages)), p_error_threshold, p_observe,
          p_gate_sample_size, coalesce(v_not_governed, '{}')::name[], coalesce(p_cross_scope, false))
  RETURNING job_id INTO job;

  FOR src, dst IN SELECT * FROM jsonb_each(p_key_map) LOOP
    IF src !~ '^[0-9]{1,10}$' OR jsonb_typeof(dst) <> 'number' THEN
      RAISE EXCEPTION 'bad key map entry "%": %; key ids are integers', src, dst USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT status, scope INTO src_status, src_scope FROM rekey.keys WHERE key_id = src::bigint;
    SELECT status, scope INTO dst_status, dst_scope FROM rekey.keys WHERE key_id = dst::text::bigint;
    IF src_status IS NULL THEN
      RAISE EXCEPTION 'unknown source key %; rekey keys list shows the keyring', src USING ERRCODE = 'foreign_key_violation';
    ELSIF dst_status IS NULL THEN
      RAISE EXCEPTION 'unknown target key %; rekey keys list shows the keyring', dst USING ERRCODE = 'foreign_key_violation';
    ELSIF src::bigint = dst::text::bigint THEN
      RAISE EXCEPTION 'key % is both source and target: a rotation needs a different target key', src
        USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_status = 'destroyed' THEN
      RAISE EXCEPTION 'source key % is destroyed: its values cannot be decrypted', src USING ERRCODE = 'invalid_parameter_value';
    ELSIF dst_status NOT IN ('enabled', 'primary') THEN
      RAISE EXCEPTION 'target key % is %, it must be enabled or primary', dst, dst_status USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_scope <> dst_scope AND NOT coalesce(p_cross_scope, false) THEN
      -- Promotion makes the target primary in its own scope and leaves the source's scope with
      -- its old primary: applications of that scope keep writing under the source key.
      RAISE EXCEPTION 'target key % is in keyring scope %, source key % in scope %: a rotation stays within a scope; pass --cross-scope (p_cross_scope => true) if the move is intended',
        dst, quote_literal(dst_scope), src, quote_literal(src_scope) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_keys VALUES (job, src::bigint, dst::text::bigint);
  END LOOP;
  IF EXISTS (SELECT 1 FROM rekey.job_keys a JOIN rekey.job_keys b USING (job_id)
              WHERE a.job_id = job AND a.target_key_id = b.source_key_id) THEN
    RAISE EXCEPTION 'a target key is also a source key in the key map' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  FOR i IN 1 .. cardinality(p_columns) LOOP
    v_codec := coalesce(p_codecs[i], 'tink');
    tid := rekey.job_target(t.schema_name, t.table_name, pk_col, p_columns[i], v_codec, p_key_id_column,
                            p_ad_template, p_scope_column, v_scope_value);
    PERFORM rekey.set_target_value_form(tid, job, v_encoding, v_json_path);
    INSERT INTO rekey.job_columns VALUES (job, i, tid);
  END LOOP;
  PERFORM rekey.refuse_column_collision(job);
  PERFORM rekey.refuse_key_collision(job);

  PERFORM rekey.add_rollout_stages(job, p_stages);
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = job;
  PERFORM rekey.audit_event('job.created', job, jsonb_build_object(
    'table', format('%I.%I', t.schema_name, t.table_name), 'columns', to_jsonb(p_columns),
    'key_map', p_key_map, 'batches', batches, 'batch_size', p_batch_size, 'stages', to_jsonb(p_stages),
    'promote_at_stage', coalesce(p_promote_at_stage, cardinality(p_stages)),
    'error_threshold', p_error_threshold, 'observe', p_observe::text,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, v_scope_value) END,
    'not_governed', to_jsonb(coalesce(v_not_governed, '{}')),
    'cross_scope', coalesce(p_cross_scope, false),
    'encoding', v_encoding, 'json_path', to_jsonb(v_json_path)));
  PERFORM rekey.open_stage(job, 1);
  RETURN job;
END $$;

-- The end of defining a job whose values are re-encrypted inside a KMS (rekey.create_transit_job,
-- rekey.create_aws_kms_job), once its rekey.jobs row `p_job` is inserted: registers its columns
-- `p_columns` as targets of codec `p_codec` (with the per-row context template `p_ad_template`,
-- and the stored form `p_encoding` unless NULL), refuses a column of another unfinished job,
-- plans its rollout stages, audits job.created (the job row's settings, with `p_details` naming
-- its KMS keys) and opens its first stage.
CREATE OR REPLACE FUNCTION rekey.finish_kms_job(p_job bigint, p_columns text[], p_codec text,
                                                p_ad_template text, p_encoding text, p_details jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  tid bigint;
  batches integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    tid := rekey.job_target(j.schema_name, j.table_name, j.pk_column, p_columns[i], p_codec, NULL,
                            p_ad_template, j.scope_column, j.scope_value);
    IF p_encoding IS NOT NULL THEN
      PERFORM rekey.set_target_value_form(tid, p_job, p_encoding, NULL);
    END IF;
    INSERT INTO rekey.job_columns VALUES (p_job, i, tid);
  END LOOP;
  PERFORM rekey.refuse_column_collision(p_job);

  PERFORM rekey.add_rollout_stages(p_job, j.stage_plan);
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.created', p_job, jsonb_build_object(
    'table', format('%I.%I', j.schema_name, j.table_name), 'columns', to_jsonb(p_columns),
    'codec', p_codec,
    'batches', batches, 'batch_size', j.batch_size, 'stages', to_jsonb(j.stage_plan),
    'error_threshold', j.error_threshold, 'observe', j.observe::text,
    'scope', CASE WHEN j.scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(j.scope_column, j.scope_value) END) || p_details);
  PERFORM rekey.open_stage(p_job, 1);
END $$;

-- Defines, plans and audits a job that rewraps Transit ciphertexts in p_columns (text or
-- varchar) to the latest version of p_transit_key, for every value below version p_min_version.
-- The caller (`rekey job create --codec vault-transit`) has checked the key in Vault and chosen
-- p_min_version (by default the key's latest version); this function cannot reach Vault.
--   p_ad_template  the per-row Transit derivation context (rendered, then base64): required by
--                  a derived key, refused for another (the CLI checks which the key is)
-- The other parameters are those of rekey.create_job. Bad input raises and writes nothing.
-- The scope value is kept in canonical form, and a column of another unfinished job is refused
-- (rekey.refuse_column_collision).
CREATE OR REPLACE FUNCTION rekey.create_transit_job(
  p_table text,
  p_columns text[],
  p_transit_key text,
  p_min_version integer,
  p_ad_template text DEFAULT NULL,
  p_scope_column text DEFAULT NULL,
  p_scope_value text DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_max_attempts integer DEFAULT 3,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_error_threshold numeric DEFAULT 0.001,
  p_observe interval DEFAULT NULL,
  p_gate_sample_size integer DEFAULT 10000)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  v_scope_value text;
  job bigint;
  key record;
BEGIN
  t := rekey.job_table(p_table);
  pk_col := t.pk_column;
  pk_type := t.pk_type;
  key := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());
  IF p_transit_key IS NULL OR p_transit_key !~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$' THEN
    RAISE EXCEPTION 'Transit key % is not a key path <mount>/keys/<name> (e.g. transit/keys/app)',
      quote_literal(coalesce(p_transit_key, '')) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_min_version IS NULL OR p_min_version < 1 THEN
    RAISE EXCEPTION 'the target Transit key version must be 1 or more, got %', p_min_version
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM rekey.check_job_columns(t.schema_name, t.table_name, pk_col, p_columns, true);
  PERFORM rekey.refuse_key_ciphertext(p_columns, key.key_columns);
  SELECT s.scope_type, s.scope_value INTO scope_type, v_scope_value
    FROM rekey.job_scope(t.schema_name, t.table_name, p_scope_column, p_scope_value) s;
  PERFORM rekey.check_job_settings(p_batch_size, p_ad_template, p_stages, p_error_threshold);

  -- keys_promoted from the start: there is no keyring key to promote (open_stage skips it).
  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_columns, key_types,
                          ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          keys_promoted, transit_key_ref, transit_min_version)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, key.key_columns, key.key_types,
          p_ad_template,
          p_scope_column, v_scope_value, scope_type, p_batch_size, p_max_attempts,
          p_stages, cardinality(p_stages), p_error_threshold, p_observe, p_gate_sample_size,
          true, p_transit_key, p_min_version)
  RETURNING job_id INTO job;

  PERFORM rekey.finish_kms_job(job, p_columns, 'vault-transit', p_ad_template, NULL,
                               jsonb_build_object('transit_key', p_transit_key, 'min_version', p_min_version));
  RETURN job;
END $$;

-- Makes each target key primary in its scope (the scope's current primary becomes
-- decrypt_only), so applications write under the new key from now on. A scope that receives
-- several target keys in this job keeps its keys as they are: there can be only one primary.
-- Does nothing while a live reader cannot decrypt a target key (rekey.readers_allow_promotion).
CREATE OR REPLACE FUNCTION rekey.promote_job_keys(p_job bigint) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  r record;
BEGIN
  -- Not while a live reader cannot decrypt a target key; a later claim promotes (45_readers.sql).
  IF NOT rekey.readers_allow_promotion(p_job) THEN
    RETURN;
  END IF;
  FOR r IN
    SELECT k.key_id, k.scope, k.status FROM rekey.keys k
     WHERE k.key_id IN (SELECT target_key_id FROM rekey.job_keys WHERE job_id = p_job)
       AND (SELECT count(DISTINCT jk.target_key_id) FROM rekey.job_keys jk JOIN rekey.keys x ON x.key_id = jk.target_key_id
             WHERE jk.job_id = p_job AND x.scope = k.scope) = 1
  LOOP
    IF r.status <> 'primary' THEN
      UPDATE rekey.keys SET status = 'decrypt_only' WHERE scope = r.scope AND status = 'primary';
      UPDATE rekey.keys SET status = 'primary' WHERE key_id = r.key_id;
    END IF;
  END LOOP;
  UPDATE rekey.jobs SET keys_promoted = true WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.keys_promoted', p_job, jsonb_build_object(
    'primary', (SELECT jsonb_agg(target_key_id) FROM rekey.job_keys WHERE job_id = p_job)));
END $$;

-- DBA operations. Each is audited with the database user as actor.
CREATE OR REPLACE FUNCTION rekey.set_job_state(p_job bigint, p_to text, p_from text[], p_action text,
                                    p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %; SELECT * FROM rekey.progress lists the jobs', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = p_to THEN
    RETURN format('job %s is already %s: nothing to do', p_job, cur);
  ELSIF NOT cur = ANY (p_from) THEN
    RAISE EXCEPTION 'job % is %; % is possible only when it is %', p_job, cur, p_action, array_to_string(p_from, ' or ')
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.jobs SET state = p_to, state_reason = p_reason, updated_at = now(),
         finished_at = CASE WHEN p_to IN ('completed', 'failed', 'cancelled', 'rolled_back') THEN now() ELSE NULL END
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.' || p_action, p_job, jsonb_build_object('from', cur, 'to', p_to, 'reason', p_reason));
  RETURN format('job %s: %s -> %s', p_job, cur, p_to);
END $$;

CREATE OR REPLACE FUNCTION rekey.pause_job(p_job bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT rekey.set_job_state(p_job, 'paused', ARRAY['active'], 'paused', p_reason) $$;

-- A job paused by its error threshold or a failed gate resumes where it stopped: batches of the
-- open stage continue, and a failed gate is verified again (after the operator fixed the data).
CREATE OR REPLACE FUNCTION rekey.resume_job(p_job bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  msg text;
BEGIN
  msg := rekey.set_job_state(p_job, 'active', ARRAY['paused'], 'resumed');
  UPDATE rekey.job_stages s SET state = 'running'
   WHERE s.job_id = p_job AND s.state = 'gate_failed';
  RETURN msg;
END $$;

-- A job of a rotation is cancelled only with its whole rotation (rekey.cancel_rotation): one
-- part given up alone would hold the others' promotion forever, or leave the scope's values
-- split between keys (rekey.refuse_partial_rotation_cancel). plpgsql: that check is defined
-- in 55_rotations.sql, after this file.
CREATE OR REPLACE FUNCTION rekey.cancel_job(p_job bigint, p_reason text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM rekey.refuse_partial_rotation_cancel(p_job);
  RETURN rekey.set_job_state(p_job, 'cancelled', ARRAY['active', 'verifying', 'awaiting_approval', 'paused', 'failed'], 'cancelled', p_reason);
END $$;

-- Puts failed batches back in the queue with fresh attempts, and reopens the job.
CREATE OR REPLACE FUNCTION rekey.retry_failed(p_job bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'cancelled' THEN
    RAISE EXCEPTION 'job % is cancelled; create a new job instead', p_job USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL
   WHERE job_id = p_job AND state = 'failed';
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s has no failed batches: nothing to do', p_job);
  END IF;
  UPDATE rekey.jobs SET state = CASE WHEN state = 'failed' THEN 'active' ELSE state END,
         state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.retry_failed', p_job, jsonb_build_object('batches', n, 'from_state', cur));
  RETURN format('job %s: %s failed batches requeued', p_job, n);
END $$;

-- Requeues batches p_from..p_to (done or failed) of the job's open -- or, once it finished, its
-- last -- stage, so workers re-check them: only values still under a source key are rewritten,
-- so a requeue never encrypts a value twice.
CREATE OR REPLACE FUNCTION rekey.requeue(p_job bigint, p_from integer, p_to integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  n integer;
  cur text;
  stage integer;
BEGIN
  SELECT state, current_stage INTO cur, stage FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur IN ('cancelled', 'rolled_back', 'verifying', 'awaiting_approval') THEN
    RAISE EXCEPTION 'job % is %: requeue works on an active, paused, failed or completed job', p_job, cur
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL, rows_done = 0,
         rows_skipped = 0, rows_failed = 0
   WHERE job_id = p_job AND stage_no = stage AND batch_no BETWEEN p_from AND p_to
     AND state IN ('done', 'failed');
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s: no finished batches in %s..%s of stage %s (batches %s): nothing to do', p_job, p_from, p_to, stage,
                  (SELECT min(batch_no) || '..' || max(batch_no) FROM rekey.batches WHERE job_id = p_job AND stage_no = stage));
  END IF;
  UPDATE rekey.job_stages SET state = 'running', finished_at = NULL
   WHERE job_id = p_job AND stage_no = stage AND kind <> 'rollout';
  UPDATE rekey.jobs SET state = CASE WHEN state IN ('completed', 'failed') THEN 'active' ELSE state END,
         state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.requeued', p_job, jsonb_build_object('from_batch', p_from, 'to_batch', p_to, 'batches', n));
  RETURN format('job %s: %s batches requeued', p_job, n);
END $$;

-- Re-running a finished job is a no-op that says so; a failed job reruns its failed batches.
CREATE OR REPLACE FUNCTION rekey.rerun_job(p_job bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'completed' THEN
    PERFORM rekey.audit_event('job.rerun', p_job, '{"result": "no-op: already completed"}');
    RETURN format('job %s is already completed: nothing to do', p_job);
  ELSIF cur = 'failed' THEN
    RETURN rekey.retry_failed(p_job);
  END IF;
  RETURN format('job %s is %s: nothing to rerun', p_job, cur);
END $$;

CREATE OR REPLACE FUNCTION rekey.notify_job_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('rekey_jobs', NEW.job_id::text);
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER jobs_notify_created AFTER INSERT ON rekey.jobs
  FOR EACH ROW EXECUTE FUNCTION rekey.notify_job_change();

CREATE OR REPLACE TRIGGER jobs_notify_changed AFTER UPDATE OF state, current_stage ON rekey.jobs
  FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.current_stage IS DISTINCT FROM NEW.current_stage)
  EXECUTE FUNCTION rekey.notify_job_change();
