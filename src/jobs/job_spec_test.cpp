#include "jobs/job_spec.h"

#include <gtest/gtest.h>

#include "common/error.h"

namespace rekey::jobs {
namespace {

TEST(ParseKeyMap, AcceptsSourceTargetPairs) {
  struct Case {
    std::string text;
    std::map<uint32_t, uint32_t> want;
  } cases[] = {
      {"1:2", {{1, 2}}},
      {"3:7,4:8", {{3, 7}, {4, 8}}},
      {"0:4294967295", {{0, 4294967295u}}},
  };
  for (const auto& c : cases) EXPECT_EQ(ParseKeyMap(c.text), c.want) << c.text;
}

TEST(ParseKeyMap, RejectsEverythingElse) {
  for (const char* bad : {"", "1", "1:", ":2", "1-2", "1:2,", "1:2,,3:4", "a:b", "-1:2", "1:2:3",
                          "1:4294967296", "99999999999:1", "1:2,1:3", " 1:2", "1:2 "}) {
    EXPECT_THROW(ParseKeyMap(bad), ConfigError) << "'" << bad << "'";
  }
}

TEST(ParseScope, SplitsAtTheFirstEquals) {
  EXPECT_EQ(ParseScope("tenant_id=42"),
            std::make_pair(std::string("tenant_id"), std::string("42")));
  EXPECT_EQ(ParseScope("region=eu=west"),
            std::make_pair(std::string("region"), std::string("eu=west")));
  EXPECT_EQ(ParseScope("flag="), std::make_pair(std::string("flag"), std::string("")));
  for (const char* bad : {"", "tenant", "=42"}) EXPECT_THROW(ParseScope(bad), ConfigError) << bad;
}

}  // namespace
}  // namespace rekey::jobs
