#include "ops/report_evidence.h"

#include <vector>

#include "audit/audit_chain.h"
#include "db/connection.h"
#include "db/named_query.h"

namespace rekey::ops {
namespace {

std::string DatabaseNow(pqxx::connection& conn) {
  pqxx::read_transaction txn(conn);
  return txn.exec1(db::Query("ops/report_evidence.now"))["now"].as<std::string>();
}

}  // namespace

nlohmann::json AuditChainEvidence(pqxx::connection& conn) {
  const audit::Verification v = audit::Verify(conn);
  nlohmann::json findings = nlohmann::json::array();
  for (const auto& f : v.findings) findings.push_back(f.kind + ": " + f.detail);
  return {{"head", audit::FormatHead(v.head)},
          {"rows_checked", v.rows_checked},
          {"unsealed", v.unsealed},
          {"intact", v.ok()},
          {"findings", findings},
          {"verified_at", DatabaseNow(conn)}};
}

VerifiedJob VerifyJobValues(pqxx::connection& conn, int64_t job_id,
                            const std::function<rotation::DataKeySource()>& keys) {
  VerifiedJob out;
  out.job = db::Classified("cannot load the job", [&] {
    pqxx::read_transaction txn(conn);
    return jobs::LoadJob(txn, job_id);
  });
  const rotation::DataKeySource source = keys();
  out.report = db::Classified("verification failed", [&] {
    pqxx::read_transaction txn(conn);
    return rotation::VerifyJob(txn, out.job, source);
  });
  std::vector<uint32_t> sources, targets;
  for (const auto& [from, to] : out.job.key_map) {
    sources.push_back(from);
    targets.push_back(to);
  }
  if (out.job.transit_key_ref) {
    // Versions at or above the target count as "target keys"; the failures are the rest.
    for (const auto& entry : out.report.values_by_key) targets.push_back(entry.first);
  }
  out.under_source_keys = out.report.ValuesUnder(sources);
  out.under_target_keys = out.report.ValuesUnder(targets);
  return out;
}

nlohmann::json VerificationEvidence(pqxx::connection& conn, int64_t job_id,
                                    const std::function<rotation::DataKeySource()>& keys,
                                    const std::string& plaintext_sha256_before) {
  const rotation::VerifyReport report = VerifyJobValues(conn, job_id, keys).report;
  nlohmann::json by_key = nlohmann::json::object();
  for (const auto& [k, n] : report.values_by_key) by_key[std::to_string(k)] = n;
  nlohmann::json out = {{"verified_at", DatabaseNow(conn)},
                        {"rows", report.rows},
                        {"values", report.values},
                        {"values_by_key", by_key},
                        {"failures", report.failures},
                        {"not_proven", report.not_proven},
                        {"failures_by_class", report.failures_by_class},
                        {"plaintext_sha256", report.plaintext_sha256}};
  if (!plaintext_sha256_before.empty()) {
    out["plaintext_sha256_before"] = plaintext_sha256_before;
    out["plaintext_unchanged"] = plaintext_sha256_before == report.plaintext_sha256;
  }
  return out;
}

}  // namespace rekey::ops

namespace rekey::ops {

nlohmann::json SideEffectsEvidence(pqxx::transaction_base& txn, int64_t job_id) {
  const pqxx::result r = txn.exec_params(db::Query("ops/report_evidence.side_effects"), job_id);
  if (r.empty() || r[0]["side_effects"].is_null()) return nullptr;
  return nlohmann::json::parse(r[0]["side_effects"].as<std::string>());
}

}  // namespace rekey::ops
