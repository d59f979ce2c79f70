#include "db/connection.h"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <thread>

#include "common/error.h"
#include "harness/pg_server.h"

namespace rekey::db {
namespace {

using rekey::testing::PgServer;
using rekey::testing::PgTest;

class ConnectionPgTest : public PgTest {};

TEST_F(ConnectionPgTest, ConnectSetsApplicationNameForBothForms) {
  const std::string url = PgServer::Get().Url(dbname()) + "?application_name=overridden";
  for (const std::string& conninfo : {this->conninfo(), url}) {
    auto c = Connect(conninfo, "rekey-test-worker");
    pqxx::nontransaction tx(*c);
    EXPECT_EQ(tx.exec1("SELECT current_database()")[0].as<std::string>(), dbname());
    EXPECT_EQ(tx.exec1("SHOW application_name")[0].as<std::string>(), "rekey-test-worker");
  }
}

TEST_F(ConnectionPgTest, DefaultApplicationNameIsRekey) {
  auto c = Connect(conninfo());
  pqxx::nontransaction tx(*c);
  EXPECT_EQ(tx.exec1("SHOW application_name")[0].as<std::string>(), "rekey");
}

TEST(ConnectTest, UnreachableServerIsTransientAndNeverLeaksThePassword) {
  const std::string password = "Sup3r-S3cret-pw";
  const std::string port = "1";  // privileged: nothing listens there
  const std::string conninfos[] = {
      "postgresql://alice:" + password + "@127.0.0.1:" + port + "/app",
      "postgresql://alice@127.0.0.1:" + port + "/app?password=" + password,
      "host=127.0.0.1 port=" + port + " user=alice password=" + password + " dbname=app",
      "host=127.0.0.1 port=" + port + " user=alice password='" + password + "' dbname=app",
  };
  for (const std::string& conninfo : conninfos) {
    try {
      Connect(conninfo);
      ADD_FAILURE() << "connected to a dead port";
    } catch (const TransientError& e) {
      std::string what = e.what();
      EXPECT_EQ(what.find(password), std::string::npos) << what;
      EXPECT_EQ(what.rfind("cannot connect to PostgreSQL at ", 0), 0u) << what;
      EXPECT_NE(what.find("127.0.0.1"), std::string::npos) << what;
      EXPECT_NE(what.find("DATABASE_URL"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

TEST(ConnectTest, MalformedConnInfoIsConfigError) {
  for (const std::string& conninfo : {std::string("host=h password=s3cretpw nosuchoption=1"),
                                      std::string("host='unterminated password=s3cretpw"),
                                      std::string("postgresql://u:s3cretpw@h:notaport/d")}) {
    try {
      Connect(conninfo);
      ADD_FAILURE() << conninfo;
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()).find("s3cretpw"), std::string::npos) << e.what();
    } catch (const std::exception& e) {
      ADD_FAILURE() << conninfo << ": wrong exception: " << e.what();
    }
  }
}

TEST(ConnectTest, MissingDatabaseAndRoleAreConfigErrors) {
  PgServer& server = PgServer::Get();
  EXPECT_THROW(Connect(server.ConnInfo("rekey_no_such_database")), ConfigError);
  EXPECT_THROW(Connect("host=" + server.socket_dir() + " port=" + std::to_string(server.port()) +
                       " dbname=postgres user=rekey_no_such_role"),
               ConfigError);
}

// Runs fn and returns the exception it throws (fails the test if it throws none).
std::exception_ptr Capture(const std::function<void()>& fn) {
  try {
    fn();
  } catch (...) {
    return std::current_exception();
  }
  ADD_FAILURE() << "expected an exception";
  return nullptr;
}

bool TransientOf(std::exception_ptr p) {
  try {
    std::rethrow_exception(p);
  } catch (const std::exception& e) {
    return IsTransient(e);
  }
}

TEST_F(ConnectionPgTest, IsTransientOverRealServerErrors) {
  Exec("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t VALUES (1, 0), (2, 0)");
  struct Case {
    std::string name;
    std::function<void()> provoke;
    bool transient;
  };
  std::vector<Case> cases;

  cases.push_back({"serialization failure (40001)",
                   [&] {
                     // Write skew between two SERIALIZABLE transactions.
                     auto a = Connect(conninfo());
                     auto b = Connect(conninfo());
                     pqxx::work ta(*a, "a");
                     pqxx::work tb(*b, "b");
                     ta.exec("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
                     tb.exec("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
                     ta.exec("SELECT sum(v) FROM t");
                     tb.exec("SELECT sum(v) FROM t");
                     ta.exec("UPDATE t SET v = v + 1 WHERE id = 1");
                     tb.exec("UPDATE t SET v = v + 1 WHERE id = 2");
                     ta.commit();
                     tb.commit();
                   },
                   true});
  cases.push_back({"lock_timeout (55P03)",
                   [&] {
                     auto a = Connect(conninfo());
                     auto b = Connect(conninfo());
                     pqxx::work ta(*a);
                     ta.exec("SELECT * FROM t WHERE id = 1 FOR UPDATE");
                     pqxx::work tb(*b);
                     tb.exec("SET LOCAL lock_timeout = '50ms'");
                     tb.exec("SELECT * FROM t WHERE id = 1 FOR UPDATE");
                   },
                   true});
  cases.push_back({"FOR UPDATE NOWAIT (55P03)",
                   [&] {
                     auto a = Connect(conninfo());
                     auto b = Connect(conninfo());
                     pqxx::work ta(*a);
                     ta.exec("SELECT * FROM t WHERE id = 1 FOR UPDATE");
                     pqxx::work tb(*b);
                     tb.exec("SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT");
                   },
                   true});
  cases.push_back({"statement_timeout (57014)",
                   [&] {
                     pqxx::work tx(conn());
                     tx.exec("SET LOCAL statement_timeout = '50ms'");
                     tx.exec("SELECT pg_sleep(10)");
                   },
                   true});
  cases.push_back({"terminated by administrator (57P01)",
                   [&] {
                     auto victim = Connect(conninfo());
                     int pid = 0;
                     {
                       pqxx::nontransaction tx(*victim);
                       pid = tx.exec1("SELECT pg_backend_pid()")[0].as<int>();
                     }
                     {
                       pqxx::nontransaction tx(conn());
                       tx.exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
                     }
                     pqxx::nontransaction tx(*victim);
                     tx.exec("SELECT 1");
                   },
                   true});
  cases.push_back({"syntax error (42601)",
                   [&] {
                     pqxx::work tx(conn());
                     tx.exec("SELEC 1");
                   },
                   false});
  cases.push_back({"unique violation (23505)",
                   [&] {
                     pqxx::work tx(conn());
                     tx.exec("INSERT INTO t VALUES (1, 0)");
                   },
                   false});
  cases.push_back({"division by zero (22012)",
                   [&] {
                     pqxx::work tx(conn());
                     tx.exec("SELECT 1 / 0");
                   },
                   false});
  cases.push_back({"undefined table (42P01)",
                   [&] {
                     pqxx::work tx(conn());
                     tx.exec("SELECT * FROM no_such_table");
                   },
                   false});
  for (const Case& c : cases) {
    std::exception_ptr e = Capture(c.provoke);
    ASSERT_TRUE(e) << c.name;
    EXPECT_EQ(TransientOf(e), c.transient) << c.name;
  }
  EXPECT_TRUE(IsTransient(TransientError("x")));
  EXPECT_FALSE(IsTransient(StateError("x")));
  EXPECT_FALSE(IsTransient(std::runtime_error("x")));
  EXPECT_TRUE(IsTransient(pqxx::deadlock_detected("x")));
  EXPECT_TRUE(IsTransient(pqxx::in_doubt_error("x")));
  EXPECT_TRUE(IsTransient(pqxx::too_many_connections("x")));
}

TEST_F(ConnectionPgTest, ClassifiedMapsServerErrors) {
  Exec(R"(
    CREATE TABLE k (id int PRIMARY KEY, state text CHECK (state IN ('active', 'retired')));
    INSERT INTO k VALUES (1, 'active');
    CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'key 1 is retired and cannot be reactivated'; END $$;
    CREATE TABLE guarded (x int);
    CREATE TRIGGER guard BEFORE INSERT ON guarded FOR EACH ROW EXECUTE FUNCTION refuse();
  )");
  auto run = [&](const std::string& sql) {
    return [this, sql] {
      Classified("updating key 1", [&] {
        pqxx::work tx(conn());
        tx.exec(sql);
        tx.commit();
      });
    };
  };
  struct Case {
    std::string sql;
    std::string want_type;
    std::string want_what;
  };
  const Case cases[] = {
      {"INSERT INTO guarded VALUES (1)", "StateError",
       "updating key 1: key 1 is retired and cannot be reactivated"},
      {"INSERT INTO k VALUES (1, 'active')", "StateError",
       "updating key 1: duplicate key value violates unique constraint \"k_pkey\""},
      {"UPDATE k SET state = 'bogus'", "StateError",
       "updating key 1: new row for relation \"k\" violates check constraint \"k_state_check\""},
      {"SELEC 1", "PermanentError", "updating key 1: syntax error at or near \"SELEC\""},
      {"SET statement_timeout = '10ms'; SELECT pg_sleep(5)", "TransientError",
       "updating key 1: canceling statement due to statement timeout"},
  };
  for (const Case& c : cases) {
    std::exception_ptr p = Capture(run(c.sql));
    ASSERT_TRUE(p) << c.sql;
    try {
      std::rethrow_exception(p);
    } catch (const StateError& e) {
      EXPECT_EQ(c.want_type, "StateError") << c.sql << ": " << e.what();
      EXPECT_EQ(std::string(e.what()), c.want_what);
    } catch (const TransientError& e) {
      EXPECT_EQ(c.want_type, "TransientError") << c.sql << ": " << e.what();
      EXPECT_EQ(std::string(e.what()), c.want_what);
    } catch (const PermanentError& e) {
      EXPECT_EQ(c.want_type, "PermanentError") << c.sql << ": " << e.what();
      EXPECT_EQ(std::string(e.what()), c.want_what);
    } catch (const std::exception& e) {
      ADD_FAILURE() << c.sql << ": unclassified " << e.what();
    }
    Exec("RESET statement_timeout");
  }
  // Results pass through; rekey errors and foreign exceptions are not rewrapped.
  EXPECT_EQ(Classified("x", [] { return 42; }), 42);
  EXPECT_THROW(Classified("x", [] { throw KeyError("k"); }), KeyError);
  EXPECT_THROW(Classified("x", [] { throw std::out_of_range("o"); }), std::out_of_range);
}

TEST_F(ConnectionPgTest, BrokenConnectionIsClassifiedTransient) {
  auto c = Connect(conninfo());
  int pid = 0;
  {
    pqxx::nontransaction tx(*c);
    pid = tx.exec1("SELECT pg_backend_pid()")[0].as<int>();
  }
  Exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
  EXPECT_THROW(Classified("polling",
                          [&] {
                            pqxx::nontransaction tx(*c);
                            tx.exec("SELECT 1");
                          }),
               TransientError);
}

}  // namespace
}  // namespace rekey::db
