-- Operations: key-age policy per scope, the views that say which keys are due for rotation, and
-- stored compliance reports. Plain SQL: a team may apply it with its own tool.

-- Maximum key age per key scope. The row with scope '*' is the default for scopes without a
-- row of their own; rekey.keys.max_age, when set, overrides both for that one key.
CREATE TABLE rekey.key_policies (
  scope      text PRIMARY KEY,
  max_age    interval NOT NULL CHECK (max_age > interval '0'),
  updated_at timestamptz NOT NULL DEFAULT now(),
  updated_by text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE rekey.key_policies IS
  'rekey: maximum data-key age per scope (''*'' = every other scope); rekey rotate-due rotates keys past it.';

-- ---------------------------------------------------------------------------------------------
-- Compliance reports
-- ---------------------------------------------------------------------------------------------

-- Reports as handed to auditors: the JSON evidence, the Markdown rendering, and a SHA-256 of the
-- JSON text so a copy can be checked against the stored one. Append-only, like rekey.audit.
CREATE TABLE rekey.reports (
  report_id    bigserial PRIMARY KEY,
  job_id       bigint NOT NULL REFERENCES rekey.jobs ON DELETE CASCADE,
  generated_at timestamptz NOT NULL DEFAULT now(),
  generated_by text NOT NULL DEFAULT current_user,
  body         jsonb NOT NULL,
  markdown     text,
  sha256       text NOT NULL
);
CREATE INDEX reports_job ON rekey.reports (job_id, generated_at);

REVOKE UPDATE, DELETE, TRUNCATE ON rekey.reports FROM PUBLIC;
