#include "jobs/after_rewrite.h"

#include <optional>
#include <thread>

#include "common/log.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::jobs {
namespace {

const std::string& Q(const char* name) {
  return db::Query(std::string("jobs/after_rewrite.") + name);
}

// The statement is the job's table, quoted by the database (vacuum_started's `qualified`),
// after this.
constexpr const char* kVacuumAnalyze = "VACUUM (ANALYZE) ";

void RecordVacuumEnd(pqxx::connection& conn, int64_t job_id, const std::string& worker_id,
                     const std::optional<std::string>& error) {
  pqxx::work txn(conn);
  txn.exec_params(Q("vacuum_finished"), job_id, worker_id,
                  error ? error->c_str() : static_cast<const char*>(nullptr));
  txn.commit();
}

// Runs the vacuum the job asked for, if any; what went wrong, if anything, is returned, never
// thrown: a completed job stays completed whatever vacuum does.
void VacuumAfter(pqxx::connection& conn, int64_t job_id, const std::string& worker_id) {
  std::string qualified, owner;
  bool may_vacuum = false;
  {
    pqxx::work txn(conn);
    const pqxx::row r = txn.exec_params1(Q("vacuum_started"), job_id, worker_id);
    if (r["started"].is_null() || !r["started"].as<bool>()) return;
    qualified = r["qualified"].as<std::string>();
    may_vacuum = r["may_vacuum"].as<bool>();
    owner = r["owner"].as<std::string>();
    txn.commit();
  }
  std::optional<std::string> error;
  if (!may_vacuum) {
    error = "only the owner of " + qualified + " (" + owner +
            "), the database's owner or a superuser may vacuum it; run VACUUM (ANALYZE) " +
            qualified + " as one of them";
  } else {
    log::Info("vacuuming the job's table",
              {{"job", job_id}, {"table", qualified}, {"worker", worker_id}});
    try {
      pqxx::nontransaction autocommit(conn);  // VACUUM cannot run inside a transaction block
      autocommit.exec(std::string(kVacuumAnalyze) + qualified);
    } catch (const pqxx::broken_connection&) {
      throw;  // the worker reconnects; the run stays recorded as running, audited as started
    } catch (const std::exception& e) {
      error = db::PrimaryMessage(e);
    }
  }
  if (error) {
    log::Warn("vacuum after the job failed; the job stays completed",
              {{"job", job_id}, {"table", qualified}, {"worker", worker_id}, {"error", *error}});
  }
  RecordVacuumEnd(conn, job_id, worker_id, error);
}

}  // namespace

void AfterJobCompleted(pqxx::connection& conn, int64_t job_id, const std::string& worker_id) {
  double wait_seconds = 0;
  {
    // This backend's own counters are published when it goes idle after this commit; other
    // workers' within PGSTAT_MIN_INTERVAL of their last chunk's commit.
    pqxx::work txn(conn);
    wait_seconds =
        txn.exec_params1(Q("flush_wait"), job_id, worker_id,
                         std::chrono::duration<double>(kStatsFlushWait).count())["wait_seconds"]
            .as<double>();
    txn.commit();
  }
  if (wait_seconds > 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(wait_seconds));
  }
  {
    pqxx::work txn(conn);
    txn.exec_params(Q("record_end"), job_id);
    txn.commit();
  }
  VacuumAfter(conn, job_id, worker_id);
}

nlohmann::json VacuumProgress(pqxx::transaction_base& txn, int64_t job_id) {
  const pqxx::result r = txn.exec_params(Q("vacuum_progress"), job_id);
  if (r.empty()) return nullptr;
  auto field = [](const pqxx::field& f) -> nlohmann::json {
    if (f.is_null()) return nullptr;
    return f.as<std::string>();
  };
  auto count = [](const pqxx::field& f) -> nlohmann::json {
    if (f.is_null()) return nullptr;
    return f.as<int64_t>();
  };
  const pqxx::row row = r[0];
  return {{"state", field(row["state"])},
          {"worker", field(row["worker_id"])},
          {"started_at", field(row["started_at"])},
          {"finished_at", field(row["finished_at"])},
          {"error", field(row["error"])},
          {"vacuum_phase", field(row["vacuum_phase"])},
          {"heap_blks_total", count(row["heap_blks_total"])},
          {"heap_blks_scanned", count(row["heap_blks_scanned"])},
          {"heap_blks_vacuumed", count(row["heap_blks_vacuumed"])},
          {"analyze_phase", field(row["analyze_phase"])}};
}

}  // namespace rekey::jobs
