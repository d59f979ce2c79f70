#include "jobs/rollout_planner.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace rekey::jobs {
namespace {

// rekey.stage_bucket in the database, and Python's
//   int(hashlib.md5(k.encode()).hexdigest()[:8], 16) % 10000
// give these buckets; docs/operations.md documents the rule.
TEST(StageBucketTest, MatchesTheDocumentedRule) {
  const std::vector<std::pair<std::string, int>> vectors = {
      {"1", 9560},         {"2", 8605},
      {"42", 4184},        {"1000000", 9636},
      {"-7", 4050},        {"", 6393},
      {"acct-0f3c", 7101}, {"caf\xc3\xa9", 7364},
      {"{\"a\",b}", 1619}, {"550e8400-e29b-41d4-a716-446655440000", 3982},
  };
  for (const auto& [key, bucket] : vectors) EXPECT_EQ(StageBucket(key), bucket) << key;
}

}  // namespace
}  // namespace rekey::jobs
