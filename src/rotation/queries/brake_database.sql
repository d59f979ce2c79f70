-- The database side of the brakes (src/rotation/brake_database.cpp): the signals they read, the
-- privileges those need, and where the engaged brakes are recorded for rekey.progress.

-- name: privileges
-- What the connection's role may observe: pg_monitor membership (or superuser), pg_read_all_stats
-- (other sessions' rows of pg_stat_progress_vacuum and pg_stat_replication), and EXECUTE on
-- pg_ls_archive_statusdir() (granted to pg_monitor).
SELECT current_user AS role_name,
       pg_has_role(current_user, 'pg_monitor', 'USAGE') AS monitor,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') AS read_all_stats,
       has_function_privilege('pg_ls_archive_statusdir()', 'EXECUTE') AS archive_statusdir

-- name: wal_position
-- The server's current WAL position in bytes since 0/0 (the same on every worker: a server-wide
-- figure, not this session's).
SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS wal_bytes

-- name: slot_lag
-- The replication slot (physical or logical, active or not) retaining the most WAL, and how many
-- bytes it retains; no row without slots that hold WAL.
SELECT slot_name, (pg_current_wal_lsn() - restart_lsn)::bigint AS retained_bytes
  FROM pg_replication_slots
 WHERE restart_lsn IS NOT NULL
 ORDER BY retained_bytes DESC
 LIMIT 1

-- name: archive_ready
-- WAL segments waiting for the archiver (archive_status/*.ready).
SELECT count(*) AS ready FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'

-- name: autovacuum
-- The table of an active job ($1, or any when NULL) that an autovacuum worker is vacuuming in
-- this database, or no row.
SELECT format('%I.%I', j.schema_name, j.table_name) AS table_name
  FROM pg_stat_progress_vacuum v
  JOIN pg_stat_activity a ON a.pid = v.pid
  JOIN pg_class c ON c.oid = v.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN rekey.jobs j ON j.schema_name = n.nspname AND j.table_name = c.relname
 WHERE a.backend_type = 'autovacuum worker'
   AND v.datname = current_database()
   AND j.state = 'active'
   AND ($1::bigint IS NULL OR j.job_id = $1::bigint)
 LIMIT 1

-- name: record
-- The brakes engaged in worker process $1 (working job $2, or every job when NULL): reasons $3
-- and their figures $4 (a JSON object by reason). An empty $3 records that none is engaged.
-- rekey.progress shows the reasons of fresh rows (sql/schema/70_operations.sql).
INSERT INTO rekey.workers AS w (worker_id, job_id, brakes, brake_detail, braked_since)
VALUES ($1, $2::bigint, $3::text[], $4::jsonb, CASE WHEN cardinality($3::text[]) > 0 THEN now() END)
ON CONFLICT (worker_id) DO UPDATE
   SET last_seen = now(), job_id = EXCLUDED.job_id, brakes = EXCLUDED.brakes,
       brake_detail = EXCLUDED.brake_detail,
       braked_since = CASE WHEN cardinality(EXCLUDED.brakes) = 0 THEN NULL
                           ELSE coalesce(w.braked_since, now()) END

-- name: forget
-- The worker process $1 exits: its brake row goes.
DELETE FROM rekey.workers WHERE worker_id = $1
