// What a rewrite left behind (issue #19, item 3; docs/operations.md, "Side effects of a
// rewrite"): the target's counters at the job's end, and the --vacuum-after run.
//
// The report's dead tuples, HOT share and WAL bytes per row are differences of two readings of
// pg_stat_user_tables and pg_current_wal_lsn(): 'start', recorded by the first worker to prepare
// the job (jobs/side_effects.h, StartRewrite), and 'end', recorded when the job reaches a final
// state (a trigger, sql/schema/42_side_effects.sql) and read again here, by the worker that
// completed it, once PostgreSQL has published every worker's statistics. The counters are the
// table's and the WAL position the server's: anything else writing meanwhile is in the figures.
//
// The queries are src/jobs/queries/after_rewrite.sql.
#pragma once

#include <nlohmann/json.hpp>
#include <pqxx/pqxx>

#include <chrono>
#include <cstdint>
#include <string>

namespace rekey::jobs {

// PostgreSQL 15 publishes a backend's table statistics at most once per PGSTAT_MIN_INTERVAL
// (1 s) when it goes idle: waiting a little longer sees every worker's last chunk counted.
constexpr std::chrono::milliseconds kStatsFlushWait{1200};

// Called by the worker that moved job `job_id` to completed, after that commit, on its own
// connection with no transaction open: has this backend publish its statistics, waits until
// kStatsFlushWait has passed since another worker's last batch of the job (no wait for a job
// one worker finished), records the job's 'end' counters again, then, if the job asked for
// --vacuum-after (and no run is recorded), runs VACUUM (ANALYZE) on its table outside any
// transaction, recorded in rekey.job_vacuums and audited (job.vacuum_started, then job.vacuumed or
// job.vacuum_failed). A vacuum that fails, or that the role may not run (only the table's owner,
// the database's owner or a superuser may: PostgreSQL 15 would skip it with a mere warning), is
// logged as a warning and recorded; it never fails the job and never throws. Database errors
// recording the counters are thrown.
void AfterJobCompleted(pqxx::connection& conn, int64_t job_id, const std::string& worker_id);

// Job `job_id`'s vacuum run for `rekey status`: null if none; else {state, started_at,
// finished_at, error} and, while it runs, pg_stat_progress_vacuum's phase, heap_blks_total,
// heap_blks_scanned, heap_blks_vacuumed (null when this role may not see the vacuuming backend:
// pg_read_all_stats, part of pg_monitor) or, in its ANALYZE part, pg_stat_progress_analyze's
// phase.
nlohmann::json VacuumProgress(pqxx::transaction_base& txn, int64_t job_id);

}  // namespace rekey::jobs
