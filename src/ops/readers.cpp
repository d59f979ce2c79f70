#include "ops/readers.h"

#include "db/named_query.h"

namespace rekey::ops {

nlohmann::json ListReaders(pqxx::transaction_base& txn, const std::optional<std::string>& scope) {
  return nlohmann::json::parse(
      txn.exec_params1(db::Query("ops/readers.list"), scope)["readers"].as<std::string>());
}

void SetReaderWindow(pqxx::transaction_base& txn, int64_t job, const std::string& interval) {
  txn.exec_params1(db::Query("ops/readers.set_window"), job, interval);
}

std::vector<std::string> UnreportedScopes(pqxx::transaction_base& txn, int64_t job) {
  std::vector<std::string> out;
  for (const auto& row : txn.exec_params(db::Query("ops/readers.unreported_scopes"), job)) {
    out.push_back(row["scope"].as<std::string>());
  }
  return out;
}

nlohmann::json ReaderReadiness(pqxx::transaction_base& txn, int64_t job) {
  return nlohmann::json::parse(
      txn.exec_params1(db::Query("ops/readers.readiness"), job)["readiness"].as<std::string>());
}

}  // namespace rekey::ops
