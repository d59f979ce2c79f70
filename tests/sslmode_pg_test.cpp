// PostgreSQL's sslmode is honoured end to end: by db::Connect (which re-serialises every
// connection string rekey is given) and by the rekey binary. The test server is switched to TLS
// (harness/pg_ssl.h) with a pg_hba.conf that admits TCP sessions only over TLS and with a
// password (scram-sha-256), and rejects every plaintext TCP session.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "common/error.h"
#include "db/connection.h"
#include "harness/pg_server.h"
#include "harness/pg_ssl.h"
#include "harness/process.h"

namespace rekey {
namespace {

using testing::PgServer;

constexpr char kUser[] = "rekey_ssl_user";
// Distinctive, so finding it anywhere in a message or the output is unambiguous.
constexpr char kPassword[] = "Tls-Only-Pw-8d1f3c";

class SslModeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    PgServer& server = PgServer::Get();
    ssl_ = new testing::PgSsl(testing::EnableSsl(server,
                                                 "hostnossl all all 0.0.0.0/0 reject\n"
                                                 "hostnossl all all ::/0 reject\n"
                                                 "hostssl all all 127.0.0.1/32 scram-sha-256"));
    db_ = new std::string(server.CreateDatabase(true));
    pqxx::connection admin(server.ConnInfo(*db_));
    pqxx::nontransaction tx(admin);
    tx.exec(std::string("CREATE ROLE ") + kUser + " LOGIN SUPERUSER PASSWORD '" + kPassword + "'");
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(ssl_->dir);
    delete ssl_;
    delete db_;
  }

  // key=value conninfo over TCP to 127.0.0.1 as the password user, plus `extra` options.
  static std::string Conninfo(const std::string& extra, const std::string& host = "") {
    return "host=" + (host.empty() ? std::string("127.0.0.1") : host + " hostaddr=127.0.0.1") +
           " port=" + std::to_string(PgServer::Get().port()) + " dbname=" + *db_ +
           " user=" + kUser + " password=" + kPassword + " " + extra;
  }

  // The message db::Connect throws for `conninfo`, or "" iff it connected.
  static std::string ConnectError(const std::string& conninfo) {
    try {
      db::Connect(conninfo);
      return "";
    } catch (const ConfigError& e) {
      return e.what();
    }
  }

  static bool SessionIsSsl(pqxx::connection& conn) {
    pqxx::work tx(conn);
    return tx.exec1("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")[0].as<bool>();
  }

  static testing::PgSsl* ssl_;
  static std::string* db_;
};

testing::PgSsl* SslModeTest::ssl_ = nullptr;
std::string* SslModeTest::db_ = nullptr;

TEST_F(SslModeTest, RequireConnectsOverTls) {
  for (const std::string& conninfo :
       {Conninfo("sslmode=require"),
        // The URL form goes through the same re-serialisation: its query parameters survive.
        "postgresql://" + std::string(kUser) + ":" + kPassword + "@127.0.0.1:" +
            std::to_string(PgServer::Get().port()) + "/" + *db_ + "?sslmode=require"}) {
    auto conn = db::Connect(conninfo);
    EXPECT_TRUE(SessionIsSsl(*conn)) << conninfo;
  }
}

TEST_F(SslModeTest, DisableIsRefusedByTheServer) {
  const std::string message = ConnectError(Conninfo("sslmode=disable"));
  EXPECT_NE(message.find("pg_hba.conf rejects connection"), std::string::npos) << message;
  EXPECT_NE(message.find("no encryption"), std::string::npos) << message;
  EXPECT_EQ(message.find(kPassword), std::string::npos) << message;
}

TEST_F(SslModeTest, VerifyFullChecksTheCaAndTheHostName) {
  {
    auto conn = db::Connect(Conninfo("sslmode=verify-full sslrootcert=" + ssl_->ca_cert));
    EXPECT_TRUE(SessionIsSsl(*conn));
    // The name in the certificate, reached by another spelling than the IP address.
    auto by_name =
        db::Connect(Conninfo("sslmode=verify-full sslrootcert=" + ssl_->ca_cert, "localhost"));
    EXPECT_TRUE(SessionIsSsl(*by_name));
  }
  const std::string wrong_ca =
      ConnectError(Conninfo("sslmode=verify-full sslrootcert=" + ssl_->other_ca_cert));
  EXPECT_NE(wrong_ca.find("certificate verify failed"), std::string::npos) << wrong_ca;
  EXPECT_EQ(wrong_ca.find(kPassword), std::string::npos) << wrong_ca;

  const std::string wrong_host = ConnectError(
      Conninfo("sslmode=verify-full sslrootcert=" + ssl_->ca_cert, "db.not-this-server.test"));
  EXPECT_NE(wrong_host.find("does not match host name \"db.not-this-server.test\""),
            std::string::npos)
      << wrong_host;
  EXPECT_EQ(wrong_host.find(kPassword), std::string::npos) << wrong_host;

  // verify-ca checks the chain only: the same wrong name is accepted.
  auto ca_only = db::Connect(
      Conninfo("sslmode=verify-ca sslrootcert=" + ssl_->ca_cert, "db.not-this-server.test"));
  EXPECT_TRUE(SessionIsSsl(*ca_only));
}

// The binary, as operators run it: --db, DATABASE_URL and libpq's PGSSLMODE / PGSSLROOTCERT.
TEST_F(SslModeTest, TheRekeyBinaryHonoursSslmode) {
  const testing::EnvOverrides clean = {
      {"DATABASE_URL", std::nullopt}, {"PGSSLMODE", std::nullopt}, {"PGSSLROOTCERT", std::nullopt}};
  auto run = [&](const std::vector<std::string>& args, testing::EnvOverrides env) {
    env.insert(clean.begin(), clean.end());  // keeps the overrides given
    return testing::RunRekey(args, env);
  };
  struct Case {
    const char* name;
    std::vector<std::string> args;
    testing::EnvOverrides env;
    int exit_code;
    std::string names_the_problem;  // in the output, iff exit_code != 0
  } cases[] = {
      {"require", {"--db", Conninfo("sslmode=require"), "migrate", "--status"}, {}, 0, ""},
      {"verify-full",
       {"--db", Conninfo("sslmode=verify-full sslrootcert=" + ssl_->ca_cert), "migrate",
        "--status"},
       {},
       0,
       ""},
      {"PGSSLMODE=verify-full from the environment",
       {"--db", Conninfo(""), "migrate", "--status"},
       {{"PGSSLMODE", "verify-full"}, {"PGSSLROOTCERT", ssl_->ca_cert}},
       0,
       ""},
      {"DATABASE_URL with sslmode=disable",
       {"migrate", "--status"},
       {{"DATABASE_URL", Conninfo("sslmode=disable")}},
       kExitUsage,
       "pg_hba.conf rejects connection"},
      {"PGSSLMODE=disable",
       {"--db", Conninfo(""), "migrate", "--status"},
       {{"PGSSLMODE", "disable"}},
       kExitUsage,
       "no encryption"},
      {"verify-full, another CA",
       {"--db", Conninfo("sslmode=verify-full sslrootcert=" + ssl_->other_ca_cert), "migrate",
        "--status"},
       {},
       kExitUsage,
       "certificate verify failed"},
      {"verify-full, wrong host name",
       {"--db",
        Conninfo("sslmode=verify-full sslrootcert=" + ssl_->ca_cert, "db.not-this-server.test"),
        "migrate", "--status"},
       {},
       kExitUsage,
       "does not match host name"},
  };
  for (const Case& c : cases) {
    const testing::ProcessResult r = run(c.args, c.env);
    const std::string output = r.out + r.err;
    EXPECT_EQ(r.exit_code, c.exit_code) << c.name << ": " << output;
    if (c.exit_code != 0) {
      EXPECT_NE(output.find(c.names_the_problem), std::string::npos) << c.name << ": " << output;
    }
    EXPECT_EQ(output.find(kPassword), std::string::npos) << c.name << ": " << output;
  }
}

}  // namespace
}  // namespace rekey
