-- The application contract (docs/applications.md): what an application that encrypts and
-- decrypts a scope's values reads from rekey, and how it hears of a key change without polling.
-- The role that reads it, rekey_application, is granted in sql/roles.sql: SELECT on
-- rekey.application_keys and EXECUTE on rekey.reader_heartbeat (sql/schema/45_readers.sql), and
-- nothing else of the rekey schema.

-- Every key an application of a scope may need: the scope's primary (new values are encrypted
-- under it) and every other key values of the scope may be under -- enabled keys too, because a
-- staged job writes under its target key before promoting it. Retired and destroyed keys are
-- left out: no value may be under them (docs/safety.md, invariant 1). The wrapped key is what
-- rekey stores (docs/FORMAT.md, section 6, per provider); the application unwraps it with its own
-- KMS credentials. Who created or changed a key, its age policy and its origin are not an
-- application's business and stay out. security_barrier: the status filter is applied before any
-- function of the caller's query sees a row, so no query through the view reaches the wrapped
-- material of a retired key.
CREATE OR REPLACE VIEW rekey.application_keys WITH (security_barrier = true) AS
SELECT k.scope, k.key_id, k.status, k.status = 'primary' AS is_primary, k.algorithm,
       k.kms_provider, k.kms_key_ref, k.wrapped_key, k.created_at, k.primary_at
  FROM rekey.keys k
 WHERE k.status IN ('enabled', 'primary', 'decrypt_only');

COMMENT ON VIEW rekey.application_keys IS
  'rekey: per scope, the primary key and every key an application may decrypt with, wrapped as stored (docs/applications.md)';

-- What happened to a key, as an application cares: 'added' (a new key, not yet used: load it),
-- 'promoted' (the key new values go under), 'demoted' (no longer primary, still decryptable),
-- 'rolled_back' (an earlier key primary again: a rollback, the lifecycle's only way back to
-- primary), 'decrypt_only' (a key never promoted, kept for reading), 'retired', 'unretired',
-- 'destroyed', and 'rewrapped' (the same data key wrapped anew by a master-key rotation). NULL:
-- nothing an application sees changed.
CREATE OR REPLACE FUNCTION rekey.key_event(p_old_status text, p_new_status text,
                                           p_rewrapped boolean)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
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

-- NOTIFY rekey_keys, '{"scope": ..., "key_id": ..., "event": ..., "status": ..., "previous_status": ...}'
-- for every change of a key an application sees. PostgreSQL delivers notifications at commit, in
-- commit order, so a listener that re-reads rekey.application_keys on each one sees the change.
-- A rollback (rekey.rollback_job) changes the keyring itself -- the target key demoted, the
-- source key primary again -- so it is heard through this trigger like any promotion.
CREATE OR REPLACE FUNCTION rekey.notify_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE TRIGGER keys_notify_added AFTER INSERT ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.notify_key_change();

CREATE OR REPLACE TRIGGER keys_notify_changed
  AFTER UPDATE OF status, wrapped_key, kms_key_ref, kms_provider ON rekey.keys
  FOR EACH ROW EXECUTE FUNCTION rekey.notify_key_change();
