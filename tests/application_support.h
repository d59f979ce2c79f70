// The application side of a rotation in tests (docs/applications.md): sql/roles.sql applied, a
// login in the rekey_application role, and the command line of scripts/demo_app.py, the
// application written from the contract alone.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <pqxx/pqxx>
#include <sstream>
#include <string>
#include <vector>

#include "harness/pg_server.h"

namespace rekey::testing {

// Each test gets its own migrated database with the roles of sql/roles.sql and a login
// <database>_app in rekey_application (roles are cluster-wide: the name keeps tests apart).
class ApplicationTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
    std::stringstream sql;
    sql << in.rdbuf();
    Exec(sql.str());
    Exec("DROP ROLE IF EXISTS " + AppLogin() + "; CREATE ROLE " + AppLogin() +
         " LOGIN IN ROLE rekey_application");
  }
  void TearDown() override {
    PgTest::TearDown();
    pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
    pqxx::nontransaction txn(admin);
    txn.exec("DROP ROLE IF EXISTS " + AppLogin());
  }

  std::string AppLogin() { return dbname() + "_app"; }
  std::string AppConnInfo() { return conninfo() + " user=" + AppLogin(); }
  // The application may read and re-save `table`'s values (id, token, key_id), nothing more.
  void GrantTableToApp(const std::string& table) {
    Exec("GRANT USAGE ON SCHEMA public TO " + AppLogin() + "; GRANT SELECT (id, token, key_id), " +
         "UPDATE (token, key_id) ON " + table + " TO " + AppLogin());
  }
  // scripts/demo_app.py on `table` (Tink values in `token`, key ids in `key_id`) as the
  // application's login, with `args` appended.
  std::vector<std::string> DemoApp(const std::string& table, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"/usr/bin/python3",
                                     std::string(REKEY_SOURCE_DIR) + "/scripts/demo_app.py",
                                     "--db",
                                     AppConnInfo(),
                                     "--table",
                                     table,
                                     "--key-id-column",
                                     "key_id"};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
};

}  // namespace rekey::testing
