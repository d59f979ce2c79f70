#include "jobs/rotation.h"

#include "db/identifiers.h"
#include "db/named_query.h"
#include "jobs/rollout_planner.h"

namespace rekey::jobs {

Rotation CreateRotation(pqxx::transaction_base& txn, const RotationSpec& spec) {
  // Each job's staged rollout is planned here, not by the database (jobs/rollout_planner.h).
  const bool deferred = DeferRolloutPlanning(txn);
  auto opt = [](const std::optional<std::string>& v) -> const char* {
    return v ? v->c_str() : nullptr;
  };
  const std::string to_key = std::to_string(spec.to_key);
  const std::string batch_size = std::to_string(spec.batch_size);
  const std::string registered = db::TextArrayLiteral(spec.register_columns);
  std::vector<const char*> params = {spec.scope.c_str(),
                                     to_key.c_str(),
                                     spec.stages.c_str(),
                                     opt(spec.observe),
                                     batch_size.c_str(),
                                     opt(spec.name),
                                     spec.register_columns.empty() ? nullptr : registered.c_str()};
  Rotation rotation;
  rotation.rotation_id = txn.exec_params1(db::Query("jobs/rotation.create"),
                                          pqxx::prepare::make_dynamic_params(params))["rotation_id"]
                             .as<int64_t>();
  rotation.jobs = RotationJobs(txn, rotation.rotation_id);
  if (deferred) {
    for (int64_t job : rotation.jobs) PlanRolloutInClient(txn, job);
  }
  return rotation;
}

std::vector<std::string> RotationTargets(pqxx::transaction_base& txn, const std::string& scope,
                                         uint32_t to_key) {
  std::vector<std::string> out;
  for (const auto& row : txn.exec_params(db::Query("jobs/rotation.targets"), scope, to_key)) {
    out.push_back(row["target"].as<std::string>());
  }
  return out;
}

std::vector<int64_t> RotationJobs(pqxx::transaction_base& txn, int64_t rotation_id) {
  std::vector<int64_t> out;
  for (const auto& row : txn.exec_params(db::Query("jobs/rotation.jobs"), rotation_id)) {
    out.push_back(row["job_id"].as<int64_t>());
  }
  return out;
}

nlohmann::json ReadRotationProgress(pqxx::transaction_base& txn,
                                    std::optional<int64_t> rotation_id) {
  return nlohmann::json::parse(
      txn.exec_params1(db::Query("jobs/rotation.progress"), rotation_id)["progress"]
          .as<std::string>());
}

std::string RollbackRotation(pqxx::transaction_base& txn, int64_t rotation_id,
                             const std::string& reason) {
  return txn.exec_params1(db::Query("jobs/rotation.rollback"), rotation_id, reason)["message"]
      .as<std::string>();
}

}  // namespace rekey::jobs
