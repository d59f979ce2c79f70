// A throwaway PostgreSQL 15 server per test process, and a fixture giving each test its own
// database in it.
//
// The server starts lazily on the first PgServer::Get(): initdb into a fresh temp dir (owned by
// the `postgres` OS user when running as root, because PostgreSQL refuses to run as root), trust
// authentication, a free TCP port on 127.0.0.1, its unix socket in the temp dir, and durability
// switched off for speed (fsync, synchronous_commit, full_page_writes). $REKEY_PG_BINDIR
// overrides /usr/lib/postgresql/15/bin.
//
// It is stopped (pg_ctl stop -m immediate) and its temp dir removed at process exit by the
// GoogleTest environment test_main.cpp registers, by an atexit handler, and -- best effort -- by
// a handler for SIGABRT/SIGSEGV/SIGTERM/SIGINT that then re-raises the signal, so a failing or
// crashing test leaves no server behind.
//
// Thread-safety: all PgServer methods may be called from several threads.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <pqxx/pqxx>
#include <string>

namespace rekey::testing {

class PgServer {
 public:
  // The process's server, started on first call. Throws std::runtime_error, with the tail of the
  // server log in the message, if it cannot be started.
  static PgServer& Get();
  // Stops the server iff it was ever started (for the environment's TearDown); idempotent.
  static void StopIfStarted();

  int port() const { return port_; }
  const std::string& socket_dir() const { return dir_; }
  const std::string& data_dir() const { return data_dir_; }
  const std::string& bin_dir() const { return bin_dir_; }
  const std::string& log_file() const { return log_file_; }

  // "host=<socket_dir> port=<port> dbname=<db> user=postgres"
  std::string ConnInfo(const std::string& dbname) const;
  // "postgresql://postgres@127.0.0.1:<port>/<db>" (TCP)
  std::string Url(const std::string& dbname) const;

  // Creates a fresh database and returns its name (unique within this process). migrated=true
  // clones a template database to which every embedded migration was applied once with
  // rekey::db::Migrate, so each test starts from the real schema quickly.
  std::string CreateDatabase(bool migrated = true);
  // DROP DATABASE ... WITH (FORCE): terminates the sessions still connected to it.
  void DropDatabase(const std::string& name);
  // pg_ctl restart -m fast (a clean shutdown), or with `crash` -m immediate (every process
  // killed, WAL not yet written lost, crash recovery at start); returns once the server accepts
  // connections again. Every existing connection breaks (for chaos tests).
  void Restart(bool crash = false);
  // Stops the server (immediate mode) and removes its temp dir; later calls are no-ops.
  void Stop();

  // The last `bytes` bytes of the server log (for failure messages).
  std::string LogTail(size_t bytes = 4000) const;

  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

 private:
  PgServer();
  void Start();
  void StartOnce(int port);
  void WaitUntilAccepting();
  void RecordPostmasterPid();
  std::vector<std::string> AsPostgres(std::vector<std::string> argv) const;
  std::unique_ptr<pqxx::connection> AdminConnection() const;

  mutable std::mutex mu_;
  std::string bin_dir_;
  std::string dir_;
  std::string data_dir_;
  std::string log_file_;
  int port_ = 0;
  bool stopped_ = false;
  std::string template_db_;  // empty until the first CreateDatabase(true)
  int next_db_ = 0;
};

// GoogleTest fixture: each test gets its own fresh migrated database, dropped afterwards.
class PgTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  // libpq key=value conninfo for this test's database.
  const std::string& conninfo() const { return conninfo_; }
  const std::string& dbname() const { return dbname_; }
  // A connection to this test's database, opened on first use and closed in TearDown.
  pqxx::connection& conn();
  // Runs sql (one or more statements) in its own committed transaction, for test set-up.
  void Exec(const std::string& sql);
  // The first field of the single row `sql` returns, as text ("NULL" for SQL NULL), read in its
  // own transaction. Throws unless `sql` returns exactly one row.
  std::string Scalar(const std::string& sql);
  // Scalar as an integer (a count, an id).
  int64_t Count(const std::string& sql);

 private:
  std::string dbname_;
  std::string conninfo_;
  std::unique_ptr<pqxx::connection> conn_;
};

}  // namespace rekey::testing
