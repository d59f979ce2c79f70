// Tests of the test harness itself: per-test databases, server restarts, child processes.
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>

#include "harness/pg_server.h"
#include "harness/process.h"

namespace rekey::testing {
namespace {

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string CurrentDatabase(pqxx::connection& c) {
  pqxx::nontransaction tx(c);
  return tx.exec1("SELECT current_database()")[0].as<std::string>();
}

// Each test of this fixture records its database; the second asserts they differ and that the
// first one was dropped.
std::set<std::string> g_seen_databases;

class HarnessPgTest : public PgTest {};

TEST_F(HarnessPgTest, FirstTestGetsItsOwnMigratedDatabase) {
  EXPECT_EQ(CurrentDatabase(conn()), dbname());
  Exec("CREATE TABLE only_in_first (x int)");
  {
    pqxx::nontransaction tx(conn());
    // The template carries the migrator's bookkeeping table (and every embedded migration).
    EXPECT_FALSE(tx.exec1("SELECT to_regclass('rekey.schema_migrations') IS NULL")[0].as<bool>());
  }
  g_seen_databases.insert(dbname());
}

TEST_F(HarnessPgTest, SecondTestGetsADifferentFreshDatabase) {
  EXPECT_EQ(g_seen_databases.count(dbname()), 0u);
  pqxx::nontransaction tx(conn());
  EXPECT_TRUE(tx.exec1("SELECT to_regclass('only_in_first') IS NULL")[0].as<bool>());
  for (const std::string& old : g_seen_databases) {
    EXPECT_EQ(
        tx.exec1("SELECT count(*) FROM pg_database WHERE datname = " + tx.quote(old))[0].as<int>(),
        0)
        << old << " was not dropped";
  }
}

TEST(PgServerTest, UnmigratedDatabaseIsEmptyAndUrlWorks) {
  PgServer& server = PgServer::Get();
  std::string db = server.CreateDatabase(false);
  {
    pqxx::connection c(server.Url(db));
    pqxx::nontransaction tx(c);
    EXPECT_EQ(tx.exec1("SELECT current_database()")[0].as<std::string>(), db);
    EXPECT_TRUE(tx.exec1("SELECT to_regnamespace('rekey') IS NULL")[0].as<bool>());
    // The speed settings are in effect.
    EXPECT_EQ(tx.exec1("SHOW fsync")[0].as<std::string>(), "off");
    EXPECT_EQ(tx.exec1("SHOW max_connections")[0].as<std::string>(), "200");
  }
  server.DropDatabase(db);
}

TEST(PgServerTest, DropDatabaseTerminatesOpenSessions) {
  PgServer& server = PgServer::Get();
  std::string db = server.CreateDatabase(false);
  pqxx::connection held(server.ConnInfo(db));
  server.DropDatabase(db);
  EXPECT_THROW(
      {
        pqxx::nontransaction tx(held);
        tx.exec("SELECT 1");
      },
      pqxx::broken_connection);
}

TEST(PgServerTest, RestartBreaksConnectionsAndServesAgain) {
  PgServer& server = PgServer::Get();
  std::string db = server.CreateDatabase(true);
  pqxx::connection before(server.ConnInfo(db));
  int pid_before = 0;
  {
    pqxx::nontransaction tx(before);
    pid_before = tx.exec1("SELECT pg_backend_pid()")[0].as<int>();
  }
  server.Restart();
  EXPECT_THROW(
      {
        pqxx::nontransaction tx(before);
        tx.exec("SELECT 1");
      },
      pqxx::broken_connection);
  pqxx::connection after(server.ConnInfo(db));
  pqxx::nontransaction tx(after);
  EXPECT_NE(tx.exec1("SELECT pg_backend_pid()")[0].as<int>(), pid_before);
  EXPECT_TRUE(std::filesystem::exists(server.data_dir()));
  EXPECT_EQ(tx.exec1("SHOW listen_addresses")[0].as<std::string>(), "127.0.0.1");
  server.DropDatabase(db);
}

TEST(ProcessTest, RunProcessCapturesExitCodeStdoutStderrAndStdin) {
  ProcessResult r =
      RunProcess({"sh", "-c", "cat; echo to-err >&2; exit 7"}, {}, "hello from stdin");
  EXPECT_EQ(r.exit_code, 7);
  EXPECT_EQ(r.term_signal, 0);
  EXPECT_EQ(r.out, "hello from stdin");
  EXPECT_EQ(r.err, "to-err\n");
}

TEST(ProcessTest, RunProcessCapturesMoreThanOneMebibyteOnBothStreamsWithoutDeadlock) {
  // 3 MiB of stdin echoed to stdout and 2 MiB to stderr: any pipe left undrained would block.
  std::string input(3 << 20, 'x');
  for (size_t i = 0; i < input.size(); i += 4096) input[i] = static_cast<char>('a' + i % 26);
  ProcessResult r =
      RunProcess({"sh", "-c", "head -c 2097152 /dev/zero | tr '\\0' e >&2; cat"}, {}, input);
  EXPECT_EQ(r.exit_code, 0) << r.err.substr(0, 200);
  EXPECT_EQ(r.out.size(), input.size());
  EXPECT_TRUE(r.out == input);
  EXPECT_EQ(r.err.size(), 2u << 20);
  EXPECT_EQ(r.err.find_first_not_of('e'), std::string::npos);
}

TEST(ProcessTest, RunProcessAppliesEnvironmentOverrides) {
  setenv("REKEY_HARNESS_INHERITED", "inherited", 1);
  setenv("REKEY_HARNESS_REMOVED", "present", 1);
  ProcessResult r = RunProcess(
      {"sh", "-c",
       "echo \"$REKEY_HARNESS_INHERITED/$REKEY_HARNESS_SET/${REKEY_HARNESS_REMOVED-unset}\""},
      {{"REKEY_HARNESS_SET", "set"}, {"REKEY_HARNESS_REMOVED", std::nullopt}});
  EXPECT_EQ(r.out, "inherited/set/unset\n");
}

TEST(ProcessTest, RunProcessKillsAfterTimeout) {
  ProcessResult r = RunProcess({"sleep", "60"}, {}, "", 1);
  EXPECT_EQ(r.exit_code, -1);
  EXPECT_EQ(r.term_signal, SIGKILL);
}

TEST(ProcessTest, RunProcessReportsMissingProgram) {
  ProcessResult r = RunProcess({"/nonexistent/rekey-no-such-program"});
  EXPECT_EQ(r.exit_code, 127);
  EXPECT_NE(r.err.find("exec failed"), std::string::npos);
}

TEST(ProcessTest, RunRekeyRunsTheBuiltBinary) {
  ProcessResult r = RunRekey({"--version"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("rekey"), std::string::npos);
}

TEST(ChildProcessTest, SignalAndWaitReportTheSignal) {
  ChildProcess child({"sh", "-c", "echo started; exec sleep 60"});
  EXPECT_GT(child.pid(), 0);
  // Signal only once the child is past its echo, so the output is deterministic.
  for (int i = 0; i < 3000 && ReadAll(child.stdout_path()).empty(); ++i) usleep(10000);
  EXPECT_TRUE(child.Running());
  child.Signal(SIGTERM);
  ProcessResult r = child.Wait(30);
  EXPECT_FALSE(child.Running());
  EXPECT_EQ(r.term_signal, SIGTERM);
  EXPECT_EQ(r.exit_code, -1);
  EXPECT_EQ(r.out, "started\n");
}

TEST(ChildProcessTest, WaitKillsAfterTimeoutAndCapturesOutput) {
  ChildProcess child({"sh", "-c", "echo out; echo err >&2; exec sleep 60"});
  ProcessResult r = child.Wait(1);
  EXPECT_EQ(r.term_signal, SIGKILL);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
}

TEST(ChildProcessTest, ExitCodeOfNormalExit) {
  ChildProcess child({"sh", "-c", "exit 3"});
  ProcessResult r = child.Wait(30);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.term_signal, 0);
}

TEST(ChildProcessTest, DestructorKillsARunningChild) {
  pid_t pid;
  {
    ChildProcess child({"sleep", "60"});
    pid = child.pid();
    ASSERT_EQ(kill(pid, 0), 0);
  }
  // Reaped by the destructor, so the pid no longer names our child.
  EXPECT_NE(kill(pid, 0), 0);
}

}  // namespace
}  // namespace rekey::testing
