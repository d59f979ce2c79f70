#include "common/duration.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"

namespace rekey {
namespace {

constexpr int64_t kDay = 86400000;

struct Row {
  std::string text;
  int64_t flag_ms;     // --max-replication-lag (the default rules); -1: refused
  int64_t key_age_ms;  // --max-age (KeyAgeRules); -1: refused
};

// One row per case of the grammar: each flag's verdict side by side.
const std::vector<Row> kRows = {
    {"250ms", 250, -1},    // below a key age's 1s minimum
    {"1500ms", 1500, -1},  // not whole seconds
    {"2000ms", 2000, 2000},
    {"10s", 10000, 10000},
    {"10", 10000, -1},  // a bare number counts seconds, but an age needs a unit
    {"1.5", 1500, -1},
    {"30sec", 30000, 30000},
    {"2min", 120000, 120000},
    {"2m", 120000, 120000},
    {"1h", 3600000, 3600000},
    {"90d", 90 * kDay, 90 * kDay},
    {"3d", 3 * kDay, 3 * kDay},
    {"2w", 14 * kDay, 14 * kDay},
    {"1.5d", 36 * 3600000, -1},  // fractions only where the flag allows them
    {"1e3ms", -1, -1},           // no exponents, signs or blanks
    {"+5s", -1, -1},
    {"0x10s", -1, -1},
    {".5s", -1, -1},
    {"5.s", -1, -1},
    {"5s ", -1, -1},
    {"0", 0, -1},
    {"0d", 0, -1},
    {"878400h", 878400LL * 3600000, 878400LL * 3600000},  // kMaxParsedDuration exactly
    {"878401h", -1, -1},
    {"", -1, -1},
    {"s", -1, -1},
    {"d", -1, -1},
    {"ten seconds", -1, -1},
    {"-1s", -1, -1},
    {"-5d", -1, -1},
    {"5 s", -1, -1},
    {" 5s", -1, -1},
    {"90y", -1, -1},
    {"1 millisecond", -1, -1},  // SQL interval text, not this grammar
    {"nan", -1, -1},
    {"inf", -1, -1},
};

int64_t ParsedOrRefused(const std::string& text, const DurationRules& rules) {
  try {
    return ParseDuration(text, "--flag", rules).count();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--flag"), std::string::npos) << e.what();
    return -1;
  }
}

TEST(ParseDuration, Table) {
  for (const Row& row : kRows) {
    EXPECT_EQ(ParsedOrRefused(row.text, DurationRules{}), row.flag_ms) << "'" << row.text << "'";
    EXPECT_EQ(ParsedOrRefused(row.text, KeyAgeRules()), row.key_age_ms) << "'" << row.text << "'";
  }
}

// Found while writing tests/fuzz/job_fuzz, whose invariant is that a parsed duration is never
// negative (its regression input is tests/fuzz/job_fuzz/regressions/duration-1e300h): huge values
// overflowed the conversion to milliseconds and came back negative.
TEST(ParseDuration, HugeValuesAreRefusedNotWrapped) {
  for (const std::string huge : {"1e300h", "1e18", "9223372036854775807ms", "1e17min", "1e300w"}) {
    EXPECT_THROW(ParseDuration(huge, "--max-replication-lag"), ConfigError) << huge;
  }
}

}  // namespace
}  // namespace rekey
