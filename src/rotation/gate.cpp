#include "rotation/gate.h"

#include <nlohmann/json.hpp>

#include <algorithm>

#include "db/named_query.h"
#include "jobs/job.h"
#include "jobs/stage_bucket.h"
#include "rotation/verifier.h"

namespace rekey::rotation {

std::optional<GateOutcome> RunNextGate(pqxx::connection& conn, std::optional<int64_t> job,
                                       const DataKeySource& keys, const std::string& worker_id) {
  pqxx::work txn(conn);
  const std::string job_text = job ? std::to_string(*job) : "";
  pqxx::result next =
      txn.exec_params(db::Query("rotation/gate.next_gate"), job ? job_text.c_str() : nullptr);
  if (next.empty()) return std::nullopt;
  GateOutcome outcome;
  outcome.job_id = next[0]["job_id"].as<int64_t>();
  outcome.stage_no = next[0]["stage_no"].as<int>();
  const int bucket_hi = next[0]["bucket_hi"].as<int>();
  const int sample_size = next[0]["sample_size"].as<int>();

  const jobs::JobDefinition definition = jobs::LoadJob(txn, outcome.job_id);
  const int64_t rows_moved = txn.exec_params1(db::Query("rotation/gate.rows_moved"), outcome.job_id,
                                              outcome.stage_no)["rows_moved"]
                                 .as<int64_t>();
  VerifyOptions options;
  if (bucket_hi < jobs::kStageBuckets) options.bucket_below = bucket_hi;
  // A canary (a first stage short of the whole table) is verified whole; later stages, and a
  // single stage covering the whole table, by a sample of pages sized for about sample_size rows
  // (with a margin, since pages hold rows of every stage). Decrypting a whole table again at its
  // only gate would cost a quarter of the rotation and tell little more than a large sample.
  const bool canary = outcome.stage_no == 1 && bucket_hi < jobs::kStageBuckets;
  // The canary's rows are read by the keys its plan recorded, not by hashing every key of the
  // table to find them.
  if (canary) options.planned_keys_of_stage = outcome.stage_no;
  if (!canary && rows_moved > sample_size) {
    options.sample_percent = std::min(100.0, 150.0 * sample_size / double(rows_moved));
    // The sample, about 1.5 x sample_size rows, in one page: every page re-reads the sampled
    // table pages (and hashes their keys for the bucket test) to find where it starts.
    options.page_size = std::max(options.page_size, 3 * sample_size);
  }
  const VerifyReport report = VerifyJob(txn, definition, keys, options);
  outcome.values_checked = report.values;
  outcome.decrypt_errors = report.failures;
  nlohmann::json details = {{"rows_moved", rows_moved},
                            {"sample_percent", options.sample_percent},
                            {"failures_by_class", report.failures_by_class},
                            {"failure_samples", report.failure_samples}};
  const int64_t gate_id =
      txn.exec_params1(db::Query("rotation/gate.record_gate"), outcome.job_id, outcome.stage_no,
                       report.values, report.failures, worker_id, details.dump())["gate_id"]
          .as<int64_t>();
  pqxx::row state = txn.exec_params1(db::Query("rotation/gate.outcome"), gate_id);
  outcome.job_state = state["state"].as<std::string>();
  outcome.state_reason = state["state_reason"].as<std::string>();
  outcome.passed = state["passed"].as<bool>();
  txn.commit();
  return outcome;
}

}  // namespace rekey::rotation
