// The brakes of `rekey work` (src/rotation/brake.h) against the real PostgreSQL and a real
// Prometheus: each engages on its real signal before a row is written, shows in the logs,
// rekey.progress and `rekey status`, releases when the signal goes, and the job then completes
// with every value rotated and its plaintext kept. The slot brake runs twice: on a slot nobody
// consumes (released when the slot is dropped), and on the slot of a real streaming replica
// (pg_basebackup -R) whose WAL receiver is stopped, released once the receiver runs again and the
// replica catches up, with the slot still there. The lock-wait brake is measured: an
// application UPDATE on a row rekey holds completes within --max-lock-wait plus a margin.
// The archive brake runs against a real archiver whose command fails, then succeeds.
// Bad input (a query the real Prometheus cannot parse among it) and a role that cannot observe a
// brake's view stop the worker at start (exit 2); a Prometheus gone mid-run brakes, fail safe.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "harness/pg_server.h"
#include "harness/process.h"
#include "harness/prometheus_server.h"
#include "ops_support.h"
#include "rotation_support.h"

namespace rekey::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

// Runs argv as the `postgres` OS user when the tests run as root (PostgreSQL refuses root).
std::vector<std::string> AsPostgres(std::vector<std::string> argv) {
  if (geteuid() != 0) return argv;
  std::vector<std::string> wrapped{"runuser", "-u", "postgres", "--"};
  wrapped.insert(wrapped.end(), argv.begin(), argv.end());
  return wrapped;
}

std::string Describe(const ProcessResult& r) {
  return "exit code " + std::to_string(r.exit_code) + "; stdout: " + r.out + "; stderr: " + r.err;
}

// A streaming replica of the process's server, fed through the physical slot `slot`, which
// Start creates. It runs under pg_ctl rather than as a ChildProcess: as root the child would be
// runuser, so a signal or the ChildProcess's SIGKILL would miss the postmaster. It listens on a
// unix socket in its own temp dir only. The destructor runs on every path out of a test: it
// resumes a stalled WAL receiver, stops the replica, drops the slot once its walsender has gone
// (the fixture's TearDown cannot drop a slot that is still active) and removes the directory.
class Standby {
 public:
  explicit Standby(std::string slot) : slot_(std::move(slot)) {}
  Standby(const Standby&) = delete;
  Standby& operator=(const Standby&) = delete;

  ~Standby() {
    Resume();
    const std::string bin = PgServer::Get().bin_dir();
    if (started_) {
      RunProcess(AsPostgres({bin + "/pg_ctl", "stop", "-D", data_, "-m", "immediate", "-w", "-s"}),
                 {}, "", 120);
    }
    try {
      pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
      pqxx::nontransaction txn(admin);
      const std::string quoted = txn.quote(slot_);
      for (int i = 0; i < 600; ++i) {
        txn.exec(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE "
            "slot_name = " +
            quoted + " AND active");
        txn.exec(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE "
            "slot_name = " +
            quoted + " AND NOT active");
        if (txn.exec1("SELECT count(*) FROM pg_replication_slots WHERE slot_name = " + quoted)[0]
                .as<int>() == 0) {
          break;
        }
        std::this_thread::sleep_for(100ms);
      }
    } catch (const std::exception& e) {
      ADD_FAILURE() << "cannot drop the slot " << slot_ << ": " << e.what();
    }
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  // Creates the slot, takes the base backup through it, starts the replica and returns once the
  // primary streams to it through the slot. Throws std::runtime_error otherwise.
  void Start() {
    const PgServer& primary = PgServer::Get();
    dir_ = MakeTempDir("rekey-standby-");
    if (geteuid() == 0) {
      const passwd* pw = getpwnam("postgres");
      if (pw == nullptr || chown(dir_.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
        throw std::runtime_error("cannot give " + dir_ + " to the postgres OS user");
      }
    }
    data_ = dir_ + "/data";
    log_ = dir_ + "/standby.log";
    {
      pqxx::connection admin(primary.ConnInfo("postgres"));
      pqxx::nontransaction txn(admin);
      txn.exec("SELECT pg_create_physical_replication_slot(" + txn.quote(slot_) + ", true)");
    }
    ProcessResult backup = RunProcess(
        AsPostgres({primary.bin_dir() + "/pg_basebackup", "-d", primary.ConnInfo("postgres"), "-D",
                    data_, "-S", slot_, "-R", "-X", "stream", "-c", "fast", "--no-sync"}),
        {}, "", 600);
    if (backup.exit_code != 0) throw std::runtime_error("pg_basebackup: " + Describe(backup));
    port_ = FreePort();
    ProcessResult start = RunProcess(
        AsPostgres({primary.bin_dir() + "/pg_ctl", "start", "-D", data_, "-l", log_, "-w", "-t",
                    "300", "-s", "-o",
                    "-p " + std::to_string(port_) + " -k " + dir_ + " -c listen_addresses=''"}),
        {}, "", 330);
    started_ = true;  // even on failure: pg_ctl may have left a postmaster behind
    if (start.exit_code != 0) {
      throw std::runtime_error("the replica does not start: " + Describe(start) + "\n" +
                               ReadFile(log_));
    }
    pqxx::connection admin(primary.ConnInfo("postgres"));
    for (int i = 0; i < 1200; ++i) {
      pqxx::nontransaction txn(admin);
      if (txn.exec1("SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON "
                    "s.active_pid = r.pid WHERE r.state = 'streaming' AND s.slot_name = " +
                    txn.quote(slot_))[0]
              .as<int>() == 1) {
        return;
      }
      std::this_thread::sleep_for(100ms);
    }
    throw std::runtime_error("the replica does not stream through " + slot_ + "\n" +
                             ReadFile(log_));
  }

  std::string ConnInfo(const std::string& dbname) const {
    return "host=" + dir_ + " port=" + std::to_string(port_) + " dbname=" + dbname +
           " user=postgres";
  }

  // Stops (SIGSTOP) the replica's WAL receiver: it neither receives nor confirms WAL, so the
  // slot keeps every byte the primary writes from now on. Throws if there is no receiver.
  void Stall() {
    pqxx::connection c(ConnInfo("postgres"));
    for (int i = 0; i < 1200 && receiver_ == 0; ++i) {
      pqxx::nontransaction txn(c);
      const pqxx::result r =
          txn.exec("SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'");
      if (!r.empty()) {
        receiver_ = r[0][0].as<pid_t>();
      } else {
        std::this_thread::sleep_for(100ms);
      }
    }
    if (receiver_ == 0) throw std::runtime_error("the replica has no streaming WAL receiver");
    if (kill(receiver_, SIGSTOP) != 0) throw std::runtime_error("cannot stop the WAL receiver");
  }

  void Resume() {
    if (receiver_ != 0) kill(receiver_, SIGCONT);
    receiver_ = 0;
  }

  std::string Log() const { return ReadFile(log_); }

 private:
  std::string slot_;
  std::string dir_;
  std::string data_;
  std::string log_;
  int port_ = 0;
  bool started_ = false;
  pid_t receiver_ = 0;
};

class BrakesTest : public PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    ImportTestKeys(conn(), {1, 2});
  }
  void TearDown() override {
    Exec(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name "
        "LIKE 'brakes_%'");
    PgTest::TearDown();
    if (!login_.empty()) {
      pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
      pqxx::nontransaction txn(admin);
      txn.exec("DROP ROLE IF EXISTS " + login_);
    }
  }

  int64_t CreateJob(int rows, int batch_size) {
    SeedTinkTable(conn(), "public.cards", rows, 1);
    return CreateJobSql(conn(),
                        "'public.cards', ARRAY['token'], '{\"1\": 2}', p_key_id_column => "
                        "'key_id', p_stages => '{100}', p_batch_size => " +
                            std::to_string(batch_size));
  }

  std::unique_ptr<ChildProcess> StartWorker(int64_t job, const std::vector<std::string>& flags,
                                            const std::string& conninfo = "") {
    std::vector<std::string> args{
        REKEY_BINARY,   "--db",  conninfo.empty() ? this->conninfo() : conninfo,
        "work",         "--job", std::to_string(job),
        "--log-format", "json"};
    args.insert(args.end(), flags.begin(), flags.end());
    return std::make_unique<ChildProcess>(args, WorkerEnv());
  }

  int64_t Rotated() { return Count("SELECT count(*) FROM public.cards WHERE key_id = 2"); }

  // rekey.progress's brakes_active of `job` as text ("NULL" when none), once it equals `want`
  // (or after `seconds`).
  std::string WaitForProgressBrakes(int64_t job, const std::string& want, int seconds = 30) {
    std::string got;
    for (int i = 0; i < seconds * 10; ++i) {
      got = Scalar("SELECT brakes_active::text FROM rekey.progress WHERE job_id = " +
                   std::to_string(job));
      if (got == want) break;
      std::this_thread::sleep_for(100ms);
    }
    return got;
  }

  void ExpectRotated(int64_t job, int rows) {
    EXPECT_EQ(Scalar("SELECT state FROM rekey.jobs WHERE job_id = " + std::to_string(job)),
              "completed");
    auto after = DecryptAll(conn(), "public.cards");
    ASSERT_EQ(after.size(), size_t(rows));
    for (const auto& [id, value] : after) {
      ASSERT_EQ(value.first, 2u) << "row " << id;
      ASSERT_EQ(value.second, PlaintextFor(id)) << "row " << id;
    }
  }

  // A login in rekey_worker (sql/roles.sql) with the grants `job` needs
  // (rekey.worker_grants), plus `extra` roles; returns its conninfo.
  std::string WorkerLogin(int64_t job, const std::string& extra = "") {
    std::ifstream in(std::string(REKEY_SOURCE_DIR) + "/sql/roles.sql");
    std::stringstream sql;
    sql << in.rdbuf();
    Exec(sql.str());
    login_ = dbname() + "_brakes";
    Exec("DROP ROLE IF EXISTS " + login_ + "; CREATE ROLE " + login_ +
         " LOGIN IN ROLE rekey_worker" + (extra.empty() ? "" : ", " + extra));
    pqxx::work txn(conn());
    for (const auto& row : txn.exec("SELECT rekey.worker_grants(" + std::to_string(job) + ")")) {
      txn.exec0(row[0].as<std::string>());
    }
    txn.commit();
    return conninfo() + " user=" + login_;
  }

  // Writes about `megabytes` MB of WAL.
  void WriteWal(int megabytes) {
    Exec("CREATE TABLE IF NOT EXISTS public.wal_filler (v text)");
    for (int i = 0; i < megabytes; ++i) {
      Exec(
          "INSERT INTO public.wal_filler SELECT repeat(md5(g::text), 30) FROM "
          "generate_series(1, 1000) g");
    }
  }

  std::string login_;
};

TEST_F(BrakesTest, SlotLagBrakesBeforeTheFirstRowAndReleasesWhenTheSlotGoes) {
  const int rows = 3000;
  const int64_t job = CreateJob(rows, 500);
  const std::string conninfo = WorkerLogin(job);  // slots need no pg_monitor
  Exec("SELECT pg_create_physical_replication_slot('brakes_cdc', true)");
  WriteWal(3);
  auto worker = StartWorker(
      job, {"--max-slot-lag", "1MB", "--brake-poll", "100ms", "--listen", "127.0.0.1:0"}, conninfo);
  ASSERT_TRUE(WaitForLog(*worker, "braking: slot_lag", 60)) << ReadFile(worker->stderr_path());
  const int port = ListenPort(ReadFile(worker->stderr_path()));
  const std::string metrics = HttpGet(port, "/metrics").body;
  EXPECT_EQ(Sample(metrics, "rekey_brake_active{reason=\"slot_lag\"}"), 1) << metrics;
  EXPECT_EQ(Sample(metrics, "rekey_brake_active{reason=\"wal_rate\"}"), 0);
  EXPECT_EQ(WaitForProgressBrakes(job, "{slot_lag}"), "{slot_lag}");
  ProcessResult status = RunRekey({"--db", this->conninfo(), "status", std::to_string(job)});
  EXPECT_THAT(status.out, HasSubstr("BRAKING (slot_lag)")) << status.out << status.err;
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(Rotated(), 0) << "nothing is written while the slot retains too much";
  const std::string log = ReadFile(worker->stderr_path());
  EXPECT_THAT(log, HasSubstr("\"slot\":\"brakes_cdc\""));
  EXPECT_THAT(log, HasSubstr("\"max_slot_lag_bytes\":1048576"));

  Exec("SELECT pg_drop_replication_slot('brakes_cdc')");
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("brake released: slot_lag"));
  ExpectRotated(job, rows);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.workers WHERE cardinality(brakes) > 0"), 0)
      << "the worker's brake row goes with it";
}

// The slot of a real streaming replica: the replica keeps up until its WAL receiver is stopped,
// then the slot retains what the primary writes; the worker brakes before its first row and
// writes once the receiver runs again and the replica has confirmed the WAL, the slot still in
// place. The replica then has every rotated value.
TEST_F(BrakesTest, SlotLagBrakesWhileAStalledReplicaHoldsItsSlotAndReleasesOnceItCatchesUp) {
  const int rows = 3000;
  const int64_t job = CreateJob(rows, 500);
  const std::string conninfo = WorkerLogin(job);
  const std::string slot = "brakes_replica";
  const int64_t limit = 1 << 20;
  auto retained = [&] {
    return Count(
        "SELECT coalesce((pg_current_wal_lsn() - restart_lsn)::bigint, -1) FROM "
        "pg_replication_slots WHERE slot_name = '" +
        slot + "'");
  };
  Standby standby(slot);
  standby.Start();
  int64_t seen = -1;
  for (int i = 0; i < 1200; ++i) {
    seen = retained();
    if (seen >= 0 && seen <= limit / 2) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_LE(seen, limit / 2) << "a replica that keeps up leaves its slot far below the limit\n"
                             << standby.Log();

  standby.Stall();
  WriteWal(3);
  // With synchronous_commit off the WAL writer writes that WAL a little later.
  for (int i = 0; i < 1200 && (seen = retained()) <= limit; ++i) std::this_thread::sleep_for(100ms);
  ASSERT_GT(seen, limit) << "the stalled replica's slot retains the new WAL\n" << standby.Log();
  auto worker = StartWorker(
      job, {"--max-slot-lag", "1MB", "--brake-poll", "100ms", "--listen", "127.0.0.1:0"}, conninfo);
  ASSERT_TRUE(WaitForLog(*worker, "braking: slot_lag", 60)) << ReadFile(worker->stderr_path());
  const int port = ListenPort(ReadFile(worker->stderr_path()));
  const std::string metrics = HttpGet(port, "/metrics").body;
  EXPECT_EQ(Sample(metrics, "rekey_brake_active{reason=\"slot_lag\"}"), 1) << metrics;
  EXPECT_EQ(WaitForProgressBrakes(job, "{slot_lag}"), "{slot_lag}");
  ProcessResult status = RunRekey({"--db", this->conninfo(), "status", std::to_string(job)});
  EXPECT_THAT(status.out, HasSubstr("BRAKING (slot_lag)")) << status.out << status.err;
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(Rotated(), 0) << "nothing is written while the replica's slot retains too much";
  EXPECT_THAT(ReadFile(worker->stderr_path()), HasSubstr("\"slot\":\"" + slot + "\""));

  standby.Resume();
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err << standby.Log();
  EXPECT_THAT(r.err, HasSubstr("brake released: slot_lag"));
  EXPECT_EQ(Count("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '" + slot + "'"), 1)
      << "released by the replica catching up, not by the slot going";
  ExpectRotated(job, rows);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.workers WHERE cardinality(brakes) > 0"), 0);
  // Hot-standby queries can be cancelled by replay conflicts: retry until the deadline.
  int64_t on_replica = -1;
  for (int i = 0; i < 1200 && on_replica != rows; ++i) {
    try {
      pqxx::connection c(standby.ConnInfo(dbname()));
      pqxx::nontransaction txn(c);
      on_replica = txn.exec1("SELECT count(*) FROM public.cards WHERE key_id = 2")[0].as<int64_t>();
    } catch (const std::exception&) {
    }
    if (on_replica != rows) std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(on_replica, rows) << standby.Log();
}

TEST_F(BrakesTest, WalRateBrakesWhileTheServerWritesFasterThanTheCap) {
  const int rows = 2000;
  const int64_t job = CreateJob(rows, 500);
  std::atomic<bool> writing{true};
  std::thread writer([&] {
    pqxx::connection c(conninfo());
    c.prepare("fill",
              "INSERT INTO public.wal_filler SELECT repeat(md5(g::text), 30) FROM "
              "generate_series(1, 2000) g");
    {
      pqxx::work txn(c);
      txn.exec0("CREATE TABLE IF NOT EXISTS public.wal_filler (v text)");
      txn.commit();
    }
    while (writing) {
      pqxx::work txn(c);
      txn.exec_prepared0("fill");  // about 2 MB of WAL
      txn.commit();
      std::this_thread::sleep_for(100ms);
    }
  });
  std::this_thread::sleep_for(1s);
  auto worker = StartWorker(job, {"--max-wal-rate", "1MB", "--brake-poll", "200ms"});
  const bool braked = WaitForLog(*worker, "braking: wal_rate", 60).has_value();
  EXPECT_EQ(WaitForProgressBrakes(job, "{wal_rate}"), "{wal_rate}");
  writing = false;
  writer.join();
  ASSERT_TRUE(braked) << ReadFile(worker->stderr_path());
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("\"max_wal_rate_bytes_per_second\":1048576"));
  EXPECT_THAT(r.err, HasSubstr("brake released: wal_rate"));
  ExpectRotated(job, rows);
}

// The application's UPDATE of a row rekey holds: a statement trigger makes rekey's own UPDATE
// sleep 5 s once it has written (so locked) every row of the batch, inside its transaction (only
// rekey's: the trigger looks at application_name), which without the brake would make the
// application wait those 5 s. (The batch reads its rows without locking them; only its UPDATE
// locks them, until the commit.)
TEST_F(BrakesTest, LockWaitYieldsSoTheApplicationNeverWaitsLongerThanTheLimit) {
  const int rows = 200;
  const int64_t job = CreateJob(rows, 1000);  // one batch, one chunk: one UPDATE of every row
  Exec(R"(
    CREATE TABLE public.slow (ms int NOT NULL);
    INSERT INTO public.slow VALUES (5000);
    CREATE FUNCTION public.slow_rekey() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF current_setting('application_name') LIKE 'rekey-worker %'
         AND current_setting('slow.done', true) IS DISTINCT FROM txid_current()::text THEN
        PERFORM pg_sleep((SELECT ms FROM public.slow) / 1000.0);
        PERFORM set_config('slow.done', txid_current()::text, true);
      END IF;
      RETURN NEW;
    END $$;
    CREATE TRIGGER slow_rekey AFTER UPDATE ON public.cards FOR EACH STATEMENT
      EXECUTE FUNCTION public.slow_rekey();)");
  const int limit_ms = 500;
  auto worker = StartWorker(job, {"--max-lock-wait", std::to_string(limit_ms)});
  // Wait until rekey's transaction holds the rows and sleeps in its UPDATE.
  bool holding = false;
  for (int i = 0; i < 600 && !holding; ++i) {
    holding = Count(
                  "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE "
                  "'rekey-worker %' AND wait_event = 'PgSleep'") > 0;
    if (!holding) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(holding) << ReadFile(worker->stderr_path());

  pqxx::connection app(conninfo());
  const auto started = std::chrono::steady_clock::now();
  {
    pqxx::work txn(app);
    txn.exec0("UPDATE public.cards SET note = 'updated by the application' WHERE id = 7");
    txn.commit();
  }
  const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - started);
  RecordProperty("application_lock_wait_ms", int(waited.count()));
  std::printf("the application waited %lld ms on the row rekey held (limit %d ms)\n",
              static_cast<long long>(waited.count()), limit_ms);
  // The margin covers a loaded test machine; without the brake the wait is 5 s.
  EXPECT_LT(waited.count(), limit_ms + 1000)
      << "the application waited " << waited.count() << " ms";
  Exec("UPDATE public.slow SET ms = 0");

  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("\"action\":\"brake.lock_wait.yield\""));
  EXPECT_THAT(r.err, HasSubstr("braking: lock_wait"));
  ExpectRotated(job, rows);
  EXPECT_EQ(Scalar("SELECT note FROM public.cards WHERE id = 7"), "updated by the application");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.batches WHERE job_id = " + std::to_string(job) +
                  " AND state <> 'done'"),
            0);
}

// Autovacuum made slow on purpose (cost limit 1, delay 100 ms: a page every 100 ms) so it is
// still on the table when the worker starts.
TEST_F(BrakesTest, AutovacuumOnTheTargetPausesTheWork) {
  const int rows = 20000;
  const int64_t job = CreateJob(rows, 2000);
  Exec(
      "ALTER TABLE public.cards SET (autovacuum_vacuum_threshold = 0, "
      "autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_cost_limit = 1, "
      "autovacuum_vacuum_cost_delay = 100)");
  {
    pqxx::nontransaction txn(conn());
    txn.exec("ALTER SYSTEM SET autovacuum_naptime = '1s'");
    txn.exec("SELECT pg_reload_conf()");
  }
  Exec("UPDATE public.cards SET note = 'dead tuples for autovacuum'");
  bool vacuuming = false;
  for (int i = 0; i < 1200 && !vacuuming; ++i) {
    vacuuming = Count(
                    "SELECT count(*) FROM pg_stat_progress_vacuum v JOIN pg_stat_activity a "
                    "USING (pid) WHERE a.backend_type = 'autovacuum worker' AND v.relid = "
                    "'public.cards'::regclass") > 0;
    if (!vacuuming) std::this_thread::sleep_for(100ms);
  }
  {
    pqxx::nontransaction txn(conn());
    txn.exec("ALTER SYSTEM RESET autovacuum_naptime");
    txn.exec("SELECT pg_reload_conf()");
  }
  if (!vacuuming) GTEST_SKIP() << "autovacuum did not start on the table within 2 minutes";

  auto worker = StartWorker(job, {"--pause-during-autovacuum", "--brake-poll", "100ms"});
  ASSERT_TRUE(WaitForLog(*worker, "braking: autovacuum", 60)) << ReadFile(worker->stderr_path());
  EXPECT_THAT(ReadFile(worker->stderr_path()), HasSubstr("\"autovacuum_table\":\"public.cards\""));
  EXPECT_EQ(WaitForProgressBrakes(job, "{autovacuum}"), "{autovacuum}");
  EXPECT_EQ(Rotated(), 0);
  // Autovacuum off for the table, and the running one cancelled.
  Exec("ALTER TABLE public.cards SET (autovacuum_enabled = false)");
  Exec(
      "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'autovacuum "
      "worker'");
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("brake released: autovacuum"));
  ExpectRotated(job, rows);
}

TEST_F(BrakesTest, PrometheusBrakeFollowsARealPrometheusScrapingARealTarget) {
  if (access(kPrometheusBinary, X_OK) != 0) {
    GTEST_SKIP() << kPrometheusBinary << " is absent (Debian package prometheus)";
  }
  const int rows = 2000;
  const int64_t job = CreateJob(rows, 500);
  Exec("UPDATE rekey.keys SET status = 'primary' WHERE key_id = 2");
  // The signal: rekey_keys_overdue of a `rekey exporter`, 1 while a key policy makes key 2 overdue.
  Exec("INSERT INTO rekey.key_policies (scope, max_age) VALUES ('*', '1 second')");
  const int exporter_port = FreePort();
  ChildProcess exporter({REKEY_BINARY, "--db", conninfo(), "exporter", "--listen",
                         "127.0.0.1:" + std::to_string(exporter_port)},
                        WorkerEnv());
  ASSERT_TRUE(WaitForLog(exporter, "serving /metrics", 60)) << ReadFile(exporter.stderr_path());
  PrometheusServer prometheus({{"rekey-exporter", {"127.0.0.1:" + std::to_string(exporter_port)}}});
  ASSERT_TRUE(prometheus.WaitReady(60)) << prometheus.Log();
  const std::string query = "max(rekey_keys_overdue)";
  auto value = [&] {
    auto r = prometheus.Api("/api/v1/query", "query=" + UrlEncode(query));
    if (r["data"]["result"].empty()) return std::string("none");
    return r["data"]["result"][0]["value"][1].get<std::string>();
  };
  std::string seen;
  for (int i = 0; i < 300 && (seen = value()) != "1"; ++i) std::this_thread::sleep_for(100ms);
  ASSERT_EQ(seen, "1") << prometheus.Log();

  auto worker = StartWorker(job, {"--brake-prometheus", prometheus.url(), "--brake-query", query,
                                  "--brake-above", "0.5", "--brake-poll", "200ms"});
  ASSERT_TRUE(WaitForLog(*worker, "braking: prometheus", 60)) << ReadFile(worker->stderr_path());
  EXPECT_EQ(WaitForProgressBrakes(job, "{prometheus}"), "{prometheus}");
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(Rotated(), 0);
  Exec("DELETE FROM rekey.key_policies");
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("brake released: prometheus"));
  ExpectRotated(job, rows);
  exporter.Signal(SIGTERM);
  exporter.Wait(30);
}

// Against the same real Prometheus: a query it cannot parse stops the worker at start (exit 2,
// nothing written); and a Prometheus that goes away mid-run brakes the worker (fail safe: the
// team's signal can no longer say the application is fine) and says why, until it is stopped.
TEST_F(BrakesTest, PrometheusBrakeRefusesABadQueryAndBrakesWhenPrometheusGoesAwayMidRun) {
  if (access(kPrometheusBinary, X_OK) != 0) {
    GTEST_SKIP() << kPrometheusBinary << " is absent (Debian package prometheus)";
  }
  const int rows = 2000;
  const int64_t job = CreateJob(rows, 200);
  auto prometheus = std::make_unique<PrometheusServer>(std::vector<PrometheusServer::ScrapeJob>{});
  ASSERT_TRUE(prometheus->WaitReady(60)) << prometheus->Log();
  const std::string url = prometheus->url();

  ProcessResult bad = StartWorker(job, {"--brake-prometheus", url, "--brake-query", "vector(0",
                                        "--brake-above", "0.5"})
                          ->Wait(60);
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
  EXPECT_THAT(bad.err, HasSubstr("refused the query (HTTP 400)"));
  EXPECT_THAT(bad.err, HasSubstr("parse error"));
  EXPECT_EQ(std::count(bad.err.begin(), bad.err.end(), '\n'), 1) << bad.err;
  EXPECT_EQ(Rotated(), 0);

  auto worker =
      StartWorker(job, {"--brake-prometheus", url, "--brake-query", "vector(0)", "--brake-above",
                        "0.5", "--brake-poll", "200ms", "--max-rows-per-second", "300"});
  for (int i = 0; i < 600 && Rotated() == 0 && worker->Running(); ++i) {
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_GT(Rotated(), 0) << ReadFile(worker->stderr_path());
  prometheus.reset();  // stopped, its port closed
  ASSERT_TRUE(WaitForLog(*worker, "braking: prometheus", 60)) << ReadFile(worker->stderr_path());
  EXPECT_EQ(WaitForProgressBrakes(job, "{prometheus}"), "{prometheus}");
  // The batch in hand completes; then nothing more is claimed.
  std::this_thread::sleep_for(3s);
  const int64_t held = Rotated();
  std::this_thread::sleep_for(2s);
  EXPECT_EQ(Rotated(), held) << "no batch is claimed while Prometheus cannot answer";
  EXPECT_LT(held, rows);
  worker->Signal(SIGTERM);
  ProcessResult stopped = worker->Wait(60);
  EXPECT_EQ(stopped.exit_code, 0) << stopped.err;
  EXPECT_THAT(stopped.err, HasSubstr("\"error\""));
  // Nothing lost: a worker without the brake finishes the job.
  ASSERT_EQ(StartWorker(job, {})->Wait(300).exit_code, 0);
  ExpectRotated(job, rows);
}

TEST_F(BrakesTest, ABrakeTheRoleCannotObserveStopsTheWorkerAtStartWithTheGrant) {
  const int64_t job = CreateJob(100, 100);
  const std::string conninfo = WorkerLogin(job);
  for (const auto& [flags, needle] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--pause-during-autovacuum"}, "pg_stat_progress_vacuum"},
           {{"--max-archive-backlog", "8"}, "pg_ls_archive_statusdir()"},
           {{"--max-replication-lag", "10s"}, "pg_stat_replication"}}) {
    ProcessResult r = StartWorker(job, flags, conninfo)->Wait(60);
    EXPECT_EQ(r.exit_code, 2) << flags[0] << ": " << r.err;
    EXPECT_THAT(r.err, HasSubstr(needle)) << flags[0];
    EXPECT_THAT(r.err, HasSubstr("GRANT pg_monitor TO " + login_)) << flags[0];
  }
  EXPECT_EQ(Rotated(), 0);
  // With pg_monitor, the archive brake runs (nothing waits for the archiver here).
  Exec("GRANT pg_monitor TO " + login_);
  ProcessResult ok = StartWorker(job, {"--max-archive-backlog", "8"}, conninfo)->Wait(120);
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_EQ(Rotated(), 100);
}

// The archive brake against a real archiver that cannot keep up: archive_mode needs a restart,
// so this fixture turns it on (with a failing archive_command) before its test database is made
// and turns it off again after, leaving the process's server as the other tests expect it.
class ArchiveBrakeTest : public BrakesTest {
 protected:
  void SetUp() override {
    AlterSystem({"archive_mode = on", "archive_command = 'false'"});
    PgServer::Get().Restart();
    BrakesTest::SetUp();
  }
  void TearDown() override {
    BrakesTest::TearDown();
    AlterSystem({"archive_mode", "archive_command"}, /*reset=*/true);
    PgServer::Get().Restart();
  }

  static void AlterSystem(const std::vector<std::string>& settings, bool reset = false) {
    pqxx::connection admin(PgServer::Get().ConnInfo("postgres"));
    pqxx::nontransaction txn(admin);
    for (const auto& s : settings)
      txn.exec0(std::string(reset ? "ALTER SYSTEM RESET " : "ALTER SYSTEM SET ") + s);
    txn.exec("SELECT pg_reload_conf()");
  }

  int64_t ReadySegments() {
    return Count("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'");
  }
};

TEST_F(ArchiveBrakeTest, AStalledArchiverBrakesTheWorkAndItResumesOnceTheArchiverCatchesUp) {
  const int rows = 2000;
  const int64_t job = CreateJob(rows, 500);
  // Six finished segments the archiver cannot archive (each switch needs WAL written since the
  // last one).
  Exec("CREATE TABLE public.wal_marks (at timestamptz)");
  for (int i = 0; i < 6; ++i) {
    Exec("INSERT INTO public.wal_marks VALUES (now())");
    Exec("SELECT pg_switch_wal()");
  }
  ASSERT_GE(ReadySegments(), 6) << PgServer::Get().LogTail();
  const int limit = 3;
  auto worker = StartWorker(job, {"--max-archive-backlog", std::to_string(limit), "--brake-poll",
                                  "100ms", "--listen", "127.0.0.1:0"});
  ASSERT_TRUE(WaitForLog(*worker, "braking: archive_backlog", 60))
      << ReadFile(worker->stderr_path());
  const int port = ListenPort(ReadFile(worker->stderr_path()));
  const std::string metrics = HttpGet(port, "/metrics").body;
  EXPECT_EQ(Sample(metrics, "rekey_brake_active{reason=\"archive_backlog\"}"), 1) << metrics;
  EXPECT_EQ(Sample(metrics, "rekey_brake_active{reason=\"wal_rate\"}"), 0);
  EXPECT_EQ(WaitForProgressBrakes(job, "{archive_backlog}"), "{archive_backlog}");
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.workers WHERE brakes = '{archive_backlog}'"), 1);
  ProcessResult status = RunRekey({"--db", this->conninfo(), "status", std::to_string(job)});
  EXPECT_THAT(status.out, HasSubstr("BRAKING (archive_backlog)")) << status.out << status.err;
  std::this_thread::sleep_for(1s);
  EXPECT_EQ(Rotated(), 0) << "nothing is written while the archiver is behind";
  EXPECT_TRUE(worker->Running());
  const std::string log = ReadFile(worker->stderr_path());
  EXPECT_THAT(log, HasSubstr("\"max_archive_backlog\":3"));
  EXPECT_THAT(log, HasSubstr("\"archive_ready_segments\":"));

  // The archiver recovers: the command succeeds from now on (the reload wakes the archiver).
  AlterSystem({"archive_command = 'true'"});
  ProcessResult r = worker->Wait(300);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_THAT(r.err, HasSubstr("brake released: archive_backlog"));
  EXPECT_LE(ReadySegments(), 2) << "released only once the backlog is at 80 % of the limit or less";
  ExpectRotated(job, rows);
  EXPECT_EQ(Count("SELECT count(*) FROM rekey.workers WHERE cardinality(brakes) > 0"), 0);
}

TEST_F(BrakesTest, BadInputIsOneLineAndExitTwo) {
  const int64_t job = CreateJob(10, 10);
  const int closed_port = FreePort();
  for (const auto& flags : std::vector<std::vector<std::string>>{
           {"--max-wal-rate", "20"},
           {"--max-wal-rate", "20 MB"},
           {"--max-slot-lag", "-1MB"},
           {"--max-archive-backlog", "-1"},
           {"--max-lock-wait", "-5"},
           {"--brake-prometheus", "http://127.0.0.1:1"},
           {"--brake-prometheus", "127.0.0.1:9090", "--brake-query", "up", "--brake-above", "1"},
           {"--brake-prometheus", "http://127.0.0.1:" + std::to_string(closed_port),
            "--brake-query", "up", "--brake-above", "1"}}) {
    ProcessResult r = StartWorker(job, flags)->Wait(60);
    EXPECT_EQ(r.exit_code, 2) << flags[0] << " " << flags[1] << ": " << r.err;
    // One line of error (CLI11's usage errors add a hint line: those come from CLI11 itself).
    EXPECT_THAT(r.err, Not(HasSubstr("braking"))) << flags[0];
  }
  // The environment equivalents are read (and checked) like the flags.
  EnvOverrides env = WorkerEnv();
  env["REKEY_MAX_WAL_RATE"] = "20";
  ProcessResult from_env = RunProcess(
      {REKEY_BINARY, "--db", conninfo(), "work", "--job", std::to_string(job)}, env, "", 60);
  EXPECT_EQ(from_env.exit_code, 2) << from_env.err;
  EXPECT_THAT(from_env.err, HasSubstr("--max-wal-rate '20' needs a unit"));
  EXPECT_EQ(Rotated(), 0);
}

}  // namespace
}  // namespace rekey::testing
