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

// The query of a `DECLARE <cursor> ... CURSOR FOR <query>` statement, or nothing if `text` has no
// CURSOR FOR.
std::optional<std::string> CursorQuery(const std::string& text) {
  std::string upper = text;
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](unsigned char c) { return char(std::toupper(c)); });
  const size_t at = upper.find("CURSOR FOR");
  if (at == std::string::npos) return std::nullopt;
  return text.substr(at + std::string("CURSOR FOR").size());
}

// The second word of `text`'s statement (a cursor's name after DECLARE or CLOSE), lower-cased.
std::string SecondWord(const std::string& text) {
  const std::string keyword = FirstKeyword(text);
  std::string lower = text;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  std::string key = keyword;
  std::transform(key.begin(), key.end(), key.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  size_t pos = lower.find(key + " ");
  if (pos == std::string::npos) return "";
  pos += key.size() + 1;
  size_t end = lower.find_first_of(" \t\r\n;", pos);
  return lower.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
}

// Checks one statement against `conn`'s database in a transaction rolled back whatever happens:
// - PREPARE for the statements PostgreSQL can prepare (it parses them, resolves every table,
//   column, function and operator, and infers every parameter's type), and for the query of a
//   DECLARE ... CURSOR FOR;
// - a SET or CREATE runs (neither takes parameters) and is undone with the transaction, as DDL is
//   in PostgreSQL;
// - a CLOSE must name a cursor that a query of `declared` opens.
// Returns the server's error (or why the statement cannot be checked), or nothing if it fits.
std::optional<std::string> Check(pqxx::connection& conn, const std::string& text,
                                 const std::vector<std::string>& declared = {}) {
  static const char* const kPreparable[] = {"SELECT", "WITH",  "INSERT", "UPDATE",
                                            "DELETE", "MERGE", "VALUES"};
  const std::string keyword = FirstKeyword(text);
  std::string statement = text;
  bool prepare =
      std::find(std::begin(kPreparable), std::end(kPreparable), keyword) != std::end(kPreparable);
  if (keyword == "DECLARE") {
    std::optional<std::string> query = CursorQuery(text);
    if (!query) return "a DECLARE without CURSOR FOR";
    statement = *query;
    prepare = true;
  } else if (keyword == "CLOSE") {
    const std::string cursor = SecondWord(text);
    if (std::find(declared.begin(), declared.end(), cursor) == declared.end()) {
      return "CLOSE of cursor '" + cursor + "', which no named query declares";
    }
    return std::nullopt;
  } else if (!prepare && keyword != "SET" && keyword != "CREATE") {
    return "a " + keyword + " statement, which this test can neither PREPARE nor safely run";
  }
  // A prepared statement outlives the transaction that prepared it: each gets a name of its own.
  static int prepared = 0;
  try {
    pqxx::work txn(conn);
    txn.exec0(prepare
                  ? "PREPARE rekey_named_query_" + std::to_string(++prepared) + " AS\n" + statement
                  : statement);
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
  std::vector<std::string> declared;  // cursors the DECLARE queries open
  for (const db::NamedQuery& q : queries) {
    if (FirstKeyword(q.text) == "DECLARE") declared.push_back(SecondWord(q.text));
  }
  for (const db::NamedQuery& q : queries) {
    const std::optional<std::string> error = Check(conn(), q.text, declared);
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
  EXPECT_FALSE(Check(conn(), "DECLARE c NO SCROLL CURSOR FOR SELECT job_id FROM rekey.jobs"));
  EXPECT_TRUE(Check(conn(), "DECLARE c NO SCROLL CURSOR FOR SELECT no_such FROM rekey.jobs"));
  EXPECT_FALSE(Check(conn(), "-- closes c\nCLOSE c", {"c"}));
  EXPECT_TRUE(Check(conn(), "CLOSE c", {"other"}));
  EXPECT_FALSE(Check(conn(), "CREATE TABLE IF NOT EXISTS rekey.scratch (id int)"));
  EXPECT_TRUE(Check(conn(), "CREATE TABLE rekey.jobs (id int)"));
  EXPECT_TRUE(Check(conn(), "VACUUM rekey.jobs"));
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
