#include "ops/database_collector.h"

#include "db/connection.h"

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
  for (const auto& row : txn.exec("SELECT key_id, scope, status, extract(epoch FROM age)::float8,"
                                  "       extract(epoch FROM max_age)::float8, overdue"
                                  "  FROM rekey.key_age ORDER BY key_id")) {
    KeyAgeSample k;
    k.key_id = row[0].as<int64_t>();
    k.scope = row[1].as<std::string>();
    k.status = row[2].as<std::string>();
    k.age_seconds = row[3].as<double>();
    if (!row[4].is_null()) k.max_age_seconds = row[4].as<double>();
    if (row[5].as<bool>()) ++s.keys_overdue;
    s.keys.push_back(std::move(k));
  }
  auto last = txn.exec1(
      "SELECT extract(epoch FROM max(finished_at))::float8 FROM rekey.jobs WHERE state = "
      "'completed'");
  if (!last[0].is_null()) s.last_rotation_completed = last[0].as<double>();
  for (const auto& row : txn.exec("SELECT state, count(*) FROM rekey.jobs GROUP BY state")) {
    s.jobs_by_state[row[0].as<std::string>()] = row[1].as<int64_t>();
  }
  // Only unfinished jobs' batches are read (rekey.progress would aggregate every job ever run),
  // so a scrape stays cheap however long the history grows.
  for (const auto& row :
       txn.exec("SELECT j.job_id, j.state,"
                "       coalesce(sum(b.planned_rows) FILTER (WHERE s.kind = 'rollout'), 0)::float8,"
                "       coalesce(sum(b.planned_rows) FILTER (WHERE s.kind = 'rollout'"
                "                                          AND b.state = 'done'), 0)::float8"
                "  FROM rekey.jobs j"
                "  LEFT JOIN rekey.batches b ON b.job_id = j.job_id"
                "  LEFT JOIN rekey.job_stages s ON s.job_id = b.job_id AND s.stage_no = b.stage_no"
                " WHERE j.state NOT IN ('completed', 'cancelled', 'rolled_back')"
                " GROUP BY j.job_id, j.state ORDER BY j.job_id")) {
    s.jobs.push_back(
        {row[0].as<int64_t>(), row[1].as<std::string>(), row[2].as<double>(), row[3].as<double>()});
  }
  return s;
}

DatabaseCollector::DatabaseCollector(std::string conninfo)
    : conninfo_(WithConnectTimeout(conninfo, 3)) {}

void DatabaseCollector::Collect(Metrics& metrics) {
  try {
    if (!conn_ || !conn_->is_open()) conn_ = db::Connect(conninfo_, "rekey-metrics");
    pqxx::read_transaction txn(*conn_);
    txn.exec0("SET LOCAL statement_timeout = '5s'");
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
