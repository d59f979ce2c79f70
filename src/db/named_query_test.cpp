#include "db/named_query.h"

#include <gtest/gtest.h>

#include <regex>
#include <stdexcept>

namespace rekey::db {
namespace {

TEST(NamedQueryTest, SplitsAFileIntoNamedBlocksKeepingTheirContractComments) {
  const char* file =
      "-- Queries of the job table.\n"
      "\n"
      "-- name: load\n"
      "-- Returns the job's row; none iff it does not exist.\n"
      "SELECT id, state\n"
      "  FROM rekey.jobs WHERE id = $1\n"
      "\n"
      "\n"
      "-- name: count_open\n"
      "SELECT count(*) AS open FROM rekey.jobs WHERE state <> 'completed'\n";
  std::vector<NamedQuery> queries = ParseQueryFile("jobs/job", file);
  ASSERT_EQ(queries.size(), 2u);
  EXPECT_EQ(queries[0].name, "jobs/job.load");
  EXPECT_EQ(queries[0].text,
            "-- Returns the job's row; none iff it does not exist.\n"
            "SELECT id, state\n"
            "  FROM rekey.jobs WHERE id = $1");
  EXPECT_EQ(queries[1].name, "jobs/job.count_open");
  EXPECT_EQ(queries[1].text, "SELECT count(*) AS open FROM rekey.jobs WHERE state <> 'completed'");
}

TEST(NamedQueryTest, RefusesMalformedFiles) {
  struct Case {
    const char* what;
    const char* content;
  };
  const Case cases[] = {
      {"SQL before the first name", "SELECT 1\n-- name: a\nSELECT 2\n"},
      {"a block without a statement", "-- name: a\n-- only a comment\n-- name: b\nSELECT 1\n"},
      {"an empty last block", "-- name: a\nSELECT 1\n-- name: b\n\n"},
      {"a name twice", "-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n"},
      {"an upper-case name", "-- name: LoadJob\nSELECT 1\n"},
      {"an empty name", "-- name:\nSELECT 1\n"},
  };
  for (const Case& c : cases) {
    EXPECT_THROW(ParseQueryFile("jobs/job", c.content), std::logic_error) << c.what;
  }
}

TEST(NamedQueryTest, AnUnknownNameIsAProgrammingError) {
  EXPECT_THROW(Query("jobs/job.no_such_query"), std::logic_error);
}

// Every embedded file parses (a malformed one would fail here, not in a worker), every name has
// the documented shape and Query() finds each.
TEST(NamedQueryTest, EveryEmbeddedQueryLoadsAndIsFoundByItsName) {
  const std::regex shape("[a-z0-9_]+/[a-z0-9_]+\\.[a-z0-9_]+");
  for (const NamedQuery& q : AllQueries()) {
    EXPECT_TRUE(std::regex_match(q.name, shape)) << q.name;
    EXPECT_EQ(&Query(q.name), &q.text) << q.name;
  }
}

}  // namespace
}  // namespace rekey::db
