#include "ops/database_collector.h"

#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::ops {

std::string WithConnectTimeout(const std::string& conninfo, int seconds) {
  if (conninfo.find("connect_timeout") != std::string::npos) return conninfo;
  const std::string value = std::to_string(seconds);
  if (conninfo.rfind("postgres://", 0) == 0 || conninfo.rfind("postgresql://", 0) == 0) {
    return conninfo + (conninfo.find('?') == std::string::npos ? "?" : "&") +
           "connect_timeout=" + value;
  }
  return conninfo + (conninfo.empty() ? "" : " ") + "connect_timeout=" + value;
}

DatabaseSnapshot ReadDatabaseSnapshot(pqxx::transaction_base& txn) {
  DatabaseSnapshot s;
  for (const auto& row : txn.exec(db::Query("ops/database_collector.key_ages"))) {
    KeyAgeSample k;
    k.key_id = row["key_id"].as<int64_t>();
    k.scope = row["scope"].as<std::string>();
    k.status = row["status"].as<std::string>();
    k.age_seconds = row["age_seconds"].as<double>();
    if (!row["max_age_seconds"].is_null()) k.max_age_seconds = row["max_age_seconds"].as<double>();
    if (row["overdue"].as<bool>()) ++s.keys_overdue;
    s.keys.push_back(std::move(k));
  }
  const pqxx::row last = txn.exec1(db::Query("ops/database_collector.last_rotation"));
  if (!last["finished_at"].is_null()) s.last_rotation_completed = last["finished_at"].as<double>();
  for (const auto& row : txn.exec(db::Query("ops/database_collector.jobs_by_state"))) {
    s.jobs_by_state[row["state"].as<std::string>()] = row["jobs"].as<int64_t>();
  }
  for (const auto& row : txn.exec(db::Query("ops/database_collector.unfinished_job_progress"))) {
    s.jobs.push_back({row["job_id"].as<int64_t>(), row["state"].as<std::string>(),
                      row["rows_total"].as<double>(), row["rows_done"].as<double>(),
                      row["lagging_readers"].as<double>(),
                      row["waiting_for_readers_seconds"].as<double>()});
  }
  for (const auto& row : txn.exec(db::Query("ops/database_collector.unfinished_stage_progress"))) {
    s.stages.push_back({row["job_id"].as<int64_t>(), row["rotation_id"].as<std::string>(),
                        row["stage_no"].as<int>(), row["kind"].as<std::string>(),
                        row["rows_total"].as<double>(), row["rows_done"].as<double>()});
  }
  for (const auto& row :
       txn.exec(db::Query("ops/database_collector.unfinished_rotation_progress"))) {
    s.rotations.push_back({row["rotation_id"].as<std::string>(), row["scope"].as<std::string>(),
                           row["rows_total"].as<double>(), row["rows_done"].as<double>()});
  }
  return s;
}

DatabaseCollector::DatabaseCollector(std::string conninfo)
    : conninfo_(WithConnectTimeout(conninfo, 3)) {}

void DatabaseCollector::Collect(Metrics& metrics) {
  try {
    if (!conn_ || !conn_->is_open()) conn_ = db::Connect(conninfo_, "rekey-metrics");
    pqxx::read_transaction txn(*conn_);
    txn.exec0(db::Query("ops/database_collector.statement_timeout"));
    DatabaseSnapshot snapshot = ReadDatabaseSnapshot(txn);
    txn.commit();
    metrics.SetDatabaseSnapshot(snapshot);
    metrics.SetDatabaseUp(true);
  } catch (const std::exception&) {
    conn_.reset();
    metrics.SetDatabaseUp(false);
  }
}

}  // namespace rekey::ops
