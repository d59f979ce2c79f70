#include "harness/pg_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "db/embedded_sql.h"
#include "db/migrator.h"
#include "harness/process.h"

namespace rekey::testing {
namespace {

constexpr char kDefaultBinDir[] = "/usr/lib/postgresql/15/bin";

// State for the emergency stop, readable from a signal handler: the postmaster pid, the temp
// dir to remove and the pid of the process that owns the server (a forked child that exits
// through exit() must not stop its parent's server).
volatile sig_atomic_t g_postmaster_pid = 0;
volatile sig_atomic_t g_owner_pid = 0;
char g_temp_dir[PATH_MAX] = {0};

void SleepMillis(long ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Async-signal-safe: SIGQUIT is PostgreSQL's immediate shutdown; then remove the temp dir with
// rm -rf (fork/execv/waitpid are async-signal-safe, std::filesystem is not).
void EmergencyStop() {
  if (g_owner_pid != getpid()) return;
  pid_t pm = g_postmaster_pid;
  if (pm <= 0) return;
  g_postmaster_pid = 0;
  kill(pm, SIGQUIT);
  for (int i = 0; i < 100 && kill(pm, 0) == 0; ++i) SleepMillis(50);
  if (g_temp_dir[0] != '\0') {
    pid_t rm = fork();
    if (rm == 0) {
      char* const argv[] = {const_cast<char*>("rm"), const_cast<char*>("-rf"), g_temp_dir, nullptr};
      execv("/bin/rm", argv);
      _exit(127);
    }
    if (rm > 0) {
      int status;
      waitpid(rm, &status, 0);
    }
  }
}

void OnFatalSignal(int sig) {
  EmergencyStop();
  // SA_RESETHAND restored the default action; re-raise so the process dies as it would have.
  raise(sig);
}

void OnExit() {
  PgServer::StopIfStarted();
}

void InstallHandlersOnce() {
  static bool installed = [] {
    std::atexit(OnExit);
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = OnFatalSignal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGABRT, SIGSEGV, SIGTERM, SIGINT, SIGBUS, SIGFPE}) {
      sigaction(sig, &sa, nullptr);
    }
    return true;
  }();
  (void)installed;
}

int FindFreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    int err = errno;
    close(fd);
    throw std::runtime_error(std::string("cannot find a free port: ") + std::strerror(err));
  }
  close(fd);
  return ntohs(addr.sin_port);
}

std::string Describe(const ProcessResult& r) {
  std::ostringstream s;
  s << "exit code " << r.exit_code;
  if (r.term_signal != 0) s << ", signal " << r.term_signal;
  s << "; stdout: " << r.out << "; stderr: " << r.err;
  return s.str();
}

std::string QuoteIdent(const std::string& name) {
  return "\"" + name + "\"";
}

PgServer* g_server = nullptr;
std::mutex g_server_mu;

}  // namespace

PgServer::PgServer() {
  const char* bin = std::getenv("REKEY_PG_BINDIR");
  bin_dir_ = (bin != nullptr && *bin != '\0') ? bin : kDefaultBinDir;
}

PgServer& PgServer::Get() {
  std::lock_guard<std::mutex> lock(g_server_mu);
  if (g_server == nullptr) {
    // Never deleted: the object must outlive static destructors that may still call Stop().
    auto* server = new PgServer();
    try {
      server->Start();
    } catch (...) {
      server->Stop();
      delete server;
      throw;
    }
    g_server = server;
  }
  return *g_server;
}

void PgServer::StopIfStarted() {
  std::lock_guard<std::mutex> lock(g_server_mu);
  if (g_server != nullptr) g_server->Stop();
}

std::vector<std::string> PgServer::AsPostgres(std::vector<std::string> argv) const {
  if (geteuid() != 0) return argv;
  std::vector<std::string> wrapped{
      access("/usr/sbin/runuser", X_OK) == 0 ? "/usr/sbin/runuser" : "runuser", "-u", "postgres",
      "--"};
  wrapped.insert(wrapped.end(), argv.begin(), argv.end());
  return wrapped;
}

void PgServer::Start() {
  dir_ = MakeTempDir("rekey-pg-");
  std::strncpy(g_temp_dir, dir_.c_str(), sizeof(g_temp_dir) - 1);
  g_owner_pid = getpid();
  InstallHandlersOnce();
  if (geteuid() == 0) {
    passwd* pw = getpwnam("postgres");
    if (pw == nullptr) {
      throw std::runtime_error(
          "running as root but there is no `postgres` OS user to run the "
          "test PostgreSQL as");
    }
    if (chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      throw std::runtime_error("chown " + dir_ + ": " + std::strerror(errno));
    }
  }
  data_dir_ = dir_ + "/data";
  log_file_ = dir_ + "/server.log";

  ProcessResult init =
      RunProcess(AsPostgres({bin_dir_ + "/initdb", "-D", data_dir_, "-U", "postgres", "-A", "trust",
                             "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"}));
  if (init.exit_code != 0) {
    throw std::runtime_error("initdb failed (" + Describe(init) + ")");
  }
  {
    std::ofstream conf(data_dir_ + "/postgresql.conf", std::ios::app);
    conf << "\n# rekey test harness: a throwaway server tuned for speed, not durability\n"
         << "listen_addresses = '127.0.0.1'\n"
         << "unix_socket_directories = '" << dir_ << "'\n"
         << "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
         << "max_connections = 200\n"
         << "logging_collector = off\n"
         << "log_line_prefix = '%m [%p] %d '\n";
    if (!conf) throw std::runtime_error("cannot write " + data_dir_ + "/postgresql.conf");
  }
  // Another process may grab the port between FindFreePort and the server's bind; retry then.
  std::string last_error;
  for (int attempt = 0; attempt < 5; ++attempt) {
    try {
      StartOnce(FindFreePort());
      return;
    } catch (const std::exception& e) {
      last_error = e.what();
      if (LogTail().find("Address already in use") == std::string::npos) break;
    }
  }
  throw std::runtime_error(last_error);
}

void PgServer::StartOnce(int port) {
  port_ = port;
  ProcessResult r =
      RunProcess(AsPostgres({bin_dir_ + "/pg_ctl", "start", "-D", data_dir_, "-l", log_file_, "-w",
                             "-t", "60", "-s", "-o", "-p " + std::to_string(port)}));
  if (r.exit_code != 0) {
    throw std::runtime_error("cannot start the test PostgreSQL (" + Describe(r) +
                             "); server log tail:\n" + LogTail());
  }
  RecordPostmasterPid();
  WaitUntilAccepting();
}

void PgServer::RecordPostmasterPid() {
  std::ifstream pidfile(data_dir_ + "/postmaster.pid");
  long pid = 0;
  pidfile >> pid;
  g_postmaster_pid = static_cast<sig_atomic_t>(pid);
}

void PgServer::WaitUntilAccepting() {
  std::string last;
  for (int i = 0; i < 300; ++i) {
    try {
      pqxx::connection c(ConnInfo("postgres"));
      return;
    } catch (const std::exception& e) {
      last = e.what();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("the test PostgreSQL does not accept connections: " + last +
                           "; server log tail:\n" + LogTail());
}

std::string PgServer::ConnInfo(const std::string& dbname) const {
  return "host=" + dir_ + " port=" + std::to_string(port_) + " dbname=" + dbname + " user=postgres";
}

std::string PgServer::Url(const std::string& dbname) const {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/" + dbname;
}

std::unique_ptr<pqxx::connection> PgServer::AdminConnection() const {
  return std::make_unique<pqxx::connection>(ConnInfo("postgres"));
}

std::string PgServer::CreateDatabase(bool migrated) {
  std::lock_guard<std::mutex> lock(mu_);
  auto admin = AdminConnection();
  pqxx::nontransaction tx(*admin);
  if (migrated && template_db_.empty()) {
    const std::string tmpl = "rekey_template";
    tx.exec("DROP DATABASE IF EXISTS " + QuoteIdent(tmpl));
    tx.exec("CREATE DATABASE " + QuoteIdent(tmpl) + " TEMPLATE template0");
    try {
      pqxx::connection c(ConnInfo(tmpl));
      rekey::db::Migrate(c, rekey::db::EmbeddedMigrations());
    } catch (const std::exception& e) {
      tx.exec("DROP DATABASE IF EXISTS " + QuoteIdent(tmpl) + " WITH (FORCE)");
      throw std::runtime_error(std::string("cannot build the migrated template database: ") +
                               e.what());
    }
    template_db_ = tmpl;
  }
  std::string name = "rekey_test_" + std::to_string(++next_db_);
  tx.exec("CREATE DATABASE " + QuoteIdent(name) + " TEMPLATE " +
          QuoteIdent(migrated ? template_db_ : "template0"));
  return name;
}

void PgServer::DropDatabase(const std::string& name) {
  auto admin = AdminConnection();
  pqxx::nontransaction tx(*admin);
  tx.exec("DROP DATABASE IF EXISTS " + QuoteIdent(name) + " WITH (FORCE)");
}

void PgServer::Restart(bool crash) {
  std::lock_guard<std::mutex> lock(mu_);
  ProcessResult r =
      RunProcess(AsPostgres({bin_dir_ + "/pg_ctl", "restart", "-D", data_dir_, "-l", log_file_,
                             "-m", crash ? "immediate" : "fast", "-w", "-t", "60", "-s"}));
  if (r.exit_code != 0) {
    throw std::runtime_error("cannot restart the test PostgreSQL (" + Describe(r) +
                             "); server log tail:\n" + LogTail());
  }
  RecordPostmasterPid();
  WaitUntilAccepting();
}

void PgServer::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_ || dir_.empty()) return;
  stopped_ = true;
  if (g_owner_pid != getpid()) return;  // a forked child: the server belongs to the parent
  if (g_postmaster_pid > 0 || std::filesystem::exists(data_dir_ + "/postmaster.pid")) {
    ProcessResult r = RunProcess(
        AsPostgres({bin_dir_ + "/pg_ctl", "stop", "-D", data_dir_, "-m", "immediate", "-w", "-s"}),
        {}, "", 60);
    if (r.exit_code != 0 && g_postmaster_pid > 0) kill(g_postmaster_pid, SIGQUIT);
  }
  g_postmaster_pid = 0;
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
  g_temp_dir[0] = '\0';
}

std::string PgServer::LogTail(size_t bytes) const {
  std::ifstream in(log_file_, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  std::string all = s.str();
  return all.size() > bytes ? all.substr(all.size() - bytes) : all;
}

void PgTest::SetUp() {
  dbname_ = PgServer::Get().CreateDatabase(true);
  conninfo_ = PgServer::Get().ConnInfo(dbname_);
}

void PgTest::TearDown() {
  conn_.reset();
  if (!dbname_.empty()) PgServer::Get().DropDatabase(dbname_);
}

pqxx::connection& PgTest::conn() {
  if (!conn_) conn_ = std::make_unique<pqxx::connection>(conninfo_);
  return *conn_;
}

void PgTest::Exec(const std::string& sql) {
  pqxx::work tx(conn());
  tx.exec(sql);
  tx.commit();
}

std::string PgTest::Scalar(const std::string& sql) {
  pqxx::read_transaction txn(conn());
  const pqxx::row row = txn.exec1(sql);
  return row[0].is_null() ? "NULL" : row[0].as<std::string>();
}

int64_t PgTest::Count(const std::string& sql) {
  return std::stoll(Scalar(sql));
}

}  // namespace rekey::testing
