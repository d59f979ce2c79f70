-- Table shapes (issue 22): a job's key is a list of columns, not one column.
--
-- A job's rows are ordered, batched and named by its key: the primary key, or a unique, not-null
-- index the operator named (rekey job create --key-columns). key_columns lists its columns in
-- the index's order, key_types their types (format_type without a type modifier, checked against
-- the catalog like pk_type before), and key_text_form says how the key's text (the stage bucket's
-- input, the associated data's {pk}, the batch bounds) is written (docs/FORMAT.md, "The key's
-- text"):
--   canonical  a text form that no session setting changes (DateStyle, TimeZone,
--              extra_float_digits); for one column of bigint, integer, numeric, uuid or text
--              it is the column's ::text, so such jobs are unchanged;
--   legacy     the one key column's ::text, as every job created before this migration wrote
--              it: their values' associated data and buckets depend on it, so they keep it.
-- pk_column and pk_type stay, as the key's first column and its type: rekey.targets and older
-- readers name a job's key by them. Like pk_type, each of key_types is only checked against the
-- catalog (rekey.job_key_types) before it is pasted into SQL: a job whose record disagrees stops.

ALTER TABLE rekey.jobs
  ADD COLUMN key_columns name[],
  ADD COLUMN key_types text[],
  ADD COLUMN key_text_form text NOT NULL DEFAULT 'canonical';

UPDATE rekey.jobs SET key_columns = ARRAY[pk_column], key_types = ARRAY[pk_type],
       key_text_form = 'legacy';

ALTER TABLE rekey.jobs
  ALTER COLUMN key_columns SET NOT NULL,
  ALTER COLUMN key_types SET NOT NULL,
  ADD CONSTRAINT jobs_key_shape CHECK (
    cardinality(key_columns) >= 1 AND cardinality(key_columns) = cardinality(key_types)
    AND (key_text_form = 'canonical' OR cardinality(key_columns) = 1)),
  ADD CONSTRAINT jobs_key_text_form CHECK (key_text_form IN ('canonical', 'legacy'));
