// Every embedded named query (src/<folder>/queries/*.sql, db/named_query.h) against the schema the
// migrations build: each is parsed, its names resolved and its parameters typed by PostgreSQL
// itself (PREPARE), so a query that no longer matches the schema -- a renamed column, a dropped
// function, a parameter whose type cannot be inferred -- fails here, in CI, not in production.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <optional>
#include <string>
#include <vector>

#include "db/named_query.h"
#include "harness/pg_server.h"

namespace rekey::testing {
namespace {

// The statement's first keyword, upper-cased, after its comment lines.
std::string FirstKeyword(const std::string& text) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(pos, end - pos);
    const size_t start = line.find_first_not_of(" \t\r");
    if (start != std::string::npos && line.compare(start, 2, "--") != 0) {
      std::string word;
      for (size_t i = start; i < line.size() && std::isalpha(static_cast<unsigned char>(line[i]));
           ++i) {
        word += char(std::toupper(static_cast<unsigned char>(line[i])));
      }
      return word;
    }
    pos = end + 1;
  }
  return "";
}

// Checks one statement against `conn`'s database without running it, in a transaction rolled
// back whatever happens: PREPARE for the statements PostgreSQL can prepare (it parses them,
// resolves every table, column, function and operator, and infers every parameter's type); a SET
// cannot be prepared and has no parameters, so it runs, and is undone with the transaction.
// Returns the server's error, or nothing if the statement fits the schema.
std::optional<std::string> Check(pqxx::connection& conn, const std::string& text) {
  static const char* const kPreparable[] = {"SELECT", "WITH",  "INSERT", "UPDATE",
                                            "DELETE", "MERGE", "VALUES"};
  const std::string keyword = FirstKeyword(text);
  const bool preparable =
      std::find(std::begin(kPreparable), std::end(kPreparable), keyword) != std::end(kPreparable);
  if (!preparable && keyword != "SET") {
    return "a " + keyword + " statement, which this test can neither PREPARE nor safely run";
  }
  // A prepared statement outlives the transaction that prepared it: each gets a name of its own.
  static int prepared = 0;
  try {
    pqxx::work txn(conn);
    txn.exec0(preparable
                  ? "PREPARE rekey_named_query_" + std::to_string(++prepared) + " AS\n" + text
                  : text);
    txn.abort();
    return std::nullopt;
  } catch (const pqxx::sql_error& e) {
    return std::string(e.what());
  }
}

class NamedQueriesTest : public PgTest {};

TEST_F(NamedQueriesTest, EveryEmbeddedQueryPreparesAgainstTheMigratedSchema) {
  const std::vector<db::NamedQuery>& queries = db::AllQueries();
  ASSERT_FALSE(queries.empty()) << "no query files embedded (cmake/embed_sql.cmake)";
  for (const db::NamedQuery& q : queries) {
    const std::optional<std::string> error = Check(conn(), q.text);
    EXPECT_FALSE(error) << q.name << " does not fit the schema: " << error.value_or("") << "\n"
                        << q.text;
  }
}

// The check above can fail: a query naming what the schema lacks, or with a parameter of no
// inferable type, is refused (as it would be in production, at its first run).
TEST_F(NamedQueriesTest, RefusesWhatDoesNotFitTheSchema) {
  EXPECT_FALSE(Check(conn(), "SELECT job_id FROM rekey.jobs WHERE job_id = $1::bigint"));
  EXPECT_FALSE(Check(conn(), "-- a contract\nSET LOCAL statement_timeout = '5s'"));
  EXPECT_TRUE(Check(conn(), "SELECT no_such_column FROM rekey.jobs"));
  EXPECT_TRUE(Check(conn(), "SELECT rekey.no_such_function($1::bigint)"));
  EXPECT_TRUE(Check(conn(), "SELECT $1 IS NULL AS untyped"));
  EXPECT_TRUE(Check(conn(), "SET LOCAL no_such_setting = 'on'"));
  EXPECT_TRUE(Check(conn(), "DECLARE c CURSOR FOR SELECT 1"));
}

// The queries this branch moved out of C++ are embedded and found by the names the code uses.
TEST_F(NamedQueriesTest, QueriesAreFoundByFolderFileAndName) {
  for (const char* name :
       {"jobs/job.load", "jobs/job_control.pause", "jobs/rollout_planner.insert_batches",
        "ops/database_collector.key_ages", "ops/progress.jobs", "ops/report_evidence.now"}) {
    EXPECT_NO_THROW(db::Query(name)) << name;
  }
  EXPECT_THROW(db::Query("jobs/job.no_such_query"), std::logic_error);
}

}  // namespace
}  // namespace rekey::testing
