-- Checkpoints inside a batch, for paced workers (`rekey work --target-batch-ms` or
-- `--max-rows-per-second`, src/rotation/pacer.h). Such a worker processes its claimed batch in
-- chunks, each its own transaction: the chunk's rows, the batch's advanced checkpoint and its
-- running counts commit together (rekey.checkpoint_batch); the last chunk completes the batch
-- with rekey.complete_batch and its single completion audit row, passing the batch's totals.
--
-- resume_after is the primary key (text form) of the last row a committed chunk of this batch
-- handled: whoever holds the batch next starts after it. Rows before it were rewritten or
-- quarantined, and rows still needing work are found again by the worker's filter anyway, so a
-- checkpoint only saves re-scanning; it never decides whether a value is re-encrypted.

ALTER TABLE rekey.batches ADD COLUMN resume_after text;
