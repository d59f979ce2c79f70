// Job progress as `rekey status` shows it: the rows of the rekey.progress view (one per job:
// state, current stage, rows and batches done, rate, ETA, last gate, readers waited for, brakes
// engaged), as JSON objects keyed by the view's column names. The query is
// src/ops/queries/progress.sql.
#pragma once

#include <pqxx/pqxx>

#include <cstdint>
#include <nlohmann/json.hpp>

namespace rekey::ops {

// The rekey.progress rows of job `job_id`, or of every job if `job_id` is 0, as a JSON array in
// job order (empty if there are none). Errors are the database's (pqxx exceptions).
nlohmann::json ReadProgress(pqxx::transaction_base& txn, int64_t job_id);

// True iff a job of `progress` (ReadProgress's array) is active or verifying: one whose numbers
// a watcher should expect to change.
bool AnyActive(const nlohmann::json& progress);

}  // namespace rekey::ops
