#include "jobs/job_control.h"

#include <utility>

#include "db/named_query.h"

namespace rekey::jobs {
namespace {

template <typename... Args>
std::string Call(pqxx::transaction_base& txn, const char* query, Args&&... args) {
  const pqxx::row row = txn.exec_params1(db::Query(query), std::forward<Args>(args)...);
  return row["message"].as<std::string>();
}

}  // namespace

std::string PauseJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& reason) {
  return Call(txn, "jobs/job_control.pause", job_id, reason);
}

std::string ResumeJob(pqxx::transaction_base& txn, int64_t job_id) {
  return Call(txn, "jobs/job_control.resume", job_id);
}

std::string CancelJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& reason) {
  return Call(txn, "jobs/job_control.cancel", job_id, reason);
}

std::string RetryFailed(pqxx::transaction_base& txn, int64_t job_id) {
  return Call(txn, "jobs/job_control.retry_failed", job_id);
}

std::string RerunJob(pqxx::transaction_base& txn, int64_t job_id) {
  return Call(txn, "jobs/job_control.rerun", job_id);
}

std::string AdvanceJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& observe,
                       bool force) {
  return Call(txn, "jobs/job_control.advance", job_id, observe, force);
}

std::string RollbackJob(pqxx::transaction_base& txn, int64_t job_id, const std::string& to_percent,
                        const std::string& reason) {
  return Call(txn, "jobs/job_control.rollback", job_id, to_percent, reason);
}

std::string Requeue(pqxx::transaction_base& txn, int64_t job_id, int from, int to) {
  return Call(txn, "jobs/job_control.requeue", job_id, from, to);
}

}  // namespace rekey::jobs
