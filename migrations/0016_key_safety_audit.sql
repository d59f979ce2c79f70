-- Key safety, audit (issue 15): an audit trail whose who and when cannot be forged by a client,
-- a hash chain that keeps sealing whatever the database's default isolation, and a chain head that
-- is durable before a worker logs it.
--
-- Who and when are the server's. Until now rekey.audit took `at` and `actor` from the INSERT
-- (rekey.audit_event passed the workers' own worker id as actor), rekey.gates.verified_by came from
-- the client (rekey.record_gate's p_verified_by), and the worker role could write any name into
-- gates.approved_by: a report's approvals were what some client said they were. BEFORE triggers
-- now stamp them on every INSERT path (functions, psql, COPY):
--   * actor is current_user, not session_user: the role whose privileges the write used, which
--     is what the grants of sql/roles.sql bound and what an operator's `SET ROLE` switches to on
--     purpose. Its one weakness, naming the owner inside a SECURITY DEFINER function, does not
--     arise: no function that writes audit rows is one (rekey.seal_audit and
--     rekey.seal_audit_durably write only the chain). Where session_user differs (a login that
--     SET ROLE), it is kept as details->>'session_user', so the person is not lost.
--   * at is clock_timestamp(), as the column default always was: events of one transaction keep
--     their order in time, and rekey.record_gate's completeness check (a completion row's
--     at >= its batch's claimed_at, the claim's now(), committed before the batch transaction
--     began) and `rekey audit verify`'s backdating check (at against earlier seals' sealed_at,
--     also clock_timestamp()) both compare it with times taken earlier.
--   * xid is the writing transaction's: the chain's "inserted after the fact" proof rests on it,
--     and a client-chosen future xid would keep a row out of every seal.
--   * audit_id is the sequence's: a client-chosen id beyond it would make a later writer's
--     insert, a batch's completion included, fail on the primary key.
-- A worker id a client supplies is kept, as a claim: details->>'worker' (rekey.audit_event's
-- p_actor), details->>'claimed_actor' (an explicit actor that is not current_user), and
-- gates.details->>'verified_by_worker' (record_gate's p_verified_by).
--
-- Sealing under any isolation. rekey.seal_audit (0006, 0009) seals only in READ COMMITTED, because
-- an older snapshot could miss a newer chain head; in any other isolation it returned 0 without a
-- word. With `ALTER DATABASE ... SET default_transaction_isolation = 'repeatable read'` every
-- writer's seal, the workers' and `rekey audit seal` included, returned 0, the chain stopped
-- growing, and `rekey audit verify` called the unsealed rows "not sealed yet" and the log intact.
-- Now rekey's own sessions set READ COMMITTED at connect (src/db/connection.cpp), seal_audit warns
-- when it leaves rows for the next seal, and `rekey audit verify` fails when rows stay unsealed
-- beyond a bound (docs/operations.md, "Tamper-evident audit").
--
-- A durable head. Batches commit with synchronous_commit = off (a lost batch is redone), and the
-- chain links a batch seals commit with it; the head `rekey work` logs at exit could be lost in a
-- server crash right after, and the logged head then looked like a cut-off history to
-- `rekey audit verify --expect-head`. rekey.seal_audit_durably seals and returns the head in a
-- transaction that commits synchronously and has WAL to flush.

-- ---------------------------------------------------------------------------------------------
-- rekey.audit: server-set actor, time, transaction and id
-- ---------------------------------------------------------------------------------------------

CREATE FUNCTION rekey.audit_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  claims jsonb := '{}';
BEGIN
  IF NEW.actor IS DISTINCT FROM current_user::text THEN
    claims := jsonb_build_object('claimed_actor', NEW.actor);
  END IF;
  IF session_user <> current_user THEN
    claims := claims || jsonb_build_object('session_user', session_user::text);
  END IF;
  IF jsonb_typeof(NEW.details) = 'object' THEN
    -- Keys the server writes are never taken from the client.
    NEW.details := NEW.details - 'claimed_actor' - 'session_user' || claims;
  ELSIF claims <> '{}' THEN
    NEW.details := jsonb_build_object('value', NEW.details) || claims;
  END IF;
  NEW.actor := current_user;
  NEW.at := clock_timestamp();
  NEW.xid := pg_current_xact_id();
  -- The default took nextval, so a larger id was chosen by the client.
  IF NEW.audit_id IS NULL
     OR NEW.audit_id > coalesce(pg_sequence_last_value('rekey.audit_audit_id_seq'), 0) THEN
    NEW.audit_id := nextval('rekey.audit_audit_id_seq');
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER audit_stamp BEFORE INSERT ON rekey.audit
  FOR EACH ROW EXECUTE FUNCTION rekey.audit_stamp();

-- Replaces 0002's definition: p_actor, a worker's own name for itself, is no longer written as the
-- actor (the audit_stamp trigger sets that) but kept as details->>'worker'. Same signature, so
-- every caller (claim_batch, release_batch, complete_batch, record_gate, ...) is unchanged.
CREATE OR REPLACE FUNCTION rekey.audit_event(p_action text, p_job bigint, p_details jsonb DEFAULT '{}',
                                             p_outcome text DEFAULT 'success', p_batch integer DEFAULT NULL,
                                             p_actor text DEFAULT NULL)
RETURNS void LANGUAGE sql AS $$
  INSERT INTO rekey.audit (action, outcome, job_id, batch_no, details)
  VALUES (p_action, p_outcome, p_job, p_batch,
          CASE WHEN p_actor IS NULL THEN coalesce(p_details, '{}')
               ELSE coalesce(p_details, '{}') || jsonb_build_object('worker', p_actor) END);
$$;

-- ---------------------------------------------------------------------------------------------
-- rekey.gates: server-set verifier and approver
-- ---------------------------------------------------------------------------------------------

-- verified_by/verified_at are stamped at INSERT and never change. An approval (approved_by,
-- approved_at) is stamped when it is first written, by INSERT or UPDATE, and never changes after:
-- the worker role may approve a stage on its own after the observation period (rekey.advance_due),
-- and is then recorded as itself.
CREATE FUNCTION rekey.gates_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    NEW.details := coalesce(NEW.details, '{}') - 'verified_by_worker';
    IF NEW.verified_by IS DISTINCT FROM current_user::text THEN
      NEW.details := NEW.details || jsonb_build_object('verified_by_worker', NEW.verified_by);
    END IF;
    NEW.verified_by := current_user;
    NEW.verified_at := now();
    IF NEW.approved_by IS NOT NULL OR NEW.approved_at IS NOT NULL THEN
      NEW.approved_by := current_user;
      NEW.approved_at := now();
    END IF;
    RETURN NEW;
  END IF;
  NEW.verified_by := OLD.verified_by;
  NEW.verified_at := OLD.verified_at;
  NEW.details := NEW.details - 'verified_by_worker';
  IF OLD.details ? 'verified_by_worker' THEN
    NEW.details := NEW.details || jsonb_build_object('verified_by_worker', OLD.details->'verified_by_worker');
  END IF;
  IF OLD.approved_by IS NOT NULL OR OLD.approved_at IS NOT NULL THEN
    NEW.approved_by := OLD.approved_by;
    NEW.approved_at := OLD.approved_at;
  ELSIF NEW.approved_by IS NOT NULL OR NEW.approved_at IS NOT NULL THEN
    NEW.approved_by := current_user;
    NEW.approved_at := now();
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER gates_stamp BEFORE INSERT OR UPDATE ON rekey.gates
  FOR EACH ROW EXECUTE FUNCTION rekey.gates_stamp();

-- ---------------------------------------------------------------------------------------------
-- Sealing
-- ---------------------------------------------------------------------------------------------

-- Replaces 0009's definition, which replaced 0006's: the same sealing, and outside READ COMMITTED
-- a WARNING that this transaction's rows wait for the next seal (they are never skipped: a seal's
-- horizon is below every transaction still running, so the next READ COMMITTED seal scans them).
CREATE OR REPLACE FUNCTION rekey.seal_audit()
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, rekey
AS $$
DECLARE
  horizon  xid8;
  last     record;
  r        rekey.audit;
  prev     bytea;
  n        bigint;
  digest   bytea;
  sealed   integer := 0;
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE WARNING 'audit rows are not sealed in a % transaction: the hash chain is sealed only in READ COMMITTED; they wait for the next seal (rekey audit seal)',
      upper(current_setting('transaction_isolation'));
    RETURN 0;
  END IF;
  IF NOT pg_try_advisory_xact_lock(hashtext('rekey.audit_chain')) THEN
    RETURN 0;
  END IF;
  -- Taken after the lock, so it is no older than the horizon of the seal before this one.
  horizon := pg_snapshot_xmin(pg_current_snapshot());
  SELECT c.seq, c.chain_hash, c.sealed_xmin INTO last
    FROM rekey.audit_chain c ORDER BY c.seq DESC LIMIT 1;
  n := coalesce(last.seq, 0);
  prev := coalesce(last.chain_hash, decode(repeat('00', 32), 'hex'));
  FOR r IN
    SELECT a.* FROM rekey.audit a
     WHERE a.xid >= coalesce(last.sealed_xmin, '0'::xid8)
       AND a.xid <= greatest(pg_snapshot_xmax(pg_current_snapshot()), pg_current_xact_id_if_assigned())
     ORDER BY a.audit_id
  LOOP
    CONTINUE WHEN EXISTS (SELECT 1 FROM rekey.audit_chain c WHERE c.audit_id = r.audit_id);
    n := n + 1;
    digest := sha256(rekey.audit_row_bytes(r));
    prev := sha256(prev || int8send(n) || digest);
    INSERT INTO rekey.audit_chain (seq, audit_id, row_digest, chain_hash, sealed_xmin)
    VALUES (n, r.audit_id, digest, prev, horizon);
    sealed := sealed + 1;
  END LOOP;
  RETURN sealed;
END $$;

-- Seals what is pending, waiting for a sealer in progress instead of leaving it its rows, and
-- returns the head of the chain, durably: it sets synchronous_commit = on for the rest of the
-- caller's transaction and locks the head link, which writes WAL, so the caller's COMMIT flushes
-- the WAL up to itself -- and with it the commits of every link up to the head, which all came
-- earlier in the WAL, however asynchronously they committed. Returns no row while the chain is
-- empty. Raises 55000 outside READ COMMITTED, where it could not seal.
CREATE FUNCTION rekey.seal_audit_durably()
RETURNS TABLE (seq bigint, chain_hash text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, rekey
AS $$
BEGIN
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'the audit chain is sealed only in READ COMMITTED, not %: run it in a READ COMMITTED transaction',
      upper(current_setting('transaction_isolation'))
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtext('rekey.audit_chain'));
  PERFORM rekey.seal_audit();
  -- Local to the caller's transaction: a function's own SET clause would end with the function,
  -- before the COMMIT it is meant for.
  PERFORM set_config('synchronous_commit', 'on', true);
  RETURN QUERY
    SELECT c.seq, encode(c.chain_hash, 'hex') FROM rekey.audit_chain c
     ORDER BY c.seq DESC LIMIT 1 FOR UPDATE;
END $$;

-- ---------------------------------------------------------------------------------------------
-- Reports
-- ---------------------------------------------------------------------------------------------

-- Replaces 0005's definition: the same evidence, whose actors, verifiers and approvers are now the
-- server-stamped roles; the worker ids clients supplied sit beside them as such ('worker' of an
-- approval event, 'verified_by_worker' of a gate), never in their place.
CREATE OR REPLACE FUNCTION rekey.job_report(p_job bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
  j rekey.jobs;
  p record;
  done_batches bigint;
  audited bigint;
  missing jsonb;
  result jsonb;
BEGIN
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  SELECT * INTO p FROM rekey.progress WHERE job_id = p_job;

  -- Audit completeness: every done batch has its completion audit row (written in the same
  -- transaction as the batch's rows, so a gap means the log was tampered with or lost).
  SELECT count(*), count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
              AND a.action = 'rotation.batch.completed')),
         coalesce(jsonb_agg(b.batch_no ORDER BY b.batch_no) FILTER (WHERE NOT EXISTS (
           SELECT 1 FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
              AND a.action = 'rotation.batch.completed')), '[]')
    INTO done_batches, audited, missing
    FROM rekey.batches b WHERE b.job_id = p_job AND b.state = 'done';

  result := jsonb_build_object(
    'report_version', 1,
    'generated_at', now(),
    'generated_by', current_user,
    'job', jsonb_build_object(
      'job_id', j.job_id, 'name', j.name, 'target', format('%I.%I', j.schema_name, j.table_name),
      'columns', (SELECT jsonb_agg(t.column_name ORDER BY c.ordinal) FROM rekey.job_columns c
                    JOIN rekey.targets t ON t.target_id = c.target_id WHERE c.job_id = p_job),
      'scope', CASE WHEN j.scope_column IS NULL THEN NULL
                    ELSE jsonb_build_object('column', j.scope_column, 'value', j.scope_value) END,
      'state', j.state, 'state_reason', j.state_reason,
      'stage_plan', to_jsonb(j.stage_plan), 'error_threshold', j.error_threshold,
      'created_at', j.created_at, 'created_by', j.created_by,
      'started_at', j.started_at, 'finished_at', j.finished_at,
      'duration_seconds', round(extract(epoch FROM j.finished_at - j.started_at)::numeric, 3)),
    'outcome', CASE j.state WHEN 'completed' THEN 'rotated' WHEN 'rolled_back' THEN 'rolled_back'
                            ELSE 'in_progress_or_stopped' END,
    'keys', (SELECT jsonb_agg(jsonb_build_object(
               'before', jsonb_build_object('key_id', s.key_id, 'scope', s.scope,
                         'kms_provider', s.kms_provider, 'kms_key_ref', s.kms_key_ref,
                         'status_now', s.status, 'created_at', s.created_at),
               'after', jsonb_build_object('key_id', t.key_id, 'scope', t.scope,
                        'kms_provider', t.kms_provider, 'kms_key_ref', t.kms_key_ref,
                        'status_now', t.status, 'created_at', t.created_at))
               ORDER BY k.source_key_id)
               FROM rekey.job_keys k JOIN rekey.keys s ON s.key_id = k.source_key_id
               JOIN rekey.keys t ON t.key_id = k.target_key_id WHERE k.job_id = p_job),
    'stages', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                 'stage_no', s.stage_no, 'kind', s.kind, 'percent', s.percent, 'state', s.state,
                 'opened_at', s.opened_at, 'finished_at', s.finished_at,
                 'duration_seconds', round(extract(epoch FROM s.finished_at - s.opened_at)::numeric, 3),
                 'batches', s.batches, 'batches_done', s.batches_done, 'rows_planned', s.rows_planned,
                 'rows_reencrypted', s.rows_reencrypted, 'rows_quarantined', s.rows_quarantined,
                 'gates', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'passed', g.passed, 'values_checked', g.values_checked,
                             'decrypt_errors', g.decrypt_errors, 'quarantined', g.quarantined,
                             'error_rate', g.error_rate, 'threshold', g.threshold,
                             'audit_complete', g.audit_complete, 'verified_at', g.verified_at,
                             'verified_by', g.verified_by,
                             'verified_by_worker', g.details->>'verified_by_worker',
                             'approved_at', g.approved_at,
                             'approved_by', g.approved_by) ORDER BY g.gate_id), '[]')
                             FROM rekey.gates g WHERE g.job_id = s.job_id AND g.stage_no = s.stage_no))
                 ORDER BY s.stage_no), '[]')
                 FROM rekey.stage_status s WHERE s.job_id = p_job),
    'rows', jsonb_build_object(
      'total', coalesce(p.rows_total, 0), 'processed', coalesce(p.rows_processed, 0),
      'reencrypted', coalesce(p.rows_reencrypted, 0), 'restored_by_rollback', coalesce(p.rows_restored, 0),
      'quarantined', coalesce(p.rows_quarantined, 0)),
    'decrypt_error_rate', round(coalesce(p.rows_quarantined, 0)::numeric
                                / greatest(coalesce(p.rows_reencrypted, 0) + coalesce(p.rows_quarantined, 0), 1), 6),
    'max_gate_error_rate', (SELECT max(error_rate) FROM rekey.gates WHERE job_id = p_job),
    'quarantine', jsonb_build_object(
      'values', (SELECT count(*) FROM rekey.row_failures WHERE job_id = p_job),
      'by_error_class', (SELECT coalesce(jsonb_object_agg(error_class, n), '{}') FROM (
                           SELECT error_class, count(*) AS n FROM rekey.row_failures
                            WHERE job_id = p_job GROUP BY error_class) x)),
    'audit', jsonb_build_object(
      'batches_done', done_batches, 'batches_with_audit_row', audited,
      'complete', done_batches = audited, 'batches_missing_audit_row', missing,
      'events', (SELECT count(*) FROM rekey.audit WHERE job_id = p_job),
      'first_event_at', (SELECT min(at) FROM rekey.audit WHERE job_id = p_job),
      'last_event_at', (SELECT max(at) FROM rekey.audit WHERE job_id = p_job)),
    'approvals', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'action', a.action, 'actor', a.actor, 'worker', a.details->>'worker',
                    'at', a.at, 'outcome', a.outcome,
                    'details', a.details) ORDER BY a.audit_id), '[]')
                    FROM rekey.audit a WHERE a.job_id = p_job
                     AND a.action IN ('job.created', 'job.advanced', 'job.keys_promoted',
                                      'job.rollback_started', 'job.rolled_back', 'job.completed',
                                      'job.paused', 'job.resumed', 'job.cancelled')));
  RETURN result;
END $$;
