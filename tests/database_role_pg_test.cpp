// sql/roles.sql for the operations commands: rekey_operator defines a job, writes its report and
// runs rotate-due; rekey_worker rotates; rekey_monitor serves the exporter's metrics; none can
// rewrite history, and the monitor cannot read wrapped keys. (tests/roles_pg_test.cpp covers the
// staged rotation and the refusals role by role.)
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;

class DatabaseRoleTest : public PgTest {
 protected:
  std::string As(const std::string& role) {
    PgServer& s = PgServer::Get();
    return "host=" + s.socket_dir() + " port=" + std::to_string(s.port()) + " dbname=" + dbname() +
           " user=" + role;
  }
  ProcessResult Psql(const std::string& role, const std::vector<std::string>& args) {
    std::vector<std::string> argv{
        PgServer::Get().bin_dir() + "/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", As(role)};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunProcess(argv);
  }
};

TEST_F(DatabaseRoleTest, TheWorkerAndMonitorRolesCanDoTheirJobsAndNothingMore) {
  ImportTestKeys(conn(), {1, 2});
  SeedTinkTable(conn(), "public.cards", 2000, 1);
  ProcessResult r =
      Psql("postgres", {"-f", std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql", "-c",
                        "DROP ROLE IF EXISTS w, o, m; CREATE ROLE w LOGIN IN ROLE rekey_worker; "
                        "CREATE ROLE o LOGIN IN ROLE rekey_operator; "
                        "CREATE ROLE m LOGIN IN ROLE rekey_monitor; "
                        "GRANT USAGE ON SCHEMA public TO rekey_operator; "
                        "GRANT SELECT ON public.cards TO rekey_operator"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const EnvOverrides env = WorkerEnv();
  r = RunRekey(
      {"--db", As("o"), "job", "create", "--table", "public.cards", "--column", "token",
       "--key-id-column", "key_id", "--map", "1:2", "--stages", "10,100", "--observe", "0s"},
      env);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Psql("postgres", {"-At", "-c", "SELECT string_agg(g, '; ') FROM rekey.worker_grants(1) g"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(Psql("postgres", {"-c", r.out}).exit_code, 0);
  r = RunRekey({"--db", As("w"), "work", "--job", "1", "--concurrency", "2"}, env);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = RunRekey({"--db", As("o"), "report", "1"}, env);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("**rotated**"));
  r = RunRekey({"--db", As("o"), "rotate-due"}, env);
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // History cannot be rewritten, and nothing outside the registered target is writable.
  for (const char* sql :
       {"DELETE FROM rekey.audit", "DELETE FROM rekey.keys", "DELETE FROM rekey.reports",
        "TRUNCATE rekey.audit", "UPDATE public.cards SET note = 'x'", "DROP TABLE public.cards"}) {
    r = Psql("w", {"-c", sql});
    EXPECT_NE(r.exit_code, 0) << sql;
    EXPECT_THAT(r.err, ::testing::ContainsRegex("permission denied|must be owner")) << sql;
    r = Psql("o", {"-c", sql});
    EXPECT_NE(r.exit_code, 0) << sql;
    EXPECT_THAT(r.err, ::testing::ContainsRegex("permission denied|must be owner")) << sql;
  }

  // The monitor: metrics and readiness yes, key material no.
  ChildProcess exporter({REKEY_BINARY, "--db", As("m"), "exporter", "--listen", "127.0.0.1:0"});
  auto started = WaitForLog(exporter, "serving /metrics");
  ASSERT_TRUE(started) << ReadFile(exporter.stderr_path());
  const int port = ListenPort(*started);
  HttpResult metrics = HttpGet(port, "/metrics");
  EXPECT_EQ(Sample(metrics.body, "rekey_database_up"), 1) << ReadFile(exporter.stderr_path());
  EXPECT_EQ(Sample(metrics.body, "rekey_jobs{state=\"completed\"}"), 1);
  EXPECT_TRUE(Sample(metrics.body,
                     "rekey_key_age_seconds{key_id=\"2\",scope=\"default\",status=\"primary\"}"));
  EXPECT_EQ(HttpGet(port, "/readyz").status, 200);
  exporter.Signal(SIGTERM);
  EXPECT_EQ(exporter.Wait(30).exit_code, 0);
  r = Psql("m", {"-c", "SELECT wrapped_key FROM rekey.keys"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.err, HasSubstr("permission denied for table keys"));
}

}  // namespace
}  // namespace rekey::testing
