#include "rotation/duration.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "common/error.h"

namespace rekey::rotation {
namespace {

TEST(ParseDuration, Table) {
  const std::vector<std::pair<std::string, int64_t>> good = {
      {"250ms", 250},   {"10s", 10000},
      {"10", 10000},    {"1.5", 1500},
      {"2min", 120000}, {"2m", 120000},
      {"1h", 3600000},  {"0", 0},
      {"30sec", 30000}, {"878400h", 878400LL * 3600000}};  // kMaxParsedDuration exactly
  for (const auto& [text, ms] : good) {
    EXPECT_EQ(ParseDuration(text, "--max-replication-lag").count(), ms) << text;
  }
  for (const std::string bad :
       {"", "s", "ten seconds", "-1s", "5 s", "3d", "nan", " 5s", "inf", "878401h"}) {
    EXPECT_THROW(ParseDuration(bad, "--max-replication-lag"), ConfigError) << bad;
  }
}

// Found while writing tests/fuzz/job_fuzz, whose invariant is that a parsed duration is never
// negative (its regression input is tests/fuzz/job_fuzz/regressions/duration-1e300h): huge values
// overflowed the conversion to milliseconds and came back negative.
TEST(ParseDuration, HugeValuesAreRefusedNotWrapped) {
  for (const std::string huge : {"1e300h", "1e18", "9223372036854775807ms", "1e17min"}) {
    EXPECT_THROW(ParseDuration(huge, "--max-replication-lag"), ConfigError) << huge;
  }
}

}  // namespace
}  // namespace rekey::rotation
