-- The rekey schema of a freshly migrated database, as pg_dump --schema-only --no-owner
-- --no-privileges -n rekey prints it (comment lines dropped). Generated: do not edit;
-- regenerate with scripts/schema-snapshot.sh and review the difference.

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

CREATE SCHEMA rekey;

CREATE FUNCTION rekey.add_rollout_stages(p_job bigint, p_stages numeric[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  prev numeric := 0;
BEGIN
  FOR i IN 1 .. cardinality(p_stages) LOOP
    PERFORM rekey.add_stage(p_job, 'rollout', p_stages[i], (prev * 100)::integer, (p_stages[i] * 100)::integer);
    prev := p_stages[i];
  END LOOP;
END $$;

CREATE FUNCTION rekey.add_stage(p_job bigint, p_kind text, p_percent numeric, p_bucket_lo integer, p_bucket_hi integer) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
  n integer;
  plan numeric[];
BEGIN
  SELECT coalesce(max(stage_no), 0) + 1 INTO n FROM rekey.job_stages WHERE job_id = p_job;
  INSERT INTO rekey.job_stages (job_id, stage_no, kind, percent, bucket_lo, bucket_hi)
  VALUES (p_job, n, p_kind, p_percent, p_bucket_lo, p_bucket_hi);
  IF p_kind = 'sweep' THEN
    PERFORM rekey.plan_sweep(p_job, n);
  ELSIF p_kind = 'rollout' THEN
    SELECT stage_plan INTO STRICT plan FROM rekey.jobs WHERE job_id = p_job;
    IF cardinality(plan) = 1 THEN
      PERFORM rekey.plan_stage(p_job, n);  -- one stage of every row: the streaming keyset walk
    ELSIF (SELECT count(*) FROM rekey.job_stages WHERE job_id = p_job AND kind = 'rollout')
          >= cardinality(plan)
          AND coalesce(current_setting('rekey.defer_rollout_planning', true), '') <> 'on' THEN
      PERFORM rekey.plan_rollout(p_job);
    END IF;
  ELSE
    PERFORM rekey.plan_stage(p_job, n);
  END IF;
  RETURN n;
END $$;

CREATE FUNCTION rekey.advance_due(p_job bigint DEFAULT NULL::bigint) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
  j record;
  n integer := 0;
BEGIN
  FOR j IN
    SELECT x.job_id FROM rekey.jobs x
     WHERE x.state = 'awaiting_approval' AND x.observe IS NOT NULL AND (p_job IS NULL OR x.job_id = p_job)
       AND NOT rekey.held_by_rotation(x.job_id)
       AND EXISTS (SELECT 1 FROM rekey.gates g WHERE g.job_id = x.job_id AND g.stage_no = x.current_stage
                      AND g.passed AND g.verified_at + x.observe <= now())
     FOR UPDATE SKIP LOCKED
  LOOP
    PERFORM rekey.advance_job(j.job_id);
    n := n + 1;
  END LOOP;
  RETURN n;
END $$;

CREATE FUNCTION rekey.advance_job(p_job bigint, p_observe interval DEFAULT NULL::interval, p_force boolean DEFAULT false) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  next_stage integer;
BEGIN
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  IF j.state <> 'awaiting_approval' AND NOT (p_force AND j.state = 'paused') THEN
    RAISE EXCEPTION 'job % is %: only a job awaiting approval can advance%', p_job, j.state,
      CASE WHEN j.state = 'paused' THEN ' (a paused job resumes with rekey job resume, or advances past a failed gate with --force)' ELSE '' END
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT min(stage_no) INTO next_stage FROM rekey.job_stages
   WHERE job_id = p_job AND kind = 'rollout' AND stage_no > j.current_stage;
  IF p_observe IS NOT NULL THEN
    UPDATE rekey.jobs SET observe = p_observe WHERE job_id = p_job;
  END IF;
  UPDATE rekey.gates SET approved_at = now(), approved_by = current_user
   WHERE gate_id = (SELECT max(gate_id) FROM rekey.gates WHERE job_id = p_job AND stage_no = j.current_stage);
  PERFORM rekey.audit_event('job.advanced', p_job, jsonb_build_object(
    'from_stage', j.current_stage, 'to_stage', next_stage, 'forced', p_force));
  IF next_stage IS NULL THEN
    -- Past the last rollout stage (a forced advance over its failed gate): sweep.
    IF NOT j.keys_promoted AND NOT rekey.promote_or_defer(p_job) THEN
      RETURN rekey.hold_for_rotation(p_job);
    END IF;
    PERFORM rekey.open_stage(p_job, rekey.add_stage(p_job, 'sweep', 100, 0, 10000));
    RETURN format('job %s: stage %s approved; sweeping for values still under the old key', p_job, j.current_stage);
  END IF;
  PERFORM rekey.open_stage(p_job, next_stage);
  RETURN format('job %s: stage %s (%s%%) opened', p_job, next_stage,
                (SELECT percent FROM rekey.job_stages WHERE job_id = p_job AND stage_no = next_stage));
END $$;

CREATE FUNCTION rekey.audit_event(p_action text, p_job bigint, p_details jsonb DEFAULT '{}'::jsonb, p_outcome text DEFAULT 'success'::text, p_batch integer DEFAULT NULL::integer, p_actor text DEFAULT NULL::text) RETURNS void
    LANGUAGE sql
    AS $$
  INSERT INTO rekey.audit (action, outcome, job_id, batch_no, details)
  VALUES (p_action, p_outcome, p_job, p_batch,
          CASE WHEN p_actor IS NULL THEN coalesce(p_details, '{}')
               ELSE coalesce(p_details, '{}') || jsonb_build_object('worker', p_actor) END);
$$;

CREATE FUNCTION rekey.audit_key_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM rekey.audit_event('key.created', NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'scope', NEW.scope, 'kms_provider', NEW.kms_provider,
      'kms_key_ref', NEW.kms_key_ref, 'origin', NEW.origin, 'status', NEW.status));
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    PERFORM rekey.audit_event('key.' || NEW.status, NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'scope', NEW.scope, 'from', OLD.status, 'to', NEW.status));
  ELSIF NEW.kms_key_ref IS DISTINCT FROM OLD.kms_key_ref OR NEW.kms_provider IS DISTINCT FROM OLD.kms_provider THEN
    PERFORM rekey.audit_event('key.rewrapped', NULL, jsonb_build_object(
      'key_id', NEW.key_id, 'from', OLD.kms_provider || ':' || OLD.kms_key_ref,
      'to', NEW.kms_provider || ':' || NEW.kms_key_ref));
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.audit_policy_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM rekey.audit_event('key_policy.deleted', NULL, jsonb_build_object('scope', OLD.scope, 'max_age', OLD.max_age));
    RETURN NULL;
  END IF;
  PERFORM rekey.audit_event('key_policy.set', NULL, jsonb_build_object('scope', NEW.scope, 'max_age', NEW.max_age));
  RETURN NULL;
END $$;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE rekey.audit (
    audit_id bigint NOT NULL,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    actor text DEFAULT CURRENT_USER NOT NULL,
    action text NOT NULL,
    outcome text DEFAULT 'success'::text NOT NULL,
    job_id bigint,
    batch_no integer,
    details jsonb DEFAULT '{}'::jsonb NOT NULL,
    xid xid8 DEFAULT pg_current_xact_id() NOT NULL
);

CREATE FUNCTION rekey.audit_row_bytes(a rekey.audit) RETURNS bytea
    LANGUAGE sql STABLE
    AS $$
  SELECT convert_to(string_agg(CASE WHEN f IS NULL THEN '-' ELSE octet_length(f) || ':' || f END,
                               ',' ORDER BY n), 'UTF8')
  FROM unnest(ARRAY[a.audit_id::text,
                    to_char(a.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                    a.actor, a.action, a.outcome, a.job_id::text, a.batch_no::text,
                    a.details::text, a.xid::text]) WITH ORDINALITY AS u(f, n)
$$;

CREATE FUNCTION rekey.audit_stamp() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.base_type(p_type oid) RETURNS oid
    LANGUAGE sql STABLE STRICT
    AS $$
  WITH RECURSIVE d(oid, base, depth) AS (
    SELECT t.oid, t.typbasetype, 0 FROM pg_type t WHERE t.oid = p_type
    UNION ALL
    SELECT t.oid, t.typbasetype, d.depth + 1 FROM d JOIN pg_type t ON t.oid = d.base
     WHERE d.base <> 0 AND d.depth < 32)
  SELECT oid FROM d ORDER BY depth DESC LIMIT 1
$$;

CREATE TABLE rekey.jobs (
    job_id bigint NOT NULL,
    name text,
    schema_name name NOT NULL,
    table_name name NOT NULL,
    pk_column name NOT NULL,
    pk_type text NOT NULL,
    key_id_column name,
    ad_template text,
    scope_column name,
    scope_value text,
    scope_type text,
    batch_size integer NOT NULL,
    max_attempts integer DEFAULT 3 NOT NULL,
    per_row_audit boolean DEFAULT false NOT NULL,
    stage_plan numeric[] DEFAULT '{1,25,50,75,100}'::numeric[] NOT NULL,
    promote_at_stage integer NOT NULL,
    error_threshold numeric DEFAULT 0.001 NOT NULL,
    observe interval,
    gate_sample_size integer DEFAULT 10000 NOT NULL,
    current_stage integer DEFAULT 1 NOT NULL,
    keys_promoted boolean DEFAULT false NOT NULL,
    state text DEFAULT 'active'::text NOT NULL,
    state_reason text,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    created_by text DEFAULT CURRENT_USER NOT NULL,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    transit_key_ref text,
    transit_min_version integer,
    not_governed name[] DEFAULT '{}'::name[] NOT NULL,
    cross_scope boolean DEFAULT false NOT NULL,
    rollback_stage integer,
    reader_window interval DEFAULT '00:10:00'::interval NOT NULL,
    readers_waiting_for text,
    readers_waiting_since timestamp with time zone,
    readers_lagging jsonb,
    rotation_id bigint,
    key_columns name[] NOT NULL,
    key_types text[] NOT NULL,
    key_text_form text DEFAULT 'canonical'::text NOT NULL,
    aws_kms_source_key_arn text,
    aws_kms_key_arn text,
    aws_kms_context jsonb,
    triggers text,
    vacuum_after boolean DEFAULT false NOT NULL,
    CONSTRAINT jobs_aws_kms_both_or_neither CHECK (((aws_kms_source_key_arn IS NULL) = (aws_kms_key_arn IS NULL))),
    CONSTRAINT jobs_aws_kms_context_check CHECK ((jsonb_typeof(aws_kms_context) = 'object'::text)),
    CONSTRAINT jobs_aws_kms_context_needs_keys CHECK (((aws_kms_context IS NULL) OR (aws_kms_key_arn IS NOT NULL))),
    CONSTRAINT jobs_aws_kms_key_arn_check CHECK ((aws_kms_key_arn ~ '^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$'::text)),
    CONSTRAINT jobs_aws_kms_keys_differ CHECK ((aws_kms_source_key_arn <> aws_kms_key_arn)),
    CONSTRAINT jobs_aws_kms_not_transit CHECK (((aws_kms_key_arn IS NULL) OR (transit_key_ref IS NULL))),
    CONSTRAINT jobs_aws_kms_source_key_arn_check CHECK ((aws_kms_source_key_arn ~ '^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$'::text)),
    CONSTRAINT jobs_batch_size_check CHECK (((batch_size >= 1) AND (batch_size <= 1000000))),
    CONSTRAINT jobs_check CHECK (((scope_column IS NULL) = (scope_value IS NULL))),
    CONSTRAINT jobs_error_threshold_check CHECK (((error_threshold >= (0)::numeric) AND (error_threshold <= (1)::numeric))),
    CONSTRAINT jobs_gate_sample_size_check CHECK ((gate_sample_size > 0)),
    CONSTRAINT jobs_key_shape CHECK (((cardinality(key_columns) >= 1) AND (cardinality(key_columns) = cardinality(key_types)) AND ((key_text_form = 'canonical'::text) OR (cardinality(key_columns) = 1)))),
    CONSTRAINT jobs_key_text_form CHECK ((key_text_form = ANY (ARRAY['canonical'::text, 'legacy'::text]))),
    CONSTRAINT jobs_max_attempts_check CHECK ((max_attempts >= 1)),
    CONSTRAINT jobs_reader_window_check CHECK ((reader_window > '00:00:00'::interval)),
    CONSTRAINT jobs_readers_waiting_all_or_none CHECK ((((readers_waiting_for IS NULL) = (readers_waiting_since IS NULL)) AND ((readers_waiting_for IS NULL) = (readers_lagging IS NULL)))),
    CONSTRAINT jobs_readers_waiting_for_check CHECK ((readers_waiting_for = ANY (ARRAY['first_batch'::text, 'batches'::text, 'promotion'::text, 'rollback'::text]))),
    CONSTRAINT jobs_state_check CHECK ((state = ANY (ARRAY['active'::text, 'verifying'::text, 'awaiting_approval'::text, 'paused'::text, 'completed'::text, 'failed'::text, 'cancelled'::text, 'rolled_back'::text]))),
    CONSTRAINT jobs_transit_both_or_neither CHECK (((transit_key_ref IS NULL) = (transit_min_version IS NULL))),
    CONSTRAINT jobs_transit_key_ref_check CHECK ((transit_key_ref ~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$'::text)),
    CONSTRAINT jobs_transit_min_version_check CHECK ((transit_min_version >= 1)),
    CONSTRAINT jobs_triggers_check CHECK ((triggers = ANY (ARRAY['fire'::text, 'skip'::text])))
);

CREATE FUNCTION rekey.batch_relation_sql(p_job rekey.jobs, p_schema name, p_name name) RETURNS text
    LANGUAGE sql STABLE
    AS $$
  SELECT CASE WHEN p_name IS NULL THEN format('%I.%I', p_job.schema_name, p_job.table_name)
              ELSE format('%I.%I', p_schema, p_name) END
$$;

CREATE FUNCTION rekey.cancel_job(p_job bigint, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
BEGIN
  PERFORM rekey.refuse_partial_rotation_cancel(p_job);
  RETURN rekey.set_job_state(p_job, 'cancelled', ARRAY['active', 'verifying', 'awaiting_approval', 'paused', 'failed'], 'cancelled', p_reason);
END $$;

CREATE FUNCTION rekey.cancel_rotation(p_rotation bigint, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.canonical_scope_value(p_schema name, p_table name, p_column name, p_value text) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $_$
DECLARE
  exact_type text;
  base_type text;
  canonical text;
  unchanged boolean;
BEGIN
  SELECT format_type(a.atttypid, a.atttypmod), format_type(a.atttypid, NULL)
    INTO exact_type, base_type
    FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
  IF exact_type IS NULL THEN
    RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_column),
      quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
  END IF;
  BEGIN
    EXECUTE format('SELECT (%1$L::%2$s)::text, %1$L::%3$s = (%1$L::%2$s)::%3$s', p_value, exact_type, base_type)
      INTO canonical, unchanged;
  EXCEPTION WHEN others THEN
    unchanged := NULL;
  END;
  IF unchanged IS NOT TRUE THEN
    RAISE EXCEPTION 'scope value % is not a valid %', quote_literal(coalesce(p_value, '')), exact_type
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN canonical;
END $_$;

CREATE FUNCTION rekey.check_job_columns(p_schema name, p_table name, p_pk name, p_columns text[], p_transit boolean) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  col_type text;
BEGIN
  IF p_columns IS NULL OR cardinality(p_columns) = 0 THEN
    RAISE EXCEPTION 'a job needs at least one ciphertext column' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF (SELECT count(DISTINCT c) FROM unnest(p_columns) c) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'a column is listed twice' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    col_type := rekey.column_type(p_schema, p_table, p_columns[i]);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'column % does not exist in %.%', quote_ident(p_columns[i]),
        quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
    ELSIF p_transit AND col_type <> 'text' AND col_type NOT LIKE 'character varying%' THEN
      RAISE EXCEPTION 'column %.%.% is %, not text: Transit ciphertexts (vault:vN:...) are stored as text',
        quote_ident(p_schema), quote_ident(p_table), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF NOT p_transit AND col_type <> 'bytea' THEN
      RAISE EXCEPTION 'column %.%.% is %, not bytea; rekey rewrites binary ciphertext columns',
        quote_ident(p_schema), quote_ident(p_table), quote_ident(p_columns[i]), col_type
        USING ERRCODE = 'datatype_mismatch';
    ELSIF p_columns[i] = p_pk THEN
      RAISE EXCEPTION 'column % is the primary key', quote_ident(p_columns[i]) USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
END $$;

CREATE FUNCTION rekey.check_job_settings(p_batch_size integer, p_ad_template text, p_stages numeric[], p_error_threshold numeric) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  prev numeric := 0;
BEGIN
  IF p_batch_size IS NULL OR p_batch_size < 1 OR p_batch_size > 1000000 THEN
    RAISE EXCEPTION 'batch size must be between 1 and 1000000, got %', p_batch_size USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_ad_template IS NOT NULL AND
     regexp_replace(regexp_replace(p_ad_template, '\{\{|\}\}', '', 'g'),
                    '\{(schema|table|column|pk)\}', '', 'g') ~ '[{}]' THEN
    RAISE EXCEPTION 'invalid associated-data template %: use {schema}, {table}, {column}, {pk}; write {{ and }} for braces',
      quote_literal(p_ad_template) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_stages IS NULL OR cardinality(p_stages) = 0 OR p_stages[cardinality(p_stages)] <> 100 THEN
    RAISE EXCEPTION 'the stage plan must end at 100 (percent), as in 1,25,50,75,100' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_stages) LOOP
    IF p_stages[i] IS NULL OR p_stages[i] <= prev OR p_stages[i] * 100 <> round(p_stages[i] * 100) THEN
      RAISE EXCEPTION 'bad stage plan %: percentages must increase, with at most two decimals', p_stages
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prev := p_stages[i];
  END LOOP;
  IF p_error_threshold IS NULL OR p_error_threshold < 0 OR p_error_threshold > 1 THEN
    RAISE EXCEPTION 'the error threshold is a fraction between 0 and 1, e.g. 0.001 for 0.1%%' USING ERRCODE = 'invalid_parameter_value';
  END IF;
END $$;

CREATE FUNCTION rekey.check_key_retirement(p_key bigint, p_to text) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  verb text := CASE p_to WHEN 'destroyed' THEN 'destroyed' ELSE 'retired' END;
  jobs text;
  accepted text[];
  accepted_found jsonb := '[]';
  lines text[] := '{}';
  trial text[] := '{}';
  trial_codecs text[] := '{}';
  r record;
  ref text;
  codec text;
BEGIN
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rekey_worker')
     AND NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND rolsuper) THEN
    IF pg_has_role(current_user, 'rekey_worker', 'MEMBER') THEN
      IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rekey_operator')
         OR NOT pg_has_role(current_user, 'rekey_operator', 'MEMBER') THEN
        RAISE EXCEPTION 'role % is a rekey_worker: workers may promote keys but never retire or destroy them; run rekey keys % % as a member of rekey_operator',
          current_user, CASE verb WHEN 'destroyed' THEN 'destroy' ELSE 'retire' END, p_key
          USING ERRCODE = 'insufficient_privilege';
      END IF;
    END IF;
  END IF;

  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RAISE EXCEPTION 'key % cannot be % in a % transaction: its snapshot predates the key lock, so values written meanwhile would go uncounted; use READ COMMITTED (rekey keys retire and destroy do)',
      p_key, verb, upper(current_setting('transaction_isolation'))
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;

  PERFORM rekey.lock_key_for_lifecycle(p_key);

  -- From here on every statement's snapshot is taken after the lock was granted.
  SELECT string_agg(format('job %s (%s)', j.job_id, j.state), ', ' ORDER BY j.job_id) INTO jobs
    FROM rekey.jobs j
   WHERE j.state NOT IN ('completed', 'cancelled', 'rolled_back')
     AND EXISTS (SELECT 1 FROM rekey.job_keys k
                  WHERE k.job_id = j.job_id AND p_key IN (k.source_key_id, k.target_key_id));
  IF jobs IS NOT NULL THEN
    RAISE EXCEPTION 'key % cannot be %: unfinished % names it as a source or target key; let it complete, or cancel or roll it back first',
      p_key, verb, jobs USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;

  SELECT coalesce(array_agg(btrim(a)), '{}') INTO accepted
    FROM unnest(string_to_array(current_setting('rekey.accept_unknown', true), ',')) a
   WHERE btrim(a) <> '';

  FOR r IN SELECT * FROM rekey.key_census(p_key) LOOP
    ref := format('%I.%I.%I', r.schema_name, r.table_name, r.column_name);
    IF r.status = 'unknown'
       AND (ref = ANY (accepted) OR format('%s.%s.%s', r.schema_name, r.table_name, r.column_name) = ANY (accepted)) THEN
      accepted_found := accepted_found || jsonb_build_object('column', ref, 'reason', r.unknown);
    ELSIF r.status = 'in_use' THEN
      lines := lines || format('%s: %s values under key %s (%s%s)%s', ref, r.n, p_key,
                               array_to_string(r.formats, ', '),
                               CASE WHEN r.target_id IS NOT NULL THEN '; registered target ' || r.target_id ELSE '' END,
                               CASE WHEN r.unknown IS NOT NULL THEN '; and maybe more: ' || r.unknown ELSE '' END);
    ELSIF r.status = 'unknown' THEN
      lines := lines || format('%s: unknown: %s', ref, r.unknown);
      -- A column only trial decryption with the keys can count: the CLI can, SQL cannot.
      SELECT t.codec INTO codec FROM rekey.targets t WHERE t.target_id = r.target_id;
      IF rekey.codec_keyed_by_decryption_only(codec) AND r.unknown LIKE '%which name no key SQL can read%' THEN
        trial := trial || ref;
        trial_codecs := trial_codecs || rekey.codec_values_noun(codec);
      END IF;
    ELSE
      lines := lines || format('%s: unresolved: %s', ref, r.unknown);
    END IF;
  END LOOP;
  IF cardinality(lines) > 0 AND cardinality(trial) = cardinality(lines) THEN
    RAISE EXCEPTION 'key % cannot be % from SQL: % hold(s) %, which SQL cannot count by key; run rekey keys % % instead: it counts them by trial decryption with the keys and refuses if any is under key %',
      p_key, verb, array_to_string(trial, ', '),
      (SELECT string_agg(DISTINCT c, ' and ') FROM unnest(trial_codecs) c),
      CASE verb WHEN 'destroyed' THEN 'destroy' ELSE 'retire' END, p_key, p_key
      USING ERRCODE = 'object_not_in_prerequisite_state';
  ELSIF cardinality(trial) > 0 THEN
    lines := lines || format('%s: SQL cannot count these by key; once the other columns are clear, run rekey keys %s %s: it counts them by trial decryption',
                             array_to_string(trial, ', '),
                             CASE verb WHEN 'destroyed' THEN 'destroy' ELSE 'retire' END, p_key);
  END IF;
  IF cardinality(lines) > 0 THEN
    RAISE EXCEPTION E'key % cannot be %: % column(s) hold values under it or could not be read; rotate the values to another key first (rekey keys usage % lists them), or accept a column that cannot be read with --accept-unknown SCHEMA.TABLE.COLUMN\n%',
      p_key, verb, cardinality(lines), p_key, array_to_string(lines, E'\n')
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  IF jsonb_array_length(accepted_found) > 0 THEN
    PERFORM rekey.audit_event('key.unknown_accepted', NULL, jsonb_build_object(
      'key_id', p_key, 'to', p_to, 'columns', accepted_found));
  END IF;
END $$;

CREATE FUNCTION rekey.checked_column_type(p_schema name, p_table name, p_column name, p_recorded text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  actual oid;
  recorded regtype;
BEGIN
  SELECT a.atttypid INTO actual FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
  IF actual IS NULL THEN
    RAISE EXCEPTION 'column % of %.% no longer exists', quote_ident(p_column), quote_ident(p_schema),
      quote_ident(p_table) USING ERRCODE = 'undefined_column';
  END IF;
  IF p_recorded IS NOT NULL THEN
    BEGIN
      recorded := p_recorded::regtype;
    EXCEPTION WHEN others THEN
      RAISE EXCEPTION 'the job records type % for column %.%.%, which is not a type name: rekey.jobs was edited; cancel the job and create it again',
        quote_literal(p_recorded), quote_ident(p_schema), quote_ident(p_table), quote_ident(p_column)
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END;
    IF recorded <> actual THEN
      RAISE EXCEPTION 'the job records type % for column %.%.% but the catalog says %: the column changed type, or rekey.jobs was edited; cancel the job and create it again',
        format_type(recorded, NULL), quote_ident(p_schema), quote_ident(p_table), quote_ident(p_column),
        format_type(actual, NULL) USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
  END IF;
  RETURN format_type(actual, NULL);
END $$;

CREATE FUNCTION rekey.checkpoint_batch(p_job bigint, p_batch integer, p_worker text, p_after text, p_done integer, p_skipped integer, p_failed integer, p_duration_ms double precision) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  PERFORM rekey.require_open_stage_batch(p_job, p_batch, p_worker);
  UPDATE rekey.batches SET resume_after = p_after, rows_done = rows_done + p_done,
         rows_skipped = rows_skipped + p_skipped, rows_failed = rows_failed + p_failed,
         duration_ms = coalesce(duration_ms, 0) + p_duration_ms
   WHERE job_id = p_job AND batch_no = p_batch AND state = 'running' AND worker_id = p_worker;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', p_job, p_batch, p_worker
      USING ERRCODE = 'serialization_failure';
  END IF;
END $$;

CREATE FUNCTION rekey.claim_batch(p_worker text, p_job bigint DEFAULT NULL::bigint) RETURNS TABLE(job_id bigint, batch_no integer, lo text, hi text, attempt integer, stage_no integer, bucket_lo integer, bucket_hi integer, rollback boolean, relation text)
    LANGUAGE plpgsql
    AS $$
DECLARE
  b rekey.batches;
  st rekey.job_stages;
  j record;
  max_att integer;
  busy integer[];
BEGIN
  PERFORM pg_advisory_unlock_all();
  INSERT INTO rekey.workers AS w (worker_id, job_id) VALUES (p_worker, p_job)
  ON CONFLICT (worker_id) DO UPDATE SET last_seen = now(), job_id = EXCLUDED.job_id;
  FOR j IN
    SELECT a.job_id, a.current_stage, a.max_attempts FROM rekey.jobs a
     WHERE a.state = 'active' AND (p_job IS NULL OR a.job_id = p_job)
     ORDER BY a.job_id
  LOOP
    -- Nothing under a key that a live reader of its scope cannot decrypt (45_readers.sql).
    CONTINUE WHEN NOT rekey.readers_allow_claim(j.job_id);
    busy := '{}';
    LOOP
      SELECT x.* INTO b FROM rekey.batches x
       WHERE x.job_id = j.job_id AND x.stage_no = j.current_stage
         AND x.state IN ('pending', 'running')
         AND x.batch_no <> ALL (busy)
       ORDER BY x.batch_no
       LIMIT 1 FOR UPDATE SKIP LOCKED;
      EXIT WHEN NOT FOUND;
      IF NOT pg_try_advisory_lock(b.job_id::integer, b.batch_no) THEN
        busy := busy || b.batch_no;  -- a live worker holds it
        CONTINUE;
      END IF;
      max_att := j.max_attempts;
      IF b.attempts >= max_att THEN
        UPDATE rekey.batches x SET state = 'failed', finished_at = now(),
               last_error = coalesce(x.last_error, 'worker ' || coalesce(x.worker_id, '?') || ' died while processing this batch')
                            || format(' (gave up after %s attempts)', x.attempts)
         WHERE x.job_id = b.job_id AND x.batch_no = b.batch_no;
        PERFORM rekey.audit_event('rotation.batch.failed', b.job_id,
          jsonb_build_object('attempts', b.attempts, 'last_error', b.last_error), 'failure', b.batch_no, p_worker);
        PERFORM pg_advisory_unlock(b.job_id::integer, b.batch_no);
        CONTINUE;
      END IF;
      UPDATE rekey.batches x SET state = 'running', attempts = x.attempts + 1, worker_id = p_worker,
             claimed_at = now()
       WHERE x.job_id = b.job_id AND x.batch_no = b.batch_no;
      UPDATE rekey.jobs a SET started_at = now() WHERE a.job_id = b.job_id AND a.started_at IS NULL;
      SELECT * INTO st FROM rekey.job_stages s WHERE s.job_id = b.job_id AND s.stage_no = b.stage_no;
      job_id := b.job_id; batch_no := b.batch_no; lo := b.lo; hi := b.hi; attempt := b.attempts + 1;
      stage_no := b.stage_no;
      bucket_lo := CASE WHEN st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN st.bucket_lo END;
      bucket_hi := CASE WHEN st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN st.bucket_hi END;
      rollback := st.kind = 'rollback';
      relation := CASE WHEN b.partition_name IS NOT NULL
                       THEN format('%I.%I', b.partition_schema, b.partition_name) END;
      RETURN NEXT;
      RETURN;
    END LOOP;
  END LOOP;
END $$;

CREATE FUNCTION rekey.clear_planned_keys() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  UPDATE rekey.batches SET keys = NULL WHERE job_id = NEW.job_id AND keys IS NOT NULL;
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.codec_keyed_by_decryption_only(p_codec text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
  SELECT p_codec IN ('fernet', 'rails', 'lockbox', 'cloak')
$$;

CREATE FUNCTION rekey.codec_values_noun(p_codec text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
  SELECT CASE p_codec
           WHEN 'tink' THEN 'Tink values'
           WHEN 'raw' THEN 'raw AES-GCM values'
           WHEN 'vault-transit' THEN 'Vault Transit ciphertexts'
           WHEN 'fernet' THEN 'Fernet tokens'
           WHEN 'rails' THEN 'Rails messages'
           WHEN 'lockbox' THEN 'Lockbox values'
           WHEN 'cloak' THEN 'cloak strings'
           WHEN 'aws-kms' THEN 'AWS KMS ciphertext blobs'
           ELSE p_codec || ' values'
         END
$$;

CREATE FUNCTION rekey.column_type(p_schema name, p_table name, p_column text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
  SELECT format_type(a.atttypid, a.atttypmod)
    FROM pg_attribute a
   WHERE a.attrelid = format('%I.%I', p_schema, p_table)::regclass
     AND a.attname = p_column AND a.attnum > 0 AND NOT a.attisdropped;
$$;

CREATE FUNCTION rekey.complete_batch(p_job bigint, p_batch integer, p_worker text, p_done integer, p_skipped integer, p_failed integer, p_duration_ms double precision, p_details jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  stage integer;
  failed bigint;
  seen bigint;
  planned bigint;
  j rekey.jobs;
BEGIN
  PERFORM rekey.require_open_stage_batch(p_job, p_batch, p_worker);
  UPDATE rekey.batches SET state = 'done', finished_at = now(), rows_done = p_done,
         rows_skipped = p_skipped, rows_failed = p_failed, duration_ms = p_duration_ms,
         last_error = NULL
   WHERE job_id = p_job AND batch_no = p_batch AND state = 'running' AND worker_id = p_worker
  RETURNING stage_no INTO stage;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %', p_job, p_batch, p_worker
      USING ERRCODE = 'serialization_failure';
  END IF;
  PERFORM rekey.audit_event('rotation.batch.completed', p_job,
    p_details || jsonb_build_object('stage', stage, 'rows_reencrypted', p_done, 'rows_skipped', p_skipped,
                                    'rows_quarantined', p_failed, 'duration_ms', round(p_duration_ms::numeric, 3)),
    'success', p_batch, p_worker);
  IF p_failed > 0 THEN
    SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job;
    SELECT sum(rows_failed), sum(rows_done + rows_failed), (SELECT sum(planned_rows) FROM rekey.batches
             WHERE job_id = p_job AND stage_no = stage)
      INTO failed, seen, planned
      FROM rekey.batches WHERE job_id = p_job AND stage_no = stage AND state = 'done';
    -- Judge the rate once it rests on a meaningful number of values (or the whole stage).
    IF seen >= least(1000, planned) AND failed::numeric / greatest(seen, 1) > j.error_threshold
       AND j.state = 'active' THEN
      UPDATE rekey.jobs SET state = 'paused', updated_at = now(),
             state_reason = format('decrypt error rate %s%% in stage %s exceeds the threshold %s%%: %s of %s values quarantined; see rekey.row_failures, then resume or roll back',
                                   round(100.0 * failed / seen, 3), stage, round(100 * j.error_threshold, 3), failed, seen)
       WHERE job_id = p_job AND state = 'active';
      IF FOUND THEN
        PERFORM rekey.audit_event('job.paused', p_job, jsonb_build_object(
          'reason', 'error threshold', 'stage', stage, 'quarantined', failed, 'values', seen,
          'threshold', j.error_threshold), 'failure', NULL, p_worker);
      END IF;
    END IF;
  END IF;
END $$;

CREATE FUNCTION rekey.complete_job(p_job bigint) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  UPDATE rekey.keys SET status = 'decrypt_only'
   WHERE key_id IN (SELECT source_key_id FROM rekey.job_keys WHERE job_id = p_job)
     AND status IN ('enabled', 'primary');
  UPDATE rekey.jobs SET state = 'completed', state_reason = NULL, finished_at = now(), updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.completed', p_job,
    (SELECT jsonb_build_object('rows_reencrypted', sum(rows_done), 'rows_quarantined', sum(rows_failed),
                               'batches', count(*))
       FROM rekey.batches b WHERE b.job_id = p_job));
END $$;

CREATE FUNCTION rekey.create_aws_kms_job(p_table text, p_columns text[], p_source_key text, p_destination_key text, p_context jsonb DEFAULT NULL::jsonb, p_encoding text DEFAULT NULL::text, p_scope_column text DEFAULT NULL::text, p_scope_value text DEFAULT NULL::text, p_batch_size integer DEFAULT 1000, p_name text DEFAULT NULL::text, p_per_row_audit boolean DEFAULT false, p_max_attempts integer DEFAULT 3, p_stages numeric[] DEFAULT '{1,25,50,75,100}'::numeric[], p_error_threshold numeric DEFAULT 0.001, p_observe interval DEFAULT NULL::interval, p_gate_sample_size integer DEFAULT 10000) RETURNS bigint
    LANGUAGE plpgsql
    AS $_$
DECLARE
  arn constant text := '^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[A-Za-z0-9-]+$';
  t record;
  key record;
  scope_type text;
  v_scope_value text;
  v_encoding text;
  job bigint;
BEGIN
  t := rekey.job_table(p_table);
  key := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());
  IF p_source_key IS NULL OR p_source_key !~ arn OR p_destination_key IS NULL OR p_destination_key !~ arn THEN
    RAISE EXCEPTION 'an aws-kms job names its KMS keys by key ARN (arn:aws:kms:<region>:<account>:key/<id>), got % and %',
      quote_literal(coalesce(p_source_key, '')), quote_literal(coalesce(p_destination_key, ''))
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_source_key = p_destination_key THEN
    RAISE EXCEPTION 'the source and destination KMS keys are the same key (%): nothing to rotate', p_source_key
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_context IS NOT NULL AND (jsonb_typeof(p_context) <> 'object'
        OR EXISTS (SELECT 1 FROM jsonb_each(p_context) e WHERE jsonb_typeof(e.value) <> 'string')) THEN
    RAISE EXCEPTION 'an encryption context is a JSON object of strings, e.g. {"app":"billing"}; got %', p_context
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF coalesce(p_encoding, 'bytea') NOT IN ('bytea', 'base64') THEN
    RAISE EXCEPTION 'AWS KMS ciphertext blobs are stored as bytea or base64 text; encoding % does not apply',
      quote_literal(p_encoding) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  SELECT f.v_encoding INTO v_encoding
    FROM rekey.job_value_form(t.schema_name, t.table_name, t.pk_column, p_columns, NULL,
                              p_encoding, NULL) f;
  IF v_encoding NOT IN ('bytea', 'base64') THEN
    RAISE EXCEPTION 'AWS KMS ciphertext blobs are stored as bytea or base64 text; encoding % does not apply',
      quote_literal(v_encoding) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM rekey.refuse_key_ciphertext(p_columns, key.key_columns);
  SELECT s.scope_type, s.scope_value INTO scope_type, v_scope_value
    FROM rekey.job_scope(t.schema_name, t.table_name, p_scope_column, p_scope_value) s;
  PERFORM rekey.check_job_settings(p_batch_size, NULL, p_stages, p_error_threshold);

  -- keys_promoted from the start: there is no keyring key to promote (open_stage skips it).
  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_columns, key_types,
                          scope_column, scope_value, scope_type, batch_size, per_row_audit,
                          max_attempts, stage_plan, promote_at_stage, error_threshold, observe,
                          gate_sample_size, keys_promoted, aws_kms_source_key_arn, aws_kms_key_arn,
                          aws_kms_context)
  VALUES (p_name, t.schema_name, t.table_name, t.pk_column, t.pk_type, key.key_columns, key.key_types,
          p_scope_column, v_scope_value, scope_type, p_batch_size, coalesce(p_per_row_audit, false),
          p_max_attempts, p_stages, cardinality(p_stages), p_error_threshold, p_observe,
          p_gate_sample_size, true, p_source_key, p_destination_key, p_context)
  RETURNING job_id INTO job;

  PERFORM rekey.finish_kms_job(job, p_columns, 'aws-kms', NULL, v_encoding, jsonb_build_object(
    'source_kms_key', p_source_key, 'kms_key', p_destination_key,
    'encryption_context', p_context, 'encoding', v_encoding));
  RETURN job;
END $_$;

CREATE FUNCTION rekey.create_job(p_table text, p_columns text[], p_key_map jsonb, p_codecs text[] DEFAULT NULL::text[], p_key_id_column text DEFAULT NULL::text, p_ad_template text DEFAULT NULL::text, p_scope_column text DEFAULT NULL::text, p_scope_value text DEFAULT NULL::text, p_batch_size integer DEFAULT 1000, p_name text DEFAULT NULL::text, p_per_row_audit boolean DEFAULT false, p_max_attempts integer DEFAULT 3, p_stages numeric[] DEFAULT '{1,25,50,75,100}'::numeric[], p_promote_at_stage integer DEFAULT NULL::integer, p_error_threshold numeric DEFAULT 0.001, p_observe interval DEFAULT NULL::interval, p_gate_sample_size integer DEFAULT 10000, p_not_governed text[] DEFAULT NULL::text[], p_cross_scope boolean DEFAULT false, p_encoding text DEFAULT NULL::text, p_json_path text[] DEFAULT NULL::text[]) RETURNS bigint
    LANGUAGE plpgsql
    AS $_$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  v_scope_value text;
  v_not_governed text[];
  governed text[];
  col_type text;
  v_codec text;
  v_encoding text;
  v_json_path text[];
  job bigint;
  tid bigint;
  src text;
  dst jsonb;
  batches integer;
  src_status text;
  dst_status text;
  src_scope text;
  dst_scope text;
  candidate record;
  has_value boolean;
  i integer;
  key record;
BEGIN
  t := rekey.job_table(p_table);
  pk_col := t.pk_column;
  pk_type := t.pk_type;
  key := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());

  SELECT f.v_encoding, f.v_json_path INTO v_encoding, v_json_path
    FROM rekey.job_value_form(t.schema_name, t.table_name, pk_col, p_columns, p_codecs, p_encoding,
                              p_json_path) f;
  PERFORM rekey.refuse_key_ciphertext(p_columns, key.key_columns);
  IF p_codecs IS NOT NULL AND cardinality(p_codecs) <> cardinality(p_columns) THEN
    RAISE EXCEPTION 'give one codec per column (% columns, % codecs)', cardinality(p_columns), cardinality(p_codecs)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    v_codec := coalesce(p_codecs[i], 'tink');
    IF v_codec NOT IN ('tink', 'raw', 'fernet', 'rails', 'lockbox', 'cloak') THEN
      RAISE EXCEPTION 'unknown codec % for column %: use tink, raw, fernet, rails, lockbox or cloak', quote_literal(v_codec), quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The applications of these formats bind no associated data (Lockbox's models, Rails'
    -- messages, Fernet and cloak themselves): a template would make every rewritten value
    -- unreadable to them.
    IF v_codec IN ('fernet', 'rails', 'lockbox', 'cloak') AND p_ad_template IS NOT NULL THEN
      RAISE EXCEPTION 'column % uses the % codec, whose applications bind no associated data: drop the template', quote_ident(p_columns[i]), v_codec
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_codec = 'raw' AND p_key_id_column IS NULL THEN
      RAISE EXCEPTION 'column % uses the raw codec, which needs a key-id column', quote_ident(p_columns[i])
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END LOOP;
  IF p_key_id_column IS NOT NULL THEN
    col_type := rekey.column_type(t.schema_name, t.table_name, p_key_id_column);
    IF col_type IS NULL THEN
      RAISE EXCEPTION 'key-id column % does not exist in %.%', quote_ident(p_key_id_column),
        quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
    ELSIF col_type NOT IN ('integer', 'bigint') THEN
      RAISE EXCEPTION 'key-id column % is %, not integer or bigint', quote_ident(p_key_id_column), col_type
        USING ERRCODE = 'datatype_mismatch';
    END IF;
  END IF;
  SELECT s.scope_type, s.scope_value INTO scope_type, v_scope_value
    FROM rekey.job_scope(t.schema_name, t.table_name, p_scope_column, p_scope_value) s;
  PERFORM rekey.check_job_settings(p_batch_size, p_ad_template, p_stages, p_error_threshold);
  IF p_promote_at_stage IS NOT NULL AND (p_promote_at_stage < 1 OR p_promote_at_stage > cardinality(p_stages)) THEN
    RAISE EXCEPTION 'promote-at-stage must be between 1 and % (the number of stages)', cardinality(p_stages)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_map IS NULL OR jsonb_typeof(p_key_map) <> 'object' OR p_key_map = '{}' THEN
    RAISE EXCEPTION 'the key map must be a JSON object {"source key id": target key id}' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  -- The columns the key-id column governs. Rewriting key_id to the target key re-labels every
  -- value of the row: a column left out keeps its old ciphertext under a new label and no longer
  -- decrypts with its row's key.
  IF p_not_governed IS NOT NULL AND p_key_id_column IS NULL AND cardinality(p_not_governed) > 0 THEN
    RAISE EXCEPTION 'not-governed columns describe what a key-id column governs, and this job has none (--key-id-column)'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_key_id_column IS NOT NULL THEN
    v_not_governed := p_not_governed;
    IF v_not_governed IS NULL THEN
      -- The operator's statement about the table outlives one job (rekey rotate-due repeats jobs).
      -- Only what still applies: columns that exist and that this job does not rotate itself.
      SELECT array(SELECT g FROM unnest(x.not_governed::text[]) g
                    WHERE g <> ALL (p_columns)
                      AND rekey.column_type(t.schema_name, t.table_name, g) IS NOT NULL)
        INTO v_not_governed FROM rekey.jobs x
       WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name
         AND x.key_id_column = p_key_id_column
       ORDER BY x.job_id DESC LIMIT 1;
    END IF;
    v_not_governed := coalesce(v_not_governed, '{}');
    FOR i IN 1 .. coalesce(cardinality(v_not_governed), 0) LOOP
      IF rekey.column_type(t.schema_name, t.table_name, v_not_governed[i]) IS NULL THEN
        RAISE EXCEPTION 'not-governed column % does not exist in %.%', quote_ident(v_not_governed[i]),
          quote_ident(t.schema_name), quote_ident(t.table_name) USING ERRCODE = 'undefined_column';
      ELSIF v_not_governed[i] = ANY (p_columns) THEN
        RAISE EXCEPTION 'column % is both rotated and declared not governed by %', quote_ident(v_not_governed[i]),
          quote_ident(p_key_id_column) USING ERRCODE = 'invalid_parameter_value';
      END IF;
    END LOOP;
    SELECT array_agg(DISTINCT x.column_name::text ORDER BY x.column_name::text) INTO governed
      FROM rekey.targets x
     WHERE x.schema_name = t.schema_name AND x.table_name = t.table_name
       AND x.key_id_column = p_key_id_column AND x.column_name <> ALL (p_columns);
    IF governed IS NOT NULL THEN
      RAISE EXCEPTION 'key-id column % of %.% also governs %, registered under it: a job that rewrites % must rotate it too; add --column for each',
        quote_ident(p_key_id_column), quote_ident(t.schema_name), quote_ident(t.table_name),
        array_to_string(governed, ', '), quote_ident(p_key_id_column) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR candidate IN
      SELECT a.attname FROM pg_attribute a
       WHERE a.attrelid = format('%I.%I', t.schema_name, t.table_name)::regclass
         AND a.attnum > 0 AND NOT a.attisdropped
         AND a.atttypid IN ('bytea'::regtype, 'text'::regtype, 'varchar'::regtype)
         AND a.attname <> ALL (p_columns) AND a.attname <> ALL (key.key_columns)
         AND a.attname IS DISTINCT FROM p_scope_column
         AND a.attname <> ALL (v_not_governed)
       ORDER BY a.attnum
    LOOP
      EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.%I AS t WHERE t.%I IS NOT NULL%s)',
                     t.schema_name, t.table_name, candidate.attname,
                     CASE WHEN p_scope_column IS NULL THEN ''
                          ELSE format(' AND t.%I = %L::%s', p_scope_column, v_scope_value, scope_type) END)
        INTO has_value;
      IF has_value THEN
        governed := coalesce(governed, '{}') || candidate.attname::text;
      END IF;
    END LOOP;
    IF governed IS NOT NULL THEN
      RAISE EXCEPTION 'key-id column % of %.% may also govern % (holding values): rotate them too (--column), or state that they are not encrypted under % (--not-governed %)',
        quote_ident(p_key_id_column), quote_ident(t.schema_name), quote_ident(t.table_name),
        array_to_string(governed, ', '), quote_ident(p_key_id_column), array_to_string(governed, ',')
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
  END IF;

  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_columns, key_types,
                          key_id_column, ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts, per_row_audit,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          not_governed, cross_scope)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, key.key_columns, key.key_types,
          p_key_id_column, p_ad_template,
          p_scope_column, v_scope_value, scope_type, p_batch_size, p_max_attempts, p_per_row_audit,
          p_stages, coalesce(p_promote_at_stage, cardinality(p_stages)), p_error_threshold, p_observe,
          p_gate_sample_size, coalesce(v_not_governed, '{}')::name[], coalesce(p_cross_scope, false))
  RETURNING job_id INTO job;

  FOR src, dst IN SELECT * FROM jsonb_each(p_key_map) LOOP
    IF src !~ '^[0-9]{1,10}$' OR jsonb_typeof(dst) <> 'number' THEN
      RAISE EXCEPTION 'bad key map entry "%": %; key ids are integers', src, dst USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT status, scope INTO src_status, src_scope FROM rekey.keys WHERE key_id = src::bigint;
    SELECT status, scope INTO dst_status, dst_scope FROM rekey.keys WHERE key_id = dst::text::bigint;
    IF src_status IS NULL THEN
      RAISE EXCEPTION 'unknown source key %; rekey keys list shows the keyring', src USING ERRCODE = 'foreign_key_violation';
    ELSIF dst_status IS NULL THEN
      RAISE EXCEPTION 'unknown target key %; rekey keys list shows the keyring', dst USING ERRCODE = 'foreign_key_violation';
    ELSIF src::bigint = dst::text::bigint THEN
      RAISE EXCEPTION 'key % is both source and target: a rotation needs a different target key', src
        USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_status = 'destroyed' THEN
      RAISE EXCEPTION 'source key % is destroyed: its values cannot be decrypted', src USING ERRCODE = 'invalid_parameter_value';
    ELSIF dst_status NOT IN ('enabled', 'primary') THEN
      RAISE EXCEPTION 'target key % is %, it must be enabled or primary', dst, dst_status USING ERRCODE = 'invalid_parameter_value';
    ELSIF src_scope <> dst_scope AND NOT coalesce(p_cross_scope, false) THEN
      -- Promotion makes the target primary in its own scope and leaves the source's scope with
      -- its old primary: applications of that scope keep writing under the source key.
      RAISE EXCEPTION 'target key % is in keyring scope %, source key % in scope %: a rotation stays within a scope; pass --cross-scope (p_cross_scope => true) if the move is intended',
        dst, quote_literal(dst_scope), src, quote_literal(src_scope) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO rekey.job_keys VALUES (job, src::bigint, dst::text::bigint);
  END LOOP;
  IF EXISTS (SELECT 1 FROM rekey.job_keys a JOIN rekey.job_keys b USING (job_id)
              WHERE a.job_id = job AND a.target_key_id = b.source_key_id) THEN
    RAISE EXCEPTION 'a target key is also a source key in the key map' USING ERRCODE = 'invalid_parameter_value';
  END IF;

  FOR i IN 1 .. cardinality(p_columns) LOOP
    v_codec := coalesce(p_codecs[i], 'tink');
    tid := rekey.job_target(t.schema_name, t.table_name, pk_col, p_columns[i], v_codec, p_key_id_column,
                            p_ad_template, p_scope_column, v_scope_value);
    PERFORM rekey.set_target_value_form(tid, job, v_encoding, v_json_path);
    INSERT INTO rekey.job_columns VALUES (job, i, tid);
  END LOOP;
  PERFORM rekey.refuse_column_collision(job);
  PERFORM rekey.refuse_key_collision(job);

  PERFORM rekey.add_rollout_stages(job, p_stages);
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = job;
  PERFORM rekey.audit_event('job.created', job, jsonb_build_object(
    'table', format('%I.%I', t.schema_name, t.table_name), 'columns', to_jsonb(p_columns),
    'key_map', p_key_map, 'batches', batches, 'batch_size', p_batch_size, 'stages', to_jsonb(p_stages),
    'promote_at_stage', coalesce(p_promote_at_stage, cardinality(p_stages)),
    'error_threshold', p_error_threshold, 'observe', p_observe::text,
    'scope', CASE WHEN p_scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(p_scope_column, v_scope_value) END,
    'not_governed', to_jsonb(coalesce(v_not_governed, '{}')),
    'cross_scope', coalesce(p_cross_scope, false),
    'encoding', v_encoding, 'json_path', to_jsonb(v_json_path)));
  PERFORM rekey.open_stage(job, 1);
  RETURN job;
END $_$;

CREATE FUNCTION rekey.create_rotation(p_scope text, p_to_key bigint, p_stages numeric[] DEFAULT '{1,25,50,75,100}'::numeric[], p_observe interval DEFAULT NULL::interval, p_batch_size integer DEFAULT 1000, p_name text DEFAULT NULL::text, p_promote_at_stage integer DEFAULT NULL::integer, p_error_threshold numeric DEFAULT 0.001, p_gate_sample_size integer DEFAULT 10000, p_register text[] DEFAULT NULL::text[]) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.create_transit_job(p_table text, p_columns text[], p_transit_key text, p_min_version integer, p_ad_template text DEFAULT NULL::text, p_scope_column text DEFAULT NULL::text, p_scope_value text DEFAULT NULL::text, p_batch_size integer DEFAULT 1000, p_name text DEFAULT NULL::text, p_max_attempts integer DEFAULT 3, p_stages numeric[] DEFAULT '{1,25,50,75,100}'::numeric[], p_error_threshold numeric DEFAULT 0.001, p_observe interval DEFAULT NULL::interval, p_gate_sample_size integer DEFAULT 10000) RETURNS bigint
    LANGUAGE plpgsql
    AS $_$
DECLARE
  t record;
  pk_col name;
  pk_type text;
  scope_type text;
  v_scope_value text;
  job bigint;
  key record;
BEGIN
  t := rekey.job_table(p_table);
  pk_col := t.pk_column;
  pk_type := t.pk_type;
  key := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());
  IF p_transit_key IS NULL OR p_transit_key !~ '^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/keys/[A-Za-z0-9_.-]+$' THEN
    RAISE EXCEPTION 'Transit key % is not a key path <mount>/keys/<name> (e.g. transit/keys/app)',
      quote_literal(coalesce(p_transit_key, '')) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_min_version IS NULL OR p_min_version < 1 THEN
    RAISE EXCEPTION 'the target Transit key version must be 1 or more, got %', p_min_version
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM rekey.check_job_columns(t.schema_name, t.table_name, pk_col, p_columns, true);
  PERFORM rekey.refuse_key_ciphertext(p_columns, key.key_columns);
  SELECT s.scope_type, s.scope_value INTO scope_type, v_scope_value
    FROM rekey.job_scope(t.schema_name, t.table_name, p_scope_column, p_scope_value) s;
  PERFORM rekey.check_job_settings(p_batch_size, p_ad_template, p_stages, p_error_threshold);

  -- keys_promoted from the start: there is no keyring key to promote (open_stage skips it).
  INSERT INTO rekey.jobs (name, schema_name, table_name, pk_column, pk_type, key_columns, key_types,
                          ad_template,
                          scope_column, scope_value, scope_type, batch_size, max_attempts,
                          stage_plan, promote_at_stage, error_threshold, observe, gate_sample_size,
                          keys_promoted, transit_key_ref, transit_min_version)
  VALUES (p_name, t.schema_name, t.table_name, pk_col, pk_type, key.key_columns, key.key_types,
          p_ad_template,
          p_scope_column, v_scope_value, scope_type, p_batch_size, p_max_attempts,
          p_stages, cardinality(p_stages), p_error_threshold, p_observe, p_gate_sample_size,
          true, p_transit_key, p_min_version)
  RETURNING job_id INTO job;

  PERFORM rekey.finish_kms_job(job, p_columns, 'vault-transit', p_ad_template, NULL,
                               jsonb_build_object('transit_key', p_transit_key, 'min_version', p_min_version));
  RETURN job;
END $_$;

CREATE FUNCTION rekey.date_key_text(v date) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
  SELECT CASE WHEN NOT isfinite(v) THEN v::text
              ELSE to_char(v::timestamp, 'YYYY-MM-DD')
                   || CASE WHEN v < '0001-01-01'::date THEN ' BC' ELSE '' END
         END
$$;

CREATE FUNCTION rekey.declare_side_effects(p_job bigint, p_triggers text, p_vacuum_after boolean, p_declared jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  UPDATE rekey.jobs SET triggers = p_triggers, vacuum_after = coalesce(p_vacuum_after, false)
   WHERE job_id = p_job;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'no job %', p_job USING ERRCODE = 'no_data_found';
  END IF;
  INSERT INTO rekey.job_side_effects (job_id, declared) VALUES (p_job, p_declared);
  PERFORM rekey.audit_event('job.side_effects', p_job, jsonb_build_object(
    'triggers', coalesce(p_triggers, 'none needed'), 'vacuum_after', coalesce(p_vacuum_after, false),
    'declared', p_declared));
END $$;

CREATE FUNCTION rekey.encoded_head(p_value text, p_encoding text) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
  SELECT CASE p_encoding
           WHEN 'hex' THEN
             CASE WHEN p_value ~ '^[0-9A-Fa-f]{10}' THEN decode(left(p_value, 10), 'hex') END
           WHEN 'base64' THEN
             CASE WHEN p_value ~ '^[A-Za-z0-9+/]{8}'
                  THEN substring(decode(left(p_value, 8), 'base64') from 1 for 5) END
           WHEN 'base64url' THEN
             CASE WHEN p_value ~ '^[A-Za-z0-9_-]{8}'
                  THEN substring(decode(translate(left(p_value, 8), '-_', '+/'), 'base64') from 1 for 5) END
         END
$$;

CREATE FUNCTION rekey.finish_kms_job(p_job bigint, p_columns text[], p_codec text, p_ad_template text, p_encoding text, p_details jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  tid bigint;
  batches integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  FOR i IN 1 .. cardinality(p_columns) LOOP
    tid := rekey.job_target(j.schema_name, j.table_name, j.pk_column, p_columns[i], p_codec, NULL,
                            p_ad_template, j.scope_column, j.scope_value);
    IF p_encoding IS NOT NULL THEN
      PERFORM rekey.set_target_value_form(tid, p_job, p_encoding, NULL);
    END IF;
    INSERT INTO rekey.job_columns VALUES (p_job, i, tid);
  END LOOP;
  PERFORM rekey.refuse_column_collision(p_job);

  PERFORM rekey.add_rollout_stages(p_job, j.stage_plan);
  SELECT count(*) INTO batches FROM rekey.batches WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.created', p_job, jsonb_build_object(
    'table', format('%I.%I', j.schema_name, j.table_name), 'columns', to_jsonb(p_columns),
    'codec', p_codec,
    'batches', batches, 'batch_size', j.batch_size, 'stages', to_jsonb(j.stage_plan),
    'error_threshold', j.error_threshold, 'observe', j.observe::text,
    'scope', CASE WHEN j.scope_column IS NULL THEN NULL
                  ELSE jsonb_build_object(j.scope_column, j.scope_value) END) || p_details);
  PERFORM rekey.open_stage(p_job, 1);
END $$;

CREATE FUNCTION rekey.finish_stages(p_job bigint DEFAULT NULL::bigint) RETURNS TABLE(job_id bigint, state text)
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  n_failed bigint;
  n_done bigint;
  target_stage integer;
  sweeps integer;
  restored bigint;
BEGIN
  FOR j IN
    SELECT x.* FROM rekey.jobs x
     WHERE x.state = 'active' AND (p_job IS NULL OR x.job_id = p_job)
       AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = x.job_id
                          AND b.stage_no = x.current_stage AND b.state IN ('pending', 'running'))
     FOR UPDATE SKIP LOCKED
  LOOP
    -- Re-check under the lock: a batch may have been requeued meanwhile.
    CONTINUE WHEN EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = j.job_id
                            AND b.stage_no = j.current_stage AND b.state IN ('pending', 'running'));
    SELECT * INTO st FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
    SELECT count(*) FILTER (WHERE b.state = 'failed'), coalesce(sum(b.rows_done), 0)
      INTO n_failed, n_done
      FROM rekey.batches b WHERE b.job_id = j.job_id AND b.stage_no = j.current_stage;
    job_id := j.job_id;
    IF n_failed > 0 THEN
      UPDATE rekey.jobs x SET state = 'failed', finished_at = now(), updated_at = now(),
             state_reason = format('%s batches failed in stage %s; see rekey.batch_status and run rekey.retry_failed(%s)',
                                   n_failed, j.current_stage, j.job_id)
       WHERE x.job_id = j.job_id;
      PERFORM rekey.audit_event('job.failed', j.job_id, jsonb_build_object('stage', j.current_stage, 'batches_failed', n_failed), 'failure');
      state := 'failed';
    ELSIF st.kind = 'rollout' THEN
      UPDATE rekey.job_stages s SET state = 'verifying', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      UPDATE rekey.jobs x SET state = 'verifying', updated_at = now() WHERE x.job_id = j.job_id;
      state := 'verifying';
    ELSIF st.kind = 'sweep' THEN
      UPDATE rekey.job_stages s SET state = 'done', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      PERFORM rekey.audit_event('stage.completed', j.job_id, jsonb_build_object(
        'stage', j.current_stage, 'kind', 'sweep', 'rows_reencrypted', n_done));
      SELECT count(*) INTO sweeps FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.kind = 'sweep';
      IF n_done = 0 THEN
        PERFORM rekey.complete_job(j.job_id);
        state := 'completed';
      ELSIF sweeps >= 20 THEN
        UPDATE rekey.jobs x SET state = 'paused', updated_at = now(),
               state_reason = 'applications keep writing under the old key after 20 sweeps; check that every application reads the keyring''s primary key'
         WHERE x.job_id = j.job_id;
        state := 'paused';
      ELSE
        PERFORM rekey.open_stage(j.job_id, rekey.add_stage(j.job_id, 'sweep', 100, 0, 10000));
        state := 'active';
      END IF;
    ELSE  -- rollback: its first pass, or one of its sweeps
      UPDATE rekey.job_stages s SET state = 'done', finished_at = now()
       WHERE s.job_id = j.job_id AND s.stage_no = j.current_stage;
      IF j.rollback_stage IS NULL THEN
        -- A rollback started before this migration: its open stage is its first pass.
        UPDATE rekey.jobs x SET rollback_stage = j.current_stage WHERE x.job_id = j.job_id;
        j.rollback_stage := j.current_stage;
      END IF;
      PERFORM rekey.audit_event('stage.completed', j.job_id, jsonb_build_object(
        'stage', j.current_stage, 'kind', 'rollback', 'sweep', j.current_stage <> j.rollback_stage,
        'rows_restored', n_done));
      SELECT count(*) INTO sweeps FROM rekey.job_stages s
       WHERE s.job_id = j.job_id AND s.kind = 'rollback' AND s.stage_no > j.rollback_stage;
      IF j.current_stage = j.rollback_stage OR n_done > 0 THEN
        IF sweeps >= 20 THEN
          UPDATE rekey.jobs x SET state = 'paused', updated_at = now(),
                 state_reason = 'applications keep writing under the new key after 20 rollback sweeps; check that every application reads the keyring''s primary key'
           WHERE x.job_id = j.job_id;
          state := 'paused';
        ELSE
          PERFORM rekey.open_rollback_sweep(j.job_id);
          state := 'active';
        END IF;
        RETURN NEXT;
        CONTINUE;
      END IF;
      SELECT coalesce(sum(b.rows_done), 0) INTO restored FROM rekey.batches b
       WHERE b.job_id = j.job_id AND b.stage_no >= j.rollback_stage;
      SELECT max(s.stage_no) INTO target_stage FROM rekey.job_stages s
       WHERE s.job_id = j.job_id AND s.kind = 'rollout' AND s.bucket_hi <= st.bucket_lo;
      IF target_stage IS NULL THEN
        UPDATE rekey.jobs x SET state = 'rolled_back', finished_at = now(), updated_at = now(),
               state_reason = 'rolled back: every value is under its source key again'
         WHERE x.job_id = j.job_id;
        PERFORM rekey.audit_event('job.rolled_back', j.job_id, jsonb_build_object('stage', j.current_stage, 'rows_restored', restored));
        state := 'rolled_back';
      ELSE
        UPDATE rekey.jobs x SET state = 'awaiting_approval', current_stage = target_stage, updated_at = now(),
               state_reason = format('rolled back to stage %s (%s%%); rekey job advance %s goes forward again',
                                     target_stage, (SELECT percent FROM rekey.job_stages s WHERE s.job_id = j.job_id AND s.stage_no = target_stage), j.job_id)
         WHERE x.job_id = j.job_id;
        PERFORM rekey.audit_event('job.rolled_back', j.job_id, jsonb_build_object(
          'stage', j.current_stage, 'rows_restored', restored, 'back_to_stage', target_stage));
        state := 'awaiting_approval';
      END IF;
    END IF;
    RETURN NEXT;
  END LOOP;
END $$;

CREATE FUNCTION rekey.forget_target(p_target bigint, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  tc record;
BEGIN
  SELECT * INTO tc FROM rekey.target_columns() x WHERE x.target_id = p_target;
  IF NOT FOUND THEN
    IF EXISTS (SELECT 1 FROM rekey.targets WHERE target_id = p_target) THEN
      RAISE EXCEPTION 'target % is already forgotten', p_target
        USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RAISE EXCEPTION 'unknown target %; SELECT * FROM rekey.target_columns() lists them', p_target
      USING ERRCODE = 'no_data_found';
  END IF;
  IF tc.unresolved IS NULL THEN
    RAISE EXCEPTION 'target % (%.%.%) still exists and may hold values; only a target whose table or column is gone can be forgotten',
      p_target, quote_ident(tc.schema_name), quote_ident(tc.table_name), quote_ident(tc.column_name)
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.targets SET forgotten_at = now(), forgotten_by = current_user,
         forgotten_reason = p_reason
   WHERE target_id = p_target;
  PERFORM rekey.audit_event('target.forgotten', NULL, jsonb_build_object(
    'target_id', p_target, 'registered_as', tc.registered_as, 'unresolved', tc.unresolved,
    'reason', p_reason));
  RETURN format('forgot target %s (%s): %s', p_target, tc.registered_as, tc.unresolved);
END $$;

CREATE FUNCTION rekey.gates_stamp() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.held_by_rotation(p_job bigint) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
  SELECT j.rotation_id IS NOT NULL AND NOT j.keys_promoted AND j.rollback_stage IS NULL
         AND j.current_stage >= (SELECT max(s.stage_no) FROM rekey.job_stages s
                                  WHERE s.job_id = j.job_id AND s.kind = 'rollout')
    FROM rekey.jobs j WHERE j.job_id = p_job
$$;

CREATE FUNCTION rekey.hold_for_rotation(p_job bigint) RETURNS text
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.job_key(p_schema name, p_table name, p_key_columns text[], OUT key_columns name[], OUT key_types text[]) RETURNS record
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  rel regclass := format('%I.%I', p_schema, p_table)::regclass;
  tbl text := format('%I.%I', p_schema, p_table);
  candidates text;
  bad record;
  -- For a declarative partitioned table: why a partition's own key is not enough.
  partitioned text := CASE WHEN (SELECT relkind FROM pg_class WHERE oid = rel) = 'p'
    THEN format(' (it is partitioned by %s: a key unique across its partitions is a primary key or unique index of the partitioned table itself, which PostgreSQL requires to include the partition key; an index of one partition is unique in that partition only)',
                pg_get_partkeydef(rel)) ELSE '' END;
BEGIN
  IF (SELECT relkind FROM pg_class WHERE oid = rel) = 'r'
     AND EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = rel) THEN
    RAISE EXCEPTION 'table % has inheritance children, and no key is unique across a parent and its children; create a job per child table, or move the rows to a declarative partitioned table (PARTITION BY)',
      tbl USING ERRCODE = 'feature_not_supported';
  END IF;
  IF p_key_columns IS NULL THEN
    SELECT array_agg(a.attname ORDER BY k.ord) INTO key_columns
      FROM pg_index x, unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
     WHERE x.indrelid = rel AND x.indisprimary AND a.attrelid = rel AND a.attnum = k.attnum;
    IF key_columns IS NULL THEN
      -- The key an earlier job on this table was given (--key-columns), while it still names a
      -- usable index: the operator's statement about the table outlives one job, as
      -- --not-governed does (rekey rotate-due repeats jobs without flags).
      SELECT u.columns INTO key_columns
        FROM (SELECT x.key_columns FROM rekey.jobs x
               WHERE x.schema_name = p_schema AND x.table_name = p_table
               ORDER BY x.job_id DESC LIMIT 1) latest
        JOIN rekey.unique_keys(rel) u ON u.columns = latest.key_columns AND u.not_null;
    END IF;
    IF key_columns IS NULL THEN
      SELECT string_agg(format('--key-columns %s', c.list), ' or ' ORDER BY c.list) INTO candidates
        FROM rekey.unique_keys(rel) u,
             LATERAL (SELECT string_agg(quote_ident(x), ',') AS list FROM unnest(u.columns) x) c
       WHERE u.not_null;
      IF candidates IS NOT NULL THEN
        RAISE EXCEPTION 'table % has no primary key; name a unique, not-null index as its key: %',
          tbl, candidates USING ERRCODE = 'invalid_table_definition';
      END IF;
      RAISE EXCEPTION 'table % has no primary key and no unique index on NOT NULL columns alone (an index on an expression, a partial index or a nullable column cannot key batches)%; add a primary key (ALTER TABLE % ADD PRIMARY KEY (...)) and create the job again',
        tbl, partitioned, tbl USING ERRCODE = 'invalid_table_definition';
    END IF;
  ELSE
    SELECT array_agg(c::name) INTO key_columns FROM unnest(p_key_columns) c
     WHERE rekey.column_type(p_schema, p_table, c) IS NULL;
    IF key_columns IS NOT NULL THEN
      RAISE EXCEPTION 'key column % does not exist in %', quote_ident(key_columns[1]), tbl
        USING ERRCODE = 'undefined_column';
    END IF;
    SELECT u.columns INTO key_columns FROM rekey.unique_keys(rel) u
     WHERE u.columns::text[] = p_key_columns AND u.not_null LIMIT 1;
    IF key_columns IS NULL THEN
      RAISE EXCEPTION 'table % has no unique index on exactly (%), in that order, without expressions or a WHERE clause, on NOT NULL columns%; create one (CREATE UNIQUE INDEX ON % (%)) or name the columns of an existing one with --key-columns',
        tbl, array_to_string(p_key_columns, ', '), partitioned, tbl,
        array_to_string(p_key_columns, ', ') USING ERRCODE = 'invalid_table_definition';
    END IF;
  END IF;
  SELECT array_agg(rekey.checked_column_type(p_schema, p_table, k.c) ORDER BY k.i) INTO key_types
    FROM unnest(key_columns) WITH ORDINALITY AS k(c, i);
  SELECT k.c, k.ty INTO bad FROM unnest(key_columns, key_types) AS k(c, ty)
   WHERE k.ty <> ALL (rekey.supported_key_types()) LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'key column % of % is of type %, which rekey cannot order batches by (supported: %); name a unique, not-null index on supported columns with --key-columns',
      quote_ident(bad.c), tbl, bad.ty, array_to_string(rekey.supported_key_types(), ', ')
      USING ERRCODE = 'feature_not_supported';
  END IF;
END $$;

CREATE FUNCTION rekey.job_key_bound_types(p_job rekey.jobs) RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
  SELECT array_agg(k.ty || coalesce(' COLLATE ' || quote_ident(n.nspname) || '.'
                                    || quote_ident(co.collname), '') ORDER BY k.i)
    FROM unnest(p_job.key_columns, rekey.job_key_types(p_job)) WITH ORDINALITY AS k(c, ty, i)
    JOIN pg_attribute a
      ON a.attrelid = format('%I.%I', p_job.schema_name, p_job.table_name)::regclass
     AND a.attname = k.c
    LEFT JOIN pg_collation co ON co.oid = a.attcollation
    LEFT JOIN pg_namespace n ON n.oid = co.collnamespace
$$;

CREATE FUNCTION rekey.job_key_text_sql(p_job rekey.jobs, p_alias text) RETURNS text
    LANGUAGE sql STABLE
    AS $$
  SELECT rekey.key_text_sql(p_job.key_columns, rekey.job_key_types(p_job), p_job.key_text_form,
                            p_alias)
$$;

CREATE FUNCTION rekey.job_key_types(p_job rekey.jobs) RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
  SELECT array_agg(rekey.checked_column_type(p_job.schema_name, p_job.table_name, k.c, k.ty)
                   ORDER BY k.i)
    FROM unnest(p_job.key_columns, p_job.key_types) WITH ORDINALITY AS k(c, ty, i)
$$;

CREATE FUNCTION rekey.job_lagging_readers(p_job bigint, p_rollback boolean) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
  SELECT coalesce(jsonb_agg(jsonb_build_object('reader', l.reader, 'scope', l.scope, 'key_id', l.key_id,
                                               'last_seen', l.last_seen)
                            ORDER BY l.scope, l.reader, l.key_id), '[]')
    FROM rekey.job_written_keys(p_job, p_rollback) k, LATERAL rekey.lagging_readers(p_job, k) l
$$;

CREATE FUNCTION rekey.job_leaves(p_job rekey.jobs) RETURNS TABLE(leaf_schema name, leaf_name name)
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
  RETURN QUERY
    SELECT n.nspname, c.relname
      FROM pg_partition_tree(format('%I.%I', p_job.schema_name, p_job.table_name)::regclass) t
      JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE t.isleaf AND t.level > 0 AND c.relkind IN ('r', 'f')
     ORDER BY 1, 2;
  IF NOT FOUND THEN
    -- Not partitioned, or no partition yet: the table itself.
    RETURN QUERY SELECT NULL::name, NULL::name;
  END IF;
END $$;

CREATE FUNCTION rekey.job_reached_promotion(p_job rekey.jobs) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
  SELECT p_job.keys_promoted
      OR (rekey.job_unfinished(p_job.state) AND p_job.rollback_stage IS NULL
          AND p_job.current_stage >= p_job.promote_at_stage
          AND EXISTS (SELECT 1 FROM rekey.job_stages s WHERE s.job_id = p_job.job_id
                         AND s.stage_no = p_job.current_stage AND s.kind IN ('rollout', 'sweep')))
$$;

CREATE FUNCTION rekey.job_report(p_job bigint) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    AS $$
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
    -- Leaf partitions detached or dropped mid-job: their rows are no longer the table's and were
    -- not rotated by this job (docs/safety.md); each named, to be rotated as a table of its own.
    'partitions_gone', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                          'partition', format('%I.%I', g.partition_schema, g.partition_name),
                          'reason', g.end_reason, 'batches', g.batches)
                          ORDER BY g.partition_schema, g.partition_name), '[]')
                          FROM (SELECT partition_schema, partition_name, end_reason, count(*) AS batches
                                  FROM rekey.batches WHERE job_id = p_job AND end_reason IS NOT NULL
                                 GROUP BY 1, 2, 3) g),
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

CREATE FUNCTION rekey.job_scope(p_schema name, p_table name, p_scope_column text, p_scope_value text, OUT scope_type text, OUT scope_value text) RETURNS record
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF (p_scope_column IS NULL) <> (p_scope_value IS NULL) THEN
    RAISE EXCEPTION 'a scope needs both a column and a value' USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF p_scope_column IS NOT NULL THEN
    IF rekey.column_type(p_schema, p_table, p_scope_column) IS NULL THEN
      RAISE EXCEPTION 'scope column % does not exist in %.%', quote_ident(p_scope_column),
        quote_ident(p_schema), quote_ident(p_table) USING ERRCODE = 'undefined_column';
    END IF;
    scope_type := rekey.checked_column_type(p_schema, p_table, p_scope_column);
    scope_value := rekey.canonical_scope_value(p_schema, p_table, p_scope_column, p_scope_value);
  END IF;
END $$;

CREATE FUNCTION rekey.job_side_effects_report(p_job bigint) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
  SELECT jsonb_build_object(
    'triggers', j.triggers,
    'vacuum_after', j.vacuum_after,
    'declared', (SELECT d.declared FROM rekey.job_side_effects d WHERE d.job_id = j.job_id),
    'counters', jsonb_build_object(
      'start_at', s.at, 'end_at', e.at,
      'rows_rewritten', rows.n,
      'updates', e.n_tup_upd - s.n_tup_upd,
      'hot_updates', e.n_tup_hot_upd - s.n_tup_hot_upd,
      'hot_share', CASE WHEN e.n_tup_upd > s.n_tup_upd
                        THEN round((e.n_tup_hot_upd - s.n_tup_hot_upd)::numeric / (e.n_tup_upd - s.n_tup_upd), 4) END,
      'dead_tuples_created', e.n_dead_tup - s.n_dead_tup,
      'dead_tuples_at_end', e.n_dead_tup,
      'wal_bytes', pg_wal_lsn_diff(e.wal_lsn, s.wal_lsn)::bigint,
      'wal_bytes_per_row', CASE WHEN rows.n > 0 THEN round(pg_wal_lsn_diff(e.wal_lsn, s.wal_lsn) / rows.n, 1) END,
      'table_bytes_start', s.table_bytes, 'table_bytes_end', e.table_bytes,
      'table_growth_bytes', e.table_bytes - s.table_bytes),
    'vacuum', (SELECT jsonb_build_object('state', v.state, 'worker', v.worker_id, 'started_at', v.started_at,
                                         'finished_at', v.finished_at, 'error', v.error)
                 FROM rekey.job_vacuums v WHERE v.job_id = j.job_id))
    FROM rekey.jobs j
    LEFT JOIN rekey.job_table_counters s ON s.job_id = j.job_id AND s.phase = 'start'
    LEFT JOIN rekey.job_table_counters e ON e.job_id = j.job_id AND e.phase = 'end'
    CROSS JOIN LATERAL (SELECT coalesce(sum(b.rows_done), 0)::bigint AS n FROM rekey.batches b
                         WHERE b.job_id = j.job_id) rows
   WHERE j.job_id = p_job;
$$;

CREATE FUNCTION rekey.job_table(p_table text, OUT schema_name name, OUT table_name name, OUT pk_column name, OUT pk_type text) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
  t record;
  k record;
  blocker text;
BEGIN
  t := rekey.resolve_table(p_table);
  blocker := rekey.row_security_blocker(format('%I.%I', t.schema_name, t.table_name)::regclass);
  IF blocker IS NOT NULL THEN
    RAISE EXCEPTION '%', blocker USING ERRCODE = 'invalid_table_definition';
  END IF;
  PERFORM rekey.lock_job_definitions();
  k := rekey.job_key(t.schema_name, t.table_name, rekey.requested_key_columns());
  schema_name := t.schema_name;
  table_name := t.table_name;
  pk_column := k.key_columns[1];
  pk_type := k.key_types[1];
END $$;

CREATE FUNCTION rekey.job_target(p_schema name, p_table name, p_pk name, p_column text, p_codec text, p_key_id_column text, p_ad_template text, p_scope_column text, p_scope_value text) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
  tid bigint;
BEGIN
  SELECT x.target_id INTO tid FROM rekey.targets x JOIN rekey.target_columns() tc USING (target_id)
   WHERE tc.relid = format('%I.%I', p_schema, p_table)::regclass
     AND tc.column_name = p_column
     AND x.scope_column IS NOT DISTINCT FROM p_scope_column AND x.scope_value IS NOT DISTINCT FROM p_scope_value;
  IF tid IS NULL THEN
    INSERT INTO rekey.targets (schema_name, table_name, pk_column, column_name, codec, key_id_column,
                               ad_template, scope_column, scope_value)
    VALUES (p_schema, p_table, p_pk, p_column, p_codec, p_key_id_column, p_ad_template,
            p_scope_column, p_scope_value)
    RETURNING target_id INTO tid;
  ELSIF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid AND
                (x.codec, x.key_id_column, x.ad_template) IS DISTINCT FROM (p_codec, p_key_id_column::name, p_ad_template)) THEN
    RAISE EXCEPTION 'column % is registered with another codec, key-id column or associated data (target %)',
      quote_ident(p_column), tid USING ERRCODE = 'invalid_parameter_value';
  END IF;
  RETURN tid;
END $$;

CREATE FUNCTION rekey.job_unfinished(p_state text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$
  SELECT p_state NOT IN ('completed', 'cancelled', 'rolled_back')
$$;

CREATE FUNCTION rekey.job_unreported_scopes(p_job bigint) RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
  SELECT coalesce(array_agg(DISTINCT k.scope ORDER BY k.scope), '{}')
    FROM rekey.job_keys jk JOIN rekey.keys k ON k.key_id IN (jk.source_key_id, jk.target_key_id)
   WHERE jk.job_id = p_job
     AND NOT EXISTS (SELECT 1 FROM rekey.readers r WHERE r.scope = k.scope)
$$;

CREATE FUNCTION rekey.job_value_form(p_schema name, p_table name, p_pk name, p_columns text[], p_codecs text[], p_encoding text, p_json_path text[], OUT v_encoding text, OUT v_json_path text[]) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
  fernet boolean := 'fernet' = ANY (coalesce(p_codecs, '{}'));
  lockbox boolean := 'lockbox' = ANY (coalesce(p_codecs, '{}'));
  enc text := p_encoding;
  col_type text;
BEGIN
  IF 'rails' = ANY (coalesce(p_codecs, '{}')) THEN
    IF EXISTS (SELECT 1 FROM unnest(p_codecs) c WHERE c IS DISTINCT FROM 'rails') THEN
      RAISE EXCEPTION 'a rails job rotates Rails messages only: give every column the rails codec'
        USING ERRCODE = 'invalid_parameter_value';
    ELSIF coalesce(p_encoding, 'bytea') <> 'bytea' OR p_json_path IS NOT NULL THEN
      RAISE EXCEPTION 'Rails messages are JSON text stored as it is: no encoding or JSON path applies'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, true);  -- text or varchar
    v_encoding := 'bytea';
    RETURN;
  ELSIF 'cloak' = ANY (coalesce(p_codecs, '{}')) THEN
    IF p_encoding IS NOT NULL OR p_json_path IS NOT NULL
       OR EXISTS (SELECT 1 FROM unnest(p_codecs) c WHERE c IS DISTINCT FROM 'cloak') THEN
      RAISE EXCEPTION 'cloak strings are text read as stored: no encoding or JSON path applies, and every column of the job must be cloak'
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, true);
    v_encoding := 'bytea';
    RETURN;
  END IF;
  IF p_encoding IS NULL AND p_json_path IS NULL THEN
    SELECT x.encoding, x.json_path INTO enc, p_json_path FROM rekey.targets x
     WHERE x.schema_name = p_schema AND x.table_name = p_table AND x.column_name = ANY (p_columns)
       AND x.forgotten_at IS NULL AND (x.encoding <> 'bytea' OR x.json_path IS NOT NULL)
     ORDER BY x.target_id DESC LIMIT 1;
  END IF;
  enc := coalesce(enc, CASE WHEN fernet THEN 'base64url'
                            WHEN lockbox THEN 'base64'
                            WHEN p_json_path IS NOT NULL THEN 'base64'
                            ELSE 'bytea' END);
  IF enc NOT IN ('bytea', 'base64', 'base64url', 'hex') THEN
    RAISE EXCEPTION 'unknown encoding %: use bytea, base64, base64url or hex', quote_literal(enc)
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF fernet AND enc <> 'base64url' THEN
    RAISE EXCEPTION 'Fernet tokens are base64url text; encoding % does not apply', quote_literal(enc)
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF lockbox AND enc NOT IN ('base64', 'bytea') THEN
    RAISE EXCEPTION 'Lockbox stores base64 text (or the bytes, with encode: false); encoding % does not apply', quote_literal(enc)
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_json_path IS NOT NULL AND (cardinality(p_json_path) = 0
                                     OR EXISTS (SELECT 1 FROM unnest(p_json_path) k WHERE k IS NULL OR k = '')) THEN
    RAISE EXCEPTION 'a JSON path is a list of keys, as in {payment,token}' USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_json_path IS NOT NULL AND enc = 'bytea' THEN
    RAISE EXCEPTION 'a JSON document holds text: give a text encoding (base64, base64url or hex) with a JSON path'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF enc = 'bytea' THEN
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, false);
  ELSIF p_json_path IS NULL THEN
    -- Text or varchar, as for Transit ciphertexts.
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, true);
  ELSE
    PERFORM rekey.check_job_columns(p_schema, p_table, p_pk, p_columns, NULL);
    FOR i IN 1 .. cardinality(p_columns) LOOP
      col_type := rekey.column_type(p_schema, p_table, p_columns[i]);
      IF col_type <> 'jsonb' THEN
        RAISE EXCEPTION 'column %.%.% is %, not jsonb: a JSON path reads jsonb documents',
          quote_ident(p_schema), quote_ident(p_table), quote_ident(p_columns[i]), col_type
          USING ERRCODE = 'datatype_mismatch';
      END IF;
    END LOOP;
  END IF;
  v_encoding := enc;
  v_json_path := p_json_path;
END $$;

CREATE FUNCTION rekey.job_written_keys(p_job bigint, p_rollback boolean) RETURNS SETOF bigint
    LANGUAGE sql STABLE
    AS $$
  SELECT DISTINCT CASE WHEN p_rollback THEN source_key_id ELSE target_key_id END
    FROM rekey.job_keys WHERE job_id = p_job ORDER BY 1
$$;

CREATE FUNCTION rekey.jobs_join_rotation() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF NEW.rotation_id IS NULL THEN
    NEW.rotation_id := nullif(current_setting('rekey.rotation_id', true), '')::bigint;
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION rekey.jobs_record_end_counters() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.job_table_counters c WHERE c.job_id = NEW.job_id AND c.phase = 'start') THEN
    PERFORM rekey.record_table_counters(NEW.job_id, 'end');
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.key_bound_sql(p_types text[], p_text text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
  SELECT CASE WHEN cardinality(p_types) = 1 THEN format('(%s::%s)', p_text, p_types[1])
              ELSE 'ROW(' || string_agg(format('((%s)::jsonb ->> %s)::%s', p_text, i - 1, ty),
                                        ', ' ORDER BY i) || ')' END
    FROM unnest(p_types) WITH ORDINALITY AS k(ty, i)
$$;

CREATE FUNCTION rekey.key_census(p_key bigint) RETURNS TABLE(schema_name name, table_name name, column_name name, target_id bigint, formats text[], n bigint, unknown text, status text)
    LANGUAGE plpgsql
    AS $$
DECLARE
  tink bytea := rekey.tink_prefix(p_key);
  hex text := encode(rekey.tink_prefix(p_key), 'hex');
  b64 text[];
  rel record;
  col record;
  tables integer;
  done integer := 0;
  kid_cols name[];
  kid_hidden boolean;
  blocker text;
  -- One entry per counted (column, format): the column's index in cols_*, the format, and the
  -- FILTER condition; format '*' is the column's total (a value is counted once).
  e_col integer[];
  e_fmt text[];
  e_sql text[];
  cols_name name[];
  cols_attnum smallint[];
  cols_target bigint[];
  cols_unknown text[];
  cols_conds text[];
  conds text[];
  counts bigint[];
  i integer;
  j integer;
  total bigint;
  found_formats text[];
  scan_error text;
  -- The registered targets, read once: (relid, attnum, target_id, codec, key_id_attnum) of those
  -- that resolve.
  t_relid oid[];
  t_attnum smallint[];
  t_id bigint[];
  t_codec text[];
  t_kid smallint[];
  -- Per registered target: it holds JSON fields (rekey.targets.json_path); it holds Fernet
  -- tokens and a job on it moved key p_key in or out.
  t_json boolean[];
  t_decrypted_key boolean[];
  json_conds text[];
BEGIN
  SELECT coalesce(array_agg(tc.relid ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.attnum ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.target_id ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.codec ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(tc.key_id_attnum ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(x.json_path IS NOT NULL ORDER BY tc.target_id), '{}'),
         coalesce(array_agg(rekey.codec_keyed_by_decryption_only(tc.codec) AND EXISTS (
                    SELECT 1 FROM rekey.job_columns jc JOIN rekey.job_keys jk USING (job_id)
                     WHERE jc.target_id = tc.target_id AND p_key IN (jk.source_key_id, jk.target_key_id))
                  ORDER BY tc.target_id), '{}')
    INTO t_relid, t_attnum, t_id, t_codec, t_kid, t_json, t_decrypted_key
    FROM rekey.target_columns() tc JOIN rekey.targets x USING (target_id)
   WHERE tc.unresolved IS NULL;

  -- The first 7 characters of the base64 of 0x01 || key id || any byte: 6 are fixed, the 7th
  -- takes 4 values (it carries the top 2 bits of the next, random, byte).
  SELECT array_agg(DISTINCT v.prefix) INTO b64 FROM (
    SELECT left(encode(tink || set_byte('\x00'::bytea, 0, x.b) || '\x0000'::bytea, 'base64'), 7) AS std
      FROM unnest(ARRAY[0, 64, 128, 192]) x(b)) s,
    LATERAL unnest(ARRAY[s.std, translate(s.std, '+/', '-_')]) v(prefix);

  SELECT count(*) INTO tables
    FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'm', 'f') AND NOT c.relispartition
     AND ns.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'rekey')
     AND ns.nspname NOT LIKE 'pg\_temp\_%' AND ns.nspname NOT LIKE 'pg\_toast\_temp\_%';

  FOR rel IN
    SELECT c.oid, ns.nspname, c.relname, c.relkind, c.relispopulated
      FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'm', 'f') AND NOT c.relispartition
       AND ns.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast', 'rekey')
       AND ns.nspname NOT LIKE 'pg\_temp\_%' AND ns.nspname NOT LIKE 'pg\_toast\_temp\_%'
     ORDER BY ns.nspname, c.relname
  LOOP
    done := done + 1;
    e_col := '{}'; e_fmt := '{}'; e_sql := '{}';
    cols_name := '{}'; cols_attnum := '{}'; cols_target := '{}'; cols_unknown := '{}';
    cols_conds := '{}';

    -- Raw values name no key: a registered raw target's key-id column governs every bytea value
    -- of its row, registered or not.
    SELECT array_agg(DISTINCT a.attname), bool_or(NOT has_column_privilege(rel.oid, a.attnum, 'SELECT'))
      INTO kid_cols, kid_hidden
      FROM unnest(t_relid, t_codec, t_kid) tc(relid, codec, key_id_attnum)
      JOIN pg_attribute a ON a.attrelid = tc.relid AND a.attnum = tc.key_id_attnum
     WHERE tc.relid = rel.oid AND tc.codec = 'raw';

    FOR col IN
      SELECT a.attname, a.attnum, bt.typname AS base,
             (SELECT min(tc.target_id) FROM unnest(t_relid, t_attnum, t_id) tc(relid, attnum, target_id)
               WHERE tc.relid = rel.oid AND tc.attnum = a.attnum) AS target_id
        FROM pg_attribute a
        JOIN pg_type bt ON bt.oid = rekey.base_type(a.atttypid)
       WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
         AND (bt.typname IN ('bytea', 'text', 'varchar', 'bpchar')
              OR (bt.typname = 'jsonb' AND EXISTS (
                    SELECT 1 FROM unnest(t_relid, t_attnum, t_json) tc(relid, attnum, json)
                     WHERE tc.relid = rel.oid AND tc.attnum = a.attnum AND tc.json)))
       ORDER BY a.attnum
    LOOP
      i := cardinality(cols_name) + 1;
      cols_name := cols_name || col.attname;
      cols_attnum := cols_attnum || col.attnum;
      cols_target := cols_target || col.target_id;
      cols_unknown := cols_unknown || NULL::text;
      conds := '{}';
      IF rel.relkind = 'f' THEN
        cols_unknown[i] := 'a foreign table: rekey does not read remote data; check where it lives';
      ELSIF NOT has_column_privilege(rel.oid, col.attnum, 'SELECT') THEN
        cols_unknown[i] := format('role %I may not read it; GRANT SELECT ON %I.%I TO %I',
                                  current_user, rel.nspname, rel.relname, current_user);
      ELSIF EXISTS (SELECT 1 FROM unnest(t_relid, t_attnum, t_decrypted_key) tc(relid, attnum, fk)
                     WHERE tc.relid = rel.oid AND tc.attnum = col.attnum AND tc.fk) THEN
        -- Values whose key SQL cannot read (rekey.codec_keyed_by_decryption_only).
        cols_unknown[i] := (
          SELECT format('holds %s, which name no key SQL can read: SQL cannot count those under key %s (docs/FORMAT.md, "%s")',
                        rekey.codec_values_noun(tc.codec), p_key, tc.codec)
            FROM unnest(t_relid, t_attnum, t_decrypted_key, t_codec) tc(relid, attnum, fk, codec)
           WHERE tc.relid = rel.oid AND tc.attnum = col.attnum AND tc.fk
           ORDER BY tc.codec LIMIT 1);
      ELSIF col.base = 'jsonb' THEN
        -- A registered JSON field (docs/FORMAT.md, "Stored forms"): the Tink prefix of the string
        -- at its path, in its encoding.
        SELECT array_agg(DISTINCT format('%s = %L::bytea',
                                         rekey.value_head_sql(col.attname, x.encoding, x.json_path), tink))
          INTO json_conds
          FROM rekey.targets x
         WHERE x.target_id = ANY (SELECT tc.target_id FROM unnest(t_relid, t_attnum, t_id) tc(relid, attnum, target_id)
                                   WHERE tc.relid = rel.oid AND tc.attnum = col.attnum)
           AND x.json_path IS NOT NULL;
        conds := conds || array_to_string(json_conds, ' OR ');
        e_col := e_col || i; e_fmt := e_fmt || 'tink-json'::text; e_sql := e_sql || conds[1];
      ELSIF col.base = 'bytea' THEN
        conds := conds || format('substring(%I from 1 for 5) = %L::bytea', col.attname, tink);
        e_col := e_col || i; e_fmt := e_fmt || 'tink'::text; e_sql := e_sql || conds[1];
        IF kid_cols IS NOT NULL THEN
          IF kid_hidden THEN
            cols_unknown[i] := format('role %I may not read the key-id column of %I.%I; GRANT SELECT ON %I.%I TO %I',
                                      current_user, rel.nspname, rel.relname, rel.nspname,
                                      rel.relname, current_user);
          ELSE
            conds := conds || (SELECT format('(%s) AND %I IS NOT NULL',
                                             string_agg(format('%I = %s', k, p_key), ' OR '), col.attname)
                                 FROM unnest(kid_cols) k);
            e_col := e_col || i; e_fmt := e_fmt || 'raw'::text; e_sql := e_sql || conds[2];
          END IF;
        END IF;
      ELSE
        conds := conds || format('left(%I::text, 7) = ANY (%L::text[]) AND octet_length(%I) >= 44',
                                 col.attname, b64, col.attname);
        e_col := e_col || i; e_fmt := e_fmt || 'tink-base64'::text; e_sql := e_sql || conds[1];
        conds := conds || format('(lower(left(%I::text, 10)) = %L OR lower(left(%I::text, 12)) = %L) AND octet_length(%I) >= 66',
                                 col.attname, hex, col.attname, '\x' || hex, col.attname);
        e_col := e_col || i; e_fmt := e_fmt || 'tink-hex'::text; e_sql := e_sql || conds[2];
      END IF;
      IF cardinality(conds) > 1 THEN
        e_col := e_col || i; e_fmt := e_fmt || '*'::text;
        e_sql := e_sql || array_to_string(conds, ' OR ');
      END IF;
    END LOOP;
    CONTINUE WHEN cardinality(cols_name) = 0;

    RAISE NOTICE 'rekey census of key %: table % of %: %.%', p_key, done, tables,
      quote_ident(rel.nspname), quote_ident(rel.relname);

    counts := NULL;
    scan_error := NULL;
    blocker := NULL;
    IF cardinality(e_sql) > 0 AND (rel.relkind <> 'm' OR rel.relispopulated) THEN
      blocker := rekey.row_security_blocker(rel.oid);
      BEGIN
        EXECUTE format('SELECT ARRAY[%s]::bigint[] FROM %s %s',
                       (SELECT string_agg(format('count(*) FILTER (WHERE %s)', s), ', ' ORDER BY o)
                          FROM unnest(e_sql) WITH ORDINALITY u(s, o)),
                       CASE WHEN rel.relkind = 'r' THEN 'ONLY' ELSE '' END, rel.oid::regclass)
          INTO counts;
      EXCEPTION WHEN others THEN
        scan_error := format('reading it failed: %s', SQLERRM);
      END;
    END IF;

    FOR i IN 1 .. cardinality(cols_name) LOOP
      total := NULL;
      found_formats := '{}';
      IF cols_unknown[i] IS NULL AND scan_error IS NULL AND counts IS NOT NULL THEN
        total := 0;
        FOR j IN 1 .. cardinality(e_col) LOOP
          CONTINUE WHEN e_col[j] <> i;
          IF e_fmt[j] = '*' THEN
            total := counts[j];
          ELSIF counts[j] > 0 THEN
            found_formats := found_formats || e_fmt[j];
            -- A column with one format has no '*' entry: its one count is the total.
            IF NOT ('*' = ANY (SELECT e_fmt[x] FROM generate_subscripts(e_col, 1) x WHERE e_col[x] = i)) THEN
              total := counts[j];
            END IF;
          END IF;
        END LOOP;
      ELSIF cols_unknown[i] IS NULL AND scan_error IS NULL THEN
        total := 0;  -- an unpopulated materialized view holds no rows
      END IF;
      schema_name := rel.nspname;
      table_name := rel.relname;
      column_name := cols_name[i];
      target_id := cols_target[i];
      n := total;
      unknown := coalesce(cols_unknown[i], scan_error, blocker);
      formats := CASE WHEN cardinality(found_formats) > 0 THEN found_formats
                      ELSE (SELECT array_agg(e_fmt[x] ORDER BY x) FROM generate_subscripts(e_col, 1) x
                             WHERE e_col[x] = i AND e_fmt[x] <> '*') END;
      status := CASE WHEN total > 0 THEN 'in_use' WHEN unknown IS NOT NULL THEN 'unknown' END;
      CONTINUE WHEN status IS NULL;
      RETURN NEXT;
    END LOOP;
  END LOOP;

  -- Registered targets that no longer resolve are never skipped.
  FOR col IN
    SELECT tc.* FROM rekey.target_columns() tc
     WHERE tc.unresolved IS NOT NULL AND tc.codec NOT IN ('vault-transit', 'aws-kms')
     ORDER BY tc.target_id
  LOOP
    SELECT t.schema_name, t.table_name, t.column_name INTO schema_name, table_name, column_name
      FROM rekey.targets t WHERE t.target_id = col.target_id;
    target_id := col.target_id;
    formats := ARRAY[col.codec];
    n := NULL;
    unknown := format('registered target %s (%s): %s; if its values are truly gone: rekey keys forget-target %s',
                      col.target_id, col.registered_as, col.unresolved, col.target_id);
    status := 'unresolved';
    RETURN NEXT;
  END LOOP;
END $$;

CREATE FUNCTION rekey.key_column_text_sql(p_expr text, p_type text, p_form text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
  SELECT CASE WHEN p_form = 'canonical' AND p_type = 'date'
              THEN format('rekey.date_key_text(%s)', p_expr)
              WHEN p_form = 'canonical' AND p_type = 'timestamp with time zone'
              THEN format('rekey.timestamptz_key_text(%s)', p_expr)
              ELSE format('%s::text', p_expr) END
$$;

CREATE FUNCTION rekey.key_event(p_old_status text, p_new_status text, p_rewrapped boolean) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
  SELECT CASE
    WHEN p_old_status IS NULL THEN 'added'
    WHEN p_old_status IS NOT DISTINCT FROM p_new_status THEN
      CASE WHEN p_rewrapped THEN 'rewrapped' END
    WHEN p_new_status = 'primary' AND p_old_status = 'decrypt_only' THEN 'rolled_back'
    WHEN p_new_status = 'primary' THEN 'promoted'
    WHEN p_new_status = 'decrypt_only' AND p_old_status = 'primary' THEN 'demoted'
    WHEN p_new_status = 'decrypt_only' AND p_old_status = 'retired' THEN 'unretired'
    ELSE p_new_status
  END
$$;

CREATE FUNCTION rekey.key_lifecycle() RETURNS TABLE(from_status text, to_status text)
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
  VALUES ('enabled',      'primary'),
         ('enabled',      'decrypt_only'),
         ('enabled',      'retired'),
         ('primary',      'decrypt_only'),
         ('decrypt_only', 'primary'),       -- rollback: the old key becomes primary again
         ('decrypt_only', 'retired'),
         ('retired',      'decrypt_only'),  -- un-retire, possible until destroyed
         ('retired',      'destroyed')
$$;

CREATE FUNCTION rekey.key_lock_id(p_key bigint) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
  SELECT (x'52454b59'::bigint << 32) | p_key
$$;

CREATE FUNCTION rekey.key_order_sql(p_columns name[], p_alias text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
  SELECT string_agg(format('%I.%I', p_alias, c), ', ' ORDER BY i)
    FROM unnest(p_columns) WITH ORDINALITY AS k(c, i)
$$;

CREATE FUNCTION rekey.key_row_sql(p_columns name[], p_alias text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
  SELECT CASE WHEN cardinality(p_columns) = 1 THEN format('%I.%I', p_alias, p_columns[1])
              ELSE 'ROW(' || string_agg(format('%I.%I', p_alias, c), ', ' ORDER BY i) || ')' END
    FROM unnest(p_columns) WITH ORDINALITY AS k(c, i)
$$;

CREATE FUNCTION rekey.key_text_sql(p_columns name[], p_types text[], p_form text, p_alias text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $_$
  SELECT CASE WHEN cardinality(p_columns) = 1
              THEN rekey.key_column_text_sql(format('%I.%I', p_alias, p_columns[1]), p_types[1],
                                             p_form)
              ELSE $s$'[' || $s$
                   || string_agg(format('to_json(%s)::text',
                                        rekey.key_column_text_sql(format('%I.%I', p_alias, k.c), k.ty,
                                                                  p_form)),
                                 $s$ || ',' || $s$ ORDER BY k.i)
                   || $s$ || ']'$s$
         END
    FROM unnest(p_columns, p_types) WITH ORDINALITY AS k(c, ty, i)
$_$;

CREATE FUNCTION rekey.key_transition_allowed(from_status text, to_status text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
  SELECT EXISTS (SELECT 1 FROM rekey.key_lifecycle() l
                 WHERE l.from_status = $1 AND l.to_status = $2)
$_$;

CREATE FUNCTION rekey.key_transitions_from(from_status text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $_$
  SELECT coalesce(string_agg(l.to_status, ', ' ORDER BY l.to_status), 'none')
  FROM rekey.key_lifecycle() l WHERE l.from_status = $1
$_$;

CREATE FUNCTION rekey.key_usage(p_key bigint) RETURNS TABLE(target_id bigint, target text, n bigint, unknown text)
    LANGUAGE plpgsql
    AS $$
DECLARE
  g record;
  cond text;
  blocker text;
BEGIN
  FOR g IN
    SELECT min(tc.target_id) AS target_id, tc.relid, tc.attnum,
           min(tc.schema_name) AS schema_name, min(tc.table_name) AS table_name,
           min(tc.column_name) AS column_name, min(tc.registered_as) AS registered_as,
           min(tc.unresolved) AS unresolved,
           -- A Tink value's head as the column stores it (rekey.value_head_sql: bytea, or text
           -- in an encoding, maybe inside a JSON document), one per stored form registered.
           array_agg(DISTINCT rekey.value_head_sql(tc.column_name, x.encoding, x.json_path))
             FILTER (WHERE tc.codec = 'tink' AND tc.unresolved IS NULL) AS tink_heads,
           array_remove(array_agg(DISTINCT CASE WHEN tc.codec = 'raw' THEN tc.key_id_attnum END), NULL)
             AS key_id_attnums,
           -- Fernet tokens name no key (trial decryption): which key holds a token cannot be
           -- read by SQL, so a Fernet column counts as unknown for every key a job on it moved
           -- from or to.
           -- Rails and Lockbox likewise (rekey.codec_keyed_by_decryption_only).
           bool_or(rekey.codec_keyed_by_decryption_only(tc.codec) AND EXISTS (
             SELECT 1 FROM rekey.job_columns jc JOIN rekey.job_keys jk USING (job_id)
              WHERE jc.target_id = tc.target_id AND p_key IN (jk.source_key_id, jk.target_key_id)))
             AS keyed_by_decryption,
           min(tc.codec) FILTER (WHERE rekey.codec_keyed_by_decryption_only(tc.codec)) AS decrypted_codec
      FROM rekey.target_columns() tc
      JOIN rekey.targets x USING (target_id)
     WHERE tc.codec NOT IN ('vault-transit', 'aws-kms')
     GROUP BY tc.relid, tc.attnum, CASE WHEN tc.unresolved IS NOT NULL THEN tc.target_id END
     ORDER BY 1
  LOOP
    target_id := g.target_id;
    n := NULL;
    unknown := NULL;
    IF g.unresolved IS NOT NULL THEN
      target := g.registered_as;
      unknown := format('registered target %s (%s): %s; if its values are truly gone: rekey keys forget-target %s',
                        g.target_id, g.registered_as, g.unresolved, g.target_id);
      RETURN NEXT;
      CONTINUE;
    END IF;
    target := format('%I.%I.%I', g.schema_name, g.table_name, g.column_name);
    IF NOT has_column_privilege(g.relid, g.attnum, 'SELECT')
       OR EXISTS (SELECT 1 FROM unnest(g.key_id_attnums) k
                   WHERE NOT has_column_privilege(g.relid, k, 'SELECT')) THEN
      unknown := format('role %I may not read %s; GRANT SELECT ON %I.%I TO %I', current_user,
                        target, g.schema_name, g.table_name, current_user);
      RETURN NEXT;
      CONTINUE;
    END IF;
    IF g.keyed_by_decryption THEN
      target := format('%I.%I.%I', g.schema_name, g.table_name, g.column_name);
      unknown := format('%s holds %s, which name no key SQL can read: SQL cannot count those under key %s (docs/FORMAT.md, "%s")',
                        target, rekey.codec_values_noun(g.decrypted_codec), p_key, g.decrypted_codec);
      RETURN NEXT;
      CONTINUE;
    END IF;
    SELECT string_agg(c, ' OR ') INTO cond FROM (
      SELECT format('%s = %L::bytea', h, rekey.tink_prefix(p_key)) AS c
        FROM unnest(g.tink_heads) h
      UNION ALL
      SELECT format('(%I = %s AND %I IS NOT NULL)', a.attname, p_key, g.column_name)
        FROM unnest(g.key_id_attnums) k JOIN pg_attribute a ON a.attrelid = g.relid AND a.attnum = k) x;
    IF cond IS NULL THEN
      n := 0;  -- a Fernet column no job moved this key in or out of
    ELSE
      EXECUTE format('SELECT count(*) FROM %s WHERE %s', g.relid::regclass, cond) INTO n;
    END IF;
    unknown := rekey.row_security_blocker(g.relid);
    RETURN NEXT;
  END LOOP;
END $$;

CREATE FUNCTION rekey.keys_enforce_lifecycle() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.status IS DISTINCT FROM 'enabled' THEN
      RAISE EXCEPTION 'new key % must be inserted with status enabled, not %; promote it afterwards',
        NEW.key_id, NEW.status;
    END IF;
    NEW.created_at := coalesce(NEW.created_at, now());
    NEW.enabled_at := NEW.created_at;
    NEW.primary_at := NULL;
    NEW.decrypt_only_at := NULL;
    NEW.retired_at := NULL;
    NEW.destroyed_at := NULL;
    NEW.updated_by := NULL;
    RETURN NEW;
  END IF;

  -- UPDATE
  IF NEW.key_id IS DISTINCT FROM OLD.key_id THEN
    RAISE EXCEPTION 'key_id of key % is immutable', OLD.key_id;
  END IF;
  IF NEW.scope IS DISTINCT FROM OLD.scope THEN
    RAISE EXCEPTION 'scope of key % is immutable (it is %)', OLD.key_id, OLD.scope;
  END IF;
  IF NEW.created_at IS DISTINCT FROM OLD.created_at
     OR NEW.created_by IS DISTINCT FROM OLD.created_by
     OR NEW.origin IS DISTINCT FROM OLD.origin
     OR NEW.algorithm IS DISTINCT FROM OLD.algorithm THEN
    RAISE EXCEPTION 'created_at, created_by, origin and algorithm of key % are immutable', OLD.key_id;
  END IF;

  IF OLD.status = 'destroyed'
     AND (NEW.wrapped_key IS DISTINCT FROM OLD.wrapped_key
          OR NEW.kms_key_ref IS DISTINCT FROM OLD.kms_key_ref
          OR NEW.kms_provider IS DISTINCT FROM OLD.kms_provider) THEN
    RAISE EXCEPTION 'key % is destroyed: its wrapped key, kms_key_ref and kms_provider cannot change',
      OLD.key_id;
  END IF;

  IF NEW.status IS DISTINCT FROM OLD.status THEN
    IF NOT rekey.key_transition_allowed(OLD.status, NEW.status) THEN
      RAISE EXCEPTION 'illegal key lifecycle transition for key %: % -> % (allowed from %: %)',
        OLD.key_id, OLD.status, NEW.status, OLD.status, rekey.key_transitions_from(OLD.status);
    END IF;

    IF NEW.status IN ('retired', 'destroyed') THEN
      PERFORM rekey.check_key_retirement(OLD.key_id, NEW.status);
    END IF;

    CASE NEW.status
      WHEN 'primary'      THEN NEW.primary_at := now();
      WHEN 'decrypt_only' THEN NEW.decrypt_only_at := now();
      WHEN 'retired'      THEN NEW.retired_at := now();
      WHEN 'destroyed'    THEN NEW.destroyed_at := now();
                               NEW.wrapped_key := NULL;  -- crypto-shredding: the key is gone
      ELSE NULL;
    END CASE;
  ELSE
    -- Not a transition: the stamps stay as they were.
    NEW.enabled_at := OLD.enabled_at;
    NEW.primary_at := OLD.primary_at;
    NEW.decrypt_only_at := OLD.decrypt_only_at;
    NEW.retired_at := OLD.retired_at;
    NEW.destroyed_at := OLD.destroyed_at;
  END IF;

  NEW.updated_by := current_user;
  RETURN NEW;
END
$$;

CREATE FUNCTION rekey.keys_reject_delete() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    RAISE EXCEPTION 'key % cannot be deleted: key records are audit evidence; destroy the key instead (rekey keys destroy %)',
      OLD.key_id, OLD.key_id;
  END IF;
  RAISE EXCEPTION 'rekey.keys cannot be truncated: key records are audit evidence';
END
$$;

CREATE FUNCTION rekey.lagging_readers(p_job bigint, p_key bigint) RETURNS TABLE(reader text, scope text, key_id bigint, key_ids bigint[], last_seen timestamp with time zone)
    LANGUAGE sql STABLE
    AS $$
  SELECT r.reader, r.scope, k.key_id, r.key_ids, r.last_seen
    FROM rekey.jobs j
    JOIN rekey.keys k ON k.key_id = p_key
    JOIN rekey.readers r ON r.scope = k.scope
   WHERE j.job_id = p_job
     AND r.last_seen >= now() - j.reader_window
     AND NOT k.key_id = ANY (r.key_ids)
   ORDER BY r.scope, r.reader
$$;

CREATE FUNCTION rekey.lock_batch_partition(p_job bigint, p_batch integer, p_worker text) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  b rekey.batches;
  reason text;
BEGIN
  SELECT * INTO STRICT b FROM rekey.batches WHERE job_id = p_job AND batch_no = p_batch;
  IF b.partition_name IS NULL THEN
    RETURN NULL;
  END IF;
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  EXECUTE format('LOCK TABLE ONLY %I.%I IN ACCESS SHARE MODE', j.schema_name, j.table_name);
  -- A new statement, so a new snapshot: it sees a DETACH or DROP that committed before the lock.
  reason := rekey.partition_gone(j, b.partition_schema, b.partition_name);
  IF reason IS NULL THEN
    RETURN NULL;
  END IF;
  PERFORM rekey.complete_batch(p_job, p_batch, p_worker, 0, 0, 0, 0,
                               jsonb_build_object('partition_gone', reason));
  UPDATE rekey.batches SET end_reason = reason WHERE job_id = p_job AND batch_no = p_batch;
  RETURN reason;
END $$;

CREATE FUNCTION rekey.lock_job_definitions() RETURNS void
    LANGUAGE sql
    AS $$
  SELECT pg_advisory_xact_lock(x'52454b4a'::bigint << 32)
$$;

CREATE FUNCTION rekey.lock_key_for_lifecycle(p_key bigint) RETURNS void
    LANGUAGE sql
    AS $$
  SELECT pg_advisory_xact_lock(rekey.key_lock_id(p_key))
$$;

CREATE FUNCTION rekey.lock_keys_for_write(p_keys bigint[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  k bigint;
  st text;
BEGIN
  FOR k IN SELECT DISTINCT x FROM unnest(p_keys) x WHERE x IS NOT NULL ORDER BY x LOOP
    PERFORM pg_advisory_xact_lock_shared(rekey.key_lock_id(k));
  END LOOP;
  -- A new statement: in READ COMMITTED its snapshot is taken after every lock was granted, so it
  -- sees a retire or destroy that committed while this transaction waited.
  FOR k, st IN
    SELECT x, ky.status FROM unnest(p_keys) x LEFT JOIN rekey.keys ky ON ky.key_id = x
     WHERE x IS NOT NULL AND (ky.status IS NULL OR ky.status IN ('retired', 'destroyed'))
     ORDER BY x LIMIT 1
  LOOP
    RAISE EXCEPTION 'key % is %: rekey writes no value under it', k, coalesce(st, 'unknown')
      USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'nothing of this batch was written; a retired key may be made decrypt_only again, a destroyed one is gone: roll the job back or cancel it';
  END LOOP;
END $$;

CREATE TABLE rekey.rotations (
    rotation_id bigint NOT NULL,
    name text,
    scope text NOT NULL,
    from_keys bigint[] NOT NULL,
    from_primary bigint,
    to_key bigint NOT NULL,
    stage_plan numeric[] NOT NULL,
    state text DEFAULT 'creating'::text NOT NULL,
    created_by text DEFAULT CURRENT_USER NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    promoted_at timestamp with time zone,
    rollback_started_at timestamp with time zone,
    rollback_reason text,
    finished_at timestamp with time zone,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT rotations_state_check CHECK ((state = ANY (ARRAY['creating'::text, 'rotating'::text, 'promoted'::text, 'completed'::text, 'rolling_back'::text, 'rolled_back'::text, 'cancelled'::text])))
);

CREATE FUNCTION rekey.lock_rotation(p_rotation bigint, p_verb text, p_done text[]) RETURNS rekey.rotations
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.next_gate(p_job bigint DEFAULT NULL::bigint) RETURNS TABLE(job_id bigint, stage_no integer, bucket_hi integer, sample_size integer)
    LANGUAGE sql
    AS $$
  SELECT j.job_id, j.current_stage, s.bucket_hi, j.gate_sample_size
    FROM rekey.jobs j JOIN rekey.job_stages s ON s.job_id = j.job_id AND s.stage_no = j.current_stage
   WHERE j.state = 'verifying' AND (p_job IS NULL OR j.job_id = p_job)
   ORDER BY j.job_id LIMIT 1
   FOR UPDATE OF j SKIP LOCKED;
$$;

CREATE FUNCTION rekey.notify_job_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  PERFORM pg_notify('rekey_jobs', NEW.job_id::text);
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.notify_key_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
  old_status text := CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END;
  event text := rekey.key_event(old_status, NEW.status,
                                TG_OP = 'UPDATE' AND (OLD.wrapped_key, OLD.kms_key_ref, OLD.kms_provider)
                                                     IS DISTINCT FROM
                                                     (NEW.wrapped_key, NEW.kms_key_ref, NEW.kms_provider));
BEGIN
  IF event IS NOT NULL THEN
    PERFORM pg_notify('rekey_keys', jsonb_build_object(
      'scope', NEW.scope, 'key_id', NEW.key_id, 'event', event, 'status', NEW.status,
      'previous_status', old_status)::text);
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.open_rollback_sweep(p_job bigint) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
  first_pass rekey.job_stages;
  n integer;
BEGIN
  SELECT s.* INTO STRICT first_pass FROM rekey.job_stages s JOIN rekey.jobs j
      ON j.job_id = s.job_id AND s.stage_no = j.rollback_stage
   WHERE s.job_id = p_job;
  SELECT max(stage_no) + 1 INTO n FROM rekey.job_stages WHERE job_id = p_job;
  INSERT INTO rekey.job_stages (job_id, stage_no, kind, percent, bucket_lo, bucket_hi)
  VALUES (p_job, n, 'rollback', first_pass.percent, first_pass.bucket_lo, first_pass.bucket_hi);
  PERFORM rekey.plan_sweep(p_job, n);
  PERFORM rekey.open_stage(p_job, n);
  RETURN n;
END $$;

CREATE FUNCTION rekey.open_stage(p_job bigint, p_stage integer) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  -- Batches finished by an earlier pass (before a rollback) are checked again.
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL, rows_done = 0,
         rows_skipped = 0, rows_failed = 0, last_error = NULL
   WHERE job_id = p_job AND stage_no = p_stage AND state <> 'pending';
  UPDATE rekey.job_stages SET state = 'running', opened_at = now(), finished_at = NULL
   WHERE job_id = p_job AND stage_no = p_stage;
  UPDATE rekey.jobs SET current_stage = p_stage, state = 'active', state_reason = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('stage.opened', p_job, jsonb_build_object(
    'stage', p_stage, 'kind', st.kind, 'percent', st.percent,
    'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage),
    'rows', (SELECT sum(planned_rows) FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage)));
  IF st.kind = 'rollout' AND p_stage >= j.promote_at_stage AND NOT j.keys_promoted THEN
    -- A job of a rotation defers to it (sql/schema/55_rotations.sql).
    PERFORM rekey.promote_or_defer(p_job);
  END IF;
END $$;

CREATE FUNCTION rekey.partition_gone(p_job rekey.jobs, p_schema name, p_name name) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  leaf regclass := to_regclass(format('%I.%I', p_schema, p_name));
BEGIN
  IF p_name IS NULL THEN
    RETURN NULL;
  ELSIF leaf IS NULL THEN
    RETURN format('partition %I.%I was dropped', p_schema, p_name);
  ELSIF NOT EXISTS (SELECT 1 FROM pg_partition_tree(format('%I.%I', p_job.schema_name, p_job.table_name)::regclass) t
                     WHERE t.relid = leaf AND t.isleaf) THEN
    RETURN format('partition %I.%I was detached from %I.%I', p_schema, p_name, p_job.schema_name,
                  p_job.table_name);
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.pause_job(p_job bigint, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE sql
    AS $$ SELECT rekey.set_job_state(p_job, 'paused', ARRAY['active'], 'paused', p_reason) $$;

CREATE FUNCTION rekey.plan_rollout(p_job bigint) RETURNS integer
    LANGUAGE plpgsql
    SET work_mem TO '128MB'
    SET enable_sort TO 'off'
    SET jit TO 'off'
    AS $_$
DECLARE
  j rekey.jobs;
  scope_sql text;
  first_batch integer;
  stages integer[];
  los integer[];
  his integer[];
  counts text;
  n integer;
  key_text text;
  key_select text;
  key_names text;
  total integer := 0;
  leaf record;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  scope_sql := rekey.scope_condition(j);
  -- The key's columns stream as o1, o2, ... (the window orders by them, each in its own
  -- collation) beside the key's text k (rekey.job_key_text_sql).
  key_text := rekey.job_key_text_sql(j, 't');
  SELECT string_agg(format('t.%I AS o%s', c, i), ', ' ORDER BY i), string_agg('o' || i, ', ' ORDER BY i)
    INTO key_select, key_names FROM unnest(j.key_columns) WITH ORDINALITY AS x(c, i);
  SELECT array_agg(s.stage_no ORDER BY s.bucket_lo), array_agg(s.bucket_lo ORDER BY s.bucket_lo),
         array_agg(s.bucket_hi ORDER BY s.bucket_lo)
    INTO stages, los, his
    FROM rekey.job_stages s
   WHERE s.job_id = p_job AND s.kind = 'rollout'
     AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = s.job_id AND b.stage_no = s.stage_no);
  IF stages IS NULL THEN
    RETURN 0;
  END IF;
  -- The rows stream in key order from the primary-key index, each with its stage found by a
  -- binary search of the stages' lower bounds (width_bucket) from its bucket, computed once
  -- (OFFSET 0 keeps the planner from inlining the expression twice). One running count per stage
  -- over that stream numbers each row within its stage without sorting the table (enable_sort is
  -- off for this function so the planner streams rather than sorts), and the rows are grouped
  -- into batches by hashing. A batch of a stage that ends below 100% also records its rows' keys
  -- (see batches.keys), in key order.
  SELECT string_agg(format('count(*) FILTER (WHERE i = %s) OVER w', x), ', ' ORDER BY x)
    INTO counts FROM generate_subscripts(stages, 1) x;
  -- A partitioned table one leaf at a time (rekey.job_leaves): each leaf's stages are cut on
  -- their own, and a stage without rows in a leaf gets one empty batch there.
  FOR leaf IN SELECT * FROM rekey.job_leaves(j) LOOP
    EXECUTE format($q$
      WITH numbered AS (
        SELECT i, k, (ARRAY[%4$s])[i] - 1 AS rn
          FROM (SELECT %5$s, k, CASE WHEN bucket < $6[x] THEN x END AS i
                  FROM (SELECT %5$s, k, bucket, width_bucket(bucket, $5) AS x
                          FROM (SELECT %1$s, %6$s AS k, rekey.stage_bucket(%6$s) AS bucket
                                  FROM %2$s AS t WHERE true%3$s ORDER BY %7$s OFFSET 0) r) s) y
         WHERE i IS NOT NULL
        WINDOW w AS (ORDER BY %5$s ROWS UNBOUNDED PRECEDING)),
      grouped AS (
        SELECT $4[i] AS stage_no, rn / $2 AS n, count(*) AS rows, array_agg(k) AS keys,
               min(k) FILTER (WHERE rn %% $2 = 0) AS first_key
          FROM numbered GROUP BY i, rn / $2),
      planned AS (
        SELECT stage_no, n, CASE WHEN n = 0 THEN NULL ELSE first_key END AS lo,
               lead(first_key) OVER (PARTITION BY stage_no ORDER BY n) AS hi, rows,
               CASE WHEN stage_no = ANY ($7) THEN keys END AS keys
          FROM grouped
        UNION ALL
        SELECT stage_no, 0, NULL, NULL, 0, NULL FROM unnest($4) AS todo(stage_no)
         WHERE NOT EXISTS (SELECT 1 FROM grouped WHERE grouped.stage_no = todo.stage_no))
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows, keys,
                                 partition_schema, partition_name)
      SELECT $1, $3 + row_number() OVER (ORDER BY stage_no, n), stage_no, lo, hi, rows, keys, $8, $9
        FROM planned$q$,
      key_select, rekey.batch_relation_sql(j, leaf.leaf_schema, leaf.leaf_name), scope_sql, counts,
      key_names, key_text, rekey.key_order_sql(j.key_columns, 't'))
      USING p_job, j.batch_size, first_batch + total, stages, los, his,
            (SELECT array_agg(stages[x]) FROM generate_subscripts(stages, 1) x WHERE his[x] < 10000),
            leaf.leaf_schema, leaf.leaf_name;
    GET DIAGNOSTICS n = ROW_COUNT;
    total := total + n;
  END LOOP;
  RETURN total;
END $_$;

CREATE FUNCTION rekey.plan_stage(p_job bigint, p_stage integer) RETURNS integer
    LANGUAGE plpgsql
    SET jit TO 'off'
    AS $_$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  rel text;
  scope_sql text := '';
  key_text text;
  key_row text;
  key_order text;
  key_types text[];
  n integer := 0;
  total integer := 0;
  first_batch integer;
  leaf record;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF EXISTS (SELECT 1 FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage) THEN
    RAISE EXCEPTION 'stage % of job % is already planned', p_stage, p_job;
  END IF;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  scope_sql := rekey.scope_condition(j);
  key_types := rekey.job_key_bound_types(j);
  key_text := rekey.job_key_text_sql(j, 't');
  key_row := rekey.key_row_sql(j.key_columns, 't');
  key_order := rekey.key_order_sql(j.key_columns, 't');

  FOR leaf IN SELECT * FROM rekey.job_leaves(j) LOOP
    rel := rekey.batch_relation_sql(j, leaf.leaf_schema, leaf.leaf_name);
    IF st.bucket_lo > 0 OR st.bucket_hi < 10000 THEN
      EXECUTE format($q$
        INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                   partition_schema, partition_name)
        SELECT $1, $2 + 1 + n, $3, CASE WHEN n = 0 THEN NULL ELSE k END,
               lead(k) OVER (ORDER BY n), least($4, total - n * $4), $7, $8
          FROM (SELECT k, rn / $4 AS n, count(*) OVER () AS total, rn %% $4 AS r
                  FROM (SELECT %1$s AS k, row_number() OVER (ORDER BY %4$s) - 1 AS rn
                          FROM %2$s AS t
                         WHERE rekey.stage_bucket(%1$s) >= $5
                           AND rekey.stage_bucket(%1$s) < $6%3$s) numbered) cut
         WHERE r = 0$q$, key_text, rel, scope_sql, key_order)
        USING p_job, first_batch + total, p_stage, j.batch_size, st.bucket_lo, st.bucket_hi,
              leaf.leaf_schema, leaf.leaf_name;
      GET DIAGNOSTICS n = ROW_COUNT;
      IF n = 0 THEN
        INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                   partition_schema, partition_name)
        VALUES (p_job, first_batch + total + 1, p_stage, NULL, NULL, 0, leaf.leaf_schema,
                leaf.leaf_name);
        n := 1;
      END IF;
    ELSE
      EXECUTE format($q$
        WITH RECURSIVE walk(lo, hi, n) AS (
          SELECT NULL::text, (SELECT %1$s FROM %2$s AS t WHERE true%3$s ORDER BY %5$s
                              OFFSET $4 LIMIT 1), 1
          UNION ALL
          SELECT w.hi, (SELECT %1$s FROM %2$s AS t WHERE %4$s >= %6$s%3$s ORDER BY %5$s
                        OFFSET $4 LIMIT 1), w.n + 1
            FROM walk w WHERE w.hi IS NOT NULL)
        INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                   partition_schema, partition_name)
        SELECT $1, $2 + w.n, $3, w.lo, w.hi,
               CASE WHEN w.hi IS NOT NULL THEN $4
                    WHEN w.lo IS NULL THEN (SELECT count(*) FROM %2$s AS t WHERE true%3$s)
                    ELSE (SELECT count(*) FROM %2$s AS t WHERE %4$s >= %7$s%3$s) END, $5, $6
          FROM walk w$q$, key_text, rel, scope_sql, key_row, key_order,
        rekey.key_bound_sql(key_types, 'w.hi'), rekey.key_bound_sql(key_types, 'w.lo'))
        USING p_job, first_batch + total, p_stage, j.batch_size, leaf.leaf_schema, leaf.leaf_name;
      GET DIAGNOSTICS n = ROW_COUNT;
    END IF;
    total := total + n;
  END LOOP;
  RETURN total;
END $_$;

CREATE FUNCTION rekey.plan_sweep(p_job bigint, p_stage integer) RETURNS integer
    LANGUAGE plpgsql
    AS $_$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  first_batch integer;
  n integer;
  total integer := 0;
  leaf record;
  lo_key text;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  SELECT coalesce(max(batch_no), 0) INTO first_batch FROM rekey.batches WHERE job_id = p_job;
  -- A rollout bound as the key it names (rekey.key_bound_sql), to order the bounds by key; the
  -- bounds stay in the key's text form. A composite key's bounds order as row values. A text
  -- column's bound orders in the column's collation, as its index and the rollout's ranges do
  -- (rekey.job_key_bound_types): in the default one, ranges over a COLLATE "en-x-icu" key could
  -- run backwards and leave rows in no sweep batch.
  lo_key := rekey.key_bound_sql(rekey.job_key_bound_types(j), 'b.lo');
  -- Per leaf attached now (rekey.job_leaves): from that leaf's bounds, so a leaf attached after
  -- the rollout (no bounds) gets one batch over all of it, and a leaf detached or dropped since
  -- gets none.
  FOR leaf IN SELECT * FROM rekey.job_leaves(j) LOOP
    EXECUTE format($q$
      WITH starts AS (
        SELECT k, lo FROM (SELECT %1$s AS k, b.lo, row_number() OVER (ORDER BY %1$s) AS rn
                             FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
                            WHERE b.job_id = $1 AND b.lo IS NOT NULL
                              AND b.partition_schema IS NOT DISTINCT FROM $6
                              AND b.partition_name IS NOT DISTINCT FROM $7
                              AND CASE WHEN $4 THEN b.stage_no = $5 ELSE s.kind = 'rollout' END) c
         WHERE rn %% 100 = 0),
      ranges AS (
        SELECT 0::bigint AS batch, NULL::text AS lo
        UNION ALL
        SELECT row_number() OVER (ORDER BY k), lo FROM (SELECT DISTINCT ON (k) k, lo FROM starts ORDER BY k) d)
      INSERT INTO rekey.batches (job_id, batch_no, stage_no, lo, hi, planned_rows,
                                 partition_schema, partition_name)
      SELECT $1, $2 + 1 + batch, $3, lo, lead(lo) OVER (ORDER BY batch), 0, $6, $7
        FROM ranges$q$, lo_key)
      USING p_job, first_batch + total, p_stage, st.kind = 'rollback', j.rollback_stage,
            leaf.leaf_schema, leaf.leaf_name;
    GET DIAGNOSTICS n = ROW_COUNT;
    total := total + n;
  END LOOP;
  RETURN total;
END $_$;

CREATE FUNCTION rekey.promote_job_keys(p_job bigint) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  r record;
BEGIN
  -- Not while a live reader cannot decrypt a target key; a later claim promotes (45_readers.sql).
  IF NOT rekey.readers_allow_promotion(p_job) THEN
    RETURN;
  END IF;
  FOR r IN
    SELECT k.key_id, k.scope, k.status FROM rekey.keys k
     WHERE k.key_id IN (SELECT target_key_id FROM rekey.job_keys WHERE job_id = p_job)
       AND (SELECT count(DISTINCT jk.target_key_id) FROM rekey.job_keys jk JOIN rekey.keys x ON x.key_id = jk.target_key_id
             WHERE jk.job_id = p_job AND x.scope = k.scope) = 1
  LOOP
    IF r.status <> 'primary' THEN
      UPDATE rekey.keys SET status = 'decrypt_only' WHERE scope = r.scope AND status = 'primary';
      UPDATE rekey.keys SET status = 'primary' WHERE key_id = r.key_id;
    END IF;
  END LOOP;
  UPDATE rekey.jobs SET keys_promoted = true WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.keys_promoted', p_job, jsonb_build_object(
    'primary', (SELECT jsonb_agg(target_key_id) FROM rekey.job_keys WHERE job_id = p_job)));
END $$;

CREATE FUNCTION rekey.promote_or_defer(p_job bigint) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.reader_heartbeat(p_reader text, p_scope text, p_key_ids bigint[]) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
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

CREATE FUNCTION rekey.readers_allow_claim(p_job bigint) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.readers_allow_promotion(p_job bigint) RETURNS boolean
    LANGUAGE sql
    AS $$
  SELECT rekey.readers_ready(p_job, 'promotion')
$$;

CREATE FUNCTION rekey.readers_ready(p_job bigint, p_for text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.record_gate(p_job bigint, p_stage integer, p_values_checked bigint, p_decrypt_errors bigint, p_verified_by text, p_details jsonb DEFAULT '{}'::jsonb) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  st rekey.job_stages;
  quarantined bigint;
  rate numeric;
  audit_ok boolean;
  ok boolean;
  gate bigint;
  last_stage integer;
BEGIN
  SELECT * INTO STRICT j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  SELECT * INTO STRICT st FROM rekey.job_stages WHERE job_id = p_job AND stage_no = p_stage;
  IF j.state <> 'verifying' OR j.current_stage <> p_stage THEN
    RAISE EXCEPTION 'job % is not waiting for the gate of stage %', p_job, p_stage
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  SELECT coalesce(sum(rows_failed), 0) INTO quarantined
    FROM rekey.batches WHERE job_id = p_job AND stage_no = p_stage;
  rate := (p_decrypt_errors + quarantined)::numeric / greatest(p_values_checked + quarantined, 1);
  -- Each run of a batch (claim to commit) appends one completion row; a batch run again after a
  -- rollback or requeue has one per run, so count those since its latest claim.
  audit_ok := NOT EXISTS (
    SELECT 1 FROM rekey.batches b WHERE b.job_id = p_job AND b.state = 'done'
       AND (SELECT count(*) FROM rekey.audit a WHERE a.job_id = b.job_id AND a.batch_no = b.batch_no
               AND a.action = 'rotation.batch.completed' AND a.at >= b.claimed_at) <> 1);
  ok := rate <= j.error_threshold AND audit_ok AND (rate < j.error_threshold OR j.error_threshold = 0);
  INSERT INTO rekey.gates (job_id, stage_no, percent, values_checked, decrypt_errors, quarantined,
                           error_rate, threshold, audit_complete, passed, verified_by, details)
  VALUES (p_job, p_stage, st.percent, p_values_checked, p_decrypt_errors, quarantined, rate,
          j.error_threshold, audit_ok, ok, p_verified_by, p_details)
  RETURNING gate_id INTO gate;
  PERFORM rekey.audit_event(CASE WHEN ok THEN 'gate.passed' ELSE 'gate.failed' END, p_job,
    jsonb_build_object('stage', p_stage, 'percent', st.percent, 'values_checked', p_values_checked,
                       'decrypt_errors', p_decrypt_errors, 'quarantined', quarantined,
                       'error_rate', rate, 'threshold', j.error_threshold, 'audit_complete', audit_ok),
    CASE WHEN ok THEN 'success' ELSE 'failure' END, NULL, p_verified_by);
  IF NOT ok THEN
    UPDATE rekey.job_stages SET state = 'gate_failed' WHERE job_id = p_job AND stage_no = p_stage;
    UPDATE rekey.jobs SET state = 'paused', updated_at = now(),
           state_reason = format('gate of stage %s (%s%%) failed: decrypt error rate %s%% (%s of %s values) against a threshold of %s%%%s; see rekey.gates and rekey.row_failures, then roll back or fix and resume',
                                 p_stage, st.percent, round(100 * rate, 3), p_decrypt_errors + quarantined,
                                 p_values_checked + quarantined, round(100 * j.error_threshold, 3),
                                 CASE WHEN audit_ok THEN '' ELSE '; audit rows are missing' END)
     WHERE job_id = p_job;
    RETURN gate;
  END IF;
  UPDATE rekey.job_stages SET state = 'passed' WHERE job_id = p_job AND stage_no = p_stage;
  SELECT max(stage_no) INTO last_stage FROM rekey.job_stages WHERE job_id = p_job AND kind = 'rollout';
  IF p_stage = last_stage THEN
    -- Everything has moved and the new key is primary: sweep up what applications wrote meanwhile.
    -- A job of a rotation whose other jobs are short of the promotion stage waits for them.
    IF NOT j.keys_promoted AND NOT rekey.promote_or_defer(p_job) THEN
      PERFORM rekey.hold_for_rotation(p_job);
      RETURN gate;
    END IF;
    PERFORM rekey.open_stage(p_job, rekey.add_stage(p_job, 'sweep', 100, 0, 10000));
  ELSE
    UPDATE rekey.jobs SET state = 'awaiting_approval', updated_at = now(),
           state_reason = format('gate of stage %s (%s%%) passed; %s', p_stage, st.percent,
                                 CASE WHEN j.observe IS NULL THEN format('approve with rekey job advance %s', p_job)
                                      ELSE format('advances on its own at %s', now() + j.observe) END)
     WHERE job_id = p_job;
  END IF;
  RETURN gate;
END $$;

CREATE FUNCTION rekey.record_table_counters(p_job bigint, p_phase text) RETURNS void
    LANGUAGE sql
    AS $$
  INSERT INTO rekey.job_table_counters AS c (job_id, phase, wal_lsn, n_tup_upd, n_tup_hot_upd,
                                             n_dead_tup, n_live_tup, table_bytes)
  SELECT j.job_id, p_phase, pg_current_wal_lsn(), s.n_tup_upd, s.n_tup_hot_upd, s.n_dead_tup,
         s.n_live_tup, pg_table_size(s.relid)
    FROM rekey.jobs j
    JOIN pg_stat_user_tables s ON s.relid = to_regclass(format('%I.%I', j.schema_name, j.table_name))
   WHERE j.job_id = p_job
  ON CONFLICT (job_id, phase) DO UPDATE
     SET at = now(), wal_lsn = excluded.wal_lsn, n_tup_upd = excluded.n_tup_upd,
         n_tup_hot_upd = excluded.n_tup_hot_upd, n_dead_tup = excluded.n_dead_tup,
         n_live_tup = excluded.n_live_tup, table_bytes = excluded.table_bytes
   WHERE c.phase = 'end';
$$;

CREATE FUNCTION rekey.refuse_column_collision(p_job bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  other record;
BEGIN
  -- By identity (rekey.target_columns, sql/schema/30_keyring.sql): a job registered before a rename and
  -- one created under the new name still rotate the same column.
  SELECT o.job_id, o.state, string_agg(DISTINCT format('%I.%I.%I', ot.schema_name, ot.table_name, ot.column_name), ', ') AS cols
    INTO other
    FROM rekey.job_columns mc
    JOIN rekey.target_columns() mt ON mt.target_id = mc.target_id
    JOIN rekey.target_columns() ot ON ot.relid = mt.relid AND ot.attnum = mt.attnum
    JOIN rekey.job_columns oc ON oc.target_id = ot.target_id
    JOIN rekey.jobs o ON o.job_id = oc.job_id AND o.job_id <> p_job AND rekey.job_unfinished(o.state)
   WHERE mc.job_id = p_job
   GROUP BY o.job_id, o.state ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) is still rotating %: a column has one unfinished job at a time; let job % finish, or cancel it (rekey job cancel %)',
      other.job_id, other.state, other.cols, other.job_id, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

CREATE FUNCTION rekey.refuse_key_ciphertext(p_columns text[], p_key name[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF p_columns && p_key::text[] THEN
    RAISE EXCEPTION 'column % is part of the key',
      (SELECT quote_ident(c) FROM unnest(p_columns) c WHERE c = ANY (p_key::text[]) LIMIT 1)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
END $$;

CREATE FUNCTION rekey.refuse_key_collision(p_job bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  other record;
BEGIN
  WITH mine AS (SELECT source_key_id AS s, target_key_id AS d FROM rekey.job_keys WHERE job_id = p_job),
       my_keys AS (SELECT s AS k FROM mine UNION SELECT d FROM mine)
  SELECT o.job_id, o.state,
         (SELECT string_agg(q.source_key_id || '->' || q.target_key_id, ', ' ORDER BY q.source_key_id)
            FROM rekey.job_keys q WHERE q.job_id = o.job_id) AS pairs
    INTO other
    FROM rekey.jobs o
   WHERE o.job_id <> p_job AND rekey.job_unfinished(o.state)
     AND EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                    AND (q.source_key_id IN (SELECT k FROM my_keys) OR q.target_key_id IN (SELECT k FROM my_keys)))
     AND (EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                     AND (q.source_key_id IN (SELECT k FROM my_keys) OR q.target_key_id IN (SELECT k FROM my_keys))
                     AND (q.source_key_id, q.target_key_id) NOT IN (SELECT s, d FROM mine))
          OR EXISTS (SELECT 1 FROM mine m
                      WHERE EXISTS (SELECT 1 FROM rekey.job_keys q WHERE q.job_id = o.job_id
                                       AND (m.s IN (q.source_key_id, q.target_key_id) OR m.d IN (q.source_key_id, q.target_key_id)))
                        AND (m.s, m.d) NOT IN (SELECT q.source_key_id, q.target_key_id FROM rekey.job_keys q
                                                WHERE q.job_id = o.job_id)))
   ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) already rotates keys % : unfinished jobs may share a key only when they map it the same way; let job % finish, or cancel it (rekey job cancel %)',
      other.job_id, other.state, other.pairs, other.job_id, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

CREATE FUNCTION rekey.refuse_partial_rotation_cancel(p_job bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
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

CREATE FUNCTION rekey.refuse_partial_rotation_rollback(p_job bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  rid bigint;
BEGIN
  SELECT rotation_id INTO rid FROM rekey.jobs WHERE job_id = p_job;
  IF rid IS NOT NULL AND rid::text IS DISTINCT FROM current_setting('rekey.rolling_back_rotation', true) THEN
    RAISE EXCEPTION 'job % is part of rotation %: roll back the whole rotation (rekey rotation rollback %)',
      p_job, rid, rid USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
END $$;

CREATE FUNCTION rekey.refuse_rollback_for_readers(p_job bigint) RETURNS void
    LANGUAGE plpgsql STABLE
    AS $$
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

CREATE FUNCTION rekey.refuse_transit_rollback() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF NEW.kind = 'rollback' AND
     EXISTS (SELECT 1 FROM rekey.jobs WHERE job_id = NEW.job_id AND transit_key_ref IS NOT NULL) THEN
    RAISE EXCEPTION 'job % rewraps Vault Transit values, which cannot be rolled back: Transit cannot encrypt under an older key version; cancel the job instead (values already rewrapped stay readable)',
      NEW.job_id USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION rekey.reject_audit_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  RAISE EXCEPTION 'rekey.audit is append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE FUNCTION rekey.reject_report_change() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  RAISE EXCEPTION 'rekey.reports is append-only: % is not allowed; generate a new report instead', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE FUNCTION rekey.release_batch(p_job bigint, p_batch integer, p_worker text, p_error text, p_transient boolean) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  b rekey.batches;
  max_att integer;
  new_state text;
BEGIN
  SELECT * INTO b FROM rekey.batches WHERE job_id = p_job AND batch_no = p_batch FOR UPDATE;
  IF NOT FOUND OR b.state <> 'running' OR b.worker_id IS DISTINCT FROM p_worker THEN
    RETURN 'not-owner';
  END IF;
  SELECT max_attempts INTO max_att FROM rekey.jobs WHERE job_id = p_job;
  IF p_transient THEN
    new_state := 'pending';
    UPDATE rekey.batches SET state = 'pending', attempts = greatest(attempts - 1, 0), last_error = p_error
     WHERE job_id = p_job AND batch_no = p_batch;
  ELSE
    new_state := CASE WHEN b.attempts >= max_att THEN 'failed' ELSE 'pending' END;
    UPDATE rekey.batches SET state = new_state, last_error = p_error,
           finished_at = CASE WHEN new_state = 'failed' THEN now() END
     WHERE job_id = p_job AND batch_no = p_batch;
    IF new_state = 'failed' THEN
      PERFORM rekey.audit_event('rotation.batch.failed', p_job,
        jsonb_build_object('attempts', b.attempts, 'last_error', p_error), 'failure', p_batch, p_worker);
    END IF;
  END IF;
  RETURN new_state;
END $$;

CREATE FUNCTION rekey.requested_key_columns() RETURNS text[]
    LANGUAGE sql STABLE
    AS $$
  SELECT nullif(current_setting('rekey.key_columns', true), '')::text[]
$$;

CREATE FUNCTION rekey.requeue(p_job bigint, p_from integer, p_to integer) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  n integer;
  cur text;
  stage integer;
BEGIN
  SELECT state, current_stage INTO cur, stage FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur IN ('cancelled', 'rolled_back', 'verifying', 'awaiting_approval') THEN
    RAISE EXCEPTION 'job % is %: requeue works on an active, paused, failed or completed job', p_job, cur
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL, rows_done = 0,
         rows_skipped = 0, rows_failed = 0
   WHERE job_id = p_job AND stage_no = stage AND batch_no BETWEEN p_from AND p_to
     AND state IN ('done', 'failed');
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s: no finished batches in %s..%s of stage %s (batches %s): nothing to do', p_job, p_from, p_to, stage,
                  (SELECT min(batch_no) || '..' || max(batch_no) FROM rekey.batches WHERE job_id = p_job AND stage_no = stage));
  END IF;
  UPDATE rekey.job_stages SET state = 'running', finished_at = NULL
   WHERE job_id = p_job AND stage_no = stage AND kind <> 'rollout';
  UPDATE rekey.jobs SET state = CASE WHEN state IN ('completed', 'failed') THEN 'active' ELSE state END,
         state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.requeued', p_job, jsonb_build_object('from_batch', p_from, 'to_batch', p_to, 'batches', n));
  RETURN format('job %s: %s batches requeued', p_job, n);
END $$;

CREATE FUNCTION rekey.require_open_stage_batch(p_job bigint, p_batch integer, p_worker text) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  job_state text;
  open_stage integer;
  batch_stage integer;
  stage_state text;
BEGIN
  SELECT state, current_stage INTO job_state, open_stage FROM rekey.jobs WHERE job_id = p_job FOR KEY SHARE;
  -- A new statement, so a new snapshot: it sees whatever committed before the lock was granted.
  SELECT b.stage_no, s.state INTO batch_stage, stage_state
    FROM rekey.batches b JOIN rekey.job_stages s USING (job_id, stage_no)
   WHERE b.job_id = p_job AND b.batch_no = p_batch;
  IF job_state IS NULL OR job_state NOT IN ('active', 'paused') OR batch_stage IS DISTINCT FROM open_stage
     OR stage_state IS DISTINCT FROM 'running' THEN
    RAISE EXCEPTION 'batch %/% is no longer claimed by worker %: it belongs to stage %, and job % is % at stage %; nothing of it was written',
      p_job, p_batch, p_worker, coalesce(batch_stage::text, '?'), p_job, coalesce(job_state, 'gone'),
      coalesce(open_stage::text, '?') USING ERRCODE = 'serialization_failure';
  END IF;
END $$;

CREATE FUNCTION rekey.require_planned_stage() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.job_stages s WHERE s.job_id = NEW.job_id AND s.stage_no = NEW.stage_no)
     AND NOT EXISTS (SELECT 1 FROM rekey.batches b WHERE b.job_id = NEW.job_id AND b.stage_no = NEW.stage_no) THEN
    RAISE EXCEPTION 'stage % of job % has no batches: it was never planned', NEW.stage_no, NEW.job_id
      USING ERRCODE = 'integrity_constraint_violation',
            HINT = 'with rekey.defer_rollout_planning on, the client must plan the job before committing';
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.rerun_job(p_job bigint) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'completed' THEN
    PERFORM rekey.audit_event('job.rerun', p_job, '{"result": "no-op: already completed"}');
    RETURN format('job %s is already completed: nothing to do', p_job);
  ELSIF cur = 'failed' THEN
    RETURN rekey.retry_failed(p_job);
  END IF;
  RETURN format('job %s is %s: nothing to rerun', p_job, cur);
END $$;

CREATE FUNCTION rekey.reset_batch_checkpoint() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  NEW.resume_after := NULL;
  NEW.duration_ms := NULL;
  NEW.end_reason := NULL;  -- a partition gone is checked again (rekey.lock_batch_partition)
  RETURN NEW;
END $$;

CREATE FUNCTION rekey.resolve_table(p_table text, OUT schema_name name, OUT table_name name) RETURNS record
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  parts text[];
  rel oid;
BEGIN
  BEGIN
    parts := parse_ident(p_table);
  EXCEPTION WHEN others THEN
    RAISE EXCEPTION 'invalid table name %: write schema.table, quoting unusual names with double quotes', quote_literal(p_table)
      USING ERRCODE = 'invalid_name';
  END;
  IF array_length(parts, 1) = 1 THEN
    parts := ARRAY['public', parts[1]];
  ELSIF array_length(parts, 1) <> 2 THEN
    RAISE EXCEPTION 'invalid table name %: write schema.table', quote_literal(p_table)
      USING ERRCODE = 'invalid_name';
  END IF;
  SELECT c.oid, n.nspname, c.relname INTO rel, schema_name, table_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = parts[1] AND c.relname = parts[2] AND c.relkind IN ('r', 'p');
  IF rel IS NULL THEN
    RAISE EXCEPTION 'table %.% does not exist', quote_ident(parts[1]), quote_ident(parts[2])
      USING ERRCODE = 'undefined_table';
  END IF;
END $$;

CREATE FUNCTION rekey.resume_job(p_job bigint) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  msg text;
BEGIN
  msg := rekey.set_job_state(p_job, 'active', ARRAY['paused'], 'resumed');
  UPDATE rekey.job_stages s SET state = 'running'
   WHERE s.job_id = p_job AND s.state = 'gate_failed';
  RETURN msg;
END $$;

CREATE FUNCTION rekey.retry_failed(p_job bigint) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  n integer;
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = 'cancelled' THEN
    RAISE EXCEPTION 'job % is cancelled; create a new job instead', p_job USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.batches SET state = 'pending', attempts = 0, finished_at = NULL
   WHERE job_id = p_job AND state = 'failed';
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n = 0 THEN
    RETURN format('job %s has no failed batches: nothing to do', p_job);
  END IF;
  UPDATE rekey.jobs SET state = CASE WHEN state = 'failed' THEN 'active' ELSE state END,
         state_reason = NULL, finished_at = NULL, updated_at = now()
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.retry_failed', p_job, jsonb_build_object('batches', n, 'from_state', cur));
  RETURN format('job %s: %s failed batches requeued', p_job, n);
END $$;

CREATE FUNCTION rekey.rollback_job(p_job bigint, p_to_percent numeric DEFAULT 0, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  j rekey.jobs;
  r record;
  other record;
  stage integer;
BEGIN
  PERFORM rekey.lock_job_definitions();
  SELECT * INTO j FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown job %', p_job USING ERRCODE = 'no_data_found';
  ELSIF j.state IN ('cancelled', 'rolled_back') THEN
    RAISE EXCEPTION 'job % is %: nothing to roll back', p_job, j.state USING ERRCODE = 'object_not_in_prerequisite_state';
  ELSIF p_to_percent IS NULL OR (p_to_percent <> 0 AND NOT p_to_percent = ANY (j.stage_plan[1:cardinality(j.stage_plan) - 1])) THEN
    RAISE EXCEPTION 'roll back to 0 or to one of the earlier stages'' percentages (%)', j.stage_plan
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  PERFORM rekey.refuse_partial_rotation_rollback(p_job);
  PERFORM rekey.refuse_rollback_for_readers(p_job);
  IF EXISTS (SELECT 1 FROM rekey.keys k JOIN rekey.job_keys jk ON jk.source_key_id = k.key_id
              WHERE jk.job_id = p_job AND k.status = 'destroyed') THEN
    RAISE EXCEPTION 'a source key of job % is destroyed: its values cannot be restored', p_job
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  -- Another part of the same rotation (or any job on these keys) would promote the target key
  -- again, or demote the restored source key, when it completes: the scope would end with its
  -- values split between keys and the wrong primary.
  SELECT o.job_id, o.state,
         (SELECT string_agg(DISTINCT k::text, ', ') FROM rekey.job_keys q,
                 LATERAL unnest(ARRAY[q.source_key_id, q.target_key_id]) k
           WHERE q.job_id = o.job_id
             AND k IN (SELECT unnest(ARRAY[m.source_key_id, m.target_key_id]) FROM rekey.job_keys m
                        WHERE m.job_id = p_job)) AS shared
    INTO other
    FROM rekey.jobs o
   WHERE o.job_id <> p_job AND rekey.job_unfinished(o.state)
     AND o.rotation_id IS DISTINCT FROM coalesce(j.rotation_id, -1)  -- rolled back with it
     AND EXISTS (SELECT 1 FROM rekey.job_keys q JOIN rekey.job_keys m
                     ON m.job_id = p_job
                    AND (q.source_key_id IN (m.source_key_id, m.target_key_id)
                         OR q.target_key_id IN (m.source_key_id, m.target_key_id))
                  WHERE q.job_id = o.job_id)
   ORDER BY o.job_id LIMIT 1;
  IF other.job_id IS NOT NULL THEN
    RAISE EXCEPTION 'job % (%) shares key % with job %: rolling back one part of a rotation would leave the scope without a primary when the other completes; roll back or cancel job % first',
      other.job_id, other.state, other.shared, p_job, other.job_id
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  -- Stop the forward work: stages not yet finished are cancelled.
  UPDATE rekey.job_stages SET state = 'cancelled'
   WHERE job_id = p_job AND state IN ('planned', 'running', 'verifying');
  -- The keyring as before the job: each source key primary again in its scope.
  FOR r IN SELECT jk.source_key_id, jk.target_key_id, k.scope, k.status AS source_status
             FROM rekey.job_keys jk JOIN rekey.keys k ON k.key_id = jk.source_key_id
            WHERE jk.job_id = p_job LOOP
    UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.target_key_id AND status IN ('primary', 'enabled');
    IF r.source_status = 'retired' THEN
      UPDATE rekey.keys SET status = 'decrypt_only' WHERE key_id = r.source_key_id;
    END IF;
    IF j.keys_promoted AND NOT EXISTS (SELECT 1 FROM rekey.keys WHERE scope = r.scope AND status = 'primary') THEN
      UPDATE rekey.keys SET status = 'primary' WHERE key_id = r.source_key_id;
    END IF;
  END LOOP;
  UPDATE rekey.jobs SET keys_promoted = false, rollback_stage = NULL WHERE job_id = p_job;
  stage := rekey.add_stage(p_job, 'rollback', p_to_percent, (p_to_percent * 100)::integer, 10000);
  UPDATE rekey.jobs SET rollback_stage = stage WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.rollback_started', p_job, jsonb_build_object(
    'from_state', j.state, 'from_stage', j.current_stage, 'to_percent', p_to_percent, 'reason', p_reason,
    'batches', (SELECT count(*) FROM rekey.batches WHERE job_id = p_job AND stage_no = stage)));
  PERFORM rekey.open_stage(p_job, stage);
  UPDATE rekey.jobs SET finished_at = NULL, state_reason = format('rolling back to %s%%', p_to_percent)
   WHERE job_id = p_job;
  RETURN format('job %s: rolling back to %s%% (stage %s); run rekey work --job %s', p_job, p_to_percent, stage, p_job);
END $$;

CREATE FUNCTION rekey.rollback_rotation(p_rotation bigint, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.rotation_follow_jobs() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.rotation_from_keys(p_scope text, p_to_key bigint) RETURNS bigint[]
    LANGUAGE sql
    AS $$
  SELECT coalesce(array_agg(k.key_id ORDER BY k.key_id), '{}')
    FROM rekey.keys k
   WHERE k.scope = p_scope AND k.key_id <> p_to_key
     AND (k.status = 'primary'
          OR (k.status = 'enabled' AND EXISTS (SELECT 1 FROM rekey.key_usage(k.key_id) u WHERE u.n > 0)))
$$;

CREATE FUNCTION rekey.rotation_in_flight(p_key bigint) RETURNS bigint
    LANGUAGE sql STABLE
    AS $$
  SELECT max(j.job_id) FROM rekey.jobs j JOIN rekey.job_keys k ON k.job_id = j.job_id
   WHERE k.source_key_id = p_key AND j.state NOT IN ('completed', 'cancelled')
$$;

CREATE FUNCTION rekey.rotation_promote_due(p_rotation bigint) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.rotation_scope_targets(p_from_keys bigint[]) RETURNS TABLE(table_name text, columns text[], codecs text[], key_id_column name, ad_template text, not_governed text[], values_under_keys bigint)
    LANGUAGE sql
    AS $$
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

CREATE FUNCTION rekey.rotation_targets(p_key bigint) RETURNS TABLE(table_name text, columns text[], codecs text[], key_id_column name, ad_template text, scope_column name, scope_value text, values_under_key bigint)
    LANGUAGE sql
    AS $$
  SELECT format('%I.%I', tc.schema_name, tc.table_name),
         array_agg(tc.column_name::text ORDER BY tc.attnum), array_agg(tc.codec ORDER BY tc.attnum),
         min(tc.key_id_column), min(tc.ad_template), NULL::name, NULL::text, sum(u.n)::bigint
    FROM rekey.key_usage(p_key) u JOIN rekey.target_columns() tc ON tc.target_id = u.target_id
   WHERE u.n > 0
   GROUP BY tc.relid, tc.schema_name, tc.table_name
   ORDER BY 1
$$;

CREATE FUNCTION rekey.row_security_blocker(p_rel regclass) RETURNS text
    LANGUAGE sql STABLE
    AS $$
  SELECT format('row-level security on %s hides rows from role %I: %s', c.oid::regclass,
                current_user,
                CASE WHEN c.relforcerowsecurity
                     THEN format('the table forces row security even on its owner; ALTER ROLE %I BYPASSRLS (or ALTER TABLE %s NO FORCE ROW LEVEL SECURITY and run rekey as its owner)',
                                 current_user, c.oid::regclass)
                     ELSE format('ALTER ROLE %I BYPASSRLS, or run rekey as the table''s owner %I',
                                 current_user, c.relowner::regrole)
                END)
    FROM pg_class c
   WHERE c.oid = p_rel AND c.relrowsecurity
     AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = current_user
                        AND (r.rolsuper OR r.rolbypassrls))
     AND (c.relforcerowsecurity OR NOT pg_has_role(current_user, c.relowner, 'USAGE'))
$$;

CREATE FUNCTION rekey.sample_row_bytes(p_rel regclass) RETURNS bigint
    LANGUAGE plpgsql STABLE
    AS $$
DECLARE
  bytes bigint;
BEGIN
  EXECUTE format('SELECT coalesce(avg(pg_column_size(t.*)), 0)::bigint FROM (SELECT * FROM %s LIMIT 1000) t', p_rel)
    INTO bytes;
  RETURN bytes;
END $$;

CREATE FUNCTION rekey.scope_condition(p_job rekey.jobs) RETURNS text
    LANGUAGE plpgsql STABLE
    AS $$
BEGIN
  IF p_job.scope_column IS NULL THEN
    RETURN '';
  END IF;
  RETURN format(' AND t.%I = %L::%s', p_job.scope_column, p_job.scope_value,
                rekey.checked_column_type(p_job.schema_name, p_job.table_name, p_job.scope_column,
                                          p_job.scope_type));
END $$;

CREATE FUNCTION rekey.seal_audit() RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'rekey'
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

CREATE FUNCTION rekey.seal_audit_after_insert() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
  PERFORM rekey.seal_audit();
  RETURN NULL;
END $$;

CREATE FUNCTION rekey.seal_audit_durably() RETURNS TABLE(seq bigint, chain_hash text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'rekey'
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

CREATE FUNCTION rekey.set_job_state(p_job bigint, p_to text, p_from text[], p_action text, p_reason text DEFAULT NULL::text) RETURNS text
    LANGUAGE plpgsql
    AS $$
DECLARE
  cur text;
BEGIN
  SELECT state INTO cur FROM rekey.jobs WHERE job_id = p_job FOR UPDATE;
  IF cur IS NULL THEN
    RAISE EXCEPTION 'unknown job %; SELECT * FROM rekey.progress lists the jobs', p_job USING ERRCODE = 'no_data_found';
  ELSIF cur = p_to THEN
    RETURN format('job %s is already %s: nothing to do', p_job, cur);
  ELSIF NOT cur = ANY (p_from) THEN
    RAISE EXCEPTION 'job % is %; % is possible only when it is %', p_job, cur, p_action, array_to_string(p_from, ' or ')
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  UPDATE rekey.jobs SET state = p_to, state_reason = p_reason, updated_at = now(),
         finished_at = CASE WHEN p_to IN ('completed', 'failed', 'cancelled', 'rolled_back') THEN now() ELSE NULL END
   WHERE job_id = p_job;
  PERFORM rekey.audit_event('job.' || p_action, p_job, jsonb_build_object('from', cur, 'to', p_to, 'reason', p_reason));
  RETURN format('job %s: %s -> %s', p_job, cur, p_to);
END $$;

CREATE FUNCTION rekey.set_lockbox_key_names(p_job bigint, p_key_table text, p_key_attribute text) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
  targets bigint[];
  tid bigint;
BEGIN
  SELECT array_agg(x.target_id ORDER BY c.ordinal) INTO targets
    FROM rekey.job_columns c JOIN rekey.targets x USING (target_id)
   WHERE c.job_id = p_job AND x.codec = 'lockbox';
  IF targets IS NULL THEN
    RAISE EXCEPTION 'job % has no lockbox column: --lockbox-key-table and --lockbox-key-attribute do not apply', p_job
      USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_key_table = '' OR p_key_attribute = '' THEN
    RAISE EXCEPTION 'a Lockbox key table or key attribute is a name, not empty' USING ERRCODE = 'invalid_parameter_value';
  ELSIF p_key_attribute IS NOT NULL AND cardinality(targets) > 1 THEN
    RAISE EXCEPTION 'job % has % lockbox columns: a key attribute names one (Lockbox refuses key_attribute with several attributes)',
      p_job, cardinality(targets) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  FOREACH tid IN ARRAY targets LOOP
    IF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = tid
                  AND (x.lockbox_key_table, x.lockbox_key_attribute) IS DISTINCT FROM (p_key_table, p_key_attribute))
       AND EXISTS (SELECT 1 FROM rekey.job_columns c WHERE c.target_id = tid AND c.job_id <> p_job) THEN
      RAISE EXCEPTION 'column of target % is registered with other Lockbox key names: %', tid,
        (SELECT format('key table %s, key attribute %s', coalesce(x.lockbox_key_table, '(the table''s)'),
                       coalesce(x.lockbox_key_attribute, '(the column''s)'))
           FROM rekey.targets x WHERE x.target_id = tid) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE rekey.targets SET lockbox_key_table = p_key_table, lockbox_key_attribute = p_key_attribute
     WHERE target_id = tid;
  END LOOP;
END $$;

CREATE FUNCTION rekey.set_reader_window(p_job bigint, p_window interval) RETURNS void
    LANGUAGE plpgsql
    AS $$
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

CREATE FUNCTION rekey.set_target_value_form(p_target bigint, p_job bigint, p_encoding text, p_json_path text[]) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM rekey.targets x WHERE x.target_id = p_target
                AND (x.encoding, x.json_path) IS DISTINCT FROM (p_encoding, p_json_path))
     AND EXISTS (SELECT 1 FROM rekey.job_columns c WHERE c.target_id = p_target AND c.job_id <> p_job) THEN
    RAISE EXCEPTION 'column of target % is registered with another encoding or JSON path: %',
      p_target, (SELECT format('%s %s', x.encoding, coalesce(x.json_path::text, '')) FROM rekey.targets x
                  WHERE x.target_id = p_target) USING ERRCODE = 'invalid_parameter_value';
  END IF;
  UPDATE rekey.targets SET encoding = p_encoding, json_path = p_json_path WHERE target_id = p_target;
END $$;

CREATE FUNCTION rekey.stage_bucket(pk text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
  SELECT (('x' || substr(md5(pk), 1, 8))::bit(32)::bigint % 10000)::integer
$$;

CREATE FUNCTION rekey.stored_text_sql(p_column name, p_json_path text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
  SELECT CASE WHEN p_json_path IS NULL THEN format('%I', p_column)
              ELSE format('(%I #>> %L::text[])', p_column, p_json_path) END
$$;

CREATE FUNCTION rekey.supported_key_types() RETURNS text[]
    LANGUAGE sql IMMUTABLE
    AS $$
  SELECT ARRAY['bigint', 'integer', 'smallint', 'numeric', 'uuid', 'text', 'character varying',
               'date', 'timestamp with time zone']
$$;

CREATE FUNCTION rekey.target_columns() RETURNS TABLE(target_id bigint, codec text, relid oid, attnum smallint, key_id_attnum smallint, schema_name name, table_name name, column_name name, key_id_column name, ad_template text, registered_as text, unresolved text)
    LANGUAGE sql STABLE
    AS $$
  SELECT t.target_id, t.codec, c.oid, a.attnum, ka.attnum,
         n.nspname, c.relname, a.attname, ka.attname, t.ad_template,
         format('%I.%I.%I', t.schema_name, t.table_name, t.column_name),
         CASE WHEN c.oid IS NULL THEN 'its table no longer exists'
              WHEN a.attname IS NULL
                THEN format('its column no longer exists in %I.%I', n.nspname, c.relname)
              WHEN t.codec = 'raw' AND ka.attname IS NULL
                THEN format('its key-id column no longer exists in %I.%I', n.nspname, c.relname)
         END
    FROM rekey.targets t
    LEFT JOIN LATERAL (
      SELECT coalesce((SELECT x.oid FROM pg_class x WHERE x.oid = t.relid),
                      to_regclass(format('%I.%I', t.schema_name, t.table_name))::oid) AS oid) r
      ON true
    LEFT JOIN pg_class c ON c.oid = r.oid
    LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN LATERAL (
      SELECT x.attnum, x.attname FROM pg_attribute x
       WHERE x.attrelid = c.oid AND x.attnum > 0 AND NOT x.attisdropped
         AND ((c.oid = t.relid AND x.attnum = t.attnum) OR x.attname = t.column_name)
       ORDER BY (c.oid = t.relid AND x.attnum = t.attnum) DESC LIMIT 1) a ON true
    LEFT JOIN LATERAL (
      SELECT x.attnum, x.attname FROM pg_attribute x
       WHERE x.attrelid = c.oid AND x.attnum > 0 AND NOT x.attisdropped
         AND ((c.oid = t.relid AND x.attnum = t.key_id_attnum) OR x.attname = t.key_id_column)
       ORDER BY (c.oid = t.relid AND x.attnum = t.key_id_attnum) DESC LIMIT 1) ka ON true
   WHERE t.forgotten_at IS NULL
$$;

CREATE FUNCTION rekey.targets_resolve_identity() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
  rel oid;
BEGIN
  IF TG_OP = 'UPDATE' AND (NEW.schema_name, NEW.table_name, NEW.column_name, NEW.key_id_column)
                          IS NOT DISTINCT FROM
                          (OLD.schema_name, OLD.table_name, OLD.column_name, OLD.key_id_column) THEN
    RETURN NEW;
  END IF;
  rel := to_regclass(format('%I.%I', NEW.schema_name, NEW.table_name));
  IF rel IS NULL THEN
    RAISE EXCEPTION 'cannot register target %.%.%: no such table', quote_ident(NEW.schema_name),
      quote_ident(NEW.table_name), quote_ident(NEW.column_name) USING ERRCODE = 'undefined_table';
  END IF;
  NEW.relid := rel;
  SELECT a.attnum INTO NEW.attnum FROM pg_attribute a
   WHERE a.attrelid = rel AND a.attname = NEW.column_name AND a.attnum > 0 AND NOT a.attisdropped;
  IF NEW.attnum IS NULL THEN
    RAISE EXCEPTION 'cannot register target %.%.%: no such column', quote_ident(NEW.schema_name),
      quote_ident(NEW.table_name), quote_ident(NEW.column_name) USING ERRCODE = 'undefined_column';
  END IF;
  NEW.key_id_attnum := NULL;
  IF NEW.key_id_column IS NOT NULL THEN
    SELECT a.attnum INTO NEW.key_id_attnum FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attname = NEW.key_id_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NEW.key_id_attnum IS NULL THEN
      RAISE EXCEPTION 'cannot register target %.%.%: no key-id column %', quote_ident(NEW.schema_name),
        quote_ident(NEW.table_name), quote_ident(NEW.column_name), quote_ident(NEW.key_id_column)
        USING ERRCODE = 'undefined_column';
    END IF;
  END IF;
  RETURN NEW;
END $$;

CREATE FUNCTION rekey.timestamptz_key_text(v timestamp with time zone) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
  SELECT CASE WHEN NOT isfinite(v) THEN v::text
              ELSE to_char(v AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                   || CASE WHEN v < '0001-01-01 00:00:00+00'::timestamptz THEN ' BC' ELSE '' END
         END
$$;

CREATE FUNCTION rekey.tink_prefix(p_key bigint) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
  SELECT '\x01'::bytea || substring(int8send(p_key) from 5 for 4)
$$;

CREATE FUNCTION rekey.transit_version(p_value text) RETURNS integer
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $_$
  SELECT substring(p_value from '^vault:v([0-9]{1,9}):[A-Za-z0-9+/=]+$')::integer;
$_$;

CREATE FUNCTION rekey.unique_keys(p_rel regclass) RETURNS TABLE(columns name[], not_null boolean)
    LANGUAGE sql STABLE
    AS $$
  SELECT array_agg(a.attname ORDER BY k.ord), bool_and(a.attnotnull)
    FROM pg_index x, unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord), pg_attribute a
   WHERE x.indrelid = p_rel AND x.indisunique AND x.indisvalid AND x.indpred IS NULL
     AND x.indexprs IS NULL AND a.attrelid = p_rel AND a.attnum = k.attnum
     AND k.ord <= x.indnkeyatts
   GROUP BY x.indexrelid
$$;

CREATE FUNCTION rekey.vacuum_finished(p_job bigint, p_worker text, p_error text) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
  UPDATE rekey.job_vacuums SET finished_at = now(), error = p_error,
         state = CASE WHEN p_error IS NULL THEN 'done' ELSE 'failed' END
   WHERE job_id = p_job;
  PERFORM rekey.audit_event(CASE WHEN p_error IS NULL THEN 'job.vacuumed' ELSE 'job.vacuum_failed' END, p_job,
    jsonb_build_object('error', p_error,
                       'seconds', (SELECT extract(epoch FROM finished_at - started_at) FROM rekey.job_vacuums WHERE job_id = p_job)),
    CASE WHEN p_error IS NULL THEN 'success' ELSE 'failure' END, NULL, p_worker);
END $$;

CREATE FUNCTION rekey.vacuum_started(p_job bigint, p_worker text) RETURNS boolean
    LANGUAGE plpgsql
    AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM rekey.jobs WHERE job_id = p_job AND vacuum_after) THEN
    RETURN false;
  END IF;
  INSERT INTO rekey.job_vacuums (job_id, worker_id, pid) VALUES (p_job, p_worker, pg_backend_pid())
  ON CONFLICT (job_id) DO NOTHING;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM rekey.audit_event('job.vacuum_started', p_job,
    jsonb_build_object('table', (SELECT format('%I.%I', schema_name, table_name) FROM rekey.jobs WHERE job_id = p_job)),
    'success', NULL, p_worker);
  RETURN true;
END $$;

CREATE FUNCTION rekey.value_head_sql(p_column name, p_encoding text, p_json_path text[]) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
  SELECT CASE WHEN p_encoding = 'bytea' AND p_json_path IS NULL
                THEN format('substring(%I from 1 for 5)', p_column)
              ELSE format('rekey.encoded_head(%s, %L)', rekey.stored_text_sql(p_column, p_json_path),
                          p_encoding) END
$$;

CREATE TABLE rekey.keys (
    key_id bigint NOT NULL,
    scope text DEFAULT 'default'::text NOT NULL,
    kms_provider text NOT NULL,
    kms_key_ref text NOT NULL,
    wrapped_key bytea,
    algorithm text DEFAULT 'AES-256-GCM'::text NOT NULL,
    status text NOT NULL,
    origin text DEFAULT 'generated'::text NOT NULL,
    max_age interval,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    enabled_at timestamp with time zone,
    primary_at timestamp with time zone,
    decrypt_only_at timestamp with time zone,
    retired_at timestamp with time zone,
    destroyed_at timestamp with time zone,
    created_by text DEFAULT CURRENT_USER,
    updated_by text,
    CONSTRAINT keys_key_id_check CHECK (((key_id >= 0) AND (key_id <= '4294967295'::bigint))),
    CONSTRAINT keys_kms_provider_check CHECK ((kms_provider = ANY (ARRAY['local'::text, 'aws-kms'::text, 'vault-transit'::text]))),
    CONSTRAINT keys_origin_check CHECK ((origin = ANY (ARRAY['generated'::text, 'imported'::text]))),
    CONSTRAINT keys_status_check CHECK ((status = ANY (ARRAY['enabled'::text, 'primary'::text, 'decrypt_only'::text, 'retired'::text, 'destroyed'::text]))),
    CONSTRAINT keys_wrapped_key_iff_not_destroyed CHECK (((wrapped_key IS NULL) = (status = 'destroyed'::text)))
);

COMMENT ON TABLE rekey.keys IS 'rekey keyring: wrapped data keys and their lifecycle (see docs/keyring.md). Rows are never deleted.';

CREATE VIEW rekey.application_keys WITH (security_barrier='true') AS
 SELECT k.scope,
    k.key_id,
    k.status,
    (k.status = 'primary'::text) AS is_primary,
    k.algorithm,
    k.kms_provider,
    k.kms_key_ref,
    k.wrapped_key,
    k.created_at,
    k.primary_at
   FROM rekey.keys k
  WHERE (k.status = ANY (ARRAY['enabled'::text, 'primary'::text, 'decrypt_only'::text]));

COMMENT ON VIEW rekey.application_keys IS 'rekey: per scope, the primary key and every key an application may decrypt with, wrapped as stored (docs/applications.md)';

CREATE SEQUENCE rekey.audit_audit_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.audit_audit_id_seq OWNED BY rekey.audit.audit_id;

CREATE TABLE rekey.audit_chain (
    seq bigint NOT NULL,
    audit_id bigint NOT NULL,
    row_digest bytea NOT NULL,
    chain_hash bytea NOT NULL,
    sealed_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    sealed_xmin xid8 NOT NULL,
    CONSTRAINT audit_chain_chain_hash_check CHECK ((octet_length(chain_hash) = 32)),
    CONSTRAINT audit_chain_row_digest_check CHECK ((octet_length(row_digest) = 32)),
    CONSTRAINT audit_chain_seq_check CHECK ((seq > 0))
);

COMMENT ON TABLE rekey.audit_chain IS 'SHA-256 hash chain over rekey.audit in sealing order; append-only; checked by rekey audit verify.';

CREATE VIEW rekey.audit_head AS
 SELECT audit_chain.seq,
    audit_chain.audit_id,
    encode(audit_chain.chain_hash, 'hex'::text) AS chain_hash,
    audit_chain.sealed_at
   FROM rekey.audit_chain
  ORDER BY audit_chain.seq DESC
 LIMIT 1;

CREATE TABLE rekey.batches (
    job_id bigint NOT NULL,
    batch_no integer NOT NULL,
    stage_no integer NOT NULL,
    lo text,
    hi text,
    planned_rows integer NOT NULL,
    state text DEFAULT 'pending'::text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    worker_id text,
    claimed_at timestamp with time zone,
    finished_at timestamp with time zone,
    rows_done integer DEFAULT 0 NOT NULL,
    rows_skipped integer DEFAULT 0 NOT NULL,
    rows_failed integer DEFAULT 0 NOT NULL,
    duration_ms double precision,
    last_error text,
    resume_after text,
    keys text[],
    partition_schema name,
    partition_name name,
    end_reason text,
    CONSTRAINT batches_state_check CHECK ((state = ANY (ARRAY['pending'::text, 'running'::text, 'done'::text, 'failed'::text])))
);

CREATE VIEW rekey.batch_status AS
 SELECT batches.job_id,
    batches.batch_no,
    batches.stage_no,
    batches.state,
    batches.attempts,
    batches.worker_id,
    batches.lo,
    batches.hi,
    batches.planned_rows,
    batches.rows_done,
    batches.rows_skipped,
    batches.rows_failed,
    round((batches.duration_ms)::numeric, 1) AS duration_ms,
    batches.claimed_at,
    batches.finished_at,
    batches.last_error,
        CASE
            WHEN (batches.state = 'running'::text) THEN (now() - batches.claimed_at)
            ELSE NULL::interval
        END AS running_for
   FROM rekey.batches;

CREATE TABLE rekey.gates (
    gate_id bigint NOT NULL,
    job_id bigint NOT NULL,
    stage_no integer NOT NULL,
    percent numeric NOT NULL,
    values_checked bigint NOT NULL,
    decrypt_errors bigint NOT NULL,
    quarantined bigint NOT NULL,
    error_rate numeric NOT NULL,
    threshold numeric NOT NULL,
    audit_complete boolean NOT NULL,
    passed boolean NOT NULL,
    verified_at timestamp with time zone DEFAULT now() NOT NULL,
    verified_by text NOT NULL,
    approved_at timestamp with time zone,
    approved_by text,
    details jsonb DEFAULT '{}'::jsonb NOT NULL
);

CREATE SEQUENCE rekey.gates_gate_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.gates_gate_id_seq OWNED BY rekey.gates.gate_id;

CREATE TABLE rekey.job_columns (
    job_id bigint NOT NULL,
    ordinal integer NOT NULL,
    target_id bigint NOT NULL
);

CREATE TABLE rekey.job_keys (
    job_id bigint NOT NULL,
    source_key_id bigint NOT NULL,
    target_key_id bigint NOT NULL,
    CONSTRAINT job_keys_check CHECK ((source_key_id <> target_key_id))
);

CREATE TABLE rekey.job_side_effects (
    job_id bigint NOT NULL,
    declared jsonb NOT NULL,
    declared_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE rekey.job_stages (
    job_id bigint NOT NULL,
    stage_no integer NOT NULL,
    kind text NOT NULL,
    percent numeric NOT NULL,
    bucket_lo integer NOT NULL,
    bucket_hi integer NOT NULL,
    state text DEFAULT 'planned'::text NOT NULL,
    opened_at timestamp with time zone,
    finished_at timestamp with time zone,
    CONSTRAINT job_stages_check CHECK (((0 <= bucket_lo) AND (bucket_lo <= bucket_hi) AND (bucket_hi <= 10000))),
    CONSTRAINT job_stages_kind_check CHECK ((kind = ANY (ARRAY['rollout'::text, 'sweep'::text, 'rollback'::text]))),
    CONSTRAINT job_stages_state_check CHECK ((state = ANY (ARRAY['planned'::text, 'running'::text, 'verifying'::text, 'passed'::text, 'gate_failed'::text, 'done'::text, 'cancelled'::text])))
);

CREATE TABLE rekey.job_table_counters (
    job_id bigint NOT NULL,
    phase text NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    wal_lsn pg_lsn NOT NULL,
    n_tup_upd bigint NOT NULL,
    n_tup_hot_upd bigint NOT NULL,
    n_dead_tup bigint NOT NULL,
    n_live_tup bigint NOT NULL,
    table_bytes bigint NOT NULL,
    CONSTRAINT job_table_counters_phase_check CHECK ((phase = ANY (ARRAY['start'::text, 'end'::text])))
);

CREATE TABLE rekey.job_vacuums (
    job_id bigint NOT NULL,
    worker_id text NOT NULL,
    pid integer NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    state text DEFAULT 'running'::text NOT NULL,
    error text,
    CONSTRAINT job_vacuums_state_check CHECK ((state = ANY (ARRAY['running'::text, 'done'::text, 'failed'::text])))
);

CREATE SEQUENCE rekey.jobs_job_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.jobs_job_id_seq OWNED BY rekey.jobs.job_id;

CREATE TABLE rekey.key_policies (
    scope text NOT NULL,
    max_age interval NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_by text DEFAULT CURRENT_USER NOT NULL,
    CONSTRAINT key_policies_max_age_check CHECK ((max_age > '00:00:00'::interval))
);

COMMENT ON TABLE rekey.key_policies IS 'rekey: maximum data-key age per scope (''*'' = every other scope); rekey rotate-due rotates keys past it.';

CREATE VIEW rekey.key_age AS
 SELECT k.key_id,
    k.scope,
    k.status,
    k.kms_provider,
    k.kms_key_ref,
    k.created_at,
    (now() - k.created_at) AS age,
    COALESCE(k.max_age, p.max_age, d.max_age) AS max_age,
        CASE
            WHEN (k.max_age IS NOT NULL) THEN 'key'::text
            WHEN (p.max_age IS NOT NULL) THEN 'scope'::text
            WHEN (d.max_age IS NOT NULL) THEN 'default'::text
            ELSE NULL::text
        END AS max_age_source,
    (k.created_at + COALESCE(k.max_age, p.max_age, d.max_age)) AS due_at,
    COALESCE(((k.status = 'primary'::text) AND (now() >= (k.created_at + COALESCE(k.max_age, p.max_age, d.max_age)))), false) AS overdue
   FROM ((rekey.keys k
     LEFT JOIN rekey.key_policies p ON ((p.scope = k.scope)))
     LEFT JOIN rekey.key_policies d ON ((d.scope = '*'::text)))
  WHERE (k.status = ANY (ARRAY['enabled'::text, 'primary'::text, 'decrypt_only'::text]));

CREATE TABLE rekey.workers (
    worker_id text NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    last_seen timestamp with time zone DEFAULT now() NOT NULL,
    job_id bigint,
    brakes text[] DEFAULT '{}'::text[] NOT NULL,
    brake_detail jsonb,
    braked_since timestamp with time zone
);

CREATE VIEW rekey.progress AS
 WITH b AS (
         SELECT x.job_id,
            count(*) FILTER (WHERE (s_1.kind = 'rollout'::text)) AS batches_total,
            count(*) FILTER (WHERE ((s_1.kind = 'rollout'::text) AND (x.state = 'done'::text))) AS batches_done,
            count(*) FILTER (WHERE (x.state = 'failed'::text)) AS batches_failed,
            count(*) FILTER (WHERE (x.state = 'running'::text)) AS batches_running,
            count(*) FILTER (WHERE ((x.state = 'pending'::text) AND (x.stage_no = j_1.current_stage))) AS batches_pending,
            COALESCE(sum(x.planned_rows) FILTER (WHERE (s_1.kind = 'rollout'::text)), (0)::bigint) AS rows_total,
            COALESCE(sum(x.planned_rows) FILTER (WHERE ((s_1.kind = 'rollout'::text) AND (x.state = 'done'::text))), (0)::bigint) AS rows_processed,
            COALESCE(sum(x.rows_done) FILTER (WHERE (s_1.kind <> 'rollback'::text)), (0)::bigint) AS rows_reencrypted,
            COALESCE(sum(x.rows_done) FILTER (WHERE (s_1.kind = 'rollback'::text)), (0)::bigint) AS rows_restored,
            COALESCE(sum(x.rows_failed), (0)::bigint) AS rows_quarantined,
            COALESCE(sum(x.planned_rows) FILTER (WHERE (x.stage_no = j_1.current_stage)), (0)::bigint) AS stage_rows,
            COALESCE(sum(x.planned_rows) FILTER (WHERE ((x.stage_no = j_1.current_stage) AND (x.state = 'done'::text))), (0)::bigint) AS stage_rows_done,
            COALESCE(sum(x.planned_rows) FILTER (WHERE ((x.state = 'done'::text) AND (x.finished_at > (now() - '00:01:00'::interval)))), (0)::bigint) AS rows_last_minute,
            min(x.finished_at) FILTER (WHERE ((x.state = 'done'::text) AND (x.finished_at > (now() - '00:01:00'::interval)))) AS window_start,
            count(DISTINCT x.worker_id) FILTER (WHERE (x.state = 'running'::text)) AS active_workers
           FROM ((rekey.batches x
             JOIN rekey.jobs j_1 ON ((j_1.job_id = x.job_id)))
             JOIN rekey.job_stages s_1 ON (((s_1.job_id = x.job_id) AND (s_1.stage_no = x.stage_no))))
          GROUP BY x.job_id
        ), rate AS (
         SELECT b_1.job_id,
            ((b_1.rows_last_minute)::numeric / GREATEST(EXTRACT(epoch FROM (now() - LEAST(b_1.window_start, (now() - '00:00:01'::interval)))), (1)::numeric)) AS rows_per_second
           FROM b b_1
        )
 SELECT j.job_id,
    j.name,
    j.state,
    j.state_reason,
    format('%I.%I'::text, j.schema_name, j.table_name) AS target,
    ( SELECT string_agg(((k.source_key_id || '->'::text) || k.target_key_id), ', '::text ORDER BY k.source_key_id) AS string_agg
           FROM rekey.job_keys k
          WHERE (k.job_id = j.job_id)) AS keys,
    j.current_stage,
    s.kind AS stage_kind,
    s.percent AS stage_percent,
    s.state AS stage_state,
    b.stage_rows,
    b.stage_rows_done,
    array_to_string(j.stage_plan, ','::text) AS stage_plan,
    b.rows_total,
    b.rows_processed,
    b.rows_reencrypted,
    b.rows_restored,
    b.rows_quarantined,
    (b.rows_total - b.rows_processed) AS rows_remaining,
    b.batches_total,
    b.batches_done,
    b.batches_failed,
    b.batches_running,
    b.batches_pending,
    round(((100.0 * (b.rows_processed)::numeric) / (GREATEST(b.rows_total, (1)::bigint))::numeric), 2) AS percent,
    round(r.rows_per_second, 1) AS rows_per_second,
        CASE
            WHEN ((r.rows_per_second > (0)::numeric) AND (j.state = 'active'::text)) THEN make_interval(secs => ((((b.stage_rows - b.stage_rows_done))::numeric / r.rows_per_second))::double precision)
            ELSE NULL::interval
        END AS stage_eta,
    b.active_workers,
    g.passed AS last_gate_passed,
    g.stage_no AS last_gate_stage,
    g.error_rate AS last_gate_error_rate,
    g.values_checked AS last_gate_values_checked,
    j.observe,
    j.created_at,
    j.started_at,
    j.finished_at,
    (j.finished_at - j.started_at) AS duration,
        CASE
            WHEN (j.state = 'active'::text) THEN j.readers_waiting_for
            ELSE NULL::text
        END AS readers_waiting_for,
        CASE
            WHEN (j.state = 'active'::text) THEN j.readers_waiting_since
            ELSE NULL::timestamp with time zone
        END AS readers_waiting_since,
        CASE
            WHEN (j.state = 'active'::text) THEN j.readers_lagging
            ELSE NULL::jsonb
        END AS lagging_readers,
    j.reader_window,
        CASE
            WHEN (j.state = 'active'::text) THEN br.brakes_active
            ELSE NULL::text[]
        END AS brakes_active,
        CASE
            WHEN (j.state = 'active'::text) THEN br.brakes_since
            ELSE NULL::timestamp with time zone
        END AS brakes_since,
    COALESCE(pg.batches, (0)::bigint) AS batches_partition_gone,
    pg.reasons AS partitions_gone
   FROM ((((((rekey.jobs j
     LEFT JOIN b USING (job_id))
     LEFT JOIN rate r USING (job_id))
     LEFT JOIN rekey.job_stages s ON (((s.job_id = j.job_id) AND (s.stage_no = j.current_stage))))
     LEFT JOIN LATERAL ( SELECT x.gate_id,
            x.job_id,
            x.stage_no,
            x.percent,
            x.values_checked,
            x.decrypt_errors,
            x.quarantined,
            x.error_rate,
            x.threshold,
            x.audit_complete,
            x.passed,
            x.verified_at,
            x.verified_by,
            x.approved_at,
            x.approved_by,
            x.details
           FROM rekey.gates x
          WHERE (x.job_id = j.job_id)
          ORDER BY x.gate_id DESC
         LIMIT 1) g ON (true))
     LEFT JOIN LATERAL ( SELECT array_agg(DISTINCT r_1.r ORDER BY r_1.r) AS brakes_active,
            min(w.braked_since) AS brakes_since
           FROM (rekey.workers w
             CROSS JOIN LATERAL unnest(w.brakes) r_1(r))
          WHERE (((w.job_id = j.job_id) OR (w.job_id IS NULL)) AND (w.last_seen > (now() - '00:00:30'::interval)))) br ON (true))
     LEFT JOIN LATERAL ( SELECT count(*) AS batches,
            string_agg(DISTINCT x.end_reason, '; '::text) AS reasons
           FROM rekey.batches x
          WHERE ((x.job_id = j.job_id) AND (x.end_reason IS NOT NULL))) pg ON (true));

CREATE TABLE rekey.readers (
    scope text NOT NULL,
    reader text NOT NULL,
    key_ids bigint[] NOT NULL,
    first_seen timestamp with time zone DEFAULT now() NOT NULL,
    last_seen timestamp with time zone DEFAULT now() NOT NULL,
    reported_by name DEFAULT SESSION_USER NOT NULL,
    client_addr inet DEFAULT inet_client_addr(),
    CONSTRAINT readers_reader_check CHECK (((reader <> ''::text) AND (length(reader) <= 200)))
);

CREATE TABLE rekey.reports (
    report_id bigint NOT NULL,
    job_id bigint NOT NULL,
    generated_at timestamp with time zone DEFAULT now() NOT NULL,
    generated_by text DEFAULT CURRENT_USER NOT NULL,
    body jsonb NOT NULL,
    markdown text,
    sha256 text NOT NULL
);

CREATE SEQUENCE rekey.reports_report_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.reports_report_id_seq OWNED BY rekey.reports.report_id;

CREATE VIEW rekey.rotation_due AS
 SELECT a.scope,
    a.key_id,
    a.kms_provider,
    a.age,
    a.max_age,
    a.due_at,
    rekey.rotation_in_flight(a.key_id) AS job_in_flight
   FROM rekey.key_age a
  WHERE a.overdue;

CREATE VIEW rekey.rotation_progress AS
SELECT
    NULL::bigint AS rotation_id,
    NULL::text AS name,
    NULL::text AS scope,
    NULL::text AS from_keys,
    NULL::bigint AS to_key,
    NULL::text AS state,
    NULL::text AS stage_plan,
    NULL::bigint AS targets,
    NULL::text AS jobs,
    NULL::text COLLATE pg_catalog."C" AS tables,
    NULL::bigint AS rows_done,
    NULL::bigint AS rows_total,
    NULL::numeric AS percent,
    NULL::integer AS slowest_stage,
    NULL::text AS waiting,
    NULL::text AS created_by,
    NULL::timestamp with time zone AS created_at,
    NULL::timestamp with time zone AS promoted_at,
    NULL::timestamp with time zone AS rollback_started_at,
    NULL::timestamp with time zone AS finished_at;

CREATE SEQUENCE rekey.rotations_rotation_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.rotations_rotation_id_seq OWNED BY rekey.rotations.rotation_id;

CREATE TABLE rekey.row_failures (
    failure_id bigint NOT NULL,
    job_id bigint NOT NULL,
    batch_no integer NOT NULL,
    table_name text NOT NULL,
    pk text NOT NULL,
    column_name name NOT NULL,
    error_class text NOT NULL,
    key_id bigint,
    at timestamp with time zone DEFAULT now() NOT NULL,
    worker_id text,
    detail text
);

CREATE SEQUENCE rekey.row_failures_failure_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.row_failures_failure_id_seq OWNED BY rekey.row_failures.failure_id;

CREATE TABLE rekey.schema_definition_texts (
    name text NOT NULL,
    checksum text NOT NULL,
    first_applied_at timestamp with time zone DEFAULT now() NOT NULL,
    first_applied_by text DEFAULT CURRENT_USER NOT NULL
);

CREATE TABLE rekey.schema_definitions (
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    applied_by text DEFAULT CURRENT_USER NOT NULL
);

CREATE TABLE rekey.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL,
    applied_by text DEFAULT CURRENT_USER NOT NULL
);

CREATE VIEW rekey.stage_status AS
SELECT
    NULL::bigint AS job_id,
    NULL::integer AS stage_no,
    NULL::text AS kind,
    NULL::numeric AS percent,
    NULL::integer AS bucket_lo,
    NULL::integer AS bucket_hi,
    NULL::text AS state,
    NULL::bigint AS batches,
    NULL::bigint AS batches_done,
    NULL::bigint AS rows_planned,
    NULL::bigint AS rows_reencrypted,
    NULL::bigint AS rows_quarantined,
    NULL::timestamp with time zone AS opened_at,
    NULL::timestamp with time zone AS finished_at,
    NULL::boolean AS gate_passed,
    NULL::numeric AS gate_error_rate;

CREATE TABLE rekey.targets (
    target_id bigint NOT NULL,
    schema_name name NOT NULL,
    table_name name NOT NULL,
    pk_column name NOT NULL,
    column_name name NOT NULL,
    codec text NOT NULL,
    key_id_column name,
    ad_template text,
    scope_column name,
    scope_value text,
    created_at timestamp with time zone DEFAULT now(),
    created_by text DEFAULT CURRENT_USER,
    relid oid,
    attnum smallint,
    key_id_attnum smallint,
    forgotten_at timestamp with time zone,
    forgotten_by text,
    forgotten_reason text,
    encoding text DEFAULT 'bytea'::text NOT NULL,
    json_path text[],
    lockbox_key_table text,
    lockbox_key_attribute text,
    CONSTRAINT targets_codec_check CHECK ((codec = ANY (ARRAY['tink'::text, 'raw'::text, 'vault-transit'::text, 'fernet'::text, 'cloak'::text, 'lockbox'::text, 'rails'::text, 'aws-kms'::text]))),
    CONSTRAINT targets_encoding_check CHECK ((encoding = ANY (ARRAY['bytea'::text, 'base64'::text, 'base64url'::text, 'hex'::text]))),
    CONSTRAINT targets_json_path_holds_text CHECK (((json_path IS NULL) OR ((encoding <> 'bytea'::text) AND (cardinality(json_path) > 0)))),
    CONSTRAINT targets_lockbox_key_names CHECK ((((lockbox_key_table IS NULL) AND (lockbox_key_attribute IS NULL)) OR ((codec = 'lockbox'::text) AND (COALESCE(lockbox_key_table, 'x'::text) <> ''::text) AND (COALESCE(lockbox_key_attribute, 'x'::text) <> ''::text)))),
    CONSTRAINT targets_raw_needs_key_id_column CHECK (((codec <> 'raw'::text) OR (key_id_column IS NOT NULL))),
    CONSTRAINT targets_scope_both_or_neither CHECK (((scope_column IS NULL) = (scope_value IS NULL)))
);

COMMENT ON TABLE rekey.targets IS 'rekey: the encrypted columns rekey manages; key retire/destroy is refused while any holds values under the key.';

COMMENT ON COLUMN rekey.targets.relid IS 'the table by identity: schema_name/table_name are the names at registration, relid follows renames';

CREATE SEQUENCE rekey.targets_target_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE rekey.targets_target_id_seq OWNED BY rekey.targets.target_id;

CREATE TABLE rekey.value_audit (
    job_id bigint NOT NULL,
    batch_no integer NOT NULL,
    pk text NOT NULL,
    column_name name NOT NULL,
    from_key_id bigint NOT NULL,
    to_key_id bigint NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL
);

ALTER TABLE ONLY rekey.audit ALTER COLUMN audit_id SET DEFAULT nextval('rekey.audit_audit_id_seq'::regclass);

ALTER TABLE ONLY rekey.gates ALTER COLUMN gate_id SET DEFAULT nextval('rekey.gates_gate_id_seq'::regclass);

ALTER TABLE ONLY rekey.jobs ALTER COLUMN job_id SET DEFAULT nextval('rekey.jobs_job_id_seq'::regclass);

ALTER TABLE ONLY rekey.reports ALTER COLUMN report_id SET DEFAULT nextval('rekey.reports_report_id_seq'::regclass);

ALTER TABLE ONLY rekey.rotations ALTER COLUMN rotation_id SET DEFAULT nextval('rekey.rotations_rotation_id_seq'::regclass);

ALTER TABLE ONLY rekey.row_failures ALTER COLUMN failure_id SET DEFAULT nextval('rekey.row_failures_failure_id_seq'::regclass);

ALTER TABLE ONLY rekey.targets ALTER COLUMN target_id SET DEFAULT nextval('rekey.targets_target_id_seq'::regclass);

ALTER TABLE ONLY rekey.audit_chain
    ADD CONSTRAINT audit_chain_audit_id_key UNIQUE (audit_id);

ALTER TABLE ONLY rekey.audit_chain
    ADD CONSTRAINT audit_chain_pkey PRIMARY KEY (seq);

ALTER TABLE ONLY rekey.audit
    ADD CONSTRAINT audit_pkey PRIMARY KEY (audit_id);

ALTER TABLE ONLY rekey.batches
    ADD CONSTRAINT batches_pkey PRIMARY KEY (job_id, batch_no);

ALTER TABLE ONLY rekey.gates
    ADD CONSTRAINT gates_pkey PRIMARY KEY (gate_id);

ALTER TABLE ONLY rekey.job_columns
    ADD CONSTRAINT job_columns_pkey PRIMARY KEY (job_id, ordinal);

ALTER TABLE ONLY rekey.job_keys
    ADD CONSTRAINT job_keys_pkey PRIMARY KEY (job_id, source_key_id);

ALTER TABLE ONLY rekey.job_side_effects
    ADD CONSTRAINT job_side_effects_pkey PRIMARY KEY (job_id);

ALTER TABLE ONLY rekey.job_stages
    ADD CONSTRAINT job_stages_pkey PRIMARY KEY (job_id, stage_no);

ALTER TABLE ONLY rekey.job_table_counters
    ADD CONSTRAINT job_table_counters_pkey PRIMARY KEY (job_id, phase);

ALTER TABLE ONLY rekey.job_vacuums
    ADD CONSTRAINT job_vacuums_pkey PRIMARY KEY (job_id);

ALTER TABLE ONLY rekey.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (job_id);

ALTER TABLE ONLY rekey.key_policies
    ADD CONSTRAINT key_policies_pkey PRIMARY KEY (scope);

ALTER TABLE ONLY rekey.keys
    ADD CONSTRAINT keys_pkey PRIMARY KEY (key_id);

ALTER TABLE ONLY rekey.readers
    ADD CONSTRAINT readers_pkey PRIMARY KEY (scope, reader);

ALTER TABLE ONLY rekey.reports
    ADD CONSTRAINT reports_pkey PRIMARY KEY (report_id);

ALTER TABLE ONLY rekey.rotations
    ADD CONSTRAINT rotations_pkey PRIMARY KEY (rotation_id);

ALTER TABLE ONLY rekey.row_failures
    ADD CONSTRAINT row_failures_pkey PRIMARY KEY (failure_id);

ALTER TABLE ONLY rekey.schema_definition_texts
    ADD CONSTRAINT schema_definition_texts_pkey PRIMARY KEY (name, checksum);

ALTER TABLE ONLY rekey.schema_definitions
    ADD CONSTRAINT schema_definitions_pkey PRIMARY KEY (name);

ALTER TABLE ONLY rekey.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY rekey.targets
    ADD CONSTRAINT targets_pkey PRIMARY KEY (target_id);

ALTER TABLE ONLY rekey.workers
    ADD CONSTRAINT workers_pkey PRIMARY KEY (worker_id);

CREATE INDEX audit_batch_completed ON rekey.audit USING btree (job_id, batch_no, at) WHERE (action = 'rotation.batch.completed'::text);

CREATE INDEX audit_job ON rekey.audit USING btree (job_id, action);

CREATE INDEX audit_xid ON rekey.audit USING btree (xid);

CREATE INDEX batches_claimable ON rekey.batches USING btree (job_id, stage_no, batch_no) WHERE (state = ANY (ARRAY['pending'::text, 'running'::text]));

CREATE INDEX batches_finished ON rekey.batches USING btree (job_id, finished_at) WHERE (state = 'done'::text);

CREATE INDEX batches_stage ON rekey.batches USING btree (job_id, stage_no);

CREATE INDEX gates_job ON rekey.gates USING btree (job_id, stage_no);

CREATE INDEX jobs_rotation ON rekey.jobs USING btree (rotation_id) WHERE (rotation_id IS NOT NULL);

CREATE UNIQUE INDEX keys_one_primary_per_scope ON rekey.keys USING btree (scope) WHERE (status = 'primary'::text);

CREATE INDEX reports_job ON rekey.reports USING btree (job_id, generated_at);

CREATE UNIQUE INDEX rotations_one_unfinished_per_scope ON rekey.rotations USING btree (scope) WHERE (state = ANY (ARRAY['creating'::text, 'rotating'::text, 'promoted'::text, 'rolling_back'::text]));

CREATE INDEX row_failures_job ON rekey.row_failures USING btree (job_id, batch_no);

CREATE UNIQUE INDEX row_failures_once ON rekey.row_failures USING btree (job_id, table_name, pk, column_name);

CREATE UNIQUE INDEX targets_unique_column ON rekey.targets USING btree (schema_name, table_name, column_name, COALESCE(scope_column, ''::name), COALESCE(scope_value, ''::text));

CREATE INDEX value_audit_job ON rekey.value_audit USING btree (job_id, pk);

CREATE OR REPLACE VIEW rekey.rotation_progress AS
 WITH per_job AS (
         SELECT j.rotation_id,
            j.job_id,
            j.state,
            j.current_stage,
            format('%I.%I'::text, j.schema_name, j.table_name) AS target,
            ( SELECT COALESCE(sum(b.planned_rows), (0)::bigint) AS "coalesce"
                   FROM (rekey.batches b
                     JOIN rekey.job_stages s USING (job_id, stage_no))
                  WHERE ((b.job_id = j.job_id) AND (s.kind = 'rollout'::text))) AS rows_total,
            ( SELECT COALESCE(sum(b.planned_rows), (0)::bigint) AS "coalesce"
                   FROM (rekey.batches b
                     JOIN rekey.job_stages s USING (job_id, stage_no))
                  WHERE ((b.job_id = j.job_id) AND (s.kind = 'rollout'::text) AND (b.state = 'done'::text))) AS rows_done,
            ((j.state = 'awaiting_approval'::text) AND rekey.held_by_rotation(j.job_id)) AS waiting
           FROM rekey.jobs j
          WHERE (j.rotation_id IS NOT NULL)
        )
 SELECT r.rotation_id,
    r.name,
    r.scope,
    array_to_string(r.from_keys, ','::text) AS from_keys,
    r.to_key,
    r.state,
    array_to_string(r.stage_plan, ','::text) AS stage_plan,
    count(p.job_id) AS targets,
    string_agg((p.job_id)::text, ','::text ORDER BY p.job_id) AS jobs,
    string_agg(DISTINCT p.target, ', '::text) AS tables,
    (COALESCE(sum(p.rows_done), (0)::numeric))::bigint AS rows_done,
    (COALESCE(sum(p.rows_total), (0)::numeric))::bigint AS rows_total,
    round(((100.0 * COALESCE(sum(p.rows_done), (0)::numeric)) / GREATEST(COALESCE(sum(p.rows_total), (0)::numeric), (1)::numeric)), 2) AS percent,
    min(p.current_stage) AS slowest_stage,
    string_agg((p.job_id)::text, ','::text ORDER BY p.job_id) FILTER (WHERE p.waiting) AS waiting,
    r.created_by,
    r.created_at,
    r.promoted_at,
    r.rollback_started_at,
    r.finished_at
   FROM (rekey.rotations r
     LEFT JOIN per_job p ON ((p.rotation_id = r.rotation_id)))
  GROUP BY r.rotation_id;

CREATE OR REPLACE VIEW rekey.stage_status AS
 SELECT s.job_id,
    s.stage_no,
    s.kind,
    s.percent,
    s.bucket_lo,
    s.bucket_hi,
    s.state,
    count(b.*) AS batches,
    count(b.*) FILTER (WHERE (b.state = 'done'::text)) AS batches_done,
    COALESCE(sum(b.planned_rows), (0)::bigint) AS rows_planned,
    COALESCE(sum(b.rows_done), (0)::bigint) AS rows_reencrypted,
    COALESCE(sum(b.rows_failed), (0)::bigint) AS rows_quarantined,
    s.opened_at,
    s.finished_at,
    ( SELECT g.passed
           FROM rekey.gates g
          WHERE ((g.job_id = s.job_id) AND (g.stage_no = s.stage_no))
          ORDER BY g.gate_id DESC
         LIMIT 1) AS gate_passed,
    ( SELECT g.error_rate
           FROM rekey.gates g
          WHERE ((g.job_id = s.job_id) AND (g.stage_no = s.stage_no))
          ORDER BY g.gate_id DESC
         LIMIT 1) AS gate_error_rate
   FROM (rekey.job_stages s
     LEFT JOIN rekey.batches b ON (((b.job_id = s.job_id) AND (b.stage_no = s.stage_no))))
  GROUP BY s.job_id, s.stage_no;

CREATE TRIGGER audit_append_only BEFORE DELETE OR UPDATE ON rekey.audit FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();

CREATE TRIGGER audit_chain_append_only BEFORE DELETE OR UPDATE ON rekey.audit_chain FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();

CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON rekey.audit_chain FOR EACH STATEMENT EXECUTE FUNCTION rekey.reject_audit_change();

CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON rekey.audit FOR EACH STATEMENT EXECUTE FUNCTION rekey.reject_audit_change();

CREATE TRIGGER audit_seal AFTER INSERT ON rekey.audit FOR EACH STATEMENT EXECUTE FUNCTION rekey.seal_audit_after_insert();

CREATE TRIGGER audit_stamp BEFORE INSERT ON rekey.audit FOR EACH ROW EXECUTE FUNCTION rekey.audit_stamp();

CREATE TRIGGER batches_reset_checkpoint BEFORE UPDATE OF state ON rekey.batches FOR EACH ROW WHEN (((old.state = ANY (ARRAY['done'::text, 'failed'::text])) AND (new.state = ANY (ARRAY['pending'::text, 'running'::text])))) EXECUTE FUNCTION rekey.reset_batch_checkpoint();

CREATE TRIGGER gates_stamp BEFORE INSERT OR UPDATE ON rekey.gates FOR EACH ROW EXECUTE FUNCTION rekey.gates_stamp();

CREATE TRIGGER job_stages_no_transit_rollback BEFORE INSERT ON rekey.job_stages FOR EACH ROW EXECUTE FUNCTION rekey.refuse_transit_rollback();

CREATE CONSTRAINT TRIGGER job_stages_planned AFTER INSERT ON rekey.job_stages DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION rekey.require_planned_stage();

CREATE TRIGGER jobs_clear_planned_keys AFTER UPDATE OF state ON rekey.jobs FOR EACH ROW WHEN (((new.state = 'completed'::text) AND (old.state <> 'completed'::text))) EXECUTE FUNCTION rekey.clear_planned_keys();

CREATE TRIGGER jobs_join_rotation BEFORE INSERT ON rekey.jobs FOR EACH ROW EXECUTE FUNCTION rekey.jobs_join_rotation();

CREATE TRIGGER jobs_notify_changed AFTER UPDATE OF state, current_stage ON rekey.jobs FOR EACH ROW WHEN (((old.state IS DISTINCT FROM new.state) OR (old.current_stage IS DISTINCT FROM new.current_stage))) EXECUTE FUNCTION rekey.notify_job_change();

CREATE TRIGGER jobs_notify_created AFTER INSERT ON rekey.jobs FOR EACH ROW EXECUTE FUNCTION rekey.notify_job_change();

CREATE TRIGGER jobs_record_end_counters AFTER UPDATE OF state ON rekey.jobs FOR EACH ROW WHEN (((NOT rekey.job_unfinished(new.state)) AND rekey.job_unfinished(old.state))) EXECUTE FUNCTION rekey.jobs_record_end_counters();

CREATE TRIGGER jobs_rotation_follow AFTER UPDATE OF state ON rekey.jobs FOR EACH ROW WHEN (((new.rotation_id IS NOT NULL) AND (old.state IS DISTINCT FROM new.state))) EXECUTE FUNCTION rekey.rotation_follow_jobs();

CREATE TRIGGER key_policies_audit AFTER INSERT OR DELETE OR UPDATE ON rekey.key_policies FOR EACH ROW EXECUTE FUNCTION rekey.audit_policy_change();

CREATE TRIGGER keys_audit AFTER INSERT OR UPDATE ON rekey.keys FOR EACH ROW EXECUTE FUNCTION rekey.audit_key_change();

CREATE TRIGGER keys_enforce_lifecycle BEFORE INSERT OR UPDATE ON rekey.keys FOR EACH ROW EXECUTE FUNCTION rekey.keys_enforce_lifecycle();

CREATE TRIGGER keys_notify_added AFTER INSERT ON rekey.keys FOR EACH ROW EXECUTE FUNCTION rekey.notify_key_change();

CREATE TRIGGER keys_notify_changed AFTER UPDATE OF status, wrapped_key, kms_key_ref, kms_provider ON rekey.keys FOR EACH ROW EXECUTE FUNCTION rekey.notify_key_change();

CREATE TRIGGER keys_reject_delete BEFORE DELETE ON rekey.keys FOR EACH ROW EXECUTE FUNCTION rekey.keys_reject_delete();

CREATE TRIGGER keys_reject_truncate BEFORE TRUNCATE ON rekey.keys FOR EACH STATEMENT EXECUTE FUNCTION rekey.keys_reject_delete();

CREATE TRIGGER reports_append_only BEFORE DELETE OR UPDATE ON rekey.reports FOR EACH ROW EXECUTE FUNCTION rekey.reject_report_change();

CREATE TRIGGER targets_resolve_identity BEFORE INSERT OR UPDATE OF schema_name, table_name, column_name, key_id_column ON rekey.targets FOR EACH ROW EXECUTE FUNCTION rekey.targets_resolve_identity();

CREATE TRIGGER value_audit_append_only BEFORE DELETE OR UPDATE ON rekey.value_audit FOR EACH ROW EXECUTE FUNCTION rekey.reject_audit_change();

ALTER TABLE ONLY rekey.batches
    ADD CONSTRAINT batches_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.batches
    ADD CONSTRAINT batches_job_id_stage_no_fkey FOREIGN KEY (job_id, stage_no) REFERENCES rekey.job_stages(job_id, stage_no);

ALTER TABLE ONLY rekey.gates
    ADD CONSTRAINT gates_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.job_columns
    ADD CONSTRAINT job_columns_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.job_columns
    ADD CONSTRAINT job_columns_target_id_fkey FOREIGN KEY (target_id) REFERENCES rekey.targets(target_id);

ALTER TABLE ONLY rekey.job_keys
    ADD CONSTRAINT job_keys_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.job_keys
    ADD CONSTRAINT job_keys_source_key_id_fkey FOREIGN KEY (source_key_id) REFERENCES rekey.keys(key_id);

ALTER TABLE ONLY rekey.job_keys
    ADD CONSTRAINT job_keys_target_key_id_fkey FOREIGN KEY (target_key_id) REFERENCES rekey.keys(key_id);

ALTER TABLE ONLY rekey.job_side_effects
    ADD CONSTRAINT job_side_effects_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.job_stages
    ADD CONSTRAINT job_stages_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.job_table_counters
    ADD CONSTRAINT job_table_counters_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.job_vacuums
    ADD CONSTRAINT job_vacuums_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.jobs
    ADD CONSTRAINT jobs_rotation_id_fkey FOREIGN KEY (rotation_id) REFERENCES rekey.rotations(rotation_id);

ALTER TABLE ONLY rekey.reports
    ADD CONSTRAINT reports_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;

ALTER TABLE ONLY rekey.rotations
    ADD CONSTRAINT rotations_from_primary_fkey FOREIGN KEY (from_primary) REFERENCES rekey.keys(key_id);

ALTER TABLE ONLY rekey.rotations
    ADD CONSTRAINT rotations_to_key_fkey FOREIGN KEY (to_key) REFERENCES rekey.keys(key_id);

ALTER TABLE ONLY rekey.row_failures
    ADD CONSTRAINT row_failures_job_id_fkey FOREIGN KEY (job_id) REFERENCES rekey.jobs(job_id) ON DELETE CASCADE;
