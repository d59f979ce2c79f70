-- Partitioned tables planned per partition (issue 22, item 2; docs/operations.md "Table shapes").
-- A batch of a job on a declarative partitioned table covers one leaf partition, named here
-- (NULL for a table that is not partitioned, and for the one empty batch of a stage planned over
-- the parent itself); the worker's statements name that leaf instead of the parent. A batch whose
-- partition was detached from the parent or dropped before the batch ran ends without touching
-- it: its end_reason says which (rekey.end_gone_partition_batch, sql/schema/60_queue.sql).
ALTER TABLE rekey.batches
  ADD COLUMN partition_schema name,
  ADD COLUMN partition_name name,
  ADD COLUMN end_reason text;

-- rekey.claim_batch returns the batch's relation too: a new result type, so the old function
-- goes (sql/README.md); sql/schema/60_queue.sql creates the new one, sql/roles.sql grants it.
DROP FUNCTION IF EXISTS rekey.claim_batch(text, bigint);
