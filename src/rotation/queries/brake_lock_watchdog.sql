-- The lock-wait watchdog (src/rotation/brake_lock_watchdog.cpp).

-- name: blocked
-- Sessions waiting on a lock that a backend of one worker process holds (its claim loops'
-- application_name starts with $1, 'rekey-worker <name>/', cut to PostgreSQL's 63 bytes as the
-- server cuts it), rekey's own sessions excepted: the waiter, how long it has waited in
-- milliseconds (pg_locks.waitstart; 0 in the instant before the server sets it), and the blocking
-- backend with its state ('active', 'idle in transaction', ...).
SELECT w.pid AS waiter_pid, w.application_name AS waiter_application,
       b.pid AS blocker_pid, b.state AS blocker_state,
       coalesce(extract(epoch FROM clock_timestamp() - l.waitstart) * 1000, 0)::float8 AS waited_ms
  FROM pg_stat_activity w
 CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
  JOIN pg_stat_activity b ON b.pid = bp.pid
  LEFT JOIN LATERAL (SELECT min(x.waitstart) AS waitstart
                       FROM pg_locks x WHERE x.pid = w.pid AND NOT x.granted) l ON true
 WHERE w.wait_event_type = 'Lock'
   AND w.pid <> pg_backend_pid()
   AND coalesce(w.application_name, '') NOT LIKE 'rekey-%'
   AND starts_with(b.application_name, left($1::text, 63))
 ORDER BY waited_ms DESC

-- name: cancel
-- Cancels the statement of backend $1 (rekey's own, same role): its transaction rolls back and
-- its locks go. A backend idle in its transaction ignores a cancel; see terminate.
SELECT pg_cancel_backend($1::int) AS signalled

-- name: terminate
-- Ends backend $1 (rekey's own): the only way to release the locks of a transaction that is idle
-- between statements (the worker computing ciphertexts); the worker reconnects.
SELECT pg_terminate_backend($1::int) AS signalled
