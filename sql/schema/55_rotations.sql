-- Rotations: one rotation of a keyring scope across every column holding its values (issue 17,
-- item 4). A rotation is a group of ordinary jobs (rekey.jobs.rotation_id), one per table and
-- key-id column, with the same key map and the same stages; each has its own gates. What the
-- group adds: the new key is promoted once, when every job has reached the promotion stage (a
-- job that gets there first waits), one progress row, and one rollback. Tables in
-- migrations/0018_rotations.sql; docs/operations.md, "Rotating a key across its columns".

-- What a rotation of scope p_scope to key p_to_key moves: the registered targets holding values
-- under any of p_from_keys (rekey.key_usage: whole columns, found by identity), one row per job,
-- i.e. per table and key-id column (a key-id column is rewritten by one job, with every column it
-- governs). not_governed: for a job with a key-id column, the columns of the table's other jobs
-- of this rotation (encrypted under their own key-id column) and what the latest job on this
-- table and key-id column declared not governed; NULL for a job without one.
CREATE OR REPLACE FUNCTION rekey.rotation_scope_targets(p_from_keys bigint[])
RETURNS TABLE (table_name text, columns text[], codecs text[], key_id_column name,
               ad_template text, not_governed text[], values_under_keys bigint)
LANGUAGE sql VOLATILE AS $$
  WITH used AS (
    SELECT u.target_id, sum(u.n) AS n
      FROM unnest(p_from_keys) k, LATERAL rekey.key_usage(k) u
     WHERE u.n > 0
     GROUP BY u.target_id),
  cols AS (
    SELECT tc.relid, tc.schema_name, tc.table_name, tc.column_name, tc.attnum, tc.codec,
           tc.key_id_column, tc.ad_template, used.n
      FROM used JOIN rekey.target_columns() tc ON tc.target_id = used.target_id),
  groups AS (
    SELECT c.relid, c.schema_name, c.table_name, c.key_id_column,
           array_agg(c.column_name::text ORDER BY c.attnum) AS columns,
           array_agg(c.codec ORDER BY c.attnum) AS codecs, min(c.ad_template) AS ad_template,
           sum(c.n)::bigint AS n
      FROM cols c GROUP BY c.relid, c.schema_name, c.table_name, c.key_id_column)
  SELECT format('%I.%I', g.schema_name, g.table_name), g.columns, g.codecs, g.key_id_column,
         g.ad_template,
         CASE WHEN g.key_id_column IS NOT NULL THEN
           array(SELECT DISTINCT x FROM (
                   SELECT unnest(o.columns) AS x FROM groups o
                    WHERE o.relid = g.relid AND o.key_id_column IS DISTINCT FROM g.key_id_column
                   UNION ALL
                   SELECT unnest((SELECT j.not_governed::text[] FROM rekey.jobs j
                                   WHERE j.schema_name = g.schema_name AND j.table_name = g.table_name
                                     AND j.key_id_column = g.key_id_column
                                   ORDER BY j.job_id DESC LIMIT 1))) n
                  WHERE x <> ALL (g.columns)
                    AND rekey.column_type(g.schema_name, g.table_name, x) IS NOT NULL ORDER BY x)
         END,
         g.n
    FROM groups g
   ORDER BY 1, 4
$$;

-- The current keys of scope p_scope, which a rotation to p_to_key moves values off: its primary,
-- and every other enabled key of the scope holding registered values (applications may write
-- under both). decrypt_only keys are left as they are, as rotate-due always left them: their
-- values are an earlier rotation's business, and the census keeps such a key from being retired.
CREATE OR REPLACE FUNCTION rekey.rotation_from_keys(p_scope text, p_to_key bigint)
RETURNS bigint[] LANGUAGE sql VOLATILE AS $$
  SELECT coalesce(array_agg(k.key_id ORDER BY k.key_id), '{}')
    FROM rekey.keys k
   WHERE k.scope = p_scope AND k.key_id <> p_to_key
     AND (k.status = 'primary'
          OR (k.status = 'enabled' AND EXISTS (SELECT 1 FROM rekey.key_usage(k.key_id) u WHERE u.n > 0)))
$$;

-- Jobs created while the transaction-local setting rekey.rotation_id is set join that rotation
-- (rekey.create_rotation sets it around its rekey.create_job calls, so a job belongs to its
-- rotation before its first stage opens).
CREATE OR REPLACE FUNCTION rekey.jobs_join_rotation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.rotation_id IS NULL THEN
    NEW.rotation_id := nullif(current_setting('rekey.rotation_id', true), '')::bigint;
  END IF;
  RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER jobs_join_rotation BEFORE INSERT ON rekey.jobs
  FOR EACH ROW EXECUTE FUNCTION rekey.jobs_join_rotation();

-- Creates one rotation of keyring scope p_scope to key p_to_key (enabled or primary, of the same
-- scope) and its jobs, one per table and key-id column of rekey.rotation_scope_targets, all with
-- the same key map (every key of rekey.rotation_from_keys -> p_to_key) and the same stages; the
-- other parameters are rekey.create_job's. p_register: census-found columns
-- ('schema.table.column', bytea holding Tink values) to register as targets first.
-- Refuses, writing nothing, with one line naming what it found:
--   * an unknown scope, or a target key of another scope or not enabled (invalid_parameter_value);
--   * an unfinished rotation of the scope (object_not_in_prerequisite_state);
--   * a scope without registered values under its keys (no_data_found);
--   * an unregistered column the census finds holding Tink values under one of the keys (it
--     would keep them after the rotation): register it with p_register (invalid_parameter_value);
--   * whatever rekey.create_job refuses, e.g. a target overlapping an unfinished job.
-- Returns the rotation's id. With `SET LOCAL rekey.defer_rollout_planning = on` the caller plans
-- each job's rollout stages before committing (src/jobs/rotation.cpp does).
CREATE OR REPLACE FUNCTION rekey.create_rotation(
  p_scope text,
  p_to_key bigint,
  p_stages numeric[] DEFAULT '{1,25,50,75,100}',
  p_observe interval DEFAULT NULL,
  p_batch_size integer DEFAULT 1000,
  p_name text DEFAULT NULL,
  p_promote_at_stage integer DEFAULT NULL,
  p_error_threshold numeric DEFAULT 0.001,
  p_gate_sample_size integer DEFAULT 10000,
  p_register text[] DEFAULT NULL)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  to_key rekey.keys;
  busy bigint;
  from_keys bigint[];
  key_map jsonb;
  rid bigint;
  tgt record;
  col record;
  t record;
  parts text[];
  n integer := 0;
  jobs bigint[] := '{}';
  k bigint;
BEGIN
  PERFORM rekey.lock_job_definitions();
  IF NOT EXISTS (SELECT 1 FROM rekey.keys WHERE scope = p_scope) THEN
    RAISE EXCEPTION 'scope % has no keys; rekey keys list shows the keyring', quote_literal(coalesce(p_scope, ''))
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT * INTO to_key FROM rekey.keys WHERE key_id = p_to_key;
  IF to_key.key_id IS NULL THEN
    RAISE EXCEPTION 'unknown target key %; rekey keys list shows the keyring', p_to_key
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF to_key.scope <> p_scope THEN
    RAISE EXCEPTION 'key % is in scope %, not %: a rotation stays within its scope', p_to_key,
      quote_literal(to_key.scope), quote_literal(p_scope) USING ERRCODE = 'invalid_parameter_value';
  ELSIF to_key.status NOT IN ('enabled', 'primary') THEN
    RAISE EXCEPTION 'key % is %: a rotation writes under an enabled key (rekey keys create, or --new-key)',
      p_to_key, to_key.status USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT r.rotation_id INTO busy FROM rekey.rotations r
   WHERE r.scope = p_scope AND r.state IN ('creating', 'rotating', 'promoted', 'rolling_back');
  IF busy IS NOT NULL THEN
    RAISE EXCEPTION 'rotation % of scope % is unfinished; let it finish or roll it back (rekey rotation rollback %)',
      busy, quote_literal(p_scope), busy USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;

  FOR i IN 1 .. coalesce(cardinality(p_register), 0) LOOP
    parts := parse_ident(p_register[i]);
    IF cardinality(parts) <> 3 THEN
      RAISE EXCEPTION 'register a column as schema.table.column, not %', quote_literal(p_register[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    t := rekey.job_table(format('%I.%I', parts[1], parts[2]));
    PERFORM rekey.check_job_columns(t.schema_name, t.table_name, t.pk_column, ARRAY[parts[3]], false);
    IF NOT EXISTS (SELECT 1 FROM rekey.target_columns() tc
                    WHERE tc.relid = format('%I.%I', t.schema_name, t.table_name)::regclass
                      AND tc.column_name = parts[3]) THEN
      INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec)
      VALUES (t.schema_name, t.table_name, t.pk_column, parts[3], 'tink');
    END IF;
  END LOOP;

  from_keys := rekey.rotation_from_keys(p_scope, p_to_key);
  FOREACH k IN ARRAY from_keys LOOP
    SELECT c.* INTO col FROM rekey.key_census(k) c
     WHERE c.target_id IS NULL AND c.status = 'in_use' AND 'tink' = ANY (c.formats)
     ORDER BY 1, 2, 3 LIMIT 1;
    IF col.column_name IS NOT NULL THEN
      RAISE EXCEPTION 'column %.%.% holds % values under key % and is not registered: register it with --register %.%.% (or move its values yourself) so that the rotation leaves nothing under the old key',
        quote_ident(col.schema_name), quote_ident(col.table_name), quote_ident(col.column_name),
        col.n, k, quote_ident(col.schema_name), quote_ident(col.table_name), quote_ident(col.column_name)
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
  IF NOT EXISTS (SELECT 1 FROM rekey.rotation_scope_targets(from_keys)) THEN
    RAISE EXCEPTION 'scope % has no registered values under its keys (%): nothing to rotate; register its columns (a job, or --register) or promote the key (rekey keys promote %)',
      quote_literal(p_scope), coalesce(nullif(array_to_string(from_keys, ', '), ''), 'none'), p_to_key
      USING ERRCODE = 'no_data_found';
  END IF;
  SELECT jsonb_object_agg(f::text, p_to_key) INTO key_map FROM unnest(from_keys) f;

  INSERT INTO rekey.rotations (name, scope, from_keys, from_primary, to_key, stage_plan)
  VALUES (p_name, p_scope, from_keys,
          (SELECT key_id FROM rekey.keys WHERE scope = p_scope AND status = 'primary' AND key_id <> p_to_key),
          p_to_key, p_stages)
  RETURNING rotation_id INTO rid;
  PERFORM set_config('rekey.rotation_id', rid::text, true);
  FOR tgt IN SELECT * FROM rekey.rotation_scope_targets(from_keys) LOOP
    jobs := jobs || rekey.create_job(tgt.table_name, tgt.columns, key_map, tgt.codecs, tgt.key_id_column,
                                     tgt.ad_template, p_batch_size => p_batch_size, p_name => p_name,
                                     p_stages => p_stages, p_promote_at_stage => p_promote_at_stage,
                                     p_error_threshold => p_error_threshold, p_observe => p_observe,
                                     p_gate_sample_size => p_gate_sample_size,
                                     p_not_governed => tgt.not_governed);
  END LOOP;
  PERFORM set_config('rekey.rotation_id', '', true);
  UPDATE rekey.rotations SET state = 'rotating', updated_at = now() WHERE rotation_id = rid;
  PERFORM rekey.audit_event('rotation.created', NULL, jsonb_build_object(
    'rotation', rid, 'scope', p_scope, 'from_keys', to_jsonb(from_keys), 'to_key', p_to_key,
    'jobs', to_jsonb(jobs), 'stages', to_jsonb(p_stages)));
  -- Promoting at the first stage: every job has reached it now.
  PERFORM rekey.rotation_promote_due(rid);
  RETURN rid;
END $$;

-- True iff job p_job has reached its promotion stage: its keys are promoted, or it is unfinished
-- with a rollout stage at or beyond promote_at_stage open.
CREATE OR REPLACE FUNCTION rekey.job_reached_promotion(p_job rekey.jobs) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT p_job.keys_promoted
      OR (rekey.job_unfinished(p_job.state) AND p_job.rollback_stage IS NULL
          AND p_job.current_stage >= p_job.promote_at_stage
          AND EXISTS (SELECT 1 FROM rekey.job_stages s WHERE s.job_id = p_job.job_id
                         AND s.stage_no = p_job.current_stage AND s.kind IN ('rollout', 'sweep')))
$$;

-- Promotes rotation p_rotation's new key if every job of it has reached the promotion stage
-- (rekey.promote_job_keys for each: the first makes the key primary, the others record it), then
-- sends each job that waited at its last gate (rekey.hold_for_rotation) on to its sweep. The
-- rotation row is locked first, so two jobs reaching the stage at once cannot both see the
-- other short of it. Returns true iff the key is promoted (now or before).
CREATE OR REPLACE FUNCTION rekey.rotation_promote_due(p_rotation bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  r rekey.rotations;
  held bigint[];
  job bigint;
BEGIN
  SELECT * INTO STRICT r FROM rekey.rotations WHERE rotation_id = p_rotation FOR UPDATE;
  IF r.promoted_at IS NOT NULL THEN
    RETURN true;
  ELSIF r.state <> 'rotating'
        OR EXISTS (SELECT 1 FROM rekey.jobs j WHERE j.rotation_id = p_rotation
                      AND NOT rekey.job_reached_promotion(j)) THEN
    RETURN false;
  END IF;
  SELECT coalesce(array_agg(j.job_id ORDER BY j.job_id), '{}') INTO held
    FROM rekey.jobs j WHERE j.rotation_id = p_rotation AND rekey.held_by_rotation(j.job_id)
                        AND j.state = 'awaiting_approval';
  FOR job IN SELECT j.job_id FROM rekey.jobs j WHERE j.rotation_id = p_rotation ORDER BY j.job_id LOOP
    PERFORM rekey.promote_job_keys(job);
  END LOOP;
  UPDATE rekey.rotations SET promoted_at = now(), state = 'promoted', updated_at = now()
   WHERE rotation_id = p_rotation;
  PERFORM rekey.audit_event('rotation.promoted', NULL, jsonb_build_object(
    'rotation', p_rotation, 'scope', r.scope, 'primary', r.to_key,
    -- false while a live reader lacks the key: the jobs' sweeps then promote it once it is ready
    'key_primary_now', (SELECT k.status = 'primary' FROM rekey.keys k WHERE k.key_id = r.to_key),
    'jobs', (SELECT jsonb_agg(j.job_id ORDER BY j.job_id) FROM rekey.jobs j WHERE j.rotation_id = p_rotation)));
  FOREACH job IN ARRAY held LOOP
    PERFORM rekey.open_stage(job, rekey.add_stage(job, 'sweep', 100, 0, 10000));
  END LOOP;
  RETURN true;
END $$;

-- Where a job reaches its promotion (sql/schema/50_stages.sql: opening the promotion stage, the
-- last gate, a forced advance past it): a job of no rotation promotes its keys; a job of a
-- rotation defers to the rotation (rekey.rotation_promote_due). Returns true iff the job may go
-- on past its promotion: its keys are promoted, or the promotion is decided (the job's own, or
-- its rotation's) and waits only for live readers, which the claim enforces.
CREATE OR REPLACE FUNCTION rekey.promote_or_defer(p_job bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  rid bigint;
BEGIN
  SELECT rotation_id INTO rid FROM rekey.jobs WHERE job_id = p_job;
  IF rid IS NULL OR EXISTS (SELECT 1 FROM rekey.rotations r
                             WHERE r.rotation_id = rid AND r.promoted_at IS NOT NULL) THEN
    -- May still wait for readers (rekey.readers_allow_promotion): then the job's first claim
    -- after they are ready promotes (rekey.readers_allow_claim), and no batch at or past the
    -- promotion stage is handed out before.
    PERFORM rekey.promote_job_keys(p_job);
    RETURN true;
  END IF;
  RETURN rekey.rotation_promote_due(rid);
END $$;

-- True iff job p_job has nothing left before its sweep but the promotion of its rotation's key:
-- past its last rollout stage's gate, its keys not yet promoted. rekey.advance_due leaves it.
CREATE OR REPLACE FUNCTION rekey.held_by_rotation(p_job bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT j.rotation_id IS NOT NULL AND NOT j.keys_promoted AND j.rollback_stage IS NULL
         AND j.current_stage >= (SELECT max(s.stage_no) FROM rekey.job_stages s
                                  WHERE s.job_id = j.job_id AND s.kind = 'rollout')
    FROM rekey.jobs j WHERE j.job_id = p_job
$$;

-- A job whose last gate passed before the rest of its rotation reached the promotion stage waits
-- awaiting_approval, naming the jobs it waits for, until rekey.rotation_promote_due sends it on.
-- Returns that reason.
CREATE OR REPLACE FUNCTION rekey.hold_for_rotation(p_job bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  reason text;
BEGIN
  SELECT format('waiting for rotation %s to promote key %s: job(s) %s have not reached the promotion stage yet',
                r.rotation_id, r.to_key,
                (SELECT string_agg(o.job_id::text, ', ' ORDER BY o.job_id) FROM rekey.jobs o
                  WHERE o.rotation_id = r.rotation_id AND NOT rekey.job_reached_promotion(o)))
    INTO reason
    FROM rekey.jobs j JOIN rekey.rotations r USING (rotation_id) WHERE j.job_id = p_job;
  UPDATE rekey.jobs SET state = 'awaiting_approval', state_reason = reason, updated_at = now()
   WHERE job_id = p_job;
  RETURN format('job %s: %s', p_job, reason);
END $$;

-- The start of a verb on a whole rotation (rekey.rollback_rotation, rekey.cancel_rotation):
-- serializes with job definitions, locks and returns rotation p_rotation; refuses an unknown
-- rotation (no_data_found) and one in a state of p_done, where there is nothing to p_verb.
CREATE OR REPLACE FUNCTION rekey.lock_rotation(p_rotation bigint, p_verb text, p_done text[])
RETURNS rekey.rotations LANGUAGE plpgsql AS $$
DECLARE
  r rekey.rotations;
BEGIN
  PERFORM rekey.lock_job_definitions();
  SELECT * INTO r FROM rekey.rotations WHERE rotation_id = p_rotation FOR UPDATE;
  IF r.rotation_id IS NULL THEN
    RAISE EXCEPTION 'unknown rotation %; rekey rotation status lists them', p_rotation
      USING ERRCODE = 'no_data_found';
  ELSIF r.state = ANY (p_done) THEN
    RAISE EXCEPTION 'rotation % is %: nothing to %', p_rotation, r.state, p_verb
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  RETURN r;
END $$;

-- Rolls back every job of rotation p_rotation as one (rekey.rollback_job to 0% each, refused for
-- a job of a rotation otherwise): the rotation's old primary is primary again, the new key
-- decrypt_only, and the workers move every value back. Refused (nothing written) for an unknown
-- rotation, one already rolled back, or whatever rekey.rollback_job refuses for one of its jobs.
CREATE OR REPLACE FUNCTION rekey.rollback_rotation(p_rotation bigint, p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r rekey.rotations;
  job bigint;
  n integer := 0;
BEGIN
  r := rekey.lock_rotation(p_rotation, 'roll back', '{rolling_back,rolled_back,cancelled}');
  -- The old primary first, so that each job's keyring restore (which makes the first of its
  -- source keys primary in a scope left without one) finds the scope with its primary. A key
  -- retired since the rotation completed is readable again first, as rekey.rollback_job does.
  IF r.promoted_at IS NOT NULL AND r.from_primary IS NOT NULL THEN
    UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.from_primary AND status = 'retired';
    UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.to_key AND status = 'primary';
    UPDATE rekey.keys SET status = 'primary'
     WHERE key_id = r.from_primary AND status IN ('enabled', 'decrypt_only');
  END IF;
  UPDATE rekey.rotations SET state = 'rolling_back', rollback_started_at = now(),
         rollback_reason = p_reason, updated_at = now()
   WHERE rotation_id = p_rotation;
  PERFORM set_config('rekey.rolling_back_rotation', p_rotation::text, true);
  FOR job IN SELECT j.job_id FROM rekey.jobs j
              WHERE j.rotation_id = p_rotation AND j.state NOT IN ('cancelled', 'rolled_back')
              ORDER BY j.job_id LOOP
    PERFORM rekey.rollback_job(job, 0, p_reason);
    n := n + 1;
  END LOOP;
  PERFORM set_config('rekey.rolling_back_rotation', '', true);
  PERFORM rekey.audit_event('rotation.rollback_started', NULL, jsonb_build_object(
    'rotation', p_rotation, 'scope', r.scope, 'from_state', r.state, 'jobs', n, 'reason', p_reason));
  RETURN format('rotation %s: rolling back %s job(s); run rekey work --all', p_rotation, n);
END $$;

-- rekey.rollback_job's rule for a job of a rotation: only rekey.rollback_rotation rolls it back
-- (one part rolled back alone would leave the scope's values split between two keys).
CREATE OR REPLACE FUNCTION rekey.refuse_partial_rotation_rollback(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  rid bigint;
BEGIN
  SELECT rotation_id INTO rid FROM rekey.jobs WHERE job_id = p_job;
  IF rid IS NOT NULL AND rid::text IS DISTINCT FROM current_setting('rekey.rolling_back_rotation', true) THEN
    RAISE EXCEPTION 'job % is part of rotation %: roll back the whole rotation (rekey rotation rollback %)',
      p_job, rid, rid USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- rekey.cancel_job's rule for a job of a rotation: only rekey.cancel_rotation cancels it. One
-- job given up alone would keep the rotation from ever promoting (every job must reach its
-- promotion stage), or, after the promotion, leave the rotation unfinished for good.
CREATE OR REPLACE FUNCTION rekey.refuse_partial_rotation_cancel(p_job bigint) RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  rid bigint;
  st text;
BEGIN
  SELECT rotation_id, state INTO rid, st FROM rekey.jobs WHERE job_id = p_job;
  IF rid IS NOT NULL AND rekey.job_unfinished(st)
     AND rid::text IS DISTINCT FROM current_setting('rekey.cancelling_rotation', true) THEN
    RAISE EXCEPTION 'job % is part of rotation %: cancel the whole rotation (SELECT rekey.cancel_rotation(%)) or roll it back (rekey rotation rollback %)',
      p_job, rid, rid, rid USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

-- Cancels every unfinished job of rotation p_rotation as one (rekey.cancel_job each, refused for
-- a job of a rotation otherwise) and marks the rotation cancelled. Rows already rotated stay
-- rotated; nothing about the keyring changes: before the promotion the old primary stays
-- primary, after it the new key stays primary in the whole scope at once (never in part of it),
-- and the old keys stay readable (a retire still needs the census to find none of their values).
-- Refused (nothing written) for an unknown rotation or one already finished.
CREATE OR REPLACE FUNCTION rekey.cancel_rotation(p_rotation bigint, p_reason text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  r rekey.rotations;
  job bigint;
  n integer := 0;
BEGIN
  r := rekey.lock_rotation(p_rotation, 'cancel', '{completed,rolled_back,cancelled}');
  PERFORM set_config('rekey.cancelling_rotation', p_rotation::text, true);
  FOR job IN SELECT j.job_id FROM rekey.jobs j
              WHERE j.rotation_id = p_rotation AND rekey.job_unfinished(j.state)
              ORDER BY j.job_id LOOP
    PERFORM rekey.cancel_job(job, p_reason);
    n := n + 1;
  END LOOP;
  PERFORM set_config('rekey.cancelling_rotation', '', true);
  -- Jobs that completed before keep the state machine (rekey.rotation_follow_jobs) short of
  -- 'cancelled'; the rotation is finished all the same.
  UPDATE rekey.rotations SET state = 'cancelled', finished_at = now(), updated_at = now()
   WHERE rotation_id = p_rotation AND state NOT IN ('completed', 'rolled_back', 'cancelled');
  PERFORM rekey.audit_event('rotation.cancel', NULL, jsonb_build_object(
    'rotation', p_rotation, 'scope', r.scope, 'from_state', r.state, 'jobs', n, 'reason', p_reason,
    'to_state', (SELECT x.state FROM rekey.rotations x WHERE x.rotation_id = p_rotation)));
  RETURN format('rotation %s: cancelled %s job(s)', p_rotation, n);
END $$;

-- A rotation's state follows its jobs': completed when all completed, rolled_back when a
-- rollback left all rolled back (or cancelled), cancelled when all were cancelled. The rotation
-- row is locked before the jobs are counted: two jobs finishing in concurrent transactions would
-- otherwise each count the other unfinished.
CREATE OR REPLACE FUNCTION rekey.rotation_follow_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  r rekey.rotations;
  total integer;
  completed integer;
  rolled_back integer;
  cancelled integer;
  next_state text;
BEGIN
  SELECT * INTO r FROM rekey.rotations WHERE rotation_id = NEW.rotation_id FOR UPDATE;
  IF r.state = 'creating' THEN
    RETURN NULL;
  END IF;
  SELECT count(*), count(*) FILTER (WHERE state = 'completed'),
         count(*) FILTER (WHERE state = 'rolled_back'), count(*) FILTER (WHERE state = 'cancelled')
    INTO total, completed, rolled_back, cancelled
    FROM rekey.jobs WHERE rotation_id = NEW.rotation_id;
  next_state := CASE
    WHEN completed = total THEN 'completed'
    WHEN r.rollback_started_at IS NOT NULL AND rolled_back + cancelled = total THEN 'rolled_back'
    WHEN r.rollback_started_at IS NOT NULL THEN 'rolling_back'
    WHEN cancelled = total THEN 'cancelled'
    WHEN r.promoted_at IS NOT NULL THEN 'promoted'
    ELSE 'rotating' END;
  IF next_state IS DISTINCT FROM r.state THEN
    UPDATE rekey.rotations SET state = next_state, updated_at = now(),
           finished_at = CASE WHEN next_state IN ('completed', 'rolled_back', 'cancelled') THEN now() END
     WHERE rotation_id = r.rotation_id;
    IF next_state IN ('completed', 'rolled_back', 'cancelled') THEN
      PERFORM rekey.audit_event('rotation.' || next_state, NULL, jsonb_build_object(
        'rotation', r.rotation_id, 'scope', r.scope, 'to_key', r.to_key));
    END IF;
  END IF;
  RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER jobs_rotation_follow AFTER UPDATE OF state ON rekey.jobs
  FOR EACH ROW WHEN (NEW.rotation_id IS NOT NULL AND OLD.state IS DISTINCT FROM NEW.state)
  EXECUTE FUNCTION rekey.rotation_follow_jobs();

-- One row per rotation: its jobs (targets), rows moved of the rollout's total (counted as
-- rekey.progress counts them: planned rows of done rollout batches), the stage the slowest job
-- is at, and the state; `waiting` lists the jobs held at their last gate for the promotion.
CREATE OR REPLACE VIEW rekey.rotation_progress AS
WITH per_job AS (
  SELECT j.rotation_id, j.job_id, j.state, j.current_stage,
         format('%I.%I', j.schema_name, j.table_name) AS target,
         (SELECT coalesce(sum(b.planned_rows), 0) FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
           WHERE b.job_id = j.job_id AND s.kind = 'rollout') AS rows_total,
         (SELECT coalesce(sum(b.planned_rows), 0) FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
           WHERE b.job_id = j.job_id AND s.kind = 'rollout' AND b.state = 'done') AS rows_done,
         j.state = 'awaiting_approval' AND rekey.held_by_rotation(j.job_id) AS waiting
    FROM rekey.jobs j WHERE j.rotation_id IS NOT NULL)
SELECT r.rotation_id, r.name, r.scope, array_to_string(r.from_keys, ',') AS from_keys, r.to_key,
       r.state, array_to_string(r.stage_plan, ',') AS stage_plan,
       count(p.job_id) AS targets,
       string_agg(p.job_id::text, ',' ORDER BY p.job_id) AS jobs,
       string_agg(DISTINCT p.target, ', ') AS tables,
       coalesce(sum(p.rows_done), 0)::bigint AS rows_done,
       coalesce(sum(p.rows_total), 0)::bigint AS rows_total,
       round(100.0 * coalesce(sum(p.rows_done), 0) / greatest(coalesce(sum(p.rows_total), 0), 1), 2) AS percent,
       min(p.current_stage) AS slowest_stage,
       string_agg(p.job_id::text, ',' ORDER BY p.job_id) FILTER (WHERE p.waiting) AS waiting,
       r.created_by, r.created_at, r.promoted_at, r.rollback_started_at, r.finished_at
  FROM rekey.rotations r
  LEFT JOIN per_job p ON p.rotation_id = r.rotation_id
 GROUP BY r.rotation_id;
