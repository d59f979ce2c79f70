#include "rotation/brake_database.h"

#include "common/error.h"
#include "common/log.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::rotation {
namespace {

const std::string& Query(const char* name) {
  return db::Query(std::string("rotation/brake_database.") + name);
}

std::optional<std::string> JobParam(std::optional<int64_t> job) {
  if (!job) return std::nullopt;
  return std::to_string(*job);
}

}  // namespace

void CheckBrakePrivileges(pqxx::connection& conn, const BrakeOptions& options,
                          bool replication_lag) {
  pqxx::read_transaction txn(conn);
  const auto row = txn.exec1(Query("privileges"));
  txn.commit();
  const std::string role = row["role_name"].as<std::string>();
  auto refuse = [&](const std::string& flag, const std::string& what, const std::string& grant) {
    throw ConfigError(flag + " needs to read " + what + ", which role " + role +
                      " cannot see; run as a superuser: " + grant + " " + role +
                      "; (or drop the flag)");
  };
  const bool stats = row["read_all_stats"].as<bool>();
  if (replication_lag && !stats) {
    refuse("--max-replication-lag", "pg_stat_replication's lag columns", "GRANT pg_monitor TO");
  }
  if (options.pause_during_autovacuum && !stats) {
    refuse("--pause-during-autovacuum", "pg_stat_progress_vacuum of autovacuum workers",
           "GRANT pg_monitor TO");
  }
  if (options.max_archive_backlog && !row["archive_statusdir"].as<bool>()) {
    refuse("--max-archive-backlog", "pg_ls_archive_statusdir()", "GRANT pg_monitor TO");
  }
}

PgBrakeSignals::PgBrakeSignals(std::string conninfo, BrakeOptions options,
                               std::optional<int64_t> job)
    : conninfo_(std::move(conninfo)), options_(std::move(options)), job_(job) {}

DatabaseSignals PgBrakeSignals::Read() {
  if (!conn_ || !conn_->is_open()) conn_ = db::Connect(conninfo_, "rekey-brakes");
  DatabaseSignals out;
  try {
    pqxx::read_transaction txn(*conn_);
    out.at = std::chrono::steady_clock::now();
    if (options_.max_wal_rate) {
      out.wal_lsn = txn.exec1(Query("wal_position"))["wal_bytes"].as<int64_t>();
    }
    if (options_.max_slot_lag) {
      const pqxx::result r = txn.exec(Query("slot_lag"));
      out.slot_retained_bytes = r.empty() ? 0 : r[0]["retained_bytes"].as<int64_t>();
      if (!r.empty()) out.slot_name = r[0]["slot_name"].as<std::string>();
    }
    if (options_.max_archive_backlog) {
      out.archive_ready = txn.exec1(Query("archive_ready"))["ready"].as<int64_t>();
    }
    if (options_.pause_during_autovacuum) {
      const pqxx::result r = txn.exec_params(Query("autovacuum"), JobParam(job_));
      out.autovacuum = !r.empty();
      if (!r.empty()) out.autovacuum_table = r[0]["table_name"].as<std::string>();
    }
    txn.commit();
  } catch (...) {
    conn_.reset();
    throw;
  }
  return out;
}

BrakeRecorder::BrakeRecorder(std::string conninfo, std::string worker_name,
                             std::optional<int64_t> job)
    : conninfo_(std::move(conninfo)), worker_name_(std::move(worker_name)), job_(job) {}

pqxx::connection& BrakeRecorder::Conn() {
  if (!conn_ || !conn_->is_open()) conn_ = db::Connect(conninfo_, "rekey-brakes " + worker_name_);
  return *conn_;
}

void BrakeRecorder::Record(const std::map<std::string, nlohmann::json>& engaged) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string reasons = "{";
  nlohmann::json detail = nlohmann::json::object();
  for (const auto& [reason, figures] : engaged) {
    reasons += (reasons.size() > 1 ? "," : "") + reason;  // bounded names: no quoting needed
    detail[reason] = figures;
  }
  reasons += "}";
  try {
    pqxx::work txn(Conn());
    txn.exec_params0(Query("record"), worker_name_, JobParam(job_), reasons, detail.dump());
    txn.commit();
    recorded_ = true;
  } catch (const std::exception& e) {
    conn_.reset();
    log::Warn("could not record the engaged brakes",
              {{"error", e.what()}, {"action", "brake.record"}});
  }
}

void BrakeRecorder::Forget() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!recorded_) return;
  try {
    pqxx::work txn(Conn());
    txn.exec_params0(Query("forget"), worker_name_);
    txn.commit();
  } catch (const std::exception& e) {
    conn_.reset();
    log::Warn("could not clear the brakes' row", {{"error", e.what()}, {"action", "brake.record"}});
  }
}

}  // namespace rekey::rotation
