-- Brakes on the database's own signals (issue 19; src/rotation/brake.h): a `rekey work` process
-- records the brakes it has engaged on its row of rekey.workers, so rekey.progress and
-- `rekey status` show why a job is not moving. The claim loops' rows keep an empty list.
ALTER TABLE rekey.workers
  ADD COLUMN brakes text[] NOT NULL DEFAULT '{}',
  ADD COLUMN brake_detail jsonb,
  ADD COLUMN braked_since timestamptz;
