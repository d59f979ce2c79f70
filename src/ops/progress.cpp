#include "ops/progress.h"

#include <string>

#include "db/named_query.h"

namespace rekey::ops {

nlohmann::json ReadProgress(pqxx::transaction_base& txn, int64_t job_id) {
  return nlohmann::json::parse(
      txn.exec_params1(db::Query("ops/progress.jobs"), job_id)["progress"].as<std::string>());
}

bool AnyActive(const nlohmann::json& progress) {
  for (const auto& j : progress) {
    if (j["state"] == "active" || j["state"] == "verifying") return true;
  }
  return false;
}

}  // namespace rekey::ops
