-- name: replication_lag
-- The number of replicas streaming from this server, and the largest replay lag among them in
-- milliseconds (replay_lag is NULL for a replica that has been idle since it caught up: no lag).
SELECT count(*) AS replicas,
       coalesce(max(extract(epoch FROM replay_lag)), 0) * 1000 AS lag_ms
FROM pg_stat_replication
