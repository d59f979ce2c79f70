-- One rotation across a key's columns (issue 17, item 4): `rekey rotate --scope S` groups the jobs
-- that move every target of the scope from its current keys to one new key, so that the new key
-- is promoted once, when the last of them reaches the promotion stage, and the whole rotation
-- rolls back as one. The functions are in sql/schema/55_rotations.sql; docs/operations.md,
-- "Rotating a key across its columns".

CREATE TABLE rekey.rotations (
  rotation_id  bigserial PRIMARY KEY,
  name         text,
  scope        text NOT NULL,
  -- The keys whose values move (the scope's keys holding registered values, and its primary),
  -- and the primary among them: a rollback makes it primary again.
  from_keys    bigint[] NOT NULL,
  from_primary bigint REFERENCES rekey.keys (key_id),
  to_key       bigint NOT NULL REFERENCES rekey.keys (key_id),
  stage_plan   numeric[] NOT NULL,
  -- creating: its jobs are being defined (no promotion yet); rotating: moving values;
  -- promoted: the new key is primary, the jobs sweep; then completed, or rolling_back and
  -- rolled_back; cancelled when every job was cancelled.
  state        text NOT NULL DEFAULT 'creating'
               CHECK (state IN ('creating', 'rotating', 'promoted', 'completed', 'rolling_back',
                                'rolled_back', 'cancelled')),
  created_by   text NOT NULL DEFAULT current_user,
  created_at   timestamptz NOT NULL DEFAULT now(),
  promoted_at  timestamptz,
  rollback_started_at timestamptz,
  rollback_reason text,
  finished_at  timestamptz,
  updated_at   timestamptz NOT NULL DEFAULT now()
);

-- At most one unfinished rotation per scope: two would promote two keys.
CREATE UNIQUE INDEX rotations_one_unfinished_per_scope ON rekey.rotations (scope)
  WHERE state IN ('creating', 'rotating', 'promoted', 'rolling_back');

ALTER TABLE rekey.jobs ADD COLUMN rotation_id bigint REFERENCES rekey.rotations;
CREATE INDEX jobs_rotation ON rekey.jobs (rotation_id) WHERE rotation_id IS NOT NULL;
