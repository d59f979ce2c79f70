#include "db/binary_result.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "db/binary_array.h"
#include "db/connection.h"
#include "harness/pg_server.h"

namespace rekey::testing {
namespace {

using db::BinaryParam;
using db::BinaryResult;
using Kind = db::BinaryResult::Kind;

class BinaryResultTest : public PgTest {
 protected:
  // How `e` classifies, as one comparable string.
  static std::string ClassOf(const std::exception& e) {
    const db::Classification c = db::Classify(e);
    return std::to_string(int(c.error_class)) + "/" + std::to_string(int(c.batch)) + "/" +
           c.sqlstate + "/" + (c.rule ? "rule" : "none");
  }

  // Runs prepared statement `name` with `args` once through libpqxx and once through
  // ExecBinary, each in its own transaction, expecting both to fail; returns both
  // classifications.
  std::pair<std::string, std::string> BothFail(const std::string& name,
                                               const std::vector<std::string>& args) {
    std::string through_pqxx = "did not fail";
    std::string through_libpq = "did not fail";
    try {
      pqxx::work txn(conn());
      txn.exec_prepared(name, pqxx::prepare::make_dynamic_params(args));
    } catch (const std::exception& e) {
      through_pqxx = ClassOf(e);
    }
    try {
      pqxx::work txn(conn());
      std::vector<BinaryParam> params;
      for (const auto& a : args) params.push_back(BinaryParam::Text(a));
      db::ExecBinary(txn, name, params);
    } catch (const std::exception& e) {
      through_libpq = ClassOf(e);
    }
    return {through_pqxx, through_libpq};
  }
};

// A bytea comes back as its bytes (NUL and all, no hex), text as its bytes, integers of every
// width as their values (negative ones too), NULL as NULL; columns are found by name, whatever
// their order.
TEST_F(BinaryResultTest, FieldsComeBackAsTheirBytesAndValuesByName) {
  conn().prepare("binary_fields",
                 "SELECT $1::bytea AS b, 'caf\xc3\xa9'::text AS t, (-7)::int2 AS i2, "
                 "$2::int4 AS i4, (-5000000000)::int8 AS i8, NULL::bytea AS n");
  pqxx::work txn(conn());
  const std::string bytes("\x00\x01\xff\\x41", 6);
  const BinaryResult r =
      db::ExecBinary(txn, "binary_fields", {BinaryParam::Binary(bytes), BinaryParam::Text("42")});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r.Bytes(0, r.Column("b", Kind::kBytes)), bytes);
  EXPECT_EQ(r.Bytes(0, r.Column("t", Kind::kBytes)), "caf\xc3\xa9");
  EXPECT_EQ(r.Integer(0, r.Column("i2", Kind::kInteger)), -7);
  EXPECT_EQ(r.Integer(0, r.Column("i4", Kind::kInteger)), 42);
  EXPECT_EQ(r.Integer(0, r.Column("i8", Kind::kInteger)), -5000000000);
  EXPECT_TRUE(r.IsNull(0, r.Column("n", Kind::kBytes)));
  EXPECT_FALSE(r.IsNull(0, r.Column("b", Kind::kBytes)));
}

// A column the statement forgot to cast, or one it does not return, is refused by name: its
// binary form would be read as something it is not.
TEST_F(BinaryResultTest, AColumnOfAnotherTypeOrNoneIsRefusedByName) {
  conn().prepare("binary_numeric", "SELECT 1.5::numeric AS x");
  pqxx::work txn(conn());
  const BinaryResult r = db::ExecBinary(txn, "binary_numeric", {});
  EXPECT_THROW(r.Column("x", Kind::kBytes), PermanentError);
  EXPECT_THROW(r.Column("x", Kind::kInteger), PermanentError);
  EXPECT_THROW(r.Column("y", Kind::kBytes), PermanentError);
}

// A statement libpqxx was told of but has not sent to the server yet (it prepares lazily) runs:
// ExecBinary makes libpqxx prepare it, and libpqxx's own later use of it still works.
TEST_F(BinaryResultTest, AStatementLibpqxxHasNotPreparedYetRuns) {
  conn().prepare("binary_lazy", "SELECT $1::text AS t");
  {
    pqxx::work txn(conn());
    EXPECT_EQ(db::ExecBinary(txn, "binary_lazy", {BinaryParam::Text("x")}).size(), 1u);
    EXPECT_EQ(txn.exec_prepared1("binary_lazy", "y")[0].as<std::string>(), "y");
  }
  pqxx::work txn(conn());
  EXPECT_EQ(txn.exec1("SELECT count(*) FROM pg_prepared_statements WHERE name = 'binary_lazy'")[0]
                .as<int>(),
            1);
}

// Binary parameters reach the server as given (a BinaryArray without its copy into a libpqxx
// binarystring), NULL parameters as NULL.
TEST_F(BinaryResultTest, BinaryAndNullParametersArriveAsGiven) {
  conn().prepare("binary_params",
                 "SELECT cardinality($1::bytea[]) AS n, ($1::bytea[])[2] AS second, "
                 "($2::text IS NULL)::int4 AS null_given");
  db::BinaryArray array;
  array.Append(std::string_view("one"));
  array.Append(std::string_view("\x00two", 4));
  const std::string serialized = array.Finish().str();
  pqxx::work txn(conn());
  const BinaryResult r =
      db::ExecBinary(txn, "binary_params", {BinaryParam::Binary(serialized), BinaryParam::Null()});
  EXPECT_EQ(r.Integer(0, r.Column("n", Kind::kInteger)), 2);
  EXPECT_EQ(r.Bytes(0, r.Column("second", Kind::kBytes)), std::string_view("\x00two", 4));
  EXPECT_EQ(r.Integer(0, r.Column("null_given", Kind::kInteger)), 1);
}

// An SQL text run once (no prepared statement), and a FETCH from a cursor declared in the same
// transaction, come back in binary too, parameters and all; its failure classifies as libpqxx's.
TEST_F(BinaryResultTest, AnUnpreparedQueryAndACursorsFetchComeBackInBinary) {
  pqxx::work txn(conn());
  const BinaryResult r =
      db::ExecBinaryQuery(txn, "SELECT decode($1, 'hex') AS b", {BinaryParam::Text("00ff")});
  EXPECT_EQ(r.Bytes(0, r.Column("b", Kind::kBytes)), std::string_view("\x00\xff", 2));
  txn.exec0("DECLARE c NO SCROLL CURSOR FOR SELECT g::int8 AS n FROM generate_series(1, 5) g");
  const BinaryResult fetched = db::ExecBinaryQuery(txn, "FETCH 3 FROM c");
  ASSERT_EQ(fetched.size(), 3u);
  EXPECT_EQ(fetched.Integer(2, fetched.Column("n", Kind::kInteger)), 3);
  try {
    db::ExecBinaryQuery(txn, "SELECT 1 / 0 AS x");
    ADD_FAILURE() << "divided by zero";
  } catch (const pqxx::sql_error& e) {
    EXPECT_EQ(e.sqlstate(), "22012");
  }
}

// A failed statement classifies exactly as the same failure through libpqxx (SQLSTATE, error
// table row, transient or not): a unique violation, a deadlock-class and a serialization
// failure, rekey's "no longer claimed" signal, a statement timeout, a missing privilege.
TEST_F(BinaryResultTest, FailuresClassifyAsThroughLibpqxx) {
  Exec(
      "CREATE TABLE uniq (k int PRIMARY KEY); INSERT INTO uniq VALUES (1);"
      "CREATE FUNCTION raise_state(state text, message text) RETURNS int LANGUAGE plpgsql AS "
      "$$BEGIN RAISE EXCEPTION '%', message USING ERRCODE = state; END$$;");
  conn().prepare("binary_dup", "INSERT INTO uniq VALUES ($1::int) RETURNING k");
  conn().prepare("binary_raise", "SELECT raise_state($1, $2) AS r");
  conn().prepare("binary_sleep", "SELECT pg_sleep($1::float8)::text AS s");
  const auto dup = BothFail("binary_dup", {"1"});
  EXPECT_EQ(dup.first, dup.second);
  EXPECT_NE(dup.first.find("/23505/"), std::string::npos) << dup.first;
  for (const auto& [state, message] : std::vector<std::pair<std::string, std::string>>{
           {"40001", "could not serialize access"},
           {"40001", "batch 1/2 is no longer claimed by this worker"},
           {"40P01", "deadlock detected"},
           {"55000", "key 3 is retired"},
           {"42501", "permission denied for table t"},
           {"53300", "too many connections"}}) {
    const auto raised = BothFail("binary_raise", {state, message});
    EXPECT_EQ(raised.first, raised.second) << state << " " << message;
    EXPECT_NE(raised.second.find("/" + state + "/"), std::string::npos) << raised.second;
  }
  Exec("ALTER DATABASE " + dbname() + " SET statement_timeout = '50ms'");
  const auto timeout = BothFail("binary_sleep", {"1"});
  EXPECT_EQ(timeout.first, timeout.second);
}

// A connection lost under a statement is a broken connection (transient), as libpqxx reports it.
TEST_F(BinaryResultTest, ALostConnectionIsTransient) {
  conn().prepare("binary_after_kill", "SELECT 1::int4 AS one");
  const std::string pid = std::to_string(conn().backendpid());
  pqxx::work txn(conn());
  // Run once first: then libpqxx has nothing left to prepare, and the loss is met by libpq.
  EXPECT_EQ(db::ExecBinary(txn, "binary_after_kill", {}).size(), 1u);
  {
    auto other = db::Connect(conninfo(), "killer");
    pqxx::nontransaction k(*other);
    k.exec("SELECT pg_terminate_backend(" + pid + ")");
  }
  try {
    db::ExecBinary(txn, "binary_after_kill", {});
    ADD_FAILURE() << "ran on a terminated session";
  } catch (const pqxx::broken_connection& e) {
    EXPECT_TRUE(db::IsTransient(e)) << e.what();
  }
}

}  // namespace
}  // namespace rekey::testing
