#include "ops/readiness.h"

#include <chrono>

#include "db/connection.h"
#include "db/conninfo.h"
#include "db/named_query.h"

namespace rekey::ops {
namespace {

nlohmann::json DatabaseCheck(const std::string& conninfo) {
  const auto start = std::chrono::steady_clock::now();
  try {
    auto conn = db::Connect(conninfo, "rekey-readyz");
    pqxx::nontransaction txn(*conn);
    txn.exec0(db::Query("ops/readiness.statement_timeout"));
    // The schema must be there too: a worker against an unmigrated database cannot work.
    if (txn.exec1(db::Query("ops/readiness.schema_missing"))["schema_missing"].as<bool>()) {
      return {{"name", "database"},
              {"status", "DOWN"},
              {"data", {{"error", "the rekey schema is missing; run rekey migrate"}}}};
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return {{"name", "database"}, {"status", "UP"}, {"data", {{"latency_ms", ms}}}};
  } catch (const std::exception& e) {
    return {{"name", "database"},
            {"status", "DOWN"},
            {"data", {{"error", db::RedactSecrets(db::PrimaryMessage(e), conninfo)}}}};
  }
}

}  // namespace

nlohmann::json KmsCheck(const std::vector<KmsStatus>& providers) {
  bool up = true;
  nlohmann::json list = nlohmann::json::array();
  for (const KmsStatus& p : providers) {
    nlohmann::json entry = {{"provider", p.provider}, {"key_ref", p.key_ref}};
    if (p.breaker) {
      entry["breaker"] = kms::BreakerStateName(*p.breaker);
      if (*p.breaker == kms::BreakerState::kOpen) up = false;
    } else {
      entry["breaker"] = nullptr;
    }
    list.push_back(std::move(entry));
  }
  return {{"name", "kms"}, {"status", up ? "UP" : "DOWN"}, {"data", {{"providers", list}}}};
}

Readiness CheckReadiness(const std::string& conninfo, const KmsWatch& kms) {
  nlohmann::json checks = {DatabaseCheck(conninfo), KmsCheck(kms.Snapshot())};
  bool up = true;
  for (const auto& c : checks) up = up && c["status"] == "UP";
  return {up, {{"status", up ? "UP" : "DOWN"}, {"checks", checks}}};
}

}  // namespace rekey::ops
