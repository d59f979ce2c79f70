-- Queries of keyring/trial_census.cpp: the census of columns whose values SQL cannot count by
-- key (docs/keyring.md, "Census by trial decryption").

-- name: trial_columns
-- The registered, resolvable columns of the codecs $1 (text[]), one row per column (several
-- targets of one column are one: target_id is the lowest), under their current names:
-- target_id, codec, relation (the table as regclass text, quoted), column_name, encoding,
-- json_path (text[] literal, NULL for none), ref (schema.table.column, each part as format's %I),
-- lockbox_key_table and lockbox_key_attribute (Lockbox's defaults, the table's and the column's
-- names, where the target records none).
SELECT min(tc.target_id) AS target_id, min(tc.codec) AS codec,
       tc.relid::regclass::text AS relation, min(tc.column_name) AS column_name,
       min(x.encoding) AS encoding, min(x.json_path::text) AS json_path,
       format('%I.%I.%I', min(tc.schema_name), min(tc.table_name), min(tc.column_name)) AS ref,
       coalesce(min(x.lockbox_key_table), min(tc.table_name)) AS lockbox_key_table,
       coalesce(min(x.lockbox_key_attribute), min(tc.column_name)) AS lockbox_key_attribute
  FROM rekey.target_columns() tc
  JOIN rekey.targets x USING (target_id)
 WHERE tc.unresolved IS NULL AND tc.codec = ANY ($1::text[])
 GROUP BY tc.relid, tc.attnum
 ORDER BY 1
