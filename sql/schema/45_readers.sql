-- Readers: the application instances that decrypt a keyring scope's values report which key ids
-- they can decrypt (rekey.reader_heartbeat), and a job never writes a value under a key that a
-- live reader of the key's scope -- one seen within the job's reader window -- cannot decrypt:
-- not its batches (rekey.readers_allow_claim, called by rekey.claim_batch), not the promotion of
-- its target keys (rekey.readers_allow_promotion, called by rekey.promote_job_keys), not a
-- rollback's batches under the source keys. While it waits, the job names the lagging readers
-- (jobs.readers_waiting_for/_since/readers_lagging, rekey.progress). Stale readers never block;
-- a scope no reader ever reported for is not waited on, and says so (rekey.job_unreported_scopes).
-- See docs/operations.md, "Readers".

-- Records that `p_reader` (an instance name of the application's choosing: pod name, host:pid)
-- can decrypt the keys `p_key_ids` of keyring scope `p_scope`, as of now. Applications call it
-- periodically (well within the shortest reader window, e.g. every minute) and at once after
-- loading a new key. The list replaces the reader's previous one.
-- Refuses, writing nothing (invalid_parameter_value): an empty reader name, a scope no key
-- belongs to, an empty or NULL key list, a key id that is not a key of the scope.
-- SECURITY DEFINER so that the application role needs EXECUTE on this function only
-- (sql/roles.sql, rekey_application): it reads rekey.keys and writes rekey.readers, nothing else.
CREATE OR REPLACE FUNCTION rekey.reader_heartbeat(p_reader text, p_scope text, p_key_ids bigint[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
  unknown text;
BEGIN
  IF p_reader IS NULL OR btrim(p_reader) = '' OR length(p_reader) > 200 THEN
    RAISE EXCEPTION 'reader heartbeat refused: the reader name must be 1 to 200 characters, not %',
      coalesce(quote_literal(p_reader), 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'name the instance (pod name, host:pid); nothing was recorded';
  END IF;
  IF p_scope IS NULL OR NOT EXISTS (SELECT 1 FROM rekey.keys WHERE scope = p_scope) THEN
    RAISE EXCEPTION 'reader heartbeat refused: no key belongs to scope %', coalesce(quote_literal(p_scope), 'NULL')
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'report the keyring scope the application decrypts (rekey keys list shows them); nothing was recorded';
  END IF;
  IF p_key_ids IS NULL OR cardinality(p_key_ids) = 0 OR array_position(p_key_ids, NULL) IS NOT NULL THEN
    RAISE EXCEPTION 'reader heartbeat refused: reader % reported no key ids for scope %', quote_literal(p_reader),
      quote_literal(p_scope)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'report every key id of the scope the application can decrypt; nothing was recorded';
  END IF;
  SELECT string_agg(x::text, ', ' ORDER BY x) INTO unknown
    FROM (SELECT DISTINCT x FROM unnest(p_key_ids) x) u
   WHERE NOT EXISTS (SELECT 1 FROM rekey.keys k WHERE k.key_id = u.x AND k.scope = p_scope);
  IF unknown IS NOT NULL THEN
    RAISE EXCEPTION 'reader heartbeat refused: key % is not a key of scope %', unknown, quote_literal(p_scope)
      USING ERRCODE = 'invalid_parameter_value',
            HINT = 'report only the key ids of the scope''s keyring (rekey.keys); nothing was recorded';
  END IF;
  INSERT INTO rekey.readers AS r (scope, reader, key_ids)
  VALUES (p_scope, p_reader, (SELECT array_agg(DISTINCT x ORDER BY x) FROM unnest(p_key_ids) x))
  ON CONFLICT (scope, reader) DO UPDATE
    SET key_ids = EXCLUDED.key_ids, last_seen = now(), reported_by = session_user,
        client_addr = inet_client_addr();
  -- Idle workers wait for a job change on rekey_jobs: wake those of the jobs this reader held
  -- back, so they claim again now rather than at their next poll.
  PERFORM pg_notify('rekey_jobs', j.job_id::text) FROM rekey.jobs j
    WHERE j.readers_waiting_for IS NOT NULL AND j.state = 'active'
      AND j.readers_lagging @> jsonb_build_array(jsonb_build_object('reader', p_reader, 'scope', p_scope));
END $$;
-- A SECURITY DEFINER function is callable only by the roles sql/roles.sql grants it to.
REVOKE EXECUTE ON FUNCTION rekey.reader_heartbeat(text, text, bigint[]) FROM PUBLIC;

-- The live readers of key `p_key`'s scope -- seen within job `p_job`'s reader window -- whose
-- latest heartbeat does not list `p_key`: the readers that could not decrypt a value the job
-- wrote under it. Stale readers (last seen longer ago than the window) are not listed.
CREATE OR REPLACE FUNCTION rekey.lagging_readers(p_job bigint, p_key bigint)
RETURNS TABLE (reader text, scope text, key_id bigint, key_ids bigint[], last_seen timestamptz)
LANGUAGE sql STABLE AS $$
  SELECT r.reader, r.scope, k.key_id, r.key_ids, r.last_seen
    FROM rekey.jobs j
    JOIN rekey.keys k ON k.key_id = p_key
    JOIN rekey.readers r ON r.scope = k.scope
   WHERE j.job_id = p_job
     AND r.last_seen >= now() - j.reader_window
     AND NOT k.key_id = ANY (r.key_ids)
   ORDER BY r.scope, r.reader
$$;

-- The keys job `p_job` writes under: its target keys, or with `p_rollback` its source keys.
CREATE OR REPLACE FUNCTION rekey.job_written_keys(p_job bigint, p_rollback boolean)
RETURNS SETOF bigint
LANGUAGE sql STABLE AS $$
  SELECT DISTINCT CASE WHEN p_rollback THEN source_key_id ELSE target_key_id END
    FROM rekey.job_keys WHERE job_id = p_job ORDER BY 1
$$;

-- Every (reader, key) pair that holds job `p_job` back: a live reader lacking one of the keys the
-- job writes under (see rekey.job_written_keys), as a JSON array of
-- {reader, scope, key_id, last_seen}, ordered; '[]' when none does.
CREATE OR REPLACE FUNCTION rekey.job_lagging_readers(p_job bigint, p_rollback boolean)
RETURNS jsonb
LANGUAGE sql STABLE AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object('reader', l.reader, 'scope', l.scope, 'key_id', l.key_id,
                                               'last_seen', l.last_seen)
                            ORDER BY l.scope, l.reader, l.key_id), '[]')
    FROM rekey.job_written_keys(p_job, p_rollback) k, LATERAL rekey.lagging_readers(p_job, k) l
$$;

-- The keyring scopes of job `p_job`'s keys (source and target) for which no reader has ever
-- reported: there, reader readiness cannot be proven and nothing is waited for.
CREATE OR REPLACE FUNCTION rekey.job_unreported_scopes(p_job bigint)
RETURNS text[]
LANGUAGE sql STABLE AS $$
  SELECT coalesce(array_agg(DISTINCT k.scope ORDER BY k.scope), '{}')
    FROM rekey.job_keys jk JOIN rekey.keys k ON k.key_id IN (jk.source_key_id, jk.target_key_id)
   WHERE jk.job_id = p_job
     AND NOT EXISTS (SELECT 1 FROM rekey.readers r WHERE r.scope = k.scope)
$$;

-- Whether job `p_job` may now do `p_for` ('first_batch', 'batches' or 'promotion': write or make
-- primary its target keys; 'rollback': write under its source keys) as far as readers go: true
-- when no live reader lacks one of those keys. Records the answer on the job row, writing only
-- when it changes: while false, readers_waiting_for/_since and readers_lagging name what the job
-- waits for (audited as job.waiting_for_readers when the wait begins), cleared when it passes
-- (job.readers_ready). The first pass of a job's first batch, of a promotion (since its stage
-- opened) and of a rollback (since its first stage opened) is evidence for the report: audited as
-- job.readers_checked with the live readers of the keys' scopes and the job's scopes no reader
-- ever reported for (src/ops/queries/readers.sql, readiness).
CREATE OR REPLACE FUNCTION rekey.readers_ready(p_job bigint, p_for text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  lagging jsonb;
  rollback boolean := p_for = 'rollback';
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  lagging := rekey.job_lagging_readers(p_job, rollback);
  -- A change is written under the row's lock, re-read: two workers claiming at once record and
  -- audit it once. (NO KEY UPDATE does not conflict with the KEY SHARE locks of batches.)
  IF (lagging <> '[]' AND (j.readers_waiting_for IS DISTINCT FROM p_for OR j.readers_lagging IS DISTINCT FROM lagging))
     OR (lagging = '[]' AND j.readers_waiting_for IS NOT NULL) THEN
    SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR NO KEY UPDATE;
  END IF;
  IF lagging <> '[]' THEN
    IF j.readers_waiting_for IS DISTINCT FROM p_for OR j.readers_lagging IS DISTINCT FROM lagging THEN
      UPDATE rekey.jobs
         SET readers_waiting_for = p_for, readers_lagging = lagging,
             readers_waiting_since = CASE WHEN readers_waiting_for IS NOT DISTINCT FROM p_for
                                          THEN readers_waiting_since ELSE now() END
       WHERE job_id = p_job;
      IF j.readers_waiting_for IS DISTINCT FROM p_for THEN
        PERFORM rekey.audit_event('job.waiting_for_readers', p_job,
          jsonb_build_object('for', p_for, 'lagging', lagging), 'failure');
      END IF;
    END IF;
    RETURN false;
  END IF;
  IF j.readers_waiting_for IS NOT NULL THEN
    UPDATE rekey.jobs SET readers_waiting_for = NULL, readers_lagging = NULL, readers_waiting_since = NULL
     WHERE job_id = p_job;
    PERFORM rekey.audit_event('job.readers_ready', p_job, jsonb_build_object(
      'for', j.readers_waiting_for, 'waited_since', j.readers_waiting_since));
  END IF;
  IF p_for <> 'batches' AND NOT EXISTS (
       SELECT 1 FROM rekey.audit a
        WHERE a.job_id = p_job AND a.action = 'job.readers_checked' AND a.details->>'for' = p_for
          AND a.at >= CASE WHEN p_for = 'first_batch' THEN '-infinity'
                           ELSE (SELECT s.opened_at FROM rekey.job_stages s
                                  WHERE s.job_id = p_job
                                    AND s.stage_no = CASE WHEN rollback THEN coalesce(j.rollback_stage, j.current_stage)
                                                          ELSE j.current_stage END) END) THEN
    PERFORM rekey.audit_event('job.readers_checked', p_job, jsonb_build_object(
      'for', p_for, 'reader_window', j.reader_window,
      'keys', (SELECT jsonb_agg(k) FROM rekey.job_written_keys(p_job, rollback) k),
      'readers', (SELECT coalesce(jsonb_agg(jsonb_build_object('reader', r.reader, 'scope', r.scope,
                                                               'key_ids', r.key_ids, 'last_seen', r.last_seen)
                                            ORDER BY r.scope, r.reader), '[]')
                    FROM rekey.readers r
                   WHERE r.last_seen >= now() - j.reader_window
                     AND r.scope IN (SELECT k.scope FROM rekey.keys k
                                      WHERE k.key_id IN (SELECT rekey.job_written_keys(p_job, rollback)))),
      'unreported_scopes', to_jsonb(rekey.job_unreported_scopes(p_job))));
  END IF;
  RETURN true;
END $$;

-- The hook of rekey.promote_job_keys: whether job `p_job`'s target keys may become primary now
-- (rekey.readers_ready(p_job, 'promotion')). When not, the promotion waits: the job's batches at
-- or past its promotion stage are not handed out (rekey.readers_allow_claim), and the first claim
-- after every live reader lists the target keys promotes them.
CREATE OR REPLACE FUNCTION rekey.readers_allow_promotion(p_job bigint)
RETURNS boolean
LANGUAGE sql AS $$
  SELECT rekey.readers_ready(p_job, 'promotion')
$$;

-- The hook of rekey.claim_batch, asked for each active job before one of its batches is handed
-- out: whether the batches of its open stage may be written now. A rollback stage writes under
-- the source keys, every other stage under the target keys; a stage at or past the promotion
-- stage (and a sweep) needs the target keys primary, so a promotion that waited for readers
-- happens here, under the job row's lock, once they are ready (a job of a rotation: once the
-- rotation has decided its promotion, rekey.promote_or_defer). Checked before every batch, not
-- only the first: a reader that appears mid-job without the key stops further writes too.
CREATE OR REPLACE FUNCTION rekey.readers_allow_claim(p_job bigint)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  j rekey.jobs;
  kind text;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT s.kind INTO kind FROM rekey.job_stages s WHERE s.job_id = p_job AND s.stage_no = j.current_stage;
  IF kind = 'rollback' THEN
    RETURN rekey.readers_ready(p_job, 'rollback');
  END IF;
  IF NOT j.keys_promoted AND (kind = 'sweep' OR j.current_stage >= j.promote_at_stage) THEN
    IF NOT rekey.readers_ready(p_job, 'promotion') THEN
      RETURN false;
    END IF;
    SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
    IF NOT j.keys_promoted THEN
      -- A job of a rotation promotes only with the whole rotation (55_rotations.sql); until
      -- then its promotion stage's batches write under the target key as a canary stage does.
      PERFORM rekey.promote_or_defer(p_job);
      SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
    END IF;
    RETURN j.keys_promoted OR (j.rotation_id IS NOT NULL AND kind IS DISTINCT FROM 'sweep');
  END IF;
  RETURN rekey.readers_ready(p_job, CASE WHEN j.started_at IS NULL THEN 'first_batch' ELSE 'batches' END);
END $$;

-- rekey.rollback_job's rule for readers: a rollback of a job whose target keys were promoted
-- makes its source keys primary again, so applications write under them at once; a live reader
-- of the scope lacking one could not decrypt what they write. Refused, naming the first such
-- reader (object_not_in_prerequisite_state), until every live reader lists the source keys or is
-- stale. A rollback before the promotion changes no primary: its batches wait for the readers
-- like any other (rekey.readers_allow_claim, 'rollback').
CREATE OR REPLACE FUNCTION rekey.refuse_rollback_for_readers(p_job bigint)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  j rekey.jobs;
  lagging jsonb;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  IF NOT j.keys_promoted THEN
    RETURN;
  END IF;
  lagging := rekey.job_lagging_readers(p_job, true);
  IF lagging <> '[]' THEN
    RAISE EXCEPTION 'job % cannot be rolled back now: it would make key % primary again in scope %, which live reader % (last seen %) cannot decrypt; roll back once every live reader lists key % (rekey.reader_heartbeat) or is stale (reader window %)',
      p_job, lagging->0->>'key_id', lagging->0->>'scope', lagging->0->>'reader',
      lagging->0->>'last_seen', lagging->0->>'key_id', j.reader_window
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- Sets job `p_job`'s reader window (rekey job create --reader-window): readers last seen longer
-- ago than this never hold the job back. Audited.
CREATE OR REPLACE FUNCTION rekey.set_reader_window(p_job bigint, p_window interval)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
  IF p_window IS NULL OR p_window <= interval '0' THEN
    RAISE EXCEPTION 'the reader window must be longer than 0, not %', coalesce(p_window::text, 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE rekey.jobs SET reader_window = p_window, updated_at = now() WHERE job_id = p_job;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  PERFORM rekey.audit_event('job.reader_window', p_job, jsonb_build_object('reader_window', p_window));
END $$;
