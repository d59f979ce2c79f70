-- Queries of keyring/census.cpp: the key census (rekey.key_census, migrations/0013) and the
-- settings a retire or destroy of a key takes.

-- name: declare_census
-- Opens the cursor rekey_census over the census of key $1 (bigint), one row per column listed:
-- schema_name, table_name, column_name, target_id (NULL: unregistered), formats (comma-separated,
-- NULL if none), n (values under the key; NULL iff nothing was read), unknown (why the count is
-- incomplete, else NULL), status, ref (schema.table.column, each part quoted as format's %I).
DECLARE rekey_census NO SCROLL CURSOR FOR
SELECT schema_name, table_name, column_name, target_id,
       array_to_string(formats, ',') AS formats, n, unknown, status,
       format('%I.%I.%I', schema_name, table_name, column_name) AS ref
  FROM rekey.key_census($1)

-- name: close_census
-- Closes the cursor declare_census opened.
CLOSE rekey_census

-- name: read_committed
-- Makes this transaction READ COMMITTED; must be its first statement.
SET TRANSACTION ISOLATION LEVEL READ COMMITTED

-- name: accept_unknown
-- Sets rekey.accept_unknown, for this transaction only, to $1: the comma-separated
-- schema.table.column refs the lifecycle trigger may let a retire or destroy pass unread.
SELECT set_config('rekey.accept_unknown', $1, true) AS accept_unknown

-- name: forget_target
-- Forgets registered target $1 (bigint) with reason $2 ('': none); `confirmation` is the
-- database's one-line message. Refused unless the target's table or column is gone.
SELECT rekey.forget_target($1, nullif($2, '')) AS confirmation
