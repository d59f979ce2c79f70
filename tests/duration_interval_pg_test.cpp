// The duration grammar (common/duration.h) against PostgreSQL's interval input: every form the
// grammar accepts means the same length to the server, so a flag's text may be passed to SQL as
// it is, and the two never disagree about what "2m" or a bare number is.
#include <gtest/gtest.h>

#include <string>

#include "common/duration.h"
#include "harness/pg_server.h"

namespace rekey::testing {
namespace {

class DurationIntervalTest : public PgTest {};

TEST_F(DurationIntervalTest, EveryFormMeansTheSameToPostgres) {
  for (const std::string text : {"250ms", "1500ms", "10s", "30sec", "10", "1.5", "0", "2m", "2min",
                                 "1h", "90d", "1.5d", "2w", "878400h"}) {
    const int64_t ms = ParseDuration(text, "--flag").count();
    pqxx::work txn(conn());
    const int64_t server =
        txn.exec_params1("SELECT round(extract(epoch FROM $1::interval) * 1000)::bigint AS ms",
                         text)["ms"]
            .as<int64_t>();
    EXPECT_EQ(ms, server) << "'" << text << "'";
  }
}

}  // namespace
}  // namespace rekey::testing
