// The stage bucket of a row: staged rollout (docs/operations.md) orders rows by a bucket in
// [0, kStageBuckets) computed from the primary key's text, rekey.stage_bucket(pk_text) in SQL and
// StageBucketHasher (jobs/rollout_planner.h) in C++; a stage covers buckets [0, bucket_hi).
#pragma once

namespace rekey::jobs {

// Must equal the modulus of rekey.stage_bucket: the SQL and C++ planners agree on every row's
// bucket (planning_pg_test), and a stage whose bucket_hi reaches it covers every row.
inline constexpr int kStageBuckets = 10000;

}  // namespace rekey::jobs
