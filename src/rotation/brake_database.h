// The database side of the brakes (brake.h): reading the server's signals, refusing to start a
// brake the role cannot observe, and recording the engaged brakes where rekey.progress reads
// them. The queries are src/rotation/queries/brake_database.sql.
//
// Each object owns its own connection (a side connection of the worker process, never a claim
// loop's), opened lazily and reopened after a failure.
#pragma once

#include <pqxx/pqxx>

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "rotation/brake.h"

namespace rekey::rotation {

// Throws ConfigError naming the brake, the role and the GRANT to add when the connection's role
// cannot see what a set brake reads: pg_read_all_stats (in pg_monitor) for --max-replication-lag
// and --pause-during-autovacuum (other sessions' rows of pg_stat_replication and
// pg_stat_progress_vacuum are blank without it, which would leave the brake silently off), and
// EXECUTE on pg_ls_archive_statusdir() (pg_monitor) for --max-archive-backlog. Slots
// (pg_replication_slots) and the WAL position are readable by every role.
void CheckBrakePrivileges(pqxx::connection& conn, const BrakeOptions& options,
                          bool replication_lag);

// Reads the signals of the brakes `options` sets; autovacuum only on the tables of active jobs
// (of `job`, or every job).
class PgBrakeSignals : public BrakeSignalReader {
 public:
  PgBrakeSignals(std::string conninfo, BrakeOptions options, std::optional<int64_t> job);
  DatabaseSignals Read() override;

 private:
  std::string conninfo_;
  BrakeOptions options_;
  std::optional<int64_t> job_;
  std::unique_ptr<pqxx::connection> conn_;
};

// Records the brakes engaged in one worker process on its row of rekey.workers (worker_id =
// the process's worker name; the claim loops' rows are <name>/<n>). Failures are logged, never
// thrown: a brake works whether or not the database hears of it.
class BrakeRecorder {
 public:
  BrakeRecorder(std::string conninfo, std::string worker_name, std::optional<int64_t> job);
  // The engaged reasons and their figures (empty: none).
  void Record(const std::map<std::string, nlohmann::json>& engaged);
  // Removes the row (at exit); nothing to do if nothing was ever recorded.
  void Forget();

 private:
  pqxx::connection& Conn();

  std::string conninfo_;
  std::string worker_name_;
  std::optional<int64_t> job_;
  std::mutex mu_;
  std::unique_ptr<pqxx::connection> conn_;
  bool recorded_ = false;
};

}  // namespace rekey::rotation
