-- Readers (issue 17, item 1): the application instances that decrypt a keyring scope's values,
-- and which key ids each of them can decrypt, so that no job writes a value under a key some live
-- reader of its scope cannot decrypt yet. Applications report through rekey.reader_heartbeat
-- (sql/schema/45_readers.sql); the gates that wait for them are defined there too.

-- One row per (scope, reader): what the reader said in its latest heartbeat. A reader that stops
-- reporting ages out of every job's reader window by itself; rows are kept (rekey readers lists
-- them with their age) until an operator deletes them.
CREATE TABLE rekey.readers (
  scope       text NOT NULL,                    -- a keyring scope (rekey.keys.scope)
  reader      text NOT NULL CHECK (reader <> '' AND length(reader) <= 200),
  key_ids     bigint[] NOT NULL,                -- every key id of the scope the reader can decrypt
  first_seen  timestamptz NOT NULL DEFAULT now(),
  last_seen   timestamptz NOT NULL DEFAULT now(),
  reported_by name NOT NULL DEFAULT session_user,  -- the login the latest heartbeat came from
  client_addr inet DEFAULT inet_client_addr(),     -- and its address (NULL over a Unix socket)
  PRIMARY KEY (scope, reader)
);

ALTER TABLE rekey.jobs
  -- Readers seen longer ago than this are stale: they never hold a job back (--reader-window).
  ADD COLUMN reader_window interval NOT NULL DEFAULT '10 minutes'
    CHECK (reader_window > interval '0'),
  -- While the job waits for readers: what it waits to do ('first_batch', 'batches', 'promotion'
  -- or 'rollback'), since when, and the lagging readers ([{reader, scope, key_id, last_seen}]).
  -- All NULL while it does not wait.
  ADD COLUMN readers_waiting_for text
    CHECK (readers_waiting_for IN ('first_batch', 'batches', 'promotion', 'rollback')),
  ADD COLUMN readers_waiting_since timestamptz,
  ADD COLUMN readers_lagging jsonb,
  ADD CONSTRAINT jobs_readers_waiting_all_or_none CHECK (
    (readers_waiting_for IS NULL) = (readers_waiting_since IS NULL)
    AND (readers_waiting_for IS NULL) = (readers_lagging IS NULL));
