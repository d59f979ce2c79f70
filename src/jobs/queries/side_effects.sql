-- What rewriting a table sets off, read from the catalog before a job is planned, and the job's
-- record of it (src/jobs/side_effects.cpp). $1 is always the table's oid (the `table` query's
-- relid); $2, where used, the columns the rewrite writes (a text[] literal).

-- name: table
-- The table as `rekey job create --table` names it (rekey.resolve_table: raises for an unknown
-- one): its oid and its name as SQL writes it.
SELECT format('%I.%I', r.schema_name, r.table_name)::regclass::oid AS relid,
       format('%I.%I', r.schema_name, r.table_name) AS qualified,
       r.schema_name, r.table_name
  FROM rekey.resolve_table($1) r

-- name: triggers
-- The table's user triggers (internal ones, such as foreign keys' and constraint triggers of
-- partitions, excluded), by name: timing, events, level, enabled state (O, D, R, A), function,
-- UPDATE OF columns (a text[] as JSON, [] for any), whether a WHEN condition guards it, and
-- whether it is an UPDATE trigger the rewrite's UPDATE of $2 matches.
SELECT t.tgname AS name,
       CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE' WHEN t.tgtype & 64 <> 0 THEN 'INSTEAD OF'
            ELSE 'AFTER' END AS timing,
       concat_ws(' OR ', CASE WHEN t.tgtype & 4 <> 0 THEN 'INSERT' END,
                 CASE WHEN t.tgtype & 16 <> 0 THEN 'UPDATE' END,
                 CASE WHEN t.tgtype & 8 <> 0 THEN 'DELETE' END,
                 CASE WHEN t.tgtype & 32 <> 0 THEN 'TRUNCATE' END) AS events,
       CASE WHEN t.tgtype & 1 <> 0 THEN 'ROW' ELSE 'STATEMENT' END AS level,
       t.tgenabled::text AS enabled,
       t.tgfoid::regproc::text AS function,
       coalesce((SELECT json_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
                  WHERE a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr::int2[])), '[]')::text
         AS update_of,
       t.tgqual IS NOT NULL AS has_when,
       (t.tgtype & 16 <> 0 AND
        (cardinality(t.tgattr::int2[]) = 0 OR
         EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = t.tgrelid
                    AND a.attnum = ANY (t.tgattr::int2[]) AND a.attname = ANY ($2::name[]))))
         AS on_rewrite
  FROM pg_trigger t
 WHERE t.tgrelid = $1::oid AND NOT t.tgisinternal
 ORDER BY t.tgname

-- name: publications
-- The publications that include the table (listed, by schema, or FOR ALL TABLES), by name:
-- whether they publish UPDATEs, their column list (NULL: all) and row filter.
SELECT p.pubname AS name, p.pubupdate AS publishes_updates, p.puballtables AS all_tables,
       CASE WHEN EXISTS (SELECT 1 FROM pg_publication_rel pr WHERE pr.prpubid = p.oid
                            AND pr.prrelid = $1::oid AND pr.prattrs IS NOT NULL)
            THEN array_to_string(pt.attnames, ', ') ELSE '' END AS columns,
       coalesce(pt.rowfilter, '') AS row_filter
  FROM pg_publication_tables pt
  JOIN pg_publication p ON p.pubname = pt.pubname
  JOIN pg_class c ON c.oid = $1::oid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE pt.schemaname = n.nspname AND pt.tablename = c.relname
 ORDER BY p.pubname

-- name: logical_slots
-- The logical replication slots of this database: every rewritten row's WAL is decoded for them.
SELECT slot_name AS name, coalesce(plugin, '') AS plugin, active
  FROM pg_replication_slots
 WHERE slot_type = 'logical' AND database = current_database()
 ORDER BY slot_name

-- name: foreign_keys
-- Foreign keys from the table on a column of $2, and foreign keys of any table referencing a
-- column of $2: the rewrite's UPDATE of such a column is checked against them.
SELECT c.conname AS name, c.conrelid::regclass::text AS table_name,
       pg_get_constraintdef(c.oid) AS definition
  FROM pg_constraint c
 WHERE c.contype = 'f'
   AND ((c.conrelid = $1::oid AND EXISTS (
          SELECT 1 FROM pg_attribute a WHERE a.attrelid = $1::oid AND a.attnum = ANY (c.conkey)
             AND a.attname = ANY ($2::name[])))
     OR (c.confrelid = $1::oid AND EXISTS (
          SELECT 1 FROM pg_attribute a WHERE a.attrelid = $1::oid AND a.attnum = ANY (c.confkey)
             AND a.attname = ANY ($2::name[]))))
 ORDER BY c.conname

-- name: indexes
-- Every index of the table: its definition, whether it reads a column of $2 (a key column, or
-- through an expression or predicate: pg_depend), its size and entries.
SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition,
       (EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = $1::oid
                   AND a.attnum = ANY (i.indkey::int2[]) AND a.attname = ANY ($2::name[]))
        OR EXISTS (SELECT 1 FROM pg_depend d
                     JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                      AND d.refobjid = $1::oid AND a.attname = ANY ($2::name[]))) AS touches_written,
       pg_relation_size(i.indexrelid) AS bytes, c.reltuples::float8 AS entries
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = $1::oid
 ORDER BY c.relname

-- name: generated
-- Stored generated columns computed from a column of $2: recomputed on every rewritten row.
SELECT g.attname AS name, pg_get_expr(ad.adbin, ad.adrelid) AS expression
  FROM pg_attribute g
  JOIN pg_attrdef ad ON ad.adrelid = g.attrelid AND ad.adnum = g.attnum
 WHERE g.attrelid = $1::oid AND g.attgenerated = 's' AND NOT g.attisdropped
   AND EXISTS (SELECT 1 FROM pg_depend d
                 JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.refobjid = $1::oid AND a.attname = ANY ($2::name[])
                  AND ((d.classid = 'pg_class'::regclass AND d.objid = $1::oid AND d.objsubid = g.attnum)
                    OR (d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid)))
 ORDER BY g.attnum

-- name: shape
-- What the WAL and growth estimate is computed from: the heap's size, its rows as last analyzed
-- (reltuples, -1 if never), a sampled row's bytes, its fillfactor, and the server's settings.
SELECT pg_relation_size(c.oid) AS heap_bytes, c.reltuples::float8 AS rows,
       rekey.sample_row_bytes(c.oid) AS row_bytes,
       coalesce((SELECT o.option_value::integer FROM pg_options_to_table(c.reloptions) o
                  WHERE o.option_name = 'fillfactor'), 100) AS fillfactor,
       current_setting('full_page_writes') = 'on' AS full_page_writes,
       current_setting('block_size')::integer AS block_size
  FROM pg_class c
 WHERE c.oid = $1::oid

-- name: skip_grant
-- Whether the connection's role may SET session_replication_role (a superuser, or PostgreSQL
-- 15's GRANT SET ON PARAMETER), and the role's name as SQL writes it.
SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       OR has_parameter_privilege('session_replication_role', 'SET') AS may_skip,
       quote_ident(current_user) AS role_name

-- name: declare
-- rekey.declare_side_effects: records the listing ($4, JSON) and the choices ($2 'fire', 'skip'
-- or NULL; $3 vacuum after) on job $1, audited.
SELECT rekey.declare_side_effects($1::bigint, $2::text, $3::boolean, $4::jsonb)

-- name: start
-- Records job $1's 'start' counters unless a worker already has, and returns its trigger choice
-- ('' for none).
SELECT rekey.record_table_counters(j.job_id, 'start'), coalesce(j.triggers, '') AS triggers
  FROM rekey.jobs j
 WHERE j.job_id = $1::bigint
