// A batch a claim loop holds (rekey.claim_batch): what the batch path needs to find its rows.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace rekey::rotation {

struct ClaimedBatch {
  int64_t job_id = 0;
  int batch_no = 0;
  std::optional<std::string> lo;  // inclusive; nullopt = unbounded
  std::optional<std::string> hi;  // exclusive; nullopt = unbounded
  int attempt = 0;
  int stage_no = 1;
  // Only rows with rekey.stage_bucket(pk) in [bucket_lo, bucket_hi); nullopt = every row. A
  // forward batch whose bucket_hi is jobs::kStageBuckets (the last rollout stage) takes every row
  // that still needs work, below bucket_lo too: those are earlier stages' rows written under the
  // old key since, or quarantined ones (counted as skipped again).
  std::optional<int> bucket_lo;
  std::optional<int> bucket_hi;
  bool rollback = false;  // move values from the job's target keys back to its source keys
  // The leaf partition the batch covers, quoted ("schema"."leaf"); nullopt: the job's table
  // itself (any table that is not partitioned). See rekey.lock_batch_partition.
  std::optional<std::string> relation;
};

}  // namespace rekey::rotation
