-- Lockbox columns (issue #18; docs/FORMAT.md, "lockbox"): Lockbox derives each attribute's key
-- from the master key, the model's table name and the ciphertext column's name, unless the model
-- names others (has_encrypted ... key_table:, key_attribute:). Which names a column's values are
-- derived from is a property of the column, like its codec, so rekey.targets records them.
--   lockbox_key_table      NULL: the job's table name
--   lockbox_key_attribute  NULL: the column's name ("email_ciphertext")
ALTER TABLE rekey.targets ADD COLUMN lockbox_key_table text;
ALTER TABLE rekey.targets ADD COLUMN lockbox_key_attribute text;
ALTER TABLE rekey.targets ADD CONSTRAINT targets_lockbox_key_names
  CHECK ((lockbox_key_table IS NULL AND lockbox_key_attribute IS NULL)
         OR (codec = 'lockbox' AND coalesce(lockbox_key_table, 'x') <> ''
             AND coalesce(lockbox_key_attribute, 'x') <> ''));
